"""Frames per second read from compressed and uncompressed HDF5 detector files, on one core.

For 256 px frames and 1,024 px raw Eiger-size frames (cropped to 256 around the beam centre, as
the callback does), each compression the simulated detectors and the Eiger/areaDetector writers
use, prints:

- ``stream``: frames/s through ``AssetRegistry.read`` of a stream_resource/stream_datum frame
  (what ``PtychoCallback`` does for ophyd-async detectors: open the file, check the filters,
  read one frame, close);
- ``datum``: the same for an AD_HDF5 resource/datum frame (ophyd v1 area detectors);
- ``open``: frames/s reading from a file kept open (decompression alone, the upper bound);
- ``+crop``: ``stream`` plus the crop to 256 px (1,024 px frames only);
- the file size relative to the uncompressed one, and the ratio of each rate to the
  uncompressed file's.

The target: compressed frames at least 1,000/s at 256 px on one core (``stream`` column).

    python benchmarks/io.py [--frames 200] [--seconds 1.5] [--sizes 256 1024]

The process is pinned to one CPU core and Blosc to one thread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("BLOSC_NTHREADS", "1")  # before hdf5plugin loads the Blosc filters

import h5py
import numpy as np

from bluesky_ptycho.io.assets import AssetRegistry, DatumLocator, StreamLocator
from bluesky_ptycho.io.hdf5 import COMPRESSION_FILTERS, compression_options
from bluesky_ptycho.preprocess import PreprocessConfig, preprocess

DATASET = "/entry/data/data"
TARGET_FPS = 1000.0


def eiger_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Photon-counting frames like a far-field pattern: a bright centre, speckle, mostly zeros."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    r2 = (yy.astype(np.float64) ** 2 + xx**2) / (size / 16) ** 2
    mean = 5e4 / (1.0 + r2) ** 2
    out = np.empty((n, size, size), dtype=np.uint32)
    for k in range(n):
        speckle = rng.gamma(1.0, 1.0, (size, size))
        out[k] = rng.poisson(mean * speckle)
    return out


def write(path: Path, frames: np.ndarray, compression: str | None) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset(
            DATASET,
            data=frames,
            chunks=(1, *frames.shape[1:]),
            **compression_options(compression),
        )
    return path


def rate(fn: Callable[[int], object], n: int, seconds: float) -> float:
    """Calls per second of ``fn(i)`` cycling over ``i < n``, for about ``seconds``."""
    fn(0)  # warm up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(done % n)
        done += 1
    return done / (time.perf_counter() - t0)


def measure(path: Path, n: int, size: int, seconds: float) -> dict[str, float]:
    registry = AssetRegistry()
    stream = [StreamLocator(str(path), DATASET, i, "application/x-hdf5") for i in range(n)]
    datum = [
        DatumLocator(f"d/{i}", "AD_HDF5", str(path), {"frame_per_point": 1}, {"point_number": i})
        for i in range(n)
    ]
    out = {
        "stream": rate(lambda i: registry.read(stream[i]), n, seconds),
        "datum": rate(lambda i: registry.read(datum[i]), n, seconds),
    }
    with h5py.File(path, "r") as f:
        ds = f[DATASET]
        out["open"] = rate(lambda i: ds[i], n, seconds)
    if size > 256:
        config = PreprocessConfig(crop=256, beam_center_px=(size // 2, size // 2))
        out["+crop"] = rate(lambda i: preprocess(registry.read(stream[i]), config), n, seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per 256 px file")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 0
    print(f"# HDF5 frame reading, {cores} core(s), h5py {h5py.__version__}")
    compressions = [None, *COMPRESSION_FILTERS]
    worst_256 = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n = max(8, args.frames * 256 * 256 // (size * size))
            frames = eiger_frames(n, size)
            print(f"\n## {size} px raw frames (uint32), {n} per file")
            cols = ["stream", "datum", "open"] + (["+crop"] if size > 256 else [])
            header = f"{'compression':<15}{'size':>7}" + "".join(f"{c + ' f/s':>13}" for c in cols)
            print(header + f"{'vs none':>9}")
            base: dict[str, float] = {}
            base_bytes = 0
            for comp in compressions:
                path = write(Path(tmp) / f"{size}-{comp or 'none'}.h5", frames, comp)
                nbytes = path.stat().st_size
                got = measure(path, n, size, args.seconds)
                if comp is None:
                    base, base_bytes = got, nbytes
                else:
                    ratio = got["stream"] / base["stream"]
                    if size == 256 and (worst_256 is None or got["stream"] < worst_256[1]):
                        worst_256 = (comp, got["stream"])
                print(
                    f"{comp or 'none':<15}{nbytes / base_bytes:>7.2f}"
                    + "".join(f"{got[c]:>13,.0f}" for c in cols)
                    + (f"{ratio:>9.2f}" if comp is not None else f"{'1.00':>9}")
                )
    if worst_256 is not None:
        comp, fps = worst_256
        verdict = "meets" if fps >= TARGET_FPS else "MISSES"
        print(
            f"\nslowest compressed 256 px read through the callback's path: {comp} at "
            f"{fps:,.0f} frames/s = {fps / TARGET_FPS:.2f} x the {TARGET_FPS:,.0f}/s target "
            f"({verdict} it)"
        )


if __name__ == "__main__":
    main()
