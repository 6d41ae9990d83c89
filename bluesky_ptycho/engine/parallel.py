"""Parallel ePIE schemes: how several workers share one reconstruction.

Two schemes, chosen by ``reconstruct(..., parallel=...)``:

- ``"averaging"`` (the study's): the patterns are split into ``K`` disjoint subsets, each worker
  runs a sequential ePIE on its subset, and every few passes object and probe are replaced by
  their average (:func:`average_states`). The result depends on ``K``.
- ``"synchronous"``: a mini-batch ePIE whose batches are fixed by the seed, whatever ``K``;
  the workers split each batch into fixed chunks and the chunks' partial sums are combined in
  chunk order, so 1, 2 or 4 workers give the same object to float32 rounding.

Workers are threads or processes on one machine, or MPI ranks
(:mod:`bluesky_ptycho.engine.workers`); the batched update itself is
:mod:`bluesky_ptycho.engine.batched`. :func:`bluesky_ptycho.engine.reconstruct` chooses the
scheme.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bluesky_ptycho.backend import Backend
from bluesky_ptycho.engine.batched import BatchedKernel, apply_batch
from bluesky_ptycho.engine.epie import EPIE, EPIEOptions
from bluesky_ptycho.engine.forward import integer_positions
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.engine.workers import EXECUTORS, InlineWorkers, Workers

__all__ = [
    "SCHEMES",
    "ParallelOptions",
    "SynchronousEPIE",
    "average_states",
    "illumination",
    "run_averaging",
]

SCHEMES = ("sequential", "synchronous", "averaging")


@dataclass(frozen=True)
class ParallelOptions:
    """Settings of the parallel schemes (the ePIE options stay in :class:`EPIEOptions`).

    Attributes
    ----------
    batch_size : int
        ``"synchronous"``: patterns per update, fixed whatever the number of workers (the
        batches are consecutive slices of each pass's seeded shuffled order).
    regulariser : float
        ``"synchronous"``: ``g`` in (0, 1] of the batched step
        (:mod:`bluesky_ptycho.engine.batched`); 1 is ePIE's step averaged over the batch.
    average_every : int
        ``"averaging"``: passes each worker runs on its subset between two averagings.
    executor : {"threads", "processes", "mpi"}
        Where the workers run. ``"mpi"`` takes the number of workers from the launcher
        (``mpiexec -n K``) and needs the ``mpi`` extra.
    """

    batch_size: int = 32
    regulariser: float = 0.5
    average_every: int = 5
    executor: str = "threads"

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.regulariser) and 0.0 < self.regulariser <= 1.0):
            raise ValueError(f"regulariser must be in (0, 1], got {self.regulariser!r}")
        if int(self.average_every) < 1:
            raise ValueError(f"average_every must be >= 1, got {self.average_every!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")


class SynchronousEPIE(EPIE):
    """ePIE whose updates run as fixed mini-batches, computed by a pool of workers.

    Everything of :class:`EPIE` holds (adding patterns at any time, seeded passes, the
    convergence aids after every chunk of updates, validation, states); only the update
    differs: each chunk of patterns is cut into consecutive batches of ``batch_size``, and
    each batch updates object and probe once from contributions all computed against the same
    object and probe (:mod:`bluesky_ptycho.engine.batched`). The batches do not depend on the
    workers, and neither does the result (to float32 rounding).

    Parameters
    ----------
    object_shape, probe, options, probe_shape, object, backend
        As for :class:`EPIE`. ``options.subpixel`` is not supported.
    batch_size : int
    regulariser : float
        See :class:`ParallelOptions`.
    workers : Workers, optional
        The pool (:mod:`bluesky_ptycho.engine.workers`); default the calling thread. The
        engine does not close it.
    """

    def __init__(
        self,
        object_shape: tuple[int, int],
        probe: Any = None,
        options: EPIEOptions | None = None,
        *,
        probe_shape: tuple[int, int] | None = None,
        object: Any = None,
        backend: str | Backend | None = None,
        batch_size: int = 32,
        regulariser: float = 0.5,
        workers: Workers | None = None,
    ) -> None:
        ParallelOptions(batch_size=batch_size, regulariser=regulariser)  # validates
        if options is not None and options.subpixel:
            raise ValueError("the synchronous engine does not support subpixel positions")
        super().__init__(
            object_shape,
            probe,
            options,
            probe_shape=probe_shape,
            object=object,
            backend=backend,
        )
        self.batch_size = int(batch_size)
        self.regulariser = float(regulariser)
        self.workers: Workers = workers if workers is not None else InlineWorkers()
        self._batched: BatchedKernel | None = None

    def _visit(self, indices: np.ndarray, update_probe: bool) -> tuple[float, float]:
        assert self._store is not None and self._probe_shape is not None
        if self._options.subpixel:
            raise ValueError("the synchronous engine does not support subpixel positions")
        if self._batched is None or self._batched.shape != self._probe_shape:
            self._batched = BatchedKernel(self._be, self._probe_shape)
        step = self._update_step(update_probe)
        regulariser = self.regulariser
        if step.rpie_alpha is not None:  # rPIE / mPIE: their regulariser for the object step
            regulariser = min(regulariser, step.rpie_alpha)
        store = self._store
        num = 0.0
        for start in range(0, int(indices.size), self.batch_size):
            batch = indices[start : start + self.batch_size]
            parts = self.workers.contributions(
                self._batched, self._object, self._probe, store, batch, step.eps
            )
            self._object, self._probe = apply_batch(
                self._be, self._object, self._probe, store.corners[batch], parts, step, regulariser
            )
            num += float(np.sum(parts.error_num))
        self._object = self._contiguous(self._object)
        self._probe = self._contiguous(self._probe)
        return num, float(np.sum(store.sums[indices]))


_UNLIT = 1e-3
"""Below this fraction of the maximum summed illumination, the object average blends into the
plain (weights-only) mean, so unlit pixels keep a defined value."""


def illumination(
    probe: np.ndarray, positions_px: np.ndarray, object_shape: tuple[int, int]
) -> np.ndarray:
    """``sum_j |P(r - r_j)|**2``: how strongly each object pixel was lit by a set of patterns.

    Parameters
    ----------
    probe : ndarray (N, N)
    positions_px : ndarray (n, 2)
        Top-left patch corners (rounded as the engine rounds them).
    object_shape : (int, int)

    Returns
    -------
    ndarray, float64, shape ``object_shape``
    """
    p2 = np.abs(np.asarray(probe, dtype=np.complex128)) ** 2
    n0, n1 = p2.shape
    out = np.zeros(object_shape, dtype=np.float64)
    for r, c in integer_positions(positions_px).tolist():
        out[r : r + n0, c : c + n1] += p2
    return out


def _as_state(s: Any) -> ReconstructionState:
    if isinstance(s, ReconstructionState):
        return s
    state = getattr(s, "state", None)
    if callable(state):  # an EPIE engine
        return state(validation=False)
    raise TypeError(f"expected ReconstructionState or EPIE, got {type(s).__name__}")


def average_states(
    states: Sequence[Any], weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Average object and probe of several reconstructions of disjoint subsets of one scan.

    The study's averaging step (disjoint subsets reconstructed separately, then merged).

    Parameters
    ----------
    states : sequence of ReconstructionState or EPIE
        One per subset, all with the same object and probe shapes and in the same object frame;
        each state's ``positions_px`` are the patterns of its subset.
    weights : sequence of float, optional
        One non-negative weight per state. Default: the number of patterns of each subset.

    Returns
    -------
    object, probe : ndarray complex64
        The object is averaged pixel by pixel with each subset weighted by how strongly it lit
        that pixel, ``sum_s w_s I_s O_s / sum_s w_s I_s`` with ``I_s`` the subset's
        :func:`illumination` (its own probe at its own positions): a subset says nothing about
        object pixels it never lit (there its object is still the start), so a plain mean would
        pull every region a subset did not see back towards the start by a factor of ``K``.
        This is the same weighting ePIE itself gives an object pixel (the update is
        ``conj(P) dpsi``) and that the "parallel ePIE" literature uses to merge subsets. Where
        the summed illumination falls below 1e-3 of its maximum the average blends linearly
        into the plain ``w``-weighted mean (exactly that mean where nothing was lit). The
        probe, lit by every pattern, is the plain ``w``-weighted mean.

    Notes
    -----
    Probes are averaged as complex fields, without removing a relative global phase: the
    subsets start from one object and probe and are merged every few passes, so their phases do
    not drift apart. Merging independent reconstructions would need the phase ramp and offset
    removed first (:mod:`bluesky_ptycho.metrics`).
    """
    sts = [_as_state(s) for s in states]
    if not sts:
        raise ValueError("average_states needs at least one state")
    shape = sts[0].object.shape
    pshape = sts[0].probe.shape
    for s in sts[1:]:
        if s.object.shape != shape or s.probe.shape != pshape:
            raise ValueError(
                f"states differ in shape: object {s.object.shape} vs {shape}, "
                f"probe {s.probe.shape} vs {pshape}"
            )
    if weights is None:
        w = np.array([max(s.n_patterns, 0) for s in sts], dtype=np.float64)
        if not w.sum() > 0:
            w = np.ones(len(sts))
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != len(sts):
            raise ValueError(f"need one weight per state: {w.size} weights, {len(sts)} states")
        if np.any(~np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {w.tolist()}")
    num = np.zeros(shape, dtype=np.complex128)
    den = np.zeros(shape, dtype=np.float64)
    plain = np.zeros(shape, dtype=np.complex128)
    probe = np.zeros(pshape, dtype=np.complex128)
    for s, ws in zip(sts, w.tolist(), strict=True):
        lit = illumination(s.probe, s.positions_px, shape) * ws
        obj = np.asarray(s.object, dtype=np.complex128)
        num += lit * obj
        den += lit
        plain += ws * obj
        probe += ws * np.asarray(s.probe, dtype=np.complex128)
    total = float(w.sum())
    delta = _UNLIT * float(den.max()) if den.size else 0.0
    if not delta > 0:
        obj = plain / total
    else:
        blend = delta * np.clip(1.0 - den / delta, 0.0, 1.0)  # 0 wherever lit enough
        obj = (num + (blend / total) * plain) / (den + blend)
    return obj.astype(np.complex64), (probe / total).astype(np.complex64)


def _subsets(n: int, k: int, seed: int | None) -> list[np.ndarray]:
    """``k`` disjoint subsets of ``range(n)``: a seeded permutation dealt round-robin."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def _merge(engines: Sequence[EPIE]) -> None:
    obj, probe = average_states(engines)
    for e in engines:
        e.set_object(obj)
        e.set_probe(probe)


def run_averaging(
    template: EPIE,
    frames: np.ndarray,
    positions: np.ndarray,
    mask: Any,
    *,
    passes: int,
    workers: int,
    average_every: int = 5,
    executor: str = "threads",
    callback: Callable[[int, float], None] | None = None,
) -> ReconstructionState:
    """The study's scheme: disjoint subsets, each a sequential ePIE, averaged every few passes.

    Parameters
    ----------
    template : EPIE
        An engine holding all patterns, with the starting object and probe (its probe is made
        first if none was given); its options, backend and object shape are the subsets'.
        It ends holding the averaged object and probe.
    frames, positions, mask
        The patterns ``template`` holds, in the same order.
    passes : int
        Passes of each subset over its patterns.
    workers : int
        Number of subsets (and of threads running them).
    average_every : int
    executor : {"threads", "mpi"}
        ``"mpi"``: each rank runs the subset with its rank number, and the averaging is an
        ``Allreduce`` over the ranks (the number of subsets is the number of ranks).
    callback : callable(passes_done, fourier_error), optional
        Called after every averaging.

    Returns
    -------
    ReconstructionState
        Of ``template``, with the averaged object and probe and the per-pass Fourier error
        (the mean of the subsets' errors, weighted by their numbers of patterns). Patterns
        the template holds out for validation (``validation_every``) are in no subset.
    """
    template.prepare()
    start = template.state(validation=False)
    comm = None
    if executor == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        workers = int(comm.Get_size())
    elif executor != "threads":
        raise ValueError(f"averaging runs on threads or MPI ranks, not {executor!r}")
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    in_use = np.flatnonzero(~template.held_out)
    subsets = [in_use[s] for s in _subsets(in_use.size, int(workers), template.options.seed)]
    mine = [comm.Get_rank()] if comm is not None else list(range(int(workers)))
    options = replace(template.options, validation_every=0)
    engines = []
    for i in mine:
        e = EPIE(
            template.object_shape,
            probe=start.probe,
            options=options,
            object=start.object,
            backend=template.backend,
        )
        m = mask if mask is None or np.ndim(mask) == 2 else np.asarray(mask)[subsets[i]]
        e.add(frames[subsets[i]], positions[subsets[i]], mask=m)
        engines.append(e)
    history: list[float] = []
    pool = ThreadPoolExecutor(max_workers=len(engines)) if len(engines) > 1 else None
    try:
        done = 0
        while done < passes:
            n = min(int(average_every), passes - done)
            if pool is not None:
                runs = list(pool.map(lambda e, n=n: _run_passes(e, n), engines))
            else:
                runs = [_run_passes(e, n) for e in engines]
            nums = np.sum([r[0] for r in runs], axis=0)
            dens = np.sum([r[1] for r in runs], axis=0)
            if comm is not None:
                nums = comm.allreduce(nums)
                dens = comm.allreduce(dens)
                obj, probe = _mpi_average(comm, engines[0])
                engines[0].set_object(obj)
                engines[0].set_probe(probe)
            else:
                _merge(engines)
            history.extend((nums / dens).tolist())
            done += n
            if callback is not None:
                callback(done, history[-1])
    finally:
        if pool is not None:
            pool.shutdown()
    final = engines[0].state(validation=False)
    template.set_object(final.object)
    template.set_probe(final.probe)
    state = template.state()
    state.iteration = start.iteration + int(passes)
    state.fourier_error = np.concatenate([start.fourier_error, np.asarray(history, np.float64)])
    state.pattern_updates = start.pattern_updates + int(passes) * int(in_use.size)
    return state


def _run_passes(engine: EPIE, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``n`` passes; the errors weighted by the patterns in use, and those weights."""
    errors = engine.iterate(n)
    w = float(engine.n_patterns)
    return errors * w, np.full(errors.shape, w)


def _mpi_average(comm: Any, engine: EPIE) -> tuple[np.ndarray, np.ndarray]:
    """:func:`average_states` over the ranks: the weighted sums are reduced with ``Allreduce``."""
    s = engine.state(validation=False)
    w = float(s.n_patterns)
    lit = illumination(s.probe, s.positions_px, s.object.shape) * w
    obj = np.asarray(s.object, dtype=np.complex128)
    parts = [lit * obj, lit, w * obj, w * np.asarray(s.probe, dtype=np.complex128)]
    num, den, plain, probe = (comm.allreduce(p) for p in parts)
    total = comm.allreduce(w)
    delta = _UNLIT * float(den.max())
    if not delta > 0:
        merged = plain / total
    else:
        blend = delta * np.clip(1.0 - den / delta, 0.0, 1.0)
        merged = (num + (blend / total) * plain) / (den + blend)
    return merged.astype(np.complex64), (probe / total).astype(np.complex64)
