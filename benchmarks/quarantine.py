"""Cost of screening a frame for the quarantine, against one FFT of the same size, in one run.

The live worker screens every frame once (a sum, a maximum and a few medians of at most
``window`` numbers) before it reaches the engine, where every update costs at least two FFTs.
Prints, for 64, 128 and 256 px frames submitted one at a time, the time per screened frame
(without and with a per-frame mask) and its ratio to one complex64 ``scipy.fft.fft2`` measured
in the same run.

    python benchmarks/quarantine.py [--sizes 64 128 256] [--frames 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft

from bluesky_ptycho.live.quarantine import Quarantine


def per_call(fn, repeats: int) -> float:
    """Seconds per call of ``fn(k)`` for k in range(repeats)."""
    t0 = time.perf_counter()
    for k in range(repeats):
        fn(k)
    return (time.perf_counter() - t0) / repeats


def measure(rng: np.random.Generator, n: int, count: int) -> tuple[float, float, float]:
    """Seconds per screened frame (plain, masked) and per FFT, for ``n`` px frames."""
    frames = rng.poisson(50.0, size=(count, n, n)).astype(np.float32)
    mask = np.zeros((1, n, n), dtype=bool)
    mask[0, :3] = True
    q = Quarantine()
    q.screen(frames[:16])  # statistics exist: the band check runs for every frame
    plain = per_call(lambda k: q.screen(frames[k : k + 1]), count)
    masked = per_call(lambda k: q.screen(frames[k : k + 1], mask), count)
    c = frames[0].astype(np.complex64)
    fft = per_call(lambda k: scipy.fft.fft2(c), count)
    return plain, masked, fft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'px':>5} {'screen us':>10} {'masked us':>10} {'fft us':>8} {'ratio':>6} {'masked':>7}")
    for n in args.sizes:
        plain, masked, fft = measure(rng, n, args.frames)
        print(
            f"{n:>5} {plain * 1e6:>10.0f} {masked * 1e6:>10.0f} {fft * 1e6:>8.0f} "
            f"{plain / fft:>6.2f} {masked / fft:>7.2f}"
        )


if __name__ == "__main__":
    main()
