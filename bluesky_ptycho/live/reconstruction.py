"""Live reconstruction: frames arrive while a worker thread iterates the engine.

:class:`LiveReconstruction` sits between whatever produces frames (the Bluesky callback, a file
replay, a simulation) and whatever shows results (a Tango device, a matplotlib figure, a writer):

* :meth:`~LiveReconstruction.submit` validates a few cheap things and *copies* the frames into
  preallocated staging chunks (:class:`~bluesky_ptycho.live.staging.Staging`) under a short
  lock, then wakes the worker. It never waits for the worker and never drops a frame: when the
  worker is behind, another chunk is allocated.
* One daemon worker thread owns the :class:`~bluesky_ptycho.engine.EPIE` engine. It moves staged
  frames into the engine in batches, runs updates as the :class:`PacingPolicy` says (through a
  :class:`~bluesky_ptycho.live.pacer.Pacer`), checks for divergence after every chunk of updates
  (:class:`~bluesky_ptycho.live.guard.DivergenceGuard`), and publishes :class:`Snapshot` objects
  to observers (:class:`~bluesky_ptycho.live.publisher.Publisher`).
* Every other public method only exchanges small messages with the worker under the same lock,
  so status, state and the latest snapshot can be read from any thread at any time.
* Phase changes follow the table of :mod:`bluesky_ptycho.live.phase`.

Nothing here imports Bluesky, event-model, ophyd or Tango.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bluesky_ptycho.engine.epie import EPIE, EPIEOptions, positive_pair
from bluesky_ptycho.engine.parallel import SynchronousEPIE
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.engine.workers import Workers, make_workers
from bluesky_ptycho.live.guard import DivergenceGuard, divergence
from bluesky_ptycho.live.options import LiveOptions, PacingPolicy, check_period
from bluesky_ptycho.live.pacer import Pacer
from bluesky_ptycho.live.phase import Phase, check_transition
from bluesky_ptycho.live.publisher import Publisher, Snapshot
from bluesky_ptycho.live.quarantine import Quarantine, QuarantinedFrame
from bluesky_ptycho.live.staging import Staging, StagingChunk, check_frames, feed
from bluesky_ptycho.live.threads import lower_thread_priority
from bluesky_ptycho.probes import ProbeInit

__all__ = ["LiveReconstruction", "LiveStatus"]

logger = logging.getLogger(__name__)

_MAX_MESSAGES = 20
_IDLE_WAKEUP_S = 5.0  # worker re-checks its inputs at least this often, even without a wake-up


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
        Reason of the current fault. Cleared only by :meth:`LiveReconstruction.resume`: a run
        that ends (``finish()``) while faulted keeps it, also in phase ``"finished"``.
    messages : tuple of str
        The last problems (rejections, faults, observer errors), oldest first.
    quarantined : int
        Frames kept aside as implausible (:mod:`~bluesky_ptycho.live.quarantine`): not used.
    quarantine_reasons : tuple of str
        ``"frame <submit index>: <reason>"`` for the last quarantined frames, oldest first.
    removed : int
        Patterns removed from the engine because an update with them diverged.
    removal_reasons : tuple of str
        ``"pattern <engine index>: <reason>"`` for every removed pattern, oldest first.
    faults : tuple of str
        Every divergence of the run (also those recovered by a removal or cleared by
        ``resume()``), oldest first (the last 20); empty for a clean run.
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
    quarantined: int = 0
    quarantine_reasons: tuple[str, ...] = ()
    removed: int = 0
    removal_reasons: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()


@dataclass
class _Requests:
    """What callers ask of the worker; guarded by the reconstruction's lock."""

    epie: EPIEOptions | None = None
    pacing: PacingPolicy | None = None
    period: float | None = None
    states: list[ReconstructionState] = field(default_factory=list)
    pause: bool = False
    resume: bool = False
    finish: int | None = None  # final passes, set by finish()
    stop: bool = False

    def take(self) -> _Requests:
        """A copy for the worker; the one-time requests are cleared here, pause and the end kept."""
        taken = replace(self)
        self.epie = self.pacing = self.period = None
        self.states = []
        self.resume = False
        return taken


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
    probe : array, ProbeInit, str or dict, optional
        Initial probe of shape ``probe_shape``, or how to make one from the first patterns
        (see :class:`~bluesky_ptycho.probes.ProbeInit`); default ``"auto"``.
    options : LiveOptions, optional
    name : str
        Used in the worker thread's name (``f"{name}-worker"``) and in log messages.

    Notes
    -----
    Lifecycle: ``idle`` until :meth:`start`; then ``waiting`` (nothing to do), ``running``,
    ``paused``, ``fault`` (diverged; rolled back; waits for :meth:`resume`); it ends as
    ``finished`` (after :meth:`finish`), ``stopped`` (after :meth:`stop`), or ``fault`` when
    the final passes diverge. A reconstruction runs once: :meth:`start` after the end raises.
    Every change of phase is checked against :data:`bluesky_ptycho.live.phase.ALLOWED`.

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
        if isinstance(probe, (ProbeInit, str, dict)):
            probe = ProbeInit.parse(probe)
        elif probe is not None and tuple(np.shape(probe)) != pshape:
            raise ValueError(f"probe has shape {tuple(np.shape(probe))}, probe_shape is {pshape}")
        self._name = str(name)
        self._object_shape = oshape
        self._probe_shape = pshape
        self._workers: Workers | None = None
        if opts.parallel == "synchronous":
            self._workers = make_workers(opts.parallel_options.executor, int(opts.workers))
            self._engine: EPIE = SynchronousEPIE(
                oshape,
                probe=probe,
                options=opts.epie,
                probe_shape=pshape,
                backend=opts.backend,
                batch_size=opts.parallel_options.batch_size,
                regulariser=opts.parallel_options.regulariser,
                workers=self._workers,
            )
        else:
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
        self._staging = Staging(int(opts.staging_chunk), pshape)
        self._requests = _Requests()
        self._wake = False
        self._options = opts  # as requested (the worker applies pending changes)
        self._phase = Phase.IDLE
        self._fault: str | None = None
        self._rejected = 0
        self._messages: deque[str] = deque(maxlen=_MAX_MESSAGES)
        self._in_use = 0
        self._iteration = 0
        self._updates = 0
        self._error = math.nan
        self._latest_state = self._engine.state()

        # ---- collaborators of the worker (the publisher's observer list is thread-safe)
        self._pacer = Pacer(self._engine, opts.pacing, seed=opts.epie.seed)
        self._guard = DivergenceGuard(opts.guard)  # the last state known good (published)
        self._quarantine = Quarantine(opts.quarantine)
        # ---- worker's findings, read under the lock
        self._quarantined = 0
        self._quarantine_reasons: deque[str] = deque(maxlen=_MAX_MESSAGES)
        self._aside: deque[QuarantinedFrame] = deque(maxlen=int(opts.quarantine.keep))
        self._removal_reasons: list[str] = []
        self._faults: deque[str] = deque(maxlen=_MAX_MESSAGES)
        self._publisher = Publisher(
            period_s=float(opts.publish_period_s),
            every_updates=int(opts.publish_every_updates),
            report=self._note,
            name=self._name,
        )

    # ------------------------------------------------------------------ observers
    def add_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Call ``fn(snapshot)`` (on the worker thread) for every published snapshot."""
        self._publisher.add_observer(fn)

    def remove_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Stop calling ``fn``; no-op if it is not registered."""
        self._publisher.remove_observer(fn)

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
        self._change_phase_locked(Phase.PAUSED if self._requests.pause else Phase.WAITING)
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
        f, pos, m = check_frames(frames, positions_px, mask, self._probe_shape)
        with self._cond:
            req = self._requests
            if req.stop or req.finish is not None or self._done.is_set():
                raise RuntimeError(
                    f"{self._name}: submit after finish() or stop(); frames not accepted"
                )
            first = self._staging.put(f, pos, m)
            self._wake = True
            self._cond.notify_all()
        return first

    def pause(self) -> None:
        """Stop iterating after the current chunk; data keeps being ingested."""
        with self._cond:
            self._requests.pause = True
            self._wake = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Iterate again after :meth:`pause`; also clears a fault."""
        with self._cond:
            self._requests.pause = False
            self._requests.resume = True
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
        Starts the worker if needed. Overrides :meth:`pause` and runs the final passes also
        after a fault (from the rolled-back state), but never clears it: the run then ends in
        phase ``"finished"`` with ``status.fault`` still set (and every divergence in
        ``status.faults``); if the final passes diverge again and no pattern is to blame, it
        ends in phase ``"fault"`` with the last good state. Returns at once; use :meth:`wait`.
        """
        passes = self._options.final_passes if final_passes is None else final_passes
        if int(passes) < 0:
            raise ValueError(f"final_passes must be >= 0, got {passes!r}")
        with self._cond:
            if self._requests.finish is not None or self._requests.stop:
                return
            self._requests.finish = int(passes)
            self._wake = True
            self._cond.notify_all()
            self._start_locked()

    def stop(self) -> None:
        """Abort soon: keep the state, publish once (phase ``"stopped"``), end the worker."""
        with self._cond:
            self._requests.stop = True
            self._wake = True
            self._cond.notify_all()
            if self._thread is None and not self._done.is_set():
                self._change_phase_locked(Phase.STOPPED)
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
        return self._publisher.latest()

    @property
    def status(self) -> LiveStatus:
        """Phase and counters."""
        with self._lock:
            return LiveStatus(
                phase=self._phase.value,
                patterns_received=self._staging.received,
                patterns_in_use=self._in_use,
                iteration=self._iteration,
                pattern_updates=self._updates,
                fourier_error=self._error,
                rejected=self._rejected,
                fault=self._fault,
                messages=tuple(self._messages),
                quarantined=self._quarantined,
                quarantine_reasons=tuple(self._quarantine_reasons),
                removed=len(self._removal_reasons),
                removal_reasons=tuple(self._removal_reasons),
                faults=tuple(self._faults),
            )

    def quarantined_frames(self) -> tuple[QuarantinedFrame, ...]:
        """The last quarantined frames (``options.quarantine.keep`` of them), oldest first."""
        with self._lock:
            return tuple(self._aside)

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
    def probe_origin(self) -> str:
        """How the starting probe was made (``"given"``, ``"none yet"``, or what auto chose)."""
        return self._engine.probe_origin

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
            check_period(publish_period_s)
        with self._cond:
            changes: dict[str, Any] = {}
            if epie is not None:
                self._requests.epie = changes["epie"] = epie
            if pacing is not None:
                self._requests.pacing = changes["pacing"] = pacing
            if publish_period_s is not None:
                self._requests.period = changes["publish_period_s"] = float(publish_period_s)
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
            self._requests.states.append(state.copy())
            self._wake = True
            self._cond.notify_all()

    def record_rejection(self, reason: str) -> None:
        """Count an item rejected upstream (e.g. a bad event) with its reason in :attr:`status`."""
        logger.warning("%s: rejected: %s", self._name, reason)
        with self._lock:
            self._rejected += 1
            self._messages.append(str(reason))

    # ================================================================== worker thread
    def _note(self, message: str) -> None:
        with self._lock:
            self._messages.append(message)

    def _change_phase_locked(self, phase: Phase) -> None:
        self._phase = check_transition(self._phase, phase)

    def _set_phase(self, phase: Phase, fault: str | None = None) -> None:
        with self._lock:
            if phase != self._phase:
                self._publisher.changed()
            self._change_phase_locked(phase)
            self._fault = fault

    def _worker_main(self) -> None:
        lower_thread_priority(int(self._options.worker_nice))
        try:
            self._loop()
        except Exception as exc:  # a bug: report it, end the worker, keep the last good state
            reason = f"worker failed: {type(exc).__name__}: {exc}"
            logger.exception("%s: %s", self._name, reason)
            with self._lock:
                self._change_phase_locked(Phase.FAULT)
                self._fault = reason
                self._messages.append(reason)
            try:
                self._publish(reason, fresh=False)
            except Exception:
                logger.exception("%s: could not publish the final snapshot", self._name)
        finally:
            if self._workers is not None:
                try:
                    self._workers.close()
                except Exception:
                    logger.exception("%s: could not close the engine's workers", self._name)
            with self._cond:
                self._done.set()
                self._cond.notify_all()

    def _take_inputs(self) -> tuple[list[StagingChunk], _Requests]:
        """Under the lock: staged chunks and pending requests, handed to the worker."""
        with self._cond:
            chunks = self._staging.take()
            req = self._requests.take()
            self._wake = False
        return chunks, req

    def _apply_requests(self, req: _Requests) -> None:
        if req.epie is not None:
            self._engine.options = req.epie
        if req.pacing is not None:
            self._pacer.policy = req.pacing
        if req.period is not None:
            self._publisher.period_s = req.period
        for st in req.states:
            try:
                self._engine.load_state(st)
            except ValueError as exc:
                msg = f"load_state refused: {exc}"
                logger.warning("%s: %s", self._name, msg)
                self._note(msg)
                continue
            self._pacer.state_replaced()
            self._after_chunk(math.nan, loaded=True)

    def _ingest(self, chunks: list[StagingChunk]) -> int:
        """Screen staged frames, move the accepted ones into the engine; returns how many."""
        for ch in chunks:
            self._screen(ch)
        added = feed(self._engine, chunks, self.record_rejection, name=self._name)
        with self._lock:
            self._staging.recycle(chunks)
            self._in_use = self._patterns_in_use()
        if added:
            self._publisher.changed()
            self._pacer.on_added(added)
        return added

    def _patterns_in_use(self) -> int:
        return int(self._engine.n_patterns - np.count_nonzero(self._engine.excluded))

    def _screen(self, ch: StagingChunk) -> None:
        """Quarantine the chunk's implausible frames (marks them in ``ch.skip``)."""
        n = ch.count
        masks = ch.masks[:n] if ch.has_mask and ch.masks is not None else None
        verdicts = self._quarantine.screen(ch.frames[:n], masks)
        for note in verdicts.notes:
            logger.warning("%s: quarantine: %s", self._name, note)
            self._note(f"quarantine: {note}")
        skip = verdicts.rejected
        if not skip.any():
            return
        ch.skip = skip
        for k in np.flatnonzero(skip).tolist():
            reason = f"frame {ch.first + k}: quarantined: {verdicts.reasons[k]}"
            logger.warning("%s: %s", self._name, reason)
            aside = QuarantinedFrame(
                index=ch.first + k,
                reason=str(verdicts.reasons[k]),
                frame=ch.frames[k].copy(),
                mask=None if masks is None else masks[k].copy(),
                position_px=ch.positions[k].copy(),
            )
            with self._lock:
                self._quarantined += 1
                self._quarantine_reasons.append(reason)
                self._messages.append(reason)
                self._aside.append(aside)

    def _loop(self) -> None:
        while True:
            chunks, req = self._take_inputs()
            if req.stop:
                self._end(Phase.STOPPED)
                return
            self._apply_requests(req)
            self._ingest(chunks)
            if req.resume and self._phase == Phase.FAULT:
                self._set_phase(Phase.WAITING)
            if req.finish is not None:
                self._final_passes(req.finish)
                return
            if self._phase == Phase.FAULT:
                self._idle(Phase.FAULT, self._fault)
                continue
            if req.pause:
                self._idle(Phase.PAUSED)
                continue
            if self._pacer.has_work():  # the probe is made from what the first update sees
                self._ensure_good(int(self._pacer.policy.min_patterns))
            err = self._pacer.run_chunk()
            if err is None:  # nothing to do under the policy
                self._idle(Phase.WAITING)
                continue
            self._set_phase(Phase.RUNNING)
            self._after_chunk(err)

    def _ensure_good(self, min_patterns: int) -> None:
        """Give the guard a state to roll back to, with a probe, before the first update.

        The starting probe is made now (as the first update would make it, from the same
        patterns) once ``min_patterns`` are held, so that a divergence in the very first chunks
        can be rolled back and its culprit found.
        """
        if self._guard.good is not None or self._engine.n_patterns < max(1, min_patterns):
            return
        self._engine.prepare()
        self._guard.ensure_good(self._engine)

    def _idle(self, phase: Phase, fault: str | None = None) -> None:
        """Publish pending changes when due and sleep until woken (or a publish falls due)."""
        self._set_phase(phase, fault)
        self._maybe_publish(fault or "", fresh=True)
        with self._cond:
            while not self._wake:
                timeout = _IDLE_WAKEUP_S
                due = self._publisher.seconds_until_due()
                if due is not None:
                    if due <= 0:
                        break
                    timeout = min(timeout, due)
                self._cond.wait(timeout)

    # ------------------------------------------------------------------ checks, publishing
    def _after_chunk(self, err: float, *, loaded: bool = False) -> bool:
        """Check the engine after a chunk (or a load); roll back on divergence.

        Returns True if the state is good.
        """
        st = self._engine.state(validation=False)  # validated when published
        problem = self._guard.check(
            st,
            err,
            self._engine.options.object_amplitude_max,
            math.nan if loaded else self._engine.last_error,
        )
        if problem is not None:
            return self._roll_back(problem, st)
        self._pacer.sync(st.updates_per_pattern)
        if not math.isfinite(err) and st.fourier_error.size:
            err = float(st.fourier_error[-1])
        with self._lock:
            delta = st.pattern_updates - self._updates
            self._latest_state = st
            self._iteration = st.iteration
            self._updates = st.pattern_updates
            if math.isfinite(err):
                self._error = err
        self._publisher.changed(delta)
        if loaded:
            self._guard.mark_good(st)
        self._maybe_publish("", fresh=False)
        return True

    def _roll_back(self, problem: str, diverged: ReconstructionState) -> bool:
        """Roll back; remove the patterns to blame if any (True: go on), else fault (False)."""
        st, reason = self._guard.roll_back(self._engine, problem)
        self._pacer.state_replaced()
        culprits: list[tuple[int, str]] = []
        with self._lock:
            removed = len(self._removal_reasons)
        if self._guard.good is not None and removed < int(self._guard.policy.max_removals):
            culprits = self._guard.find_culprits(self._engine, diverged)
            culprits = culprits[: int(self._guard.policy.max_removals) - removed]
        if culprits:
            self._engine.exclude([j for j, _ in culprits])
            which = ", ".join(str(j) for j, _ in culprits)
            reason = f"{reason}; removed pattern(s) {which}, the update diverged with them"
            scale = self._guard.model_scale
            factor = float(self._guard.policy.culprit_factor)
            if not (1.0 / factor <= scale <= factor):
                # the good state was made with the culprit (e.g. the probe scaled to its counts)
                self._engine.restart()
                reason += (
                    f"; the good state predicted {1 / scale:.3g} times the measured counts, "
                    "so the reconstruction restarted from an object of ones and a fresh probe"
                )
            st = self._engine.state(validation=False)
        else:
            reason += "; resume() to continue"
        logger.error("%s: %s", self._name, reason)
        self._pacer.sync(st.updates_per_pattern)
        with self._lock:
            self._latest_state = st
            self._iteration = st.iteration
            self._updates = st.pattern_updates
            self._in_use = self._patterns_in_use()
            self._faults.append(reason)
            self._messages.append(reason)
            for _, why in culprits:
                self._removal_reasons.append(why)
            if not culprits:
                self._change_phase_locked(Phase.FAULT)
                self._fault = reason
        self._publisher.changed()
        self._publish(reason, fresh=False)
        return bool(culprits)

    def _maybe_publish(self, message: str, *, fresh: bool) -> None:
        if self._publisher.due():
            self._publish(message, fresh=fresh)

    def _publish(self, message: str, *, fresh: bool) -> None:
        """Take a snapshot and hand it to the observers (on this, the worker, thread)."""
        st = self._engine.state() if fresh else None
        with self._lock:
            if st is not None:
                if divergence(st, math.nan) is None:
                    self._latest_state = st
                else:  # pragma: no cover - every chunk is checked before it is published
                    st = self._latest_state
            else:
                st = self._latest_state
            if st is not None and st.validation_error != st.validation_error:
                # the engine has not moved since this state was taken (same thread)
                st.validation_error, st.validation_baseline = self._engine.validation()
            phase = self._phase
            snap = self._publisher.make(
                st,
                patterns_received=self._staging.received,
                patterns_in_use=self._patterns_in_use(),
                phase=phase,
                message=message,
            )
        if phase != Phase.FAULT:
            self._guard.mark_good(st)
        self._publisher.emit(snap)

    # ------------------------------------------------------------------ the end
    def _final_passes(self, passes: int) -> None:
        with self._lock:
            fault = self._fault  # finish() does not clear a fault: it stays in the status
        self._set_phase(Phase.FINISHING, fault)
        engine = self._engine
        self._ensure_good(1)
        # an unfinished pass (it may miss the newest patterns) is completed first
        remaining = passes + (1 if self._pacer.pass_open else 0) if passes > 0 else 0
        # The last quarter of the final passes (at least 2) uses every pattern, the held-out
        # ones included; the "did it work" value measured just before is kept. Measuring it
        # after most of the final passes, not before them, makes it mean something after a
        # fast replay too (all frames at once, few updates before the final passes).
        release_at = min(remaining, max(2, remaining // 4))
        while engine.n_patterns and remaining > 0:
            if remaining <= release_at and engine.held_out.any():
                engine.release_held_out()
                self._pacer.state_replaced()
            chunks, req = self._take_inputs()
            if req.stop:
                self._end(Phase.STOPPED)
                return
            self._apply_requests(req)
            self._ingest(chunks)  # nothing can arrive after finish(); kept for safety
            before = engine.iteration
            self._pacer.step(int(self._pacer.policy.chunk_updates))
            if engine.iteration > before:
                remaining -= 1
            if not self._after_chunk(math.nan):
                return  # rolled back; the fault snapshot is the last one
        self._end(Phase.FINISHED)

    def _end(self, phase: Phase, message: str | None = None) -> None:
        """End the run in ``phase``; a fault of the run stays in the status and the message."""
        with self._lock:
            self._change_phase_locked(phase)
            fault = self._fault
        if message is None and fault is not None:
            message = f"ended with a fault: {fault}"
        self._publish(message or "", fresh=True)
