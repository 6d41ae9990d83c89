"""Parallel ePIE schemes: pattern updates per second, against the sequential ePIE in one run.

Prints, at 128 and 256 px, pattern updates per second of

- ``sequential`` (the incremental ePIE, one worker),
- ``synchronous`` with 1, 2 and (where the machine has 4 cores) 4 workers, as threads, as
  processes and as MPI ranks (``mpiexec -n K``, when the ``mpi`` extra is installed),
- ``averaging`` (the study's scheme) with the same worker counts, as threads and MPI ranks,

each with its ratio to the sequential rate measured in the same run; then the batched kernel
(one call computes a batch's contributions, one reduction applies them) against the sequential
in-place kernel at batch sizes 1 to 64, on one core.

Rates are taken over whole passes after one warm-up pass (pool start-up excluded, except for
``averaging``, whose subsets are built per call).

    python benchmarks/parallel.py [--sizes 128 256] [--passes 3] [--side 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bluesky_ptycho.backend import get_backend
from bluesky_ptycho.engine import EPIE, EPIEOptions, SynchronousEPIE
from bluesky_ptycho.engine.batched import BatchedKernel, apply_batch
from bluesky_ptycho.engine.kernels import NumpyKernel, UpdateStep
from bluesky_ptycho.engine.parallel import run_averaging
from bluesky_ptycho.engine.workers import MPIWorkers, make_workers


def make_data(n: int, n_side: int, seed: int = 0):
    """The synthetic scan of ``benchmarks/engine.py`` (the same data for both benchmarks)."""
    spec = importlib.util.spec_from_file_location(
        "_engine_benchmark", Path(__file__).with_name("engine.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_data(n, n_side, seed)


def rate_synchronous(data, workers, passes: int, batch: int) -> float:
    shape, probe, pos, intens = data
    engine = SynchronousEPIE(
        shape, probe=probe, options=EPIEOptions(seed=0), batch_size=batch, workers=workers
    )
    engine.add(intens, pos)
    engine.iterate(1)
    t0 = time.perf_counter()
    engine.iterate(passes)
    return passes * len(intens) / (time.perf_counter() - t0)


def rate_sequential(data, passes: int) -> float:
    shape, probe, pos, intens = data
    engine = EPIE(shape, probe=probe, options=EPIEOptions(seed=0))
    engine.add(intens, pos)
    engine.iterate(1)
    t0 = time.perf_counter()
    engine.iterate(passes)
    return passes * len(intens) / (time.perf_counter() - t0)


def rate_averaging(data, workers: int, passes: int, executor: str = "threads") -> float:
    shape, probe, pos, intens = data
    template = EPIE(shape, probe=probe, options=EPIEOptions(seed=0))
    template.add(intens, pos)
    t0 = time.perf_counter()
    run_averaging(
        template,
        intens,
        pos,
        None,
        passes=passes,
        workers=workers,
        average_every=passes,
        executor=executor,
    )
    return passes * len(intens) / (time.perf_counter() - t0)


def batched_rates(data, sizes: list[int], seconds: float) -> list[tuple[int, float, float]]:
    """(batch size, batched updates/s, sequential kernel updates/s) on one core."""
    shape, probe, pos, intens = data
    engine = EPIE(shape, probe=probe, options=EPIEOptions(seed=0))
    engine.add(intens, pos)
    store = engine._store  # the benchmark drives the kernels directly
    be = get_backend("numpy")
    step = UpdateStep()
    n = len(intens)
    seq = NumpyKernel(be, probe.shape)
    bat = BatchedKernel(be, probe.shape)

    def sequential_pass() -> int:
        obj = np.ones(shape, np.complex64)
        seq.run(obj, probe.copy(), store, np.arange(n), step)
        return n

    def batched_pass(b: int) -> int:
        obj, p = np.ones(shape, np.complex64), probe.copy()
        for s in range(0, n, b):
            idx = np.arange(s, min(n, s + b))
            parts = bat.contributions(obj, p, store, idx, step.eps)
            obj, p = apply_batch(be, obj, p, store.corners[idx], parts, step, 0.5)
        return n

    def rate(fn) -> float:
        fn()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            done += fn()
        return done / (time.perf_counter() - t0)

    out = []
    for b in sizes:
        base = rate(sequential_pass)
        out.append((b, rate(lambda b=b: batched_pass(b)), base))
    return out


def mpi_child(args: argparse.Namespace) -> None:
    """Under ``mpiexec``: measure one scheme on the ranks; rank 0 prints the rate."""
    from mpi4py import MPI

    data = make_data(args.size, args.side)
    if args.mpi_child == "synchronous":
        r = rate_synchronous(data, MPIWorkers(), args.passes, args.batch)
    else:
        r = rate_averaging(data, 0, args.passes, executor="mpi")
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(f"RATE {r:.1f}")


def run_mpi(args: argparse.Namespace, scheme: str, ranks: int, size: int) -> float | None:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    if mpiexec is None:
        return None
    cmd = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--mpi-child", scheme]
    cmd += ["--size", str(size), "--side", str(args.side), "--passes", str(args.passes)]
    cmd += ["--batch", str(args.batch)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RATE "):
            return float(line.split()[1])
    print(proc.stderr[-2000:], file=sys.stderr)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--side", type=int, default=8, help="scan points per side")
    parser.add_argument("--batch", type=int, default=32, help="synchronous batch size")
    parser.add_argument("--seconds", type=float, default=1.5, help="per batched-kernel figure")
    parser.add_argument("--mpi-child", choices=("synchronous", "averaging"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mpi_child:
        mpi_child(args)
        return
    cores = os.cpu_count() or 1
    counts = [k for k in (1, 2, 4) if k <= max(cores, 2)]
    scan = f"{args.side}x{args.side} scan"
    print(f"{cores} cores; worker counts {counts}; {scan}, batch {args.batch}")
    for n in args.sizes:
        data = make_data(n, args.side)
        base = rate_sequential(data, args.passes)
        head = f"{n} px, {len(data[3])} patterns"
        print(f"\n{head}: pattern updates per second (ratio to sequential)")
        print(f"  {'sequential':<12} {'':<10} {'1':>3}  {base:8.0f}  (1.00)")
        for scheme in ("synchronous", "averaging"):
            for executor in ("threads", "processes", "mpi"):
                for k in counts:
                    if scheme == "averaging" and executor == "processes":
                        continue  # the averaging scheme runs on threads or MPI ranks
                    if executor == "mpi":
                        if k == 1:
                            continue
                        r = run_mpi(args, scheme, k, n)
                    elif scheme == "synchronous":
                        pool = make_workers(executor, k)
                        try:
                            r = rate_synchronous(data, pool, args.passes, args.batch)
                        finally:
                            pool.close()
                    else:
                        r = rate_averaging(data, k, args.passes)
                    shown = "   n/a" if r is None else f"{r:8.0f}  ({r / base:.2f})"
                    print(f"  {scheme:<12} {executor:<10} {k:>3}  {shown}")
        print(f"\n{n} px: batched kernel against the sequential kernel, one core")
        print(f"  {'batch':>5}  {'batched/s':>9}  {'sequential/s':>12}  ratio")
        for b, r, s in batched_rates(data, [1, 2, 4, 8, 16, 32, 64], args.seconds):
            print(f"  {b:>5}  {r:9.0f}  {s:12.0f}  {r / s:.2f}")


if __name__ == "__main__":
    main()
