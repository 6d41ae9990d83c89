"""Live reconstruction: frames arrive while a worker thread iterates the engine.

:class:`LiveReconstruction` sits between whatever produces frames (the Bluesky callback, a file
replay, a simulation) and whatever shows results (a Tango device, a matplotlib figure, a writer):

* :meth:`~LiveReconstruction.submit` validates a few cheap things and *copies* the frames into
  preallocated staging chunks under a short lock, then wakes the worker. It never waits for the
  worker and never drops a frame: when the worker is behind, another chunk is allocated.
* One daemon worker thread owns the :class:`~bluesky_ptycho.engine.EPIE` engine. It moves staged
  frames into the engine in batches, runs updates as the :class:`PacingPolicy` says, checks for
  divergence after every chunk of updates, and publishes :class:`Snapshot` objects to observers.
* Every other public method only exchanges small messages with the worker under the same lock,
  so status, state and the latest snapshot can be read from any thread at any time.

Nothing here imports Bluesky, event-model, ophyd or Tango.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bluesky_ptycho.engine.epie import EPIE, EPIEOptions, positive_pair
from bluesky_ptycho.engine.state import ReconstructionState

__all__ = [
    "PHASES",
    "LiveOptions",
    "LiveReconstruction",
    "LiveStatus",
    "PacingPolicy",
    "Snapshot",
]

logger = logging.getLogger(__name__)

PACING_MODES = ("batch", "capped", "free")
PHASES = ("idle", "waiting", "running", "paused", "finishing", "finished", "stopped", "fault")
_MAX_MESSAGES = 20
_MAX_SPARE_CHUNKS = 4
_IDLE_WAKEUP_S = 5.0  # worker re-checks its inputs at least this often, even without a wake-up


@dataclass(frozen=True)
class PacingPolicy:
    """How many updates the worker runs while data keeps arriving.

    Attributes
    ----------
    mode : str
        ``"capped"`` (default): visit only patterns with fewer than ``max_updates_per_pattern``
        updates, fewest-updated first (ties in a seeded random order); when every pattern held
        has reached the cap, wait for new data. Avoids over-optimising the first patterns.
        ``"batch"``: after new patterns arrive, run ``passes_per_batch * n_held`` updates
        (whole shuffled passes over everything held), then wait for more data.
        ``"free"``: iterate whole shuffled passes as fast as possible, data or not.
    passes_per_batch : float
        Passes' worth of updates per batch of new data (``"batch"`` only); 0 ingests only.
    max_updates_per_pattern : int
        The cap of ``"capped"``.
    min_patterns : int
        Iterate only once this many patterns are held (default 2). Updating a lone first
        pattern (no overlap yet) lets probe and object fit it exactly and leaves ePIE on a
        plateau for a hundred passes or more on the small preset; waiting for a second
        pattern avoids it under every policy.
    chunk_updates : int
        Updates per worker step; between steps the worker ingests new data, applies pause, stop
        and steering requests, checks for divergence and publishes.

    Notes
    -----
    The final passes run by :meth:`LiveReconstruction.finish` ignore the policy.
    """

    mode: str = "capped"
    passes_per_batch: float = 1.0
    max_updates_per_pattern: int = 20
    chunk_updates: int = 64
    min_patterns: int = 2

    def __post_init__(self) -> None:
        if self.mode not in PACING_MODES:
            raise ValueError(f"pacing mode must be one of {PACING_MODES}, got {self.mode!r}")
        if not (math.isfinite(self.passes_per_batch) and self.passes_per_batch >= 0):
            raise ValueError(f"passes_per_batch must be >= 0, got {self.passes_per_batch!r}")
        if int(self.max_updates_per_pattern) < 1:
            raise ValueError(
                f"max_updates_per_pattern must be >= 1, got {self.max_updates_per_pattern!r}"
            )
        if int(self.chunk_updates) < 1:
            raise ValueError(f"chunk_updates must be >= 1, got {self.chunk_updates!r}")
        if int(self.min_patterns) < 1:
            raise ValueError(f"min_patterns must be >= 1, got {self.min_patterns!r}")


@dataclass(frozen=True)
class LiveOptions:
    """Options of a :class:`LiveReconstruction`.

    Attributes
    ----------
    epie : EPIEOptions
        Engine options (alpha, beta, seed, ...); steerable with
        :meth:`LiveReconstruction.set_options`.
    pacing : PacingPolicy
        How much to iterate while the scan runs.
    publish_period_s : float
        Publish a snapshot at most this often (0: after every chunk or ingested batch).
    publish_every_updates : int
        Also publish once this many updates were done since the last snapshot, even if the
        period has not elapsed (0: off).
    final_passes : int
        Full passes over all patterns run by :meth:`LiveReconstruction.finish`.
    backend : str
        Engine array backend: ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``.
    staging_chunk : int
        Frames per preallocated float32 staging chunk.
    worker_nice : int
        Scheduling niceness added to the worker thread (Linux; 0 = none). The reconstruction
        then yields CPU to the RunEngine, detector and other processes when cores are scarce,
        and still uses every idle cycle.
    """

    epie: EPIEOptions = field(default_factory=EPIEOptions)
    pacing: PacingPolicy = field(default_factory=PacingPolicy)
    publish_period_s: float = 0.5
    publish_every_updates: int = 0
    final_passes: int = 20
    backend: str = "numpy"
    staging_chunk: int = 64
    worker_nice: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.epie, EPIEOptions):
            raise TypeError(f"epie must be an EPIEOptions, got {type(self.epie).__name__}")
        if not isinstance(self.pacing, PacingPolicy):
            raise TypeError(f"pacing must be a PacingPolicy, got {type(self.pacing).__name__}")
        _check_period(self.publish_period_s)
        if int(self.publish_every_updates) < 0:
            raise ValueError(
                f"publish_every_updates must be >= 0, got {self.publish_every_updates!r}"
            )
        if int(self.final_passes) < 0:
            raise ValueError(f"final_passes must be >= 0, got {self.final_passes!r}")
        if int(self.staging_chunk) < 1:
            raise ValueError(f"staging_chunk must be >= 1, got {self.staging_chunk!r}")
        if not 0 <= int(self.worker_nice) <= 19:
            raise ValueError(f"worker_nice must be in 0..19, got {self.worker_nice!r}")


@dataclass(frozen=True)
class Snapshot:
    """What observers receive: a published state with counters.

    Attributes
    ----------
    state : ReconstructionState
        Host copies; shared by all observers of this snapshot, so treat it as read-only.
    patterns_received : int
        Frames accepted by :meth:`LiveReconstruction.submit` so far.
    patterns_in_use : int
        Patterns held by the engine (``state.n_patterns``).
    phase : str
        One of :data:`PHASES`.
    message : str
        Human-readable status, or the fault reason.
    seq : int
        Snapshot counter: 1, 2, ...
    time : float
        ``time.monotonic()`` when the snapshot was taken.
    """

    state: ReconstructionState
    patterns_received: int
    patterns_in_use: int
    phase: str
    message: str
    seq: int
    time: float


@dataclass(frozen=True)
class LiveStatus:
    """Counters of a live reconstruction, cheap to read from any thread.

    Attributes
    ----------
    phase : str
        One of :data:`PHASES`.
    patterns_received : int
        Frames accepted by ``submit``.
    patterns_in_use : int
        Patterns held by the engine.
    iteration : int
        Completed passes (the ``"capped"`` policy visits patterns without counting passes).
    pattern_updates : int
        Single-pattern updates done.
    fourier_error : float
        The latest Fourier error (of the last pass, or of the last capped chunk); NaN if none.
    rejected : int
        Items rejected: frames the engine refused plus those reported by
        :meth:`LiveReconstruction.record_rejection`.
    fault : str or None
        Reason of the current fault.
    messages : tuple of str
        The last problems (rejections, faults, observer errors), oldest first.
    """

    phase: str
    patterns_received: int
    patterns_in_use: int
    iteration: int
    pattern_updates: int
    fourier_error: float
    rejected: int
    fault: str | None
    messages: tuple[str, ...]


class _StagingChunk:
    """Preallocated room for ``capacity`` frames, their positions and (lazily) masks."""

    def __init__(self, capacity: int, frame_shape: tuple[int, int], *, touch: bool) -> None:
        self.frames = np.empty((capacity, *frame_shape), dtype=np.float32)
        if touch:  # fault the pages in now rather than during the first submit
            self.frames.fill(0.0)
        self.positions = np.empty((capacity, 2), dtype=np.float64)
        self.masks: np.ndarray | None = None
        self.has_mask = False
        self.count = 0
        self.first = 0  # submit index of the chunk's first frame

    @property
    def room(self) -> int:
        return self.frames.shape[0] - self.count

    def put(
        self, frames: np.ndarray, positions: np.ndarray, mask: np.ndarray | None, first: int
    ) -> None:
        """Copy ``frames`` (which fit) in; ``mask`` is ``(m, N, N)`` or None."""
        if self.count == 0:
            self.first = first
        k, m = self.count, frames.shape[0]
        self.frames[k : k + m] = frames
        self.positions[k : k + m] = positions
        if mask is not None:
            if self.masks is None:
                self.masks = np.zeros(self.frames.shape, dtype=bool)
            elif not self.has_mask:
                self.masks[:k] = False
            self.has_mask = True
            self.masks[k : k + m] = mask
        elif self.has_mask:
            assert self.masks is not None
            self.masks[k : k + m] = False
        self.count = k + m

    def reset(self) -> None:
        self.count = 0
        self.has_mask = False


class LiveReconstruction:
    """Incremental ePIE fed frame by frame while a worker thread iterates.

    Parameters
    ----------
    object_shape : (int, int)
        Object array shape, fixed for the run (from the nominal scan).
    probe_shape : (int, int)
        Frame and probe shape.
    expected_patterns : int, optional
        Patterns the scan will deliver; the engine preallocates storage for them.
    probe : array, optional
        Initial probe of shape ``probe_shape``; default a Gaussian scaled to the first frames.
    options : LiveOptions, optional
    name : str
        Used in the worker thread's name (``f"{name}-worker"``) and in log messages.

    Notes
    -----
    Lifecycle: ``idle`` until :meth:`start`; then ``waiting`` (nothing to do), ``running``,
    ``paused``, ``fault`` (diverged; rolled back; waits for :meth:`resume`); it ends as
    ``finished`` (after :meth:`finish`), ``stopped`` (after :meth:`stop`), or ``fault`` when
    the final passes diverge. A reconstruction runs once: :meth:`start` after the end raises.

    Observers are called on the worker thread; they should be quick (hand heavy work to their
    own thread) and must not block for long, since the worker iterates nothing meanwhile.
    Exceptions they raise are logged and listed in :attr:`status`.

    Engine pattern indices follow the submit order except that frames rejected by the engine
    (e.g. a position outside the object) are skipped, so after a rejection the engine index of
    a later frame is smaller than the index :meth:`submit` returned for it.
    """

    def __init__(
        self,
        object_shape: tuple[int, int],
        probe_shape: tuple[int, int],
        *,
        expected_patterns: int | None = None,
        probe: Any = None,
        options: LiveOptions | None = None,
        name: str = "live",
    ) -> None:
        opts = options if options is not None else LiveOptions()
        if not isinstance(opts, LiveOptions):
            raise TypeError(f"options must be a LiveOptions, got {type(opts).__name__}")
        oshape = positive_pair(object_shape, "object_shape")
        pshape = positive_pair(probe_shape, "probe_shape")
        if probe is not None and tuple(np.shape(probe)) != pshape:
            raise ValueError(f"probe has shape {tuple(np.shape(probe))}, probe_shape is {pshape}")
        self._name = str(name)
        self._object_shape = oshape
        self._probe_shape = pshape
        self._engine = EPIE(
            oshape, probe=probe, options=opts.epie, probe_shape=pshape, backend=opts.backend
        )
        if expected_patterns is not None:
            if int(expected_patterns) < 0:
                raise ValueError(f"expected_patterns must be >= 0, got {expected_patterns!r}")
            self._engine.reserve(int(expected_patterns))

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

        # ---- shared with submitters and readers (guarded by self._lock)
        chunk = int(opts.staging_chunk)
        self._chunk_frames = chunk
        self._current = _StagingChunk(chunk, pshape, touch=True)  # submit fills this one
        self._spare: list[_StagingChunk] = [_StagingChunk(chunk, pshape, touch=True)]
        self._full: list[_StagingChunk] = []  # filled, waiting for the worker
        self._received = 0
        self._wake = False
        self._options = opts  # as requested (the worker applies pending changes)
        self._pending_epie: EPIEOptions | None = None
        self._pending_pacing: PacingPolicy | None = None
        self._pending_period: float | None = None
        self._pending_states: list[ReconstructionState] = []
        self._pause_requested = False
        self._resume_requested = False
        self._finish_passes: int | None = None  # set by finish()
        self._stop_requested = False
        self._observers: list[Callable[[Snapshot], None]] = []
        self._phase = "idle"
        self._fault: str | None = None
        self._rejected = 0
        self._messages: deque[str] = deque(maxlen=_MAX_MESSAGES)
        self._in_use = 0
        self._iteration = 0
        self._updates = 0
        self._error = math.nan
        self._latest: Snapshot | None = None
        self._latest_state = self._engine.state()
        self._seq = 0

        # ---- worker-only (touched by the worker thread once started)
        self._pacing = opts.pacing
        self._period = float(opts.publish_period_s)
        self._every = int(opts.publish_every_updates)
        self._rng = np.random.default_rng(opts.epie.seed)
        self._counts = np.zeros(0, dtype=np.int64)  # updates per pattern (mirror)
        self._budget = 0  # "batch": updates left in the current batch
        self._pass_open = False  # engine.step left a pass unfinished
        self._good: ReconstructionState | None = None  # last state known finite (published)
        self._dirty = True  # something changed since the last snapshot
        self._last_publish = -math.inf
        self._updates_since_publish = 0

    # ------------------------------------------------------------------ observers
    def add_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Call ``fn(snapshot)`` (on the worker thread) for every published snapshot."""
        if not callable(fn):
            raise TypeError(f"observer must be callable, got {fn!r}")
        with self._lock:
            self._observers.append(fn)

    def remove_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Stop calling ``fn``; no-op if it is not registered."""
        with self._lock:
            if fn in self._observers:
                self._observers.remove(fn)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the worker thread (idempotent while it runs).

        Frames submitted before are used. Raises ``RuntimeError`` once the run has ended.
        """
        with self._cond:
            if self._done.is_set():
                raise RuntimeError(f"{self._name}: the reconstruction has ended ({self._phase})")
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._phase = "paused" if self._pause_requested else "waiting"
        self._thread = threading.Thread(
            target=self._worker_main, name=f"{self._name}-worker", daemon=True
        )
        self._thread.start()

    def submit(self, frames: Any, positions_px: Any, mask: Any = None) -> int:
        """Hand frames to the reconstruction; returns at once (copies, never waits or drops).

        Parameters
        ----------
        frames : array, shape (n, N, N) or (N, N)
            Preprocessed counts (zero frequency at ``(N//2, N//2)``), real numbers; copied to
            float32.
        positions_px : array, shape (n, 2) or (2,)
            ``(row, col)`` top-left probe-patch corners in object pixels.
        mask : bool array, shape (N, N) or (n, N, N), optional
            True where a pixel is bad.

        Returns
        -------
        int
            The submit index of the first frame (frames are numbered 0, 1, ... in the order
            accepted).

        Raises
        ------
        ValueError
            Wrong frame shape or dtype, positions not ``(n, 2)`` or not finite, NaN/inf in a
            frame, a bad mask. Nothing of the call is kept or counted.
        RuntimeError
            After :meth:`finish` or :meth:`stop`, or if the worker died.

        Notes
        -----
        Checks that need the engine (a patch outside the object) are made by the worker, which
        counts such frames in ``status.rejected`` and uses the others.
        """
        f = np.asarray(frames)
        n_shape = self._probe_shape
        if f.ndim == 2:
            f = f[None]
        if f.ndim != 3 or tuple(f.shape[1:]) != n_shape:
            raise ValueError(
                f"frames have shape {tuple(np.shape(frames))}, expected (n, {n_shape[0]}, "
                f"{n_shape[1]}) or {n_shape} (the probe shape)"
            )
        if f.dtype.kind not in "biuf":
            raise ValueError(f"frames must be real numbers, got dtype {f.dtype}")
        n = int(f.shape[0])
        try:
            pos = np.asarray(positions_px, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"positions_px must be numbers, got {positions_px!r}") from None
        if pos.shape == (2,):
            pos = pos[None]
        if pos.shape != (n, 2):
            raise ValueError(
                f"positions_px must have shape ({n}, 2) for {n} frame(s), got {pos.shape}"
            )
        bad_pos = ~np.all(np.isfinite(pos), axis=1)
        if np.any(bad_pos):
            raise ValueError(
                f"positions_px of frame(s) {np.flatnonzero(bad_pos)[:10].tolist()} of this "
                f"submit are NaN or infinite: {pos[bad_pos][:3].tolist()}"
            )
        if f.dtype.kind == "f" and n:
            bad = ~np.isfinite(f.reshape(n, -1)).all(axis=1)
            if np.any(bad):
                which = np.flatnonzero(bad)[:10].tolist()
                raise ValueError(
                    f"frame(s) {which} of this submit contain NaN or infinite values "
                    f"(nothing of this submit was kept)"
                )
        m = None
        if mask is not None:
            m = np.asarray(mask)
            if m.dtype != np.bool_:
                raise ValueError(f"mask must be boolean (True = bad pixel), got dtype {m.dtype}")
            if m.shape == n_shape:
                m = np.broadcast_to(m, f.shape)
            elif m.shape != f.shape:
                raise ValueError(f"mask must have shape {n_shape} or {f.shape}, got {m.shape}")
        with self._cond:
            if self._stop_requested or self._finish_passes is not None or self._done.is_set():
                raise RuntimeError(
                    f"{self._name}: submit after finish() or stop(); frames not accepted"
                )
            first = self._received
            done = 0
            while done < n:
                if self._current.room == 0:
                    self._full.append(self._current)
                    self._current = self._new_chunk_locked()
                take = min(self._current.room, n - done)
                sl = slice(done, done + take)
                self._current.put(f[sl], pos[sl], None if m is None else m[sl], first + done)
                done += take
            self._received += n
            self._wake = True
            self._cond.notify_all()
        return first

    def pause(self) -> None:
        """Stop iterating after the current chunk; data keeps being ingested."""
        with self._cond:
            self._pause_requested = True
            self._wake = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Iterate again after :meth:`pause`; also clears a fault."""
        with self._cond:
            self._pause_requested = False
            self._resume_requested = True
            self._wake = True
            self._cond.notify_all()

    def finish(self, final_passes: int | None = None) -> None:
        """End of data: ingest every frame submitted, run the final passes, publish, end.

        Parameters
        ----------
        final_passes : int, optional
            Full passes over all patterns; default ``options.final_passes``.

        Notes
        -----
        Starts the worker if needed. Overrides :meth:`pause` and clears a fault (the final
        passes start from the rolled-back state); if they diverge again the run ends in phase
        ``"fault"`` with the last good state. Returns at once; use :meth:`wait`.
        """
        passes = self._options.final_passes if final_passes is None else final_passes
        if int(passes) < 0:
            raise ValueError(f"final_passes must be >= 0, got {passes!r}")
        with self._cond:
            if self._finish_passes is not None or self._stop_requested:
                return
            self._finish_passes = int(passes)
            self._wake = True
            self._cond.notify_all()
            self._start_locked()

    def stop(self) -> None:
        """Abort soon: keep the state, publish once (phase ``"stopped"``), end the worker."""
        with self._cond:
            self._stop_requested = True
            self._wake = True
            self._cond.notify_all()
            if self._thread is None and not self._done.is_set():
                self._phase = "stopped"
                self._done.set()

    def wait(self, timeout: float | None = None) -> ReconstructionState:
        """Wait until the worker has ended; return the final state.

        The worker ends after :meth:`finish` (phase ``"finished"``, or ``"fault"`` if the final
        passes diverged) or :meth:`stop` (``"stopped"``); see :attr:`status`.

        Raises
        ------
        TimeoutError
            If the worker is still running after ``timeout`` seconds.
        RuntimeError
            If the worker was never started and neither finish() nor stop() was called.
        """
        with self._lock:
            never = self._thread is None and not self._done.is_set()
        if never:
            raise RuntimeError(f"{self._name}: wait() before start(), finish() or stop()")
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self._name}: still {self.status.phase} after {timeout} s")
        return self.state()

    # ------------------------------------------------------------------ reading
    def state(self) -> ReconstructionState:
        """A copy of the latest state the worker checked (at most one chunk old)."""
        with self._lock:
            st = self._latest_state
        return st.copy()

    def latest(self) -> Snapshot | None:
        """The latest published snapshot (None before the first)."""
        with self._lock:
            return self._latest

    @property
    def status(self) -> LiveStatus:
        """Phase and counters."""
        with self._lock:
            return LiveStatus(
                phase=self._phase,
                patterns_received=self._received,
                patterns_in_use=self._in_use,
                iteration=self._iteration,
                pattern_updates=self._updates,
                fourier_error=self._error,
                rejected=self._rejected,
                fault=self._fault,
                messages=tuple(self._messages),
            )

    @property
    def options(self) -> LiveOptions:
        """The options as last requested (the worker applies changes between chunks)."""
        with self._lock:
            return self._options

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    @property
    def object_shape(self) -> tuple[int, int]:
        """The object array shape."""
        return self._object_shape

    @property
    def probe_shape(self) -> tuple[int, int]:
        """The frame and probe shape."""
        return self._probe_shape

    # ------------------------------------------------------------------ steering
    def set_options(
        self,
        *,
        epie: EPIEOptions | None = None,
        pacing: PacingPolicy | None = None,
        publish_period_s: float | None = None,
    ) -> None:
        """Steer a running reconstruction; the worker applies the change before its next chunk.

        Raises
        ------
        TypeError, ValueError
            For options of the wrong type or value (nothing is changed).
        """
        if epie is not None and not isinstance(epie, EPIEOptions):
            raise TypeError(f"epie must be an EPIEOptions, got {type(epie).__name__}")
        if pacing is not None and not isinstance(pacing, PacingPolicy):
            raise TypeError(f"pacing must be a PacingPolicy, got {type(pacing).__name__}")
        if publish_period_s is not None:
            _check_period(publish_period_s)
        with self._cond:
            changes: dict[str, Any] = {}
            if epie is not None:
                self._pending_epie = changes["epie"] = epie
            if pacing is not None:
                self._pending_pacing = changes["pacing"] = pacing
            if publish_period_s is not None:
                self._pending_period = changes["publish_period_s"] = float(publish_period_s)
            self._options = replace(self._options, **changes)
            self._wake = True
            self._cond.notify_all()

    def load_state(self, state: ReconstructionState) -> None:
        """Continue from ``state`` (object, probe, counters); applied by the worker.

        The patterns held stay; see :meth:`bluesky_ptycho.engine.EPIE.load_state`.

        Raises
        ------
        ValueError
            At once, if the object or probe has the wrong shape or non-finite values.
        """
        obj = np.asarray(state.object)
        probe = np.asarray(state.probe)
        if obj.shape != self._object_shape:
            raise ValueError(f"state object has shape {obj.shape}, expected {self._object_shape}")
        if probe.shape != self._probe_shape:
            raise ValueError(f"state probe has shape {probe.shape}, expected {self._probe_shape}")
        for what, arr in (("object", obj), ("probe", probe)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"state {what} contains NaN or infinite values")
        with self._cond:
            self._pending_states.append(state.copy())
            self._wake = True
            self._cond.notify_all()

    def record_rejection(self, reason: str) -> None:
        """Count an item rejected upstream (e.g. a bad event) with its reason in :attr:`status`."""
        logger.warning("%s: rejected: %s", self._name, reason)
        with self._lock:
            self._rejected += 1
            self._messages.append(str(reason))

    # ================================================================== worker thread
    def _new_chunk_locked(self) -> _StagingChunk:
        if self._spare:
            return self._spare.pop()
        return _StagingChunk(self._chunk_frames, self._probe_shape, touch=False)

    def _note(self, message: str) -> None:
        with self._lock:
            self._messages.append(message)

    def _set_phase(self, phase: str, fault: str | None = None) -> None:
        with self._lock:
            if phase != self._phase:
                self._dirty = True
            self._phase = phase
            self._fault = fault

    def _worker_main(self) -> None:
        lower_thread_priority(int(self._options.worker_nice))
        try:
            self._loop()
        except Exception as exc:  # a bug: report it, end the worker, keep the last good state
            reason = f"worker failed: {type(exc).__name__}: {exc}"
            logger.exception("%s: %s", self._name, reason)
            with self._lock:
                self._phase = "fault"
                self._fault = reason
                self._messages.append(reason)
            try:
                self._publish(reason, fresh=False)
            except Exception:
                logger.exception("%s: could not publish the final snapshot", self._name)
        finally:
            with self._cond:
                self._done.set()
                self._cond.notify_all()

    def _take_inputs(self) -> tuple[list[_StagingChunk], dict[str, Any]]:
        """Under the lock: staged chunks and pending requests, handed to the worker."""
        with self._cond:
            chunks = self._full
            self._full = []
            if self._current.count:
                chunks.append(self._current)
                self._current = self._new_chunk_locked()
            req = {
                "epie": self._pending_epie,
                "pacing": self._pending_pacing,
                "period": self._pending_period,
                "states": self._pending_states,
                "pause": self._pause_requested,
                "resume": self._resume_requested,
                "finish": self._finish_passes,
                "stop": self._stop_requested,
            }
            self._pending_epie = self._pending_pacing = self._pending_period = None
            self._pending_states = []
            self._resume_requested = False
            self._wake = False
        return chunks, req

    def _apply_requests(self, req: dict[str, Any]) -> None:
        if req["epie"] is not None:
            self._engine.options = req["epie"]
        if req["pacing"] is not None:
            if req["pacing"].mode != self._pacing.mode:
                self._budget = 0
            self._pacing = req["pacing"]
        if req["period"] is not None:
            self._period = req["period"]
        for st in req["states"]:
            try:
                self._engine.load_state(st)
            except ValueError as exc:
                msg = f"load_state refused: {exc}"
                logger.warning("%s: %s", self._name, msg)
                self._note(msg)
                continue
            self._pass_open = False
            self._after_chunk(math.nan, loaded=True)

    def _ingest(self, chunks: list[_StagingChunk]) -> int:
        """Move staged frames into the engine; returns the number added."""
        added = 0
        for ch in chunks:
            n = ch.count
            frames, pos = ch.frames[:n], ch.positions[:n]
            masks = ch.masks[:n] if ch.has_mask and ch.masks is not None else None
            try:
                self._engine.add(frames, pos, masks)
                added += n
            except Exception as batch_exc:
                if not isinstance(batch_exc, ValueError):
                    logger.exception("%s: engine.add failed; retrying frame by frame", self._name)
                for i in range(n):
                    try:
                        self._engine.add(frames[i], pos[i], None if masks is None else masks[i])
                        added += 1
                    except Exception as exc:
                        self.record_rejection(f"frame {ch.first + i}: {exc}")
        with self._lock:
            for ch in chunks:
                ch.reset()
                if len(self._spare) < _MAX_SPARE_CHUNKS:
                    self._spare.append(ch)
            self._in_use = self._engine.n_patterns
        if added:
            self._dirty = True
            if self._pacing.mode == "batch":
                want = round(self._pacing.passes_per_batch * self._engine.n_patterns)
                self._budget = max(self._budget, want)
        return added

    def _loop(self) -> None:
        while True:
            chunks, req = self._take_inputs()
            if req["stop"]:
                self._end("stopped")
                return
            self._apply_requests(req)
            self._ingest(chunks)
            if req["resume"] and self._phase == "fault":
                self._set_phase("waiting")
            if req["finish"] is not None:
                self._final_passes(req["finish"])
                return
            if self._phase == "fault":
                self._idle("fault", self._fault)
                continue
            if req["pause"]:
                self._idle("paused")
                continue
            if self._good is None and self._engine.n_patterns:
                self._good = self._engine.state()
            err = self._paced_chunk()
            if err is None:  # nothing to do under the policy
                self._idle("waiting")
                continue
            self._set_phase("running")
            self._after_chunk(err)

    def _idle(self, phase: str, fault: str | None = None) -> None:
        """Publish pending changes when due and sleep until woken (or a publish falls due)."""
        self._set_phase(phase, fault)
        self._maybe_publish(fault or "", fresh=True)
        with self._cond:
            while not self._wake:
                timeout = _IDLE_WAKEUP_S
                if self._dirty:
                    due = self._last_publish + self._period - time.monotonic()
                    if due <= 0:
                        break
                    timeout = min(timeout, due)
                self._cond.wait(timeout)

    # ------------------------------------------------------------------ pacing
    def _paced_chunk(self) -> float | None:
        """Run one chunk per the policy; the chunk's error (NaN if unknown), None if idle."""
        pacing = self._pacing
        if self._engine.n_patterns < max(1, int(pacing.min_patterns)):
            return None
        chunk = int(pacing.chunk_updates)
        if pacing.mode == "free":
            return self._step(chunk)
        if pacing.mode == "batch":
            if self._budget <= 0:
                return None
            before = self._engine.pattern_updates
            err = self._step(min(chunk, self._budget))
            self._budget -= self._engine.pattern_updates - before
            return err
        idx = self._capped_selection(int(pacing.max_updates_per_pattern), chunk)
        if idx.size == 0:
            return None
        return self._engine.update(idx)

    def _step(self, k: int) -> float:
        before = self._engine.iteration
        done = self._engine.step(k)
        if done:
            self._pass_open = self._engine.iteration == before
        return math.nan  # the pass error, if a pass ended, is read from the state

    def _capped_selection(self, cap: int, chunk: int) -> np.ndarray:
        """Up to ``chunk`` indices below the cap, fewest-updated first (random ties)."""
        n = self._engine.n_patterns
        if self._counts.size < n:
            self._counts = np.concatenate(
                [self._counts, np.zeros(n - self._counts.size, dtype=np.int64)]
            )
        counts = self._counts[:n].copy()
        picked: list[np.ndarray] = []
        left = chunk
        while left > 0:
            cand = np.flatnonzero(counts < cap)
            if cand.size == 0:
                break
            order = np.lexsort((self._rng.random(cand.size), counts[cand]))
            take = cand[order[:left]]
            picked.append(take)
            counts[take] += 1
            left -= take.size
        if not picked:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(picked)

    # ------------------------------------------------------------------ checks, publishing
    def _after_chunk(self, err: float, *, loaded: bool = False) -> bool:
        """Check the engine after a chunk (or a load); roll back on divergence.

        Returns True if the state is good.
        """
        st = self._engine.state()
        problem = _divergence(st, err)
        if problem is not None:
            self._roll_back(problem)
            return False
        n = st.n_patterns
        self._counts = st.updates_per_pattern.astype(np.int64, copy=True)
        if self._counts.size < n:  # pragma: no cover - the engine reports all patterns
            self._counts = np.resize(self._counts, n)
        if not math.isfinite(err) and st.fourier_error.size:
            err = float(st.fourier_error[-1])
        with self._lock:
            delta = st.pattern_updates - self._updates
            self._latest_state = st
            self._iteration = st.iteration
            self._updates = st.pattern_updates
            if math.isfinite(err):
                self._error = err
        self._updates_since_publish += max(delta, 0)
        self._dirty = True
        if loaded:
            self._good = st
        self._maybe_publish("", fresh=False)
        return True

    def _roll_back(self, problem: str) -> None:
        good = self._good
        if good is not None:
            self._engine.load_state(good)
            reason = (
                f"divergence: {problem}; rolled back to the state of iteration {good.iteration}, "
                f"{good.pattern_updates} updates; resume() to continue"
            )
        else:  # pragma: no cover - a good state is taken before the first chunk
            reason = f"divergence: {problem}; no good state to roll back to"
        self._pass_open = False
        logger.error("%s: %s", self._name, reason)
        st = self._engine.state()
        self._counts = st.updates_per_pattern.astype(np.int64, copy=True)
        with self._lock:
            self._latest_state = st
            self._iteration = st.iteration
            self._updates = st.pattern_updates
            self._phase = "fault"
            self._fault = reason
            self._messages.append(reason)
        self._publish(reason, fresh=False)

    def _maybe_publish(self, message: str, *, fresh: bool) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        due = now - self._last_publish >= self._period
        if self._every > 0 and self._updates_since_publish >= self._every:
            due = True
        if due:
            self._publish(message, fresh=fresh)

    def _publish(self, message: str, *, fresh: bool) -> None:
        """Take a snapshot and hand it to the observers (on this, the worker, thread)."""
        st = self._engine.state() if fresh else None
        with self._lock:
            if st is not None:
                if _divergence(st, math.nan) is None:
                    self._latest_state = st
                else:  # pragma: no cover - every chunk is checked before it is published
                    st = self._latest_state
            else:
                st = self._latest_state
            self._seq += 1
            phase = self._phase
            received, in_use = self._received, self._engine.n_patterns
            if not message:
                message = (
                    f"{phase}: {in_use} of {received} patterns in use, iteration "
                    f"{st.iteration}, {st.pattern_updates} updates"
                )
            snap = Snapshot(
                state=st,
                patterns_received=received,
                patterns_in_use=in_use,
                phase=phase,
                message=message,
                seq=self._seq,
                time=time.monotonic(),
            )
            self._latest = snap
            observers = list(self._observers)
        if phase != "fault":
            self._good = st
        self._dirty = False
        self._updates_since_publish = 0
        self._last_publish = snap.time
        for fn in observers:
            try:
                fn(snap)
            except Exception as exc:
                logger.exception("%s: observer %r failed", self._name, fn)
                self._note(f"observer {getattr(fn, '__name__', fn)!r} failed: {exc!r}")

    # ------------------------------------------------------------------ the end
    def _final_passes(self, passes: int) -> None:
        self._set_phase("finishing")
        engine = self._engine
        if self._good is None and engine.n_patterns:
            self._good = engine.state()
        # an unfinished pass (it may miss the newest patterns) is completed first
        remaining = passes + (1 if self._pass_open else 0) if passes > 0 else 0
        while engine.n_patterns and remaining > 0:
            chunks, req = self._take_inputs()
            if req["stop"]:
                self._end("stopped")
                return
            self._apply_requests(req)
            self._ingest(chunks)  # nothing can arrive after finish(); kept for safety
            before = engine.iteration
            self._step(int(self._pacing.chunk_updates))
            if engine.iteration > before:
                remaining -= 1
            if not self._after_chunk(math.nan):
                return  # rolled back; the fault snapshot is the last one
        self._end("finished")

    def _end(self, phase: str, message: str | None = None) -> None:
        with self._lock:
            self._phase = phase
            if phase != "fault":
                self._fault = None
        self._publish(message or "", fresh=True)


# ---------------------------------------------------------------------- helpers
def lower_thread_priority(nice: int) -> bool:
    """Make the calling thread nicer by ``nice`` (Linux threads have their own niceness).

    Returns False where the platform does not allow it; nothing else changes then.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (OSError, AttributeError):
        return False
    return True


def _divergence(state: ReconstructionState, err: float) -> str | None:
    """Why ``state`` (after a chunk with Fourier error ``err``) is diverged, or None.

    A NaN error alone is not divergence: the engine reports NaN when the visited patterns have
    no counts at all (dark frames); a diverged update always leaves NaN/inf in object or probe.
    """
    for what, arr in (("object", state.object), ("probe", state.probe)):
        if not np.isfinite(np.sum(arr, dtype=np.complex128)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                return f"the {what} has {bad} NaN or infinite values"
            return f"the {what} overflows"
    if math.isinf(err):
        return f"the Fourier error is {err}"
    if state.fourier_error.size and np.isinf(state.fourier_error[-1]):
        return f"the Fourier error of the last pass is {state.fourier_error[-1]}"
    return None


def _check_period(value: float) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"publish_period_s must be a finite number >= 0, got {value!r}")
