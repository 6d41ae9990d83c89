"""The ``bluesky-ptycho`` command: demo, bench and friends.

``bluesky-ptycho demo`` simulates a small ptychography dataset, reconstructs it with a progress
bar, writes the result (HDF5) and a figure (PNG), and prints the error against the truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo_offline(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from bluesky_ptycho.display import result_figure, save_figure
    from bluesky_ptycho.engine import EPIE, EPIEOptions
    from bluesky_ptycho.io.result import write_result
    from bluesky_ptycho.metrics import illuminated_region, object_error
    from bluesky_ptycho.simulate import simulate_dataset, small_preset

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    preset = small_preset()
    print(
        f"simulating {preset.n_rows} x {preset.n_cols} {preset.pattern} scan, "
        f"{preset.shape} px frames, {preset.photons_per_pattern:.0e} photons per pattern"
    )
    ds = simulate_dataset(preset)
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=args.seed))
    engine.add(ds.intensities, ds.positions_px)
    t0 = time.perf_counter()
    with tqdm(total=args.passes, unit="pass", disable=args.quiet) as bar:

        def progress(iteration: int, error: float) -> None:
            bar.set_postfix(fourier_error=f"{error:.4f}")
            bar.update(1)

        engine.iterate(args.passes, callback=progress)
    elapsed = time.perf_counter() - t0
    state = engine.state()
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    error = object_error(state.object, ds.object, region=region)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    h5 = write_result(
        out / f"demo-{stamp}.h5",
        state,
        geometry=ds.geometry,
        metadata={"demo": "offline", "object_error": float(error)},
        overwrite=True,
    )
    png = save_figure(
        result_figure(
            state,
            pixel_size_m=ds.geometry.pixel_size_m,
            title=f"offline ePIE demo: {args.passes} passes, object error {error:.3f}",
            truth=ds.object,
        ),
        out / f"demo-{stamp}.png",
    )
    updates = state.pattern_updates / max(elapsed, 1e-9)
    print(
        f"{state.n_patterns} patterns, {state.iteration} passes in {elapsed:.2f} s "
        f"({updates:.0f} pattern updates/s)"
    )
    print(f"Fourier error {state.fourier_error[-1]:.4f}; object error vs truth {error:.4f}")
    print(f"result: {h5}\nfigure: {png}")
    return 0 if np.isfinite(error) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bluesky-ptycho", description="Live ptychography for Bluesky beamlines."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate a scan and reconstruct it")
    demo.add_argument("--output", default="demo-output", help="folder for HDF5 and PNG files")
    demo.add_argument("--passes", type=int, default=60, help="ePIE passes")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo_offline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bluesky-ptycho`` console script."""
    args = _parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
