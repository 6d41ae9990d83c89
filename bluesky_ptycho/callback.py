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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import event_model
import numpy as np

from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.geometry import ObjectFrame
from bluesky_ptycho.io.assets import AssetError, AssetRegistry, DatumLocator, StreamLocator
from bluesky_ptycho.io.hdf5 import ReadCause
from bluesky_ptycho.io.result import write_result
from bluesky_ptycho.live import (
    LiveOptions,
    LiveReconstruction,
    Snapshot,
    lower_thread_priority,
)
from bluesky_ptycho.preprocess import PreprocessConfig, preprocess
from bluesky_ptycho.probes import ProbeInit
from bluesky_ptycho.runs import (
    CallbackStatus,
    PatternRecord,
    Rejection,
    RejectionTally,
    ShapeVote,
    StreamCount,
    count_worth_logging,
    usable_seq_num,
)
from bluesky_ptycho.setup import START_KEY, ScanSetup

__all__ = ["CallbackStatus", "PatternRecord", "PtychoCallback", "Rejection", "ScanSetup"]

logger = logging.getLogger(__name__)

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


class _FrameRejected(ValueError):
    """A frame fails one of the callback's own checks; ``cause`` groups such frames."""

    def __init__(self, cause: str | ReadCause, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class _DocumentRejected(ValueError):
    """A document is refused by a handler; ``cause`` groups such documents."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def _cause_key(exc: BaseException) -> str | None:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ReadCause):
        return cause.name
    return cause if isinstance(cause, str) and cause else None


class _BoundedSet:
    """A set that forgets its oldest members beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, item: str) -> None:
        self._items[item] = None
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._items


@dataclass
class _Run:
    """One run being reconstructed: its setup, reconstruction, assets and counters."""

    uid: str
    setup: ScanSetup
    live: LiveReconstruction
    start_doc: Mapping[str, Any]
    assets: AssetRegistry
    object_frame: ObjectFrame | None = None
    descriptors: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    streams: dict[str, StreamCount] = field(default_factory=dict)
    detector_shape: tuple[int, ...] | None = None
    shape_vote: ShapeVote = field(default_factory=ShapeVote)
    preprocess: PreprocessConfig | None = None
    event_uids: set[str] = field(default_factory=set)
    event_seqs: set[tuple[str, int]] = field(default_factory=set)
    doc_uids: set[str] = field(default_factory=set)  # descriptors, resources, datums...
    keys_seen: set[str] = field(default_factory=set)  # data keys of all its descriptors
    key_reported: bool = False
    frames_received: int = 0
    frames_used: int = 0
    frames_queued: int = 0
    frames_processed: int = 0
    rejected: int = 0
    recovered: int = 0
    duplicates: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    stopped: bool = False
    missing_stop: bool = False
    exit_status: str | None = None
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: ReconstructionState | None = None
    result_path: Path | None = None
    message: str = ""

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())

    @property
    def key_seen(self) -> bool:
        return self.setup.detector_key in self.keys_seen

    def key_note(self) -> str:
        return (
            f"detector_key {self.setup.detector_key!r} is in no descriptor of run "
            f"{self.uid[:8]}; data keys seen: {sorted(self.keys_seen)}"
        )


@dataclass
class _Held:
    """An event that arrived before its descriptor."""

    since: float
    doc: Mapping[str, Any]


