"""Reconstruct a whole scan in one call, with the sequential ePIE or a parallel scheme."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bluesky_ptycho.backend import to_numpy
from bluesky_ptycho.engine.epie import EPIE, EPIEOptions
from bluesky_ptycho.engine.parallel import (
    SCHEMES,
    ParallelOptions,
    SynchronousEPIE,
    run_averaging,
)
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.engine.workers import make_workers

__all__ = ["object_frame", "reconstruct"]


def object_frame(
    positions_px: np.ndarray, frame_shape: tuple[int, int], margin_px: int = 0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Positions shifted so the smallest lands at ``margin_px``, and the object shape they need."""
    pos = np.asarray(positions_px, dtype=np.float64)
    shifted = pos - np.floor(pos.min(axis=0)) + margin_px
    extent = np.ceil(shifted.max(axis=0)).astype(int)
    shape = (
        int(extent[0]) + int(frame_shape[0]) + margin_px + 1,
        int(extent[1]) + int(frame_shape[1]) + margin_px + 1,
    )
    return shifted, shape


def reconstruct(
    intensities: Any,
    positions_px: Any,
    *,
    probe: Any = None,
    passes: int = 50,
    options: EPIEOptions | None = None,
    mask: Any = None,
    margin_px: int = 0,
    backend: str | None = None,
    callback: Callable[[int, float], None] | None = None,
    parallel: str = "sequential",
    workers: int = 1,
    parallel_options: ParallelOptions | None = None,
) -> ReconstructionState:
    """Reconstruct in one call, sizing the object from the positions.

    The positions are shifted by a whole number of pixels so that the smallest lands at
    ``margin_px``; the returned state's ``positions_px`` are the shifted ones.

    Parameters
    ----------
    intensities : array (n, N, N)
        Counts, zero frequency at ``(N//2, N//2)``.
    positions_px : array (n, 2)
        ``(row, col)`` top-left patch corners in pixels (any origin).
    probe : array (N, N), ProbeInit, str or dict, optional
        Initial probe, or how to make one (default ``"auto"``; see :class:`EPIE`).
    passes : int
    options : EPIEOptions, optional
    mask : bool array, optional
        True where a pixel is bad.
    margin_px : int
        Empty object border around the scanned area.
    backend : str, optional
    callback : callable(iteration, error), optional
        Called after every pass (``"averaging"``: after every averaging).
    parallel : {"sequential", "synchronous", "averaging"}
        ``"sequential"``: the incremental ePIE, one pattern after the other (default).
        ``"synchronous"``: mini-batch ePIE with batches fixed by the seed, computed by
        ``workers`` workers; the same result for any number of workers (to float32 rounding).
        ``"averaging"``: the study's scheme, ``workers`` disjoint subsets averaged every
        ``parallel_options.average_every`` passes; the result depends on ``workers``.
        See :mod:`bluesky_ptycho.engine.parallel`.
    workers : int
        Threads or processes (``parallel_options.executor``); with ``"mpi"`` the number of
        ranks is the launcher's and this is ignored.
    parallel_options : ParallelOptions, optional
        Batch size, averaging interval and executor.

    Returns
    -------
    ReconstructionState
        With ``"mpi"`` every rank returns the same state.
    """
    if parallel not in SCHEMES:
        raise ValueError(f"parallel must be one of {SCHEMES}, got {parallel!r}")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    popts = parallel_options if parallel_options is not None else ParallelOptions()
    frames = np.asarray(
        to_numpy(intensities) if not isinstance(intensities, np.ndarray) else intensities
    )
    pos = np.asarray(positions_px, dtype=np.float64)
    if frames.ndim != 3 or pos.shape != (frames.shape[0], 2) or frames.shape[0] == 0:
        raise ValueError(
            f"need intensities (n, N, N) and positions (n, 2), got {frames.shape} and {pos.shape}"
        )
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions_px contains NaN or infinite values")
    shifted, shape = object_frame(pos, frames.shape[1:], margin_px)
    opts = options or EPIEOptions()
    common = {"probe": probe, "options": opts, "backend": backend, "probe_shape": frames.shape[1:]}
    if parallel == "synchronous":
        pool = make_workers(popts.executor, int(workers))
        try:
            engine: EPIE = SynchronousEPIE(
                shape,
                batch_size=popts.batch_size,
                regulariser=popts.regulariser,
                workers=pool,
                **common,
            )
            engine.add(frames, shifted, mask=mask)
            engine.iterate(passes, callback=callback)
            return engine.state()
        finally:
            pool.close()
    engine = EPIE(shape, **common)
    engine.add(frames, shifted, mask=mask)
    if parallel == "averaging":
        return run_averaging(
            engine,
            frames,
            shifted,
            mask,
            passes=int(passes),
            workers=int(workers),
            average_every=popts.average_every,
            executor=popts.executor,
            callback=callback,
        )
    engine.iterate(passes, callback=callback)
    return engine.state()
