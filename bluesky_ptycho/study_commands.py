"""The ``study`` subcommand of ``bluesky-ptycho``: the published study's schemes on a scan.

``bluesky-ptycho study [SCAN] --iterations N --output DIR`` runs the reference, raster, random,
spirangle, parallel, parallel-live and over-optimisation recipes
(:mod:`bluesky_ptycho.recipes`) and writes ``study.h5``, ``study.json`` and the figures into
DIR. SCAN is any scan file the project reads (CXI, NeXus/Eiger master); without it the measured
Siemens star in ``shared/data/``, or with ``--simulated`` the study's simulated 21 x 21 raster.

Starting probe: ``--probe gaussian`` is the study's (flat phase); ``--probe auto`` makes it
from the data. The default is ``gaussian`` for ``--simulated`` and ``auto`` for measured data,
where the study's Gaussian start does not find the specimen (the star); measured data also get
the object amplitude bounded (:meth:`~bluesky_ptycho.recipes.StudySettings.measured`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["add_study_parser", "run_study_command"]


def add_study_parser(sub: Any) -> None:
    """Add ``study`` to the ``bluesky-ptycho`` subparsers ``sub``."""
    from bluesky_ptycho.recipes.schedule import SCHEME_NAMES

    p = sub.add_parser("study", help="run the published study's simulated-live schemes on a scan")
    p.add_argument(
        "scan", nargs="?", help="CXI file or NeXus/Eiger master (default: the measured star)"
    )
    p.add_argument("--simulated", action="store_true", help="the study's simulated scan")
    p.add_argument("--star", help="path of siemens-star-small.npz.bz2 (default: shared/data/)")
    p.add_argument("--iterations", type=int, default=1000, help="N, passes per scheme")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--per-step", type=int, default=10, help="patterns arriving per step")
    p.add_argument("--iterations-per-step", type=int, default=10)
    p.add_argument("--subsets", type=int, default=4)
    p.add_argument(
        "--overoptimization-iterations-per-step",
        type=int,
        default=1000,
        help="passes per step of the over-optimisation scheme (the study: 1,000)",
    )
    p.add_argument("--probe", choices=("gaussian", "auto"), help="starting probe")
    p.add_argument("--averaging", choices=("mean", "illumination"), default="mean")
    p.add_argument(
        "--schemes",
        nargs="+",
        choices=[n for n in SCHEME_NAMES if n != "reference"],
        help="schemes besides the reference (default: all)",
    )
    p.add_argument("--patterns", type=int, help="use only the first N patterns (recorded order)")
    p.add_argument("--crop", type=int, help="frame size for a SCAN (power of two)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_study_command)


def _data(args: argparse.Namespace) -> Any:
    from bluesky_ptycho.recipes.data import StudyData
    from bluesky_ptycho.simulate import simulate_dataset, study_offline_preset

    if args.simulated:
        return StudyData.from_simulated(
            simulate_dataset(study_offline_preset(), seed=args.seed), name="simulated study"
        )
    if args.scan:
        return StudyData.from_scan(args.scan, crop=args.crop)
    return StudyData.siemens_star(args.star)


def run_study_command(args: argparse.Namespace) -> int:
    """``bluesky-ptycho study``; returns the exit status."""
    from bluesky_ptycho.recipes.outputs import write_study
    from bluesky_ptycho.recipes.runner import first_fraction_below, run_study
    from bluesky_ptycho.recipes.schedule import StudySettings

    if args.simulated and args.scan:
        print("study: give a SCAN or --simulated, not both", file=sys.stderr)
        return 2
    try:
        data = _data(args)
        if args.patterns:
            data = data.first(args.patterns)
        numbers: dict[str, Any] = {
            "iterations": args.iterations,
            "per_step": args.per_step,
            "iterations_per_step": args.iterations_per_step,
            "subsets": args.subsets,
            "overoptimization_iterations_per_step": args.overoptimization_iterations_per_step,
            "averaging": args.averaging,
            "seed": args.seed,
        }
        if args.probe:
            numbers["probe"] = args.probe
        settings = StudySettings(**numbers) if args.simulated else StudySettings.measured(**numbers)
    except (FileNotFoundError, ValueError) as exc:
        hint = "" if args.scan or args.simulated else " (or pass a SCAN, or --simulated)"
        print(f"study: {exc}{hint}", file=sys.stderr)
        return 2

    def progress(run: Any, record: Any) -> None:
        if not args.quiet:
            print(
                f"\r{run.recipe.name:17s} {record.fraction_of_scan:6.1%} of scan, "
                f"{record.iteration:5d} iterations",
                end="",
                flush=True,
            )

    if not args.quiet:
        print(
            f"{data.name}: {data.n_patterns} patterns of {data.frame_size} px, probe "
            f"{settings.probe}, N = {settings.iterations}"
        )
    t0 = time.perf_counter()
    result = run_study(data, settings, schemes=args.schemes, progress=progress)
    paths = write_study(result, args.output, figures=not args.no_figures)
    if not args.quiet:
        print(f"\r{'':60s}")
    print(f"{'scheme':17s} {'final error':>11s} {'below 2x final at':>18s} {'seconds':>8s}")
    for name, run in result.runs.items():
        seen = first_fraction_below(run)
        seen_text = "n/a" if seen != seen else f"{seen:.0%}"
        print(f"{name:17s} {run.final_error:11.4f} {seen_text:>18s} {run.seconds:8.1f}")
    print(f"{time.perf_counter() - t0:.1f} s; wrote {paths['json']} and {paths['hdf5']}")
    return 0