class PtychoCallback(event_model.DocumentRouter):
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
        for name, value in (("idle_timeout", idle_timeout), ("orphan_wait", orphan_wait)):
            if not (isinstance(value, (int, float)) and value >= 0 and value == value):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if int(max_orphans) < 0:
            raise ValueError(f"max_orphans must be >= 0, got {max_orphans!r}")
        self.setup = setup
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.options = options or LiveOptions()
        self.final_passes = final_passes
        self.idle_timeout = float(idle_timeout)
        self.orphan_wait = float(orphan_wait)
        self.max_orphans = int(max_orphans)
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
        self._open: dict[str, _Run] = {}
        self._finished: collections.OrderedDict[str, _Run] = collections.OrderedDict()
        self._current: _Run | None = None  # the latest started run
        self._owner: dict[str, _Run] = {}  # descriptor, resource, stream_resource uid -> run
        self._ignored = _BoundedSet(_KEEP_IGNORED)  # uids of ignored runs and their documents
        self._dead: dict[str, str] = {}  # descriptor uid -> why its events cannot be used
        self._orphans: collections.OrderedDict[str, list[_Held]] = collections.OrderedDict()
        self._orphan_count = 0
        self._handling: _Run | None = None  # the run of the document being handled
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

    def _message(self, run: _Run | None, pending: int) -> str:
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
        if run.lost:
            message += f"; {run.lost} event(s) lost"
        if run.duplicates:
            message += f"; {run.duplicates} duplicate document(s) not used"
        if not run.key_seen and run.key_reported:
            message += f"; {run.key_note()}"
        if run.message:
            message += f"; {run.message}"
        return message + _progress_note(run, pending)

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
                    cause=_cause_key(exc),
                    exc_info=not isinstance(exc, (AssetError, ValueError)),
                )
            finally:
                self._handling = None
        return name, doc

    def _handle(self, name: str, doc: Any) -> None:
        if not isinstance(doc, Mapping):
            raise _DocumentRejected("NOT_A_DICT", f"not a document: {type(doc).__name__}")
        if name not in _HANDLED:
            raise _DocumentRejected("UNKNOWN_NAME", f"unknown document name {name!r}")
        getattr(self, name)(doc)

    def _reject(
        self,
        name: str,
        doc: Any,
        reason: str,
        *,
        run: _Run | None = None,
        cause: str | None = None,
        exc_info: bool = False,
    ) -> None:
        seq = usable_seq_num(doc.get("seq_num")) if isinstance(doc, Mapping) else None
        self._record(
            run,
            f"{_where(name, doc)}: {reason}",
            cause or f"{name}: {reason}",
            seq,
            exc_info=exc_info,
        )

    def _record(
        self,
        run: _Run | None,
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

    def _duplicate(self, name: str, doc: Mapping[str, Any], run: _Run | None) -> None:
        self._duplicates += 1
        if run is not None:
            run.duplicates += 1
            run.last_activity = time.monotonic()
        logger.debug(
            "%s received again: not used (%d duplicates)", _where(name, doc), self._duplicates
        )

    # ----------------------------------------------------------------- runs
    def start(self, doc: Mapping[str, Any]) -> None:
        uid = doc.get("uid")
        if not isinstance(uid, str) or not uid:
            raise _DocumentRejected(
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

    def _open_run(self, doc: Mapping[str, Any], probe_override: Any = None) -> _Run:
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
        run = _Run(
            uid=uid, setup=setup, live=live, start_doc=doc, assets=assets, object_frame=frame
        )
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
            raise _DocumentRejected("NO_UID", "descriptor without a uid")
        run_start = doc.get("run_start")
        if self._is_ignored(run_start):
            self._ignored.add(uid)
            self._drop_orphans(uid)
            return
        run = self._run_named(run_start)
        if run is None:
            reason = self._no_run(run_start)
            self._dead[uid] = reason
            raise _DocumentRejected("NO_RUN", reason)
        self._handling = run
        if uid in run.doc_uids:
            self._duplicate("descriptor", doc, run)
            return
        if run.closed:
            reason = f"its run {run.uid[:8]} has already ended"
            self._dead[uid] = reason
            raise _DocumentRejected("RUN_ENDED", reason)
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
                    cause=_cause_key(exc),
                    exc_info=not isinstance(exc, (AssetError, ValueError)),
                )
        self._handling = run

    def stop(self, doc: Mapping[str, Any]) -> None:
        run_start = doc.get("run_start")
        if self._is_ignored(run_start):
            return
        run = self._run_named(run_start)
        if run is None:
            raise _DocumentRejected("NO_RUN", self._no_run(run_start))
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
    def _expect(run: _Run, num_events: Any) -> None:
        """Take the stop's ``num_events`` per stream as the number of events each should have."""
        if not isinstance(num_events, Mapping):
            return
        for stream_name, count in num_events.items():
            n = usable_seq_num(count)
            streams = [s for s in run.streams.values() if s.name == stream_name]
            if n is not None and len(streams) == 1:
                streams[0].expected = n

    def _is_ignored(self, uid: Any) -> bool:
        return isinstance(uid, str) and uid in self._ignored

    def _run_named(self, run_start: Any, *, latest_if_none: bool = False) -> _Run | None:
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
            return "it names no run (no run_start) and no run is open to take it"
        return f"run_start {run_start!r} names no run received (its start is missing or unusable)"

    def _close_run(self, run: _Run, message: str) -> None:
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
        for row in _unpack_event_page(doc):
            try:
                self._handle_event(row)
            except Exception as exc:  # one bad row is one rejected event
                self._reject(
                    "event",
                    row,
                    str(exc),
                    run=self._handling,
                    cause=_cause_key(exc),
                    exc_info=not isinstance(exc, (AssetError, ValueError)),
                )
        return doc

    def _handle_event(self, doc: Mapping[str, Any]) -> None:
        self._handling = None
        desc = doc.get("descriptor")
        if not isinstance(desc, str):
            raise _DocumentRejected("NO_DESCRIPTOR", f"event without a descriptor uid ({desc!r})")
        if desc in self._ignored:
            return
        run = self._owner.get(desc)
        if run is None:
            if desc in self._dead:
                raise _DocumentRejected(
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
            raise _DocumentRejected(
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
        self, run: _Run, doc: Mapping[str, Any], desc: str, seq: int | None, stream: StreamCount
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
            raise _DocumentRejected("NO_DATA", "event data is not a dict")
        missing = [k for k in setup.position_keys if k not in data]
        if missing:
            raise _DocumentRejected(
                "POSITION_MISSING", f"position key(s) {missing} missing from event data"
            )
        try:
            readbacks = [float(data[k]) for k in setup.position_keys]
        except (TypeError, ValueError):
            raise _DocumentRejected(
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
                raise _DocumentRejected(
                    "SEQ_NUM",
                    f"seq_num {doc.get('seq_num')!r} is not a usable sequence number, and a "
                    "stream frame is found by it",
                )
            source = run.assets.locate_stream(desc, key, seq)
        else:
            raise _DocumentRejected(
                "DETECTOR_MISSING", f"detector key {key!r} missing from event data"
            )
        run.frames_queued += 1
        self._jobs.put(("frame", run, _where("event", doc), seq, desc, source, readbacks))

    def _hold(self, desc: str, doc: Mapping[str, Any]) -> None:
        """Keep an event whose descriptor has not arrived (bounded; the oldest goes first)."""
        if self.max_orphans == 0:
            self._reject_orphan(_Held(time.monotonic(), doc), desc, "no descriptor yet, none held")
            return
        self._orphans.setdefault(desc, []).append(_Held(time.monotonic(), doc))
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

    def _reject_orphan(self, held: _Held, desc: str, why: str) -> None:
        self._reject(
            "event",
            held.doc,
            f"unknown descriptor {desc!r}: {why}",
            cause="NO_DESCRIPTOR",
        )

    def _drop_orphans(self, desc: str) -> None:
        self._orphan_count -= len(self._orphans.pop(desc, []))

    # ----------------------------------------------------------------- assets
    def _asset_run(self, doc: Mapping[str, Any], name: str) -> _Run | None:
        uid = doc.get("uid")
        run_start = doc.get("run_start")
        if self._is_ignored(run_start):
            if isinstance(uid, str):
                self._ignored.add(uid)
            return None
        run = self._run_named(run_start, latest_if_none=True)
        if run is None:
            raise _DocumentRejected("NO_RUN", self._no_run(run_start))
        self._handling = run
        if not isinstance(uid, str) or not uid:
            raise _DocumentRejected("NO_UID", f"{name} without a uid")
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

    def _owned(self, doc: Mapping[str, Any], ref_key: str, uid_key: str, name: str) -> _Run | None:
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

    # ----------------------------------------------------------------- background work
    def _work(self) -> None:
        lower_thread_priority(max(0, int(self.options.worker_nice) // 2))
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job[0] == "frame":
                    self._ingest(*job[1:])
                else:
                    self._finish(job[1])
            except Exception:  # keep the worker alive whatever happens
                logger.exception("ptycho callback worker failed on %s", job[0])

    def _ingest(
        self,
        run: _Run,
        where: str,
        seq_num: int | None,
        desc: str,
        source: Any,
        readbacks: list[float],
    ) -> None:
        item: tuple[Any, ...] = (where, seq_num, desc, None, readbacks)
        try:
            if isinstance(source, (DatumLocator, StreamLocator)):
                raw = run.assets.read(source)
            else:
                raw = source
            raw = np.asarray(raw)
            while raw.ndim > 2 and raw.shape[0] == 1:
                raw = raw[0]
            if raw.ndim != 2:
                raise _FrameRejected(
                    "NOT_2D", f"frame has shape {raw.shape}, expected a 2-D detector image"
                )
            item = (where, seq_num, desc, raw, readbacks)
            if run.detector_shape is None:
                decided = run.shape_vote.add(tuple(raw.shape), item)
                if decided is not None:
                    self._settle_shape(run, decided)
                return
        except Exception as exc:
            self._frame_failed(run, item, exc)
            return
        self._use(run, item)

    def _settle_shape(self, run: _Run, shape: tuple[int, ...]) -> None:
        """Fix the run's detector shape and use (or reject) the frames held for the vote."""
        run.detector_shape = shape
        held = run.shape_vote.release()
        if len(held) > 1:
            logger.info(
                "run %s: detector shape %s agreed by the first frames (the descriptor gives none)",
                run.uid[:8],
                shape,
            )
        for item in held:
            self._use(run, item)

    def _frame_failed(self, run: _Run, item: tuple[Any, ...], exc: BaseException) -> None:
        where, seq_num = item[0], item[1]
        try:
            if isinstance(exc, (AssetError, ValueError)):
                self._record(run, f"{where}: {exc}", _cause_key(exc) or str(exc), seq_num)
            else:  # a handler's own error type, a bad array...: still one item
                self._record(
                    run,
                    f"{where}: {type(exc).__name__}: {exc}",
                    _cause_key(exc) or type(exc).__name__,
                    seq_num,
                    exc_info=True,
                )
        finally:
            with self._lock:
                run.frames_processed += 1

    def _use(self, run: _Run, item: tuple[Any, ...]) -> None:
        _, seq_num, desc, raw, readbacks = item
        try:
            if tuple(raw.shape) != tuple(run.detector_shape or raw.shape):
                cause = ReadCause.SHAPE_CHANGED
                raise _FrameRejected(
                    cause,
                    f"frame shape {tuple(raw.shape)} differs from the detector's "
                    f"{tuple(run.detector_shape or ())}: {cause.summary}. Fix: {cause.fix}",
                )
            if run.preprocess is None:
                run.preprocess = run.setup.preprocess_config(raw_shape=raw.shape)
            config = run.preprocess
            if not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
                raise _FrameRejected("DTYPE", f"frame dtype {raw.dtype} is not a real number type")
            bad = ~np.isfinite(raw) if raw.dtype.kind == "f" else None
            if bad is not None and config.mask is not None:
                bad &= ~config.mask
            if bad is not None and bad.any():
                raise _FrameRejected(
                    "NONFINITE", f"frame has {int(bad.sum())} NaN or infinite pixel(s)"
                )
            out = preprocess(raw, config)
            pos_m = run.setup.positions_m(np.asarray(readbacks)[None])
            object_frame = run.object_frame
            assert object_frame is not None
            pos_px = object_frame.to_pixels(pos_m)
            if not object_frame.contains(pos_px)[0]:
                raise _FrameRejected(
                    "OUTSIDE_OBJECT",
                    f"position {readbacks} (readback units) lies outside the object frame "
                    f"fixed from the nominal scan",
                )
            index = run.live.submit(out.intensities, pos_px, out.mask)
        except Exception as exc:
            self._frame_failed(run, item, exc)
            return
        with self._lock:
            run.frames_used += 1
            run.frames_processed += 1
        mask = None if out.mask is None else out.mask[0]
        self._call_hooks(run, desc, seq_num, index, out.intensities[0], mask, pos_px[0])

    def _call_hooks(
        self,
        run: _Run,
        desc: str,
        seq_num: int | None,
        index: int,
        intensities: np.ndarray,
        mask: np.ndarray | None,
        pos_px: np.ndarray,
    ) -> None:
        """``on_frame`` and ``on_pattern``; their errors are logged, never the frame's."""
        try:
            if self.on_frame is not None:
                self.on_frame(index, intensities, mask, pos_px)
            if self.on_pattern is not None:
                self.on_pattern(
                    PatternRecord(run.uid, desc, seq_num, index, intensities, mask, pos_px)
                )
        except Exception:
            logger.exception("run %s: the on_frame/on_pattern hook failed", run.uid[:8])

    def _finish(self, run: _Run) -> None:
        if run.shape_vote.held:  # fewer frames than the vote needs: decide with what came
            decided = run.shape_vote.decide()
            assert decided is not None
            self._settle_shape(run, decided)
        with self._lock:
            repeated = [e for e in self._tally.entries(run.uid, every_run=False) if e.count > 1]
            lost = run.lost
            key_note = None if run.key_seen else run.key_note()
            if key_note is not None and not run.key_reported:
                run.key_reported = True
                self._record(run, key_note, "DETECTOR_KEY_MISSING", None)
        for entry in repeated:  # the final count of every cause that hit several items
            logger.warning("run %s: %s", run.uid[:8], entry.text())
        if lost:
            gaps = {s.name or uid[:8]: s.lost for uid, s in run.streams.items() if s.lost}
            logger.warning(
                "run %s: %d event(s) lost (seq_num gaps and the stop's num_events, per stream: %s)",
                run.uid[:8],
                lost,
                gaps,
            )
        if key_note is not None:
            logger.warning("run %s: %s", run.uid[:8], key_note)
        live = run.live
        live.finish(self.final_passes)
        threading.Thread(
            target=self._await_result, args=(run,), name=f"{live.name}-finish", daemon=True
        ).start()

    def _await_result(self, run: _Run) -> None:
        try:
            state = run.live.wait(timeout=None)
            run.result = state
            if self.output_dir is not None:
                run.result_path = self._save(run, state)
        except Exception as exc:
            logger.exception("finishing run %s failed", run.uid)
            run.message = f"{run.message} finishing failed: {exc}".strip()
            if run.result is None:
                run.result = run.live.state()
        finally:
            run.done.set()

    def _save(self, run: _Run, state: ReconstructionState) -> Path:
        output_dir = self.output_dir
        assert output_dir is not None  # _save is called only with an output directory
        output_dir.mkdir(parents=True, exist_ok=True)
        start = run.start_doc
        started = start.get("time")
        if not isinstance(started, (int, float)):
            started = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        path = output_dir / f"ptycho-{stamp}-{run.uid[:8]}.h5"
        status = run.live.status
        metadata = {
            "run_uid": run.uid,
            "scan_id": start.get("scan_id"),
            "plan_name": start.get("plan_name"),
            "exit_status": run.exit_status or ("no stop" if run.missing_stop else "unknown"),
            "frames_received": run.frames_received,
            "frames_used": run.frames_used,
            "rejected": run.rejected + status.rejected,
            "rejections": [e.text() for e in self.status.rejections if e.run_uid == run.uid],
            "lost": run.lost,
            "missing_stop": run.missing_stop,
            "message": run.message,
            START_KEY: run.setup.to_start_doc(),
        }
        return write_result(
            path, state, geometry=run.setup.geometry(), metadata=metadata, overwrite=True
        )


def _unpack_event_page(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The events of an event_page; ``_DocumentRejected`` if its columns do not line up."""
    try:
        uids = list(doc["uid"])
        seqs = list(doc["seq_num"])
        times = list(doc["time"])
        data = {k: list(v) for k, v in dict(doc["data"]).items()}
        stamps = {k: list(v) for k, v in dict(doc.get("timestamps") or {}).items()}
        filled = {k: list(v) for k, v in dict(doc.get("filled") or {}).items()}
        desc = doc["descriptor"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _DocumentRejected(
            "BAD_EVENT_PAGE", f"malformed event_page ({type(exc).__name__}: {exc})"
        ) from None
    n = len(uids)
    columns = [seqs, times, *data.values(), *stamps.values(), *filled.values()]
    if any(len(c) != n for c in columns):
        raise _DocumentRejected(
            "BAD_EVENT_PAGE", f"malformed event_page: its columns are not all {n} rows long"
        )
    for i in range(n):
        yield {
            "descriptor": desc,
            "uid": uids[i],
            "seq_num": seqs[i],
            "time": times[i],
            "data": {k: v[i] for k, v in data.items()},
            "timestamps": {k: v[i] for k, v in stamps.items()},
            "filled": {k: v[i] for k, v in filled.items()},
        }


def _progress_note(run: _Run, pending: int) -> str:
    """What is still going on for a run: frames in the queue, the final passes, or done."""
    if pending > 0:
        return f"; {pending} frame(s) still being processed"
    if run.done.is_set():
        return "; finished"
    if not run.closed:
        return ""  # the run is open: more frames are coming
    return "; final passes running"


def _where(name: str, doc: Any) -> str:
    """Name, uid and seq_num of a document, for messages."""
    if not isinstance(doc, Mapping):
        return f"{name} (not a dict: {type(doc).__name__})"
    uid = doc.get("uid") or doc.get("datum_id") or "?"
    seq = doc.get("seq_num")
    return f"{name} {uid}" + (f" seq_num {seq}" if seq is not None else "")
