"""ePIE speed and memory: this engine against a plain reference ePIE, in one run.

Prints, for 64, 128 and 256 px patterns, single-pattern updates per second of
``bluesky_ptycho.engine.EPIE`` (NumPy backend) and of a plain ePIE written directly from the
paper's equations (numpy.fft, modulus via angle/exp, complex64 arrays, no buffers), their ratio,
and the bytes the engine holds per stored pattern and per detector pixel.

    python benchmarks/engine.py [--sizes 64 128 256] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.engine.epie import default_probe
from bluesky_ptycho.engine.forward import far_field_intensities


def make_data(n: int, n_side: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    step = n // 8
    size = n + step * (n_side - 1) + 2
    yy, xx = np.mgrid[:size, :size]
    obj = np.exp(1j * 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.complex64)
    probe = default_probe((n, n), n / 6, 1e6)
    grid = np.arange(n_side) * step + 1
    pos = np.array([(a, b) for a in grid for b in grid], dtype=np.float64)
    intens = rng.poisson(far_field_intensities(obj, probe, pos)).astype(np.float32)
    return obj.shape, probe, pos, intens


def reference_epie(obj, probe, amps, corners, order, alpha=1.0, beta=1.0):
    """One pass of ePIE straight from Maiden & Rodenburg (2009), eqs. (3)-(8)."""
    n0, n1 = probe.shape
    for j in order:
        r, c = corners[j]
        o = obj[r : r + n0, c : c + n1].copy()
        psi = probe * o
        spec = np.fft.fft2(psi)
        spec_c = amps[j] * np.exp(1j * np.angle(spec))
        psi_c = np.fft.ifft2(spec_c)
        obj[r : r + n0, c : c + n1] = o + alpha * np.conj(probe) / np.max(np.abs(probe) ** 2) * (
            psi_c - psi
        )
        probe = probe + beta * np.conj(o) / np.max(np.abs(o) ** 2) * (psi_c - psi)
    return obj, probe


def rate(fn, seconds: float) -> float:
    """Updates per second: repeat ``fn`` (returns updates done) for about ``seconds``."""
    fn()  # warm up (FFT plans, caches)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += fn()
    return done / (time.perf_counter() - t0)


def bench(n: int, seconds: float) -> dict:
    shape, probe, pos, intens = make_data(n)
    engine = EPIE(shape, probe=probe, options=EPIEOptions(seed=0))
    engine.add(intens, pos)
    npat = engine.n_patterns

    def run_engine() -> int:
        return engine.step(npat)

    # the reference works in the paper's layout: unshifted FFT, sqrt(I) precomputed
    amps = np.sqrt(np.fft.ifftshift(intens, axes=(-2, -1))).astype(np.float32)
    corners = np.floor(pos + 0.5).astype(int)
    state = {"obj": np.ones(shape, np.complex64), "probe": probe.copy()}
    rng = np.random.default_rng(0)

    def run_reference() -> int:
        order = rng.permutation(npat)
        state["obj"], state["probe"] = reference_epie(
            state["obj"], state["probe"], amps, corners, order
        )
        return npat

    ref = rate(run_reference, seconds)
    eng = rate(run_engine, seconds)
    return {
        "n": n,
        "engine": eng,
        "reference": ref,
        "ratio": eng / ref,
        "bytes_per_pattern": engine.nbytes_per_pattern,
        "bytes_per_pixel": engine.nbytes_per_pattern / (n * n),
        "raw_float32_per_pattern": 4 * n * n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(
        f"{'N':>5} {'engine/s':>10} {'reference/s':>12} {'ratio':>7} "
        f"{'bytes/pattern':>14} {'bytes/pixel':>12}"
    )
    for n in args.sizes:
        r = bench(n, args.seconds)
        print(
            f"{r['n']:>5} {r['engine']:>10.0f} {r['reference']:>12.0f} {r['ratio']:>7.2f} "
            f"{r['bytes_per_pattern']:>14.0f} {r['bytes_per_pixel']:>12.3f}"
        )


if __name__ == "__main__":
    main()
