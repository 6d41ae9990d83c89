"""``PtychoCallback``: the RunEngine's documents in, a live reconstruction out.

Subscribe it to a RunEngine (``RE.subscribe(cb)``) or a ``RemoteDispatcher``. The document
handlers only look things up and queue work: reading files, preprocessing frames and the
reconstruction itself happen on background threads, so the RunEngine never waits. Nothing a
document contains can raise out of the callback: problems are logged with the document's name,
uid and seq_num, counted, and shown in :attr:`PtychoCallback.status`.

Runs are keyed by their start uid (``docs/explanation/run-integrity.md``): every document goes
to the run it names, several runs may be open at once, documents received twice are used once,
events that arrive before their descriptor wait for it a little, and a run whose stop never
comes is finished and saved after an idle time.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import event_model
import numpy as np

from bluesky_ptycho.callback.frame_work import FrameWork
from bluesky_ptycho.callback.run_state import (
    BoundedSet,
    DocumentRejected,
    HeldEvent,
    Run,
    cause_key,
    progress_note,
    unpack_event_page,
    where,
)
from bluesky_ptycho.callback.runs import (
    CallbackStatus,
    PatternRecord,
    Rejection,
    RejectionTally,
    StreamCount,
    count_worth_logging,
    usable_seq_num,
)
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.io.assets import AssetError, AssetRegistry
from bluesky_ptycho.live import LiveOptions, LiveReconstruction, Snapshot
from bluesky_ptycho.probes import ProbeInit
from bluesky_ptycho.setup import START_KEY, ScanSetup

__all__ = ["CallbackStatus", "PatternRecord", "PtychoCallback", "Rejection", "ScanSetup"]

logger = logging.getLogger("bluesky_ptycho.callback")

_MAX_REASONS = 100
_KEEP_FINISHED = 16  # finished runs remembered (late and repeated documents of them)
_KEEP_IGNORED = 10_000  # uids of ignored runs and their descriptors/resources remembered
_HANDLED = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
        "stop",
    }
)


class PtychoCallback(FrameWork, event_model.DocumentRouter):
    """Reconstruct every run it receives, live.

    Parameters
    ----------
    setup : ScanSetup, optional
        Used for runs whose start document lacks ``start["ptycho"]``, so any bluesky plan works.
    output_dir : str or Path, optional
        Where each run's result is written (HDF5) when it ends.
    options : LiveOptions, optional
        Engine, pacing and publishing options of each run's reconstruction.
    handlers : mapping, optional
        Spec -> handler class for resource/datum frames; default area-detector handlers.
    observers : sequence of callables, optional
        Called with every published :class:`~bluesky_ptycho.live.Snapshot` (worker thread).
    final_passes : int, optional
        Passes over all frames after the run stops (default: ``options.final_passes``).
    on_frame : callable, optional
        ``on_frame(index, intensities, mask, positions_px)`` for every frame handed to the
        reconstruction, after preprocessing (background thread): for saving or showing frames.
    probe : array, ProbeInit, str or dict, optional
        Initial probe for every run (e.g. from an earlier scan), or how to make one
        (:class:`~bluesky_ptycho.probes.ProbeInit`: ``"auto"``, ``"gaussian"``,
        ``"mean_pattern"``, optics); otherwise the start document's ``probe_init`` (a kind name,
        a dict, or the path of a bluesky-ptycho result file, see
        :meth:`~bluesky_ptycho.setup.ScanSetup.start_probe`), otherwise the engine's
        default ``"auto"``.
    on_pattern : callable, optional
        ``on_pattern(record)`` with a :class:`PatternRecord` for every pattern handed to a
        reconstruction (background thread), e.g. to checkpoint the live state.
    idle_timeout : float
        Seconds without any document of an open run after which the run is finished and saved
        without its stop (counted in ``status.missing_stops``). Default 300.
    orphan_wait : float
        Seconds an event (or event_page) whose descriptor has not arrived is held for it before
        it is rejected. Default 5.
    probe_dirs : sequence of paths, optional
        When given, a start document's ``probe_init`` that is a file path is read only if it
        resolves inside one of these directories (a relative path is taken relative to them);
        otherwise the run is ignored with the same message whether or not the file exists.
    max_orphans : int
        Events held at most while waiting for their descriptors; the oldest is rejected beyond.
    max_backlog_bytes : int
        Bytes of inline frames queued for the background thread at most (default 2 GiB). A
        frame beyond it is rejected (cause ``BACKLOG``, counted and reported) instead of
        growing the process without bound when frames arrive faster than they are
        preprocessed; the RunEngine is never made to wait.
    """

    def __init__(
        self,
        setup: ScanSetup | None = None,
        *,
        output_dir: str | Path | None = None,
        options: LiveOptions | None = None,
        handlers: Mapping[str, Callable[..., Any]] | None = None,
        observers: Sequence[Callable[[Snapshot], None]] = (),
        final_passes: int | None = None,
        on_frame: Callable[[int, np.ndarray, np.ndarray | None, np.ndarray], None] | None = None,
        probe: Any = None,
        on_pattern: Callable[[PatternRecord], None] | None = None,
        idle_timeout: float = 300.0,
        orphan_wait: float = 5.0,
        probe_dirs: Sequence[str | Path] | None = None,
        max_orphans: int = 256,
        max_backlog_bytes: int = 2 * 2**30,
    ) -> None:
        super().__init__()
        self.probe: ProbeInit | np.ndarray | None
        if probe is None or isinstance(probe, (ProbeInit, str, dict)):
            self.probe = None if probe is None else ProbeInit.parse(probe)
        else:
            self.probe = np.asarray(probe, dtype=np.complex64)
        self.on_frame = on_frame
        self.on_pattern = on_pattern
        if setup is not None and not isinstance(setup, ScanSetup):
            raise TypeError(f"setup must be a ScanSetup, got {type(setup).__name__}")
        for name, value, least in (
            ("idle_timeout", idle_timeout, 0.01),
            ("orphan_wait", orphan_wait, 0),
        ):
            if not (isinstance(value, (int, float)) and least <= value < float("inf")):
                raise ValueError(f"{name} must be a number of seconds >= {least}, got {value!r}")
        if int(max_orphans) < 0:
            raise ValueError(f"max_orphans must be >= 0, got {max_orphans!r}")
        if isinstance(max_backlog_bytes, bool) or not (
            isinstance(max_backlog_bytes, int) and max_backlog_bytes > 0
        ):
            raise ValueError(f"max_backlog_bytes must be a positive int, got {max_backlog_bytes!r}")
        self.setup = setup
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.options = options or LiveOptions()
        self.final_passes = final_passes
        self.idle_timeout = float(idle_timeout)
        self.orphan_wait = float(orphan_wait)
        self.max_orphans = int(max_orphans)
        self.max_backlog_bytes = max_backlog_bytes
        self._backlog_bytes = 0
        self.probe_dirs: tuple[Path, ...] | None = (
            None
            if probe_dirs is None
            else tuple(Path(d).expanduser().resolve() for d in probe_dirs)
        )
        self.assets = AssetRegistry(handlers)  # the handlers every run's registry starts with
        self._observers = list(observers)
        self._lock = threading.RLock()
        self._docs: collections.Counter[str] = collections.Counter()
        self._tally = RejectionTally(_MAX_REASONS)
        self._runs = 0
        self._duplicates = 0
        self._missing_stops = 0
        self._open: dict[str, Run] = {}
        self._finished: collections.OrderedDict[str, Run] = collections.OrderedDict()
        self._current: Run | None = None  # the latest started run
        self._owner: dict[str, Run] = {}  # descriptor, resource, stream_resource uid -> run
        self._ignored = BoundedSet(_KEEP_IGNORED)  # uids of ignored runs and their documents
        self._dead: dict[str, str] = {}  # descriptor uid -> why its events cannot be used
        self._orphans: collections.OrderedDict[str, list[HeldEvent]] = collections.OrderedDict()
        self._orphan_count = 0
        self._handling: Run | None = None  # the run of the document being handled
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="ptycho-callback", daemon=True)
        self._worker.start()
        self._closing = threading.Event()
        self._timer = threading.Thread(
            target=self._watch, name="ptycho-callback-timer", daemon=True
        )
        self._timer.start()

    # ----------------------------------------------------------------- public
    def add_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Receive snapshots of the open and later runs."""
        with self._lock:
            self._observers.append(fn)
            for run in self._open.values():
                run.live.add_observer(fn)

    @property
    def live(self) -> LiveReconstruction | None:
        """The current (latest started) run's reconstruction."""
        run = self._current
        return run.live if run else None

    def result(self, timeout: float | None = 60, run_uid: str | None = None) -> ReconstructionState:
        """Wait for a run's final passes after it ends; return its state.

        A run ends with its stop document, or after ``idle_timeout`` seconds without documents
        when the stop never comes.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait.
        run_uid : str, optional
            The run (start uid); default the current (latest started) run.

        Raises
        ------
        TimeoutError
            If the run has not finished within ``timeout`` seconds.
        RuntimeError
            If no run was ever started, or ``run_uid`` is not known.
        """
        with self._lock:
            if run_uid is None:
                run = self._current
                if run is None:
                    raise RuntimeError("no run has been received yet")
            else:
                run = self._open.get(run_uid) or self._finished.get(run_uid)
                if run is None:
                    raise RuntimeError(f"run {run_uid!r} is not known")
        if not run.done.wait(timeout):
            raise TimeoutError(f"run {run.uid} did not finish within {timeout} s")
        assert run.result is not None
        return run.result

    @property
    def result_path(self) -> Path | None:
        """The latest finished run's result file, when an output directory is set."""
        with self._lock:
            runs = [self._current] if self._current is not None else []
            runs += list(reversed(self._finished.values()))
        return next((r.result_path for r in runs if r.result_path is not None), None)

    @property
    def status(self) -> CallbackStatus:
        """Documents seen, frames used, items rejected, lost and repeated, and why."""
        with self._lock:
            run = self._current
            pending = run.frames_queued - run.frames_processed if run else 0
            rejections = tuple(self._tally.entries())
            return CallbackStatus(
                documents=dict(self._docs),
                runs=self._runs,
                run_uid=run.uid if run else None,
                frames_received=run.frames_received if run else 0,
                frames_used=run.frames_used if run else 0,
                frames_pending=pending,
                finished=run.done.is_set() if run else False,
                rejected=self._tally.total,
                reasons=tuple(e.text() for e in rejections),
                message=self._message(run, pending),
                live=run.live.status if run else None,
                rejections=rejections,
                duplicates=self._duplicates,
                lost=run.lost if run else 0,
                missing_stops=self._missing_stops,
                open_runs=tuple(self._open),
                lost_by_run={
                    r.uid: r.lost for r in (*self._finished.values(), *self._open.values())
                },
                waiting=self._orphan_count,
            )

    def _message(self, run: Run | None, pending: int) -> str:
        if run is None:
            return "waiting for a run"
        message = f"run {run.uid[:8]}: {run.frames_used}/{run.frames_received} frames used"
        if run.recovered:
            message += f" ({run.recovered} recovered)"
        worst = max(
            self._tally.entries(run.uid, every_run=False), key=lambda e: e.count, default=None
        )
        if worst is not None:
            message += f"; {run.rejected} rejected, most for: {worst.message}"
        live = run.live.status
        if live.quarantined:
            message += f" ({live.quarantined} of them quarantined as implausible)"
        if live.removed:
            message += f"; {live.removed} removed after a diverged update"
        if run.lost:
            message += f"; {run.lost} event(s) lost"
        if run.duplicates:
            message += f"; {run.duplicates} duplicate document(s) not used"
        if not run.key_seen and run.key_reported:
            message += f"; {run.key_note()}"
        if run.message:
            message += f"; {run.message}"
        return message + progress_note(run, pending)

    def close(self, timeout: float | None = 10) -> None:
        """Stop the background threads (after finishing queued work)."""
        self._closing.set()
        self._jobs.put(None)
        self._worker.join(timeout)
        self._timer.join(timeout)

    def resume_run(
        self,
        start: Mapping[str, Any],
        descriptors: Sequence[Mapping[str, Any]],
        patterns: Sequence[PatternRecord] = (),
        *,
        object_: np.ndarray | None = None,
        probe: np.ndarray | None = None,
    ) -> None:
        """Open a run again after a crash, from its documents and checkpointed patterns.

        The run is opened as if its start and descriptors had just been received; the saved
        (already preprocessed) patterns go to its fresh reconstruction (not to ``on_frame`` or
        ``on_pattern`` again), object and probe are imported when given, and the patterns'
        ``(descriptor, seq_num)`` are marked as seen: a repeat of one is a duplicate, later
        events of the run are used, and the events never checkpointed show as ``lost``.

        Raises
        ------
        ValueError
            If the start cannot be used (no ``uid``, no usable ``ptycho`` metadata and no
            fallback setup), the run is already open, a pattern belongs to another run, or
            object/probe have the wrong shape.
        """
        with self._lock:
            uid = start.get("uid") if isinstance(start, Mapping) else None
            if not isinstance(uid, str) or not uid:
                raise ValueError("resume_run: the start document has no uid")
            if uid in self._open:
                raise ValueError(f"resume_run: run {uid} is already open")
            for rec in patterns:
                if rec.run_uid != uid:
                    raise ValueError(
                        f"resume_run: a pattern of run {rec.run_uid!r} is not of {uid}"
                    )
            run = self._open_run(start, probe_override=probe)
            for desc in descriptors:
                self._handle("descriptor", desc)
            positions = []
            for rec in patterns:
                run.live.submit(rec.intensities, rec.positions_px, rec.mask)
                positions.append(np.asarray(rec.positions_px, dtype=np.float64).reshape(2))
                stream = run.streams.setdefault(rec.descriptor, StreamCount())
                stream.add(rec.seq_num)
                if rec.seq_num is not None:
                    run.event_seqs.add((rec.descriptor, rec.seq_num))
                run.frames_received += 1
                run.frames_used += 1
            run.recovered = len(patterns)
            if object_ is not None:
                start_probe = probe if probe is not None else run.live.state().probe
                if not np.any(np.abs(np.asarray(start_probe)) > 0):
                    raise ValueError("resume_run: object_ needs a probe (none given, none made)")
                run.live.load_state(
                    ReconstructionState(
                        object=np.asarray(object_, dtype=np.complex64),
                        probe=np.asarray(start_probe, dtype=np.complex64),
                        positions_px=np.array(positions).reshape(-1, 2),
                    )
                )
            run.last_activity = time.monotonic()
            logger.info("run %s resumed with %d recovered pattern(s)", uid[:8], len(patterns))

    # ----------------------------------------------------------------- dispatch
    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        with self._lock:
            self._docs[str(name)] += 1
            self._handling = None
            try:
                self._handle(name, doc)
            except Exception as exc:  # never let a document kill the RunEngine
                self._reject(
                    name,
                    doc,
                    f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc),
                    run=self._handling,
                    cause=cause_key(exc),
                    exc_info=not isinstance(exc, (AssetError, ValueError)),
                )
            finally:
                self._handling = None
        return name, doc

    def _handle(self, name: str, doc: Any) -> None:
        if not isinstance(doc, Mapping):
            raise DocumentRejected("NOT_A_DICT", f"not a document: {type(doc).__name__}")
        if name not in _HANDLED:
            raise DocumentRejected("UNKNOWN_NAME", f"unknown document name {name!r}")
        getattr(self, name)(doc)

    def _reject(
        self,
        name: str,
        doc: Any,
        reason: str,
        *,
        run: Run | None = None,
        cause: str | None = None,
        exc_info: bool = False,
    ) -> None:
        seq = usable_seq_num(doc.get("seq_num")) if isinstance(doc, Mapping) else None
        self._record(
            run,
            f"{where(name, doc)}: {reason}",
            cause or f"{name}: {reason}",
            seq,
            exc_info=exc_info,
        )

    def _record(
        self,
        run: Run | None,
        text: str,
        cause: str,
        seq_num: int | None,
        *,
        exc_info: bool = False,
        run_uid: str | None = None,
    ) -> None:
        """Count a rejected item under its cause; log the first, then at 10, 100, 1000..."""
        with self._lock:
            entry = self._tally.add(run.uid if run else run_uid, cause, text, seq_num)
            if run is not None:
                run.rejected += 1
        if entry.count == 1:
            logger.warning("rejected %s", text, exc_info=exc_info)
        elif count_worth_logging(entry.count):
            logger.warning(
                "rejected %d items so far for the same cause (%s); first: %s",
                entry.count,
                entry.cause,
                entry.text(),
            )
        else:
            logger.debug("rejected %s", text)

    def _duplicate(self, name: str, doc: Mapping[str, Any], run: Run | None) -> None:
        self._duplicates += 1
        if run is not None:
            run.duplicates += 1
            run.last_activity = time.monotonic()
        logger.debug(
            "%s received again: not used (%d duplicates)", where(name, doc), self._duplicates
        )

    # ----------------------------------------------------------------- runs
    def start(self, doc: Mapping[str, Any]) -> None:
        uid = doc.get("uid")
        if not isinstance(uid, str) or not uid:
            raise DocumentRejected(
                "START_WITHOUT_UID", "start document without a uid: ignored, no open run affected"
            )
        if uid in self._open or uid in self._finished or uid in self._ignored:
            self._duplicate("start", doc, self._open.get(uid) or self._finished.get(uid))
            return
        try:
            self._open_run(doc)
        except (ValueError, OSError) as exc:
            self._ignored.add(uid)
            self._reject("start", doc, f"run ignored: {exc}", cause=f"run ignored: {exc}")

    def _open_run(self, doc: Mapping[str, Any], probe_override: Any = None) -> Run:
        """Make a run from its start document; ValueError/OSError if it cannot be used."""
        uid = str(doc["uid"])
        if START_KEY in doc:
            setup = ScanSetup.from_start_doc(doc[START_KEY])
        elif self.setup is not None:
            setup = self.setup
        else:
            raise ValueError(f'no start["{START_KEY}"] and no ScanSetup given to PtychoCallback')
        size = setup.frame_size
        frame = setup.object_frame()
        probe = probe_override if probe_override is not None else self._initial_probe(setup)
        live = LiveReconstruction(
            frame.object_shape,
            (size, size),
            expected_patterns=setup.expected_points,
            probe=probe,
            options=self.options,
            name=f"ptycho-{uid[:8]}",
        )
        for fn in self._observers:
            live.add_observer(fn)
        assets = AssetRegistry(self.assets.handlers, self.assets.root_map)
        run = Run(uid=uid, setup=setup, live=live, start_doc=doc, assets=assets, object_frame=frame)
        self._open[uid] = run
        self._current = run
        self._runs += 1
        live.start()
        return run

    def _initial_probe(self, setup: ScanSetup) -> Any:
        if self.probe is not None:
            return self.probe
        start = setup.start_probe()
        if isinstance(start, str) and start:
            from bluesky_ptycho.io.result import read_result

            return read_result(self._probe_path(start)).state.probe
        return start

    def _probe_path(self, value: str) -> Path:
        """The file ``probe_init`` names, if allowed by ``probe_dirs``; one message otherwise."""
        path = Path(value).expanduser()
        dirs = self.probe_dirs
        if dirs is None:
            return path
        candidates = [path] if path.is_absolute() else [d / path for d in dirs]
        inside = []
        for candidate in candidates:
            resolved = candidate.resolve()
            if any(resolved.is_relative_to(d) for d in dirs):
                inside.append(resolved)
        if not inside:
            raise ValueError(
                f"probe_init {value!r} is not inside the allowed probe directories "
                f"{[str(d) for d in dirs]}: refused"
            )
        return next((p for p in inside if p.exists()), inside[0])

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        uid = doc.get("uid")
        if not isinstance(uid, str) or not uid:
            raise DocumentRejected("NO_UID", "descriptor without a uid")
        run_start = doc.get("run_start")
        if self._is_ignored(run_start):
            self._ignored.add(uid)
            self._drop_orphans(uid)
            return
        run = self._run_named(run_start)
        if run is None:
            reason = self._no_run(run_start)
            self._dead[uid] = reason
            raise DocumentRejected("NO_RUN", reason)
        self._handling = run
        if uid in run.doc_uids:
            self._duplicate("descriptor", doc, run)
            return
        if run.closed:
            reason = f"its run {run.uid[:8]} has already ended"
            self._dead[uid] = reason
            raise DocumentRejected("RUN_ENDED", reason)
        run.doc_uids.add(uid)
        run.last_activity = time.monotonic()
        run.descriptors[uid] = doc
        name = doc.get("name")
        run.streams[uid] = StreamCount(name=name if isinstance(name, str) else "")
        self._owner[uid] = run
        data_keys = doc.get("data_keys")
        if not isinstance(data_keys, Mapping):
            data_keys = {}
        run.keys_seen.update(str(k) for k in data_keys)
        info = data_keys.get(run.setup.detector_key)
        shape_value = info.get("shape") if isinstance(info, Mapping) else None
        try:
            shape = [int(s) for s in shape_value or []]
        except (TypeError, ValueError):
            shape = []
        while len(shape) > 2 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) == 2 and min(shape) > 0 and run.detector_shape is None:
            run.detector_shape = (shape[0], shape[1])
        for held in self._orphans.pop(uid, []):  # the events that waited for it
            self._orphan_count -= 1
            try:
                self._handle_event(held.doc)
            except Exception as exc:
                self._reject(
                    "event",
                    held.doc,
                    str(exc),
                    run=run,
                    cause=cause_key(exc),
                    exc_info=not isinstance(exc, (AssetError, ValueError)),
                )
        self._handling = run

    def stop(self, doc: Mapping[str, Any]) -> None:
        run_start = doc.get("run_start")
        if self._is_ignored(run_start):
            return
        run = self._run_named(run_start)
        if run is None:
            raise DocumentRejected("NO_RUN", self._no_run(run_start))
        self._handling = run
        if run.stopped:
            self._duplicate("stop", doc, run)
            return
        run.stopped = True
        status = str(doc.get("exit_status", "success"))
        run.exit_status = status
        self._expect(run, doc.get("num_events"))
        if run.closed:  # finished by the idle timeout; the stop came late
            logger.warning(
                "run %s: its stop came after the idle timeout had finished it; %d event(s) lost",
                run.uid[:8],
                run.lost,
            )
            return
        message = ""
        if status != "success":
            reason = doc.get("reason", "") or ""
            message = (
                f"run ended with exit_status {status!r}{': ' + str(reason) if reason else ''}; "
                "kept the frames received"
            )
        self._close_run(run, message)

    @staticmethod
    def _expect(run: Run, num_events: Any) -> None:
        """Take the stop's ``num_events`` per stream as the number of events each should have."""
        if not isinstance(num_events, Mapping):
            return
        for stream_name, count in num_events.items():
            n = usable_seq_num(count)
            streams = [s for s in run.streams.values() if s.name == stream_name]
            if n is not None and len(streams) == 1:
                streams[0].expected = n

    @staticmethod
    def _expect_points(run: Run) -> None:
        """Without a stop, the start's ``num_points`` tells how many frame events to expect.

        Applied to the one stream that carries the detector, unless a stop's ``num_events``
        already did; a stop that comes later replaces it.
        """
        n = usable_seq_num(run.start_doc.get("num_points"))
        if n is None:
            n = run.setup.expected_points
        key = run.setup.detector_key
        streams = [
            s
            for uid, s in run.streams.items()
            if key in (run.descriptors.get(uid, {}).get("data_keys") or {})
        ]
        if n is not None and len(streams) == 1 and streams[0].expected is None:
            streams[0].expected = int(n)

    def _is_ignored(self, uid: Any) -> bool:
        return isinstance(uid, str) and uid in self._ignored

    def _run_named(self, run_start: Any, *, latest_if_none: bool = False) -> Run | None:
        """The run a document names (open or recently finished). With ``latest_if_none``, the
        latest open run when the document names none (resources, whose ``run_start`` is
        optional)."""
        if run_start is None and latest_if_none:
            return next(reversed(self._open.values()), None) if self._open else None
        if not isinstance(run_start, str):
            return None
        return self._open.get(run_start) or self._finished.get(run_start)

    def _no_run(self, run_start: Any) -> str:
        if run_start is None:
            return "it names no run (no run_start)"
        return f"run_start {run_start!r} names no run received (its start is missing or unusable)"

    def _close_run(self, run: Run, message: str) -> None:
        run.message = message
        run.closed = True
        self._open.pop(run.uid, None)
        self._finished[run.uid] = run
        while len(self._finished) > _KEEP_FINISHED:
            _, old = self._finished.popitem(last=False)
            for uid in [u for u, r in self._owner.items() if r is old]:
                del self._owner[uid]
        self._jobs.put(("finish", run))

    # ----------------------------------------------------------------- events
    def event(self, doc: Any) -> Any:
        self._handle_event(doc)
        return doc

    def event_page(self, doc: Any) -> Any:
        for row in unpack_event_page(doc):
            try:
                self._handle_event(row)
            except Exception as exc:  # one bad row is one rejected event
                self._reject(
                    "event",
                    row,
                    str(exc),
                    run=self._handling,
                    cause=cause_key(exc),
                    exc_info=not isinstance(exc, (AssetError, ValueError)),
                )
        return doc

    def _handle_event(self, doc: Mapping[str, Any]) -> None:
        self._handling = None
        desc = doc.get("descriptor")
        if not isinstance(desc, str):
            raise DocumentRejected("NO_DESCRIPTOR", f"event without a descriptor uid ({desc!r})")
        if desc in self._ignored:
            return
        run = self._owner.get(desc)
        if run is None:
            if desc in self._dead:
                raise DocumentRejected(
                    "NO_RUN", f"descriptor {desc!r} was not used: {self._dead[desc]}"
                )
            self._hold(desc, doc)
            return
        self._handling = run
        uid = doc.get("uid")
        seq = usable_seq_num(doc.get("seq_num"))
        if (isinstance(uid, str) and uid in run.event_uids) or (
            seq is not None and (desc, seq) in run.event_seqs
        ):
            self._duplicate("event", doc, run)
            return
        if run.closed:
            raise DocumentRejected(
                "RUN_ENDED",
                f"its run {run.uid[:8]} has already ended"
                + (" (finished by the idle timeout)" if run.missing_stop else ""),
            )
        if isinstance(uid, str):
            run.event_uids.add(uid)
        if seq is not None:
            run.event_seqs.add((desc, seq))
        stream = run.streams[desc]
        stream.add(seq)
        run.last_activity = time.monotonic()
        self._use_event(run, doc, desc, seq, stream)

    def _use_event(
        self, run: Run, doc: Mapping[str, Any], desc: str, seq: int | None, stream: StreamCount
    ) -> None:
        setup = run.setup
        key = setup.detector_key
        data_keys = run.descriptors[desc].get("data_keys")
        if not isinstance(data_keys, Mapping) or key not in data_keys:
            # another stream (baseline, monitors); or a wrong detector_key: say so once
            received = len(stream.seen) + stream.unnumbered
            if (
                not run.key_seen
                and not run.key_reported
                and (stream.name == "primary" or received >= 2)
            ):
                run.key_reported = True
                self._record(run, run.key_note(), "DETECTOR_KEY_MISSING", None)
            return
        data = doc.get("data")
        if not isinstance(data, Mapping):
            raise DocumentRejected("NO_DATA", "event data is not a dict")
        missing = [k for k in setup.position_keys if k not in data]
        if missing:
            raise DocumentRejected(
                "POSITION_MISSING", f"position key(s) {missing} missing from event data"
            )
        try:
            readbacks = [float(data[k]) for k in setup.position_keys]
        except (TypeError, ValueError):
            raise DocumentRejected(
                "POSITION_NOT_NUMBER",
                f"position readbacks are not numbers: {[data[k] for k in setup.position_keys]!r}",
            ) from None
        run.frames_received += 1
        info = data_keys[key]
        external = str(info.get("external", "")) if isinstance(info, Mapping) else ""
        filled = doc.get("filled")
        filled = filled if isinstance(filled, Mapping) else {}
        source: Any
        if key in data and filled.get(key, True) is not False and not isinstance(data[key], str):
            source = np.array(data[key], copy=True)  # the device may reuse its buffer
        elif key in data:
            source = run.assets.locate_datum(str(data[key]))
        elif external.startswith("STREAM"):
            if seq is None:
                raise DocumentRejected(
                    "SEQ_NUM",
                    f"seq_num {doc.get('seq_num')!r} is not a usable sequence number, and a "
                    "stream frame is found by it",
                )
            source = run.assets.locate_stream(desc, key, seq)
        else:
            raise DocumentRejected(
                "DETECTOR_MISSING", f"detector key {key!r} missing from event data"
            )
        limit = run.setup.limits.max_frames
        if run.frames_received > limit:
            raise DocumentRejected(
                "MAX_FRAMES",
                f"the run has more than {limit} frames (Limits.max_frames): frame not used",
            )
        nbytes = source.nbytes if isinstance(source, np.ndarray) else 0
        with self._lock:
            if self._backlog_bytes + nbytes > self.max_backlog_bytes:
                raise DocumentRejected(
                    "BACKLOG",
                    f"{self._backlog_bytes / 2**20:.0f} MiB of frames already wait for the "
                    f"background thread (max_backlog_bytes {self.max_backlog_bytes / 2**20:.0f}"
                    " MiB): frame dropped; the reconstruction cannot keep up with this frame "
                    "rate",
                )
            self._backlog_bytes += nbytes
            run.frames_queued += 1
        self._jobs.put(("frame", run, where("event", doc), seq, desc, source, readbacks))

    def _hold(self, desc: str, doc: Mapping[str, Any]) -> None:
        """Keep an event whose descriptor has not arrived (bounded; the oldest goes first)."""
        if self.max_orphans == 0:
            self._reject_orphan(
                HeldEvent(time.monotonic(), doc), desc, "no descriptor yet, none held"
            )
            return
        self._orphans.setdefault(desc, []).append(HeldEvent(time.monotonic(), doc))
        self._orphan_count += 1
        while self._orphan_count > self.max_orphans:
            oldest_desc = next(iter(self._orphans))
            held = self._orphans[oldest_desc].pop(0)
            if not self._orphans[oldest_desc]:
                del self._orphans[oldest_desc]
            self._orphan_count -= 1
            self._reject_orphan(
                held, oldest_desc, f"more than {self.max_orphans} events waited for descriptors"
            )

    def _reject_orphan(self, held: HeldEvent, desc: str, why: str) -> None:
        self._reject(
            "event",
            held.doc,
            f"unknown descriptor {desc!r}: {why}",
            cause="NO_DESCRIPTOR",
        )

    def _drop_orphans(self, desc: str) -> None:
        self._orphan_count -= len(self._orphans.pop(desc, []))

    # ----------------------------------------------------------------- assets
    def _asset_run(self, doc: Mapping[str, Any], name: str) -> Run | None:
        uid = doc.get("uid")
        run_start = doc.get("run_start")
        if self._is_ignored(run_start):
            if isinstance(uid, str):
                self._ignored.add(uid)
            return None
        run = self._run_named(run_start, latest_if_none=True)
        if run is None:
            raise DocumentRejected("NO_RUN", self._no_run(run_start))
        self._handling = run
        if not isinstance(uid, str) or not uid:
            raise DocumentRejected("NO_UID", f"{name} without a uid")
        if uid in run.doc_uids:
            self._duplicate(name, doc, run)
            return None
        run.doc_uids.add(uid)
        run.last_activity = time.monotonic()
        self._owner[uid] = run
        return run

    def resource(self, doc: Mapping[str, Any]) -> None:
        run = self._asset_run(doc, "resource")
        if run is not None:
            run.assets.add_resource(doc)

    def stream_resource(self, doc: Mapping[str, Any]) -> None:
        run = self._asset_run(doc, "stream_resource")
        if run is not None:
            run.assets.add_stream_resource(doc)

    def _owned(self, doc: Mapping[str, Any], ref_key: str, uid_key: str, name: str) -> Run | None:
        ref = doc.get(ref_key)
        if self._is_ignored(ref):
            return None
        run = self._owner.get(ref) if isinstance(ref, str) else None
        if run is None:
            what = "resource" if ref_key == "resource" else "stream_resource"
            raise AssetError(f"{name} refers to unknown {what} {ref!r}", cause="UNKNOWN_RESOURCE")
        self._handling = run
        uid = doc.get(uid_key)
        if isinstance(uid, str) and uid in run.doc_uids:
            self._duplicate(name, doc, run)
            return None
        if isinstance(uid, str):
            run.doc_uids.add(uid)
        run.last_activity = time.monotonic()
        return run

    def datum(self, doc: Any) -> Any:
        run = self._owned(doc, "resource", "datum_id", "datum")
        if run is not None:
            run.assets.add_datum(doc)
        return doc

    def datum_page(self, doc: Mapping[str, Any]) -> None:
        for datum in event_model.unpack_datum_page(doc):  # type: ignore[arg-type]
            self.datum(datum)

    def stream_datum(self, doc: Mapping[str, Any]) -> None:
        run = self._owned(doc, "stream_resource", "uid", "stream_datum")
        if run is not None:
            run.assets.add_stream_datum(doc)

    # ----------------------------------------------------------------- timers
    def _watch(self) -> None:
        """Finish runs whose stop never comes; reject events whose descriptor never comes."""
        tick = min(max(min(self.idle_timeout, self.orphan_wait) / 4, 0.02), 1.0)
        while not self._closing.wait(tick):
            try:
                self._check_timers(time.monotonic())
            except Exception:  # keep watching whatever happens
                logger.exception("ptycho callback timer failed")

    def _check_timers(self, now: float) -> None:
        with self._lock:
            for run in list(self._open.values()):
                idle = now - run.last_activity
                if idle >= self.idle_timeout:
                    self._missing_stops += 1
                    run.missing_stop = True
                    self._expect_points(run)
                    logger.warning(
                        "run %s: no stop document and no document for %.3g s: finishing it "
                        "without its stop",
                        run.uid[:8],
                        idle,
                    )
                    self._close_run(
                        run,
                        f"no stop document: finished after {self.idle_timeout:g} s without "
                        "documents (idle timeout)",
                    )
            for desc in list(self._orphans):
                held_list = self._orphans[desc]
                while held_list and now - held_list[0].since >= self.orphan_wait:
                    held = held_list.pop(0)
                    self._orphan_count -= 1
                    self._reject_orphan(
                        held, desc, f"no such descriptor arrived within {self.orphan_wait:g} s"
                    )
                if not held_list:
                    del self._orphans[desc]
