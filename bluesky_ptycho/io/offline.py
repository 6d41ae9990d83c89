"""A recorded scan reconstructed in one call, optionally resumed from a result file.

:func:`reconstruct_scan` preprocesses and places the frames exactly as a replay through
:class:`~bluesky_ptycho.callback.PtychoCallback` would (the same
:class:`~bluesky_ptycho.setup.ScanSetup`, from :func:`~bluesky_ptycho.io.replay.scan_setup`),
then runs whole ePIE passes. With ``resume`` it continues from a result or checkpoint file
(object, probe, positions, counters, error history) instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_ptycho.engine import EPIE, EPIEOptions, ParallelOptions, ReconstructionState
from bluesky_ptycho.engine.parallel import SCHEMES, SynchronousEPIE, run_averaging
from bluesky_ptycho.engine.workers import Workers, make_workers
from bluesky_ptycho.io.cxi import ScanFile
from bluesky_ptycho.io.replay import scan_setup
from bluesky_ptycho.io.result import ResultFile, read_result
from bluesky_ptycho.preprocess import preprocess
from bluesky_ptycho.setup import ScanSetup

__all__ = ["OfflineResult", "reconstruct_scan"]


@dataclass(frozen=True)
class OfflineResult:
    """What :func:`reconstruct_scan` returns.

    Attributes
    ----------
    state : ReconstructionState
        The reconstruction after the passes.
    setup : ScanSetup
        The setup the frames were preprocessed and placed with (geometry, object frame).
    resumed_from : int
        Passes done before this call (0 for a fresh start).
    """

    state: ReconstructionState
    setup: ScanSetup
    resumed_from: int = 0


def reconstruct_scan(
    scan: ScanFile,
    *,
    passes: int = 50,
    options: EPIEOptions | None = None,
    resume: ResultFile | ReconstructionState | None = None,
    chunk: int = 64,
    callback: Callable[[int, float], None] | None = None,
    parallel: str = "sequential",
    workers: int = 1,
    parallel_options: ParallelOptions | None = None,
    **setup_kwargs: Any,
) -> OfflineResult:
    """Reconstruct ``scan`` with ``passes`` ePIE passes, from scratch or from ``resume``.

    Parameters
    ----------
    scan : ScanFile
        The recorded scan (:func:`~bluesky_ptycho.io.scan.read_scan`).
    passes : int, optional
        Passes to run now (0 is allowed: only load and report).
    options : EPIEOptions, optional
        Engine options; default ``EPIEOptions()``.
    resume : ResultFile or ReconstructionState, optional
        Continue from this state: its object and probe must have the shapes this scan's setup
        gives (same crop and nominal scan).
    chunk : int, optional
        Frames read and preprocessed at a time.
    callback : callable(iteration, error), optional
        Called after every pass (``"averaging"``: after every averaging).
    parallel, workers, parallel_options
        The scheme and its workers, as for :func:`bluesky_ptycho.engine.reconstruct`. With
        ``parallel_options.executor == "mpi"`` every rank runs this call on the whole scan and
        returns the same result.
    **setup_kwargs
        Passed to :func:`~bluesky_ptycho.io.replay.scan_setup` (``crop``, ``setup_options``).

    Returns
    -------
    OfflineResult

    Raises
    ------
    ValueError
        If ``passes`` is negative, or ``resume`` does not fit the scan (the message says
        which shape differs).
    """
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 0:
        raise ValueError(f"passes must be a non-negative integer, got {passes!r}")
    setup = scan_setup(scan, **setup_kwargs)
    frame = setup.object_frame()
    size = setup.frame_size
    config = setup.preprocess_config(raw_shape=scan.frame_shape)
    state = resume.state if isinstance(resume, ResultFile) else resume
    if state is not None:
        obj_shape, probe_shape = np.shape(state.object), np.shape(state.probe)
        if obj_shape != tuple(frame.object_shape) or probe_shape != (size, size):
            raise ValueError(
                f"cannot resume: the result has object {obj_shape} and probe {probe_shape}, "
                f"this scan's setup gives object {tuple(frame.object_shape)} and probe "
                f"{(size, size)} "
                "(same crop and nominal scan needed)"
            )
    probe = setup.start_probe() if state is None else state.probe
    if isinstance(probe, str) and probe:  # the path of an earlier result, as the callback reads
        probe = read_result(probe).state.probe
    if parallel not in SCHEMES:
        raise ValueError(f"parallel must be one of {SCHEMES}, got {parallel!r}")
    popts = parallel_options if parallel_options is not None else ParallelOptions()
    pool: Workers | None = None
    common: dict[str, Any] = {
        "probe": probe,
        "options": options or EPIEOptions(),
        "probe_shape": (size, size),
    }
    if parallel == "synchronous":
        pool = make_workers(popts.executor, int(workers))
        engine: EPIE = SynchronousEPIE(
            frame.object_shape,
            batch_size=popts.batch_size,
            regulariser=popts.regulariser,
            workers=pool,
            **common,
        )
    else:
        engine = EPIE(frame.object_shape, **common)
    kept: list[tuple[np.ndarray, np.ndarray, Any]] = []
    try:
        engine.reserve(scan.n_frames)
        for start, raw in scan.iter_frames(chunk):
            out = preprocess(np.asarray(raw), config)
            positions_px = frame.to_pixels(scan.positions_m[start : start + len(raw)])
            engine.add(out.intensities, positions_px, out.mask)
            if parallel == "averaging":  # the subsets are made from these
                kept.append((out.intensities, positions_px, out.mask))
        done = 0
        if state is not None:
            engine.load_state(state)
            done = int(state.iteration)
        if parallel == "averaging" and passes:
            result = run_averaging(
                engine,
                np.concatenate([k[0] for k in kept]),
                np.concatenate([k[1] for k in kept]),
                _masks(kept),
                passes=int(passes),
                workers=int(workers),
                average_every=popts.average_every,
                executor=popts.executor,
                callback=callback,
            )
            return OfflineResult(state=result, setup=setup, resumed_from=done)
        if passes:
            engine.iterate(int(passes), callback=callback)
        return OfflineResult(state=engine.state(), setup=setup, resumed_from=done)
    finally:
        if pool is not None:
            pool.close()


def _masks(kept: list[tuple[np.ndarray, np.ndarray, Any]]) -> np.ndarray | None:
    """One ``(n, N, N)`` mask for the chunks kept, or None when no chunk had one."""
    if all(k[2] is None for k in kept):
        return None
    return np.concatenate(
        [
            np.zeros(k[0].shape, bool) if k[2] is None else np.broadcast_to(k[2], k[0].shape)
            for k in kept
        ]
    )
