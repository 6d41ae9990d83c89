"""Run under ``mpiexec -n K``: reconstruct the small preset with MPI ranks; rank 0 saves it.

Used by ``test_parallel_mpi.py``; not a test module itself. Arguments: scheme, passes,
batch size, output ``.npz``, and optionally ``known-probe`` to start from the simulation's probe
instead of a blind start.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from bluesky_ptycho.engine import EPIEOptions, ParallelOptions, reconstruct
from bluesky_ptycho.simulate import simulate_dataset, small_preset


def main() -> None:
    scheme, passes, batch, output = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    known_probe = sys.argv[5:] == ["known-probe"]
    ds = simulate_dataset(small_preset())
    state = reconstruct(
        ds.intensities,
        ds.positions_px,
        passes=passes,
        probe=ds.probe if known_probe else "auto",
        options=EPIEOptions(seed=0),
        parallel=scheme,
        parallel_options=ParallelOptions(batch_size=batch, executor="mpi", average_every=2),
    )
    comm = MPI.COMM_WORLD
    # every rank must hold the same object: gather their digests on rank 0
    spread = comm.gather(float(np.abs(state.object).sum()), root=0)
    if comm.Get_rank() == 0:
        np.savez(
            output,
            object=state.object,
            probe=state.probe,
            fourier_error=state.fourier_error,
            ranks=comm.Get_size(),
            spread=np.asarray(spread),
        )


if __name__ == "__main__":
    main()
