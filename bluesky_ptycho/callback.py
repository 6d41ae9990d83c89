"""``PtychoCallback``: the RunEngine's documents in, a live reconstruction out.

Subscribe it to a RunEngine (``RE.subscribe(cb)``) or a ``RemoteDispatcher``. The document
handlers only look things up and queue work: reading files, preprocessing frames and the
reconstruction itself happen on background threads, so the RunEngine never waits. Nothing a
document contains can raise out of the callback: problems are logged with the document's name,
uid and seq_num, counted, and shown in :attr:`PtychoCallback.status`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import event_model
import numpy as np
from event_model.documents import (
    Datum,
    Event,
    EventDescriptor,
    Resource,
    RunStart,
    RunStop,
    StreamDatum,
    StreamResource,
)

from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.geometry import ObjectFrame
from bluesky_ptycho.io.assets import AssetError, AssetRegistry, DatumLocator, StreamLocator
from bluesky_ptycho.io.hdf5 import ReadCause
from bluesky_ptycho.io.result import write_result
from bluesky_ptycho.live import (
    LiveOptions,
    LiveReconstruction,
    LiveStatus,
    Snapshot,
    lower_thread_priority,
)
from bluesky_ptycho.preprocess import PreprocessConfig, preprocess
from bluesky_ptycho.probes import ProbeInit
from bluesky_ptycho.setup import START_KEY, ScanSetup

__all__ = ["CallbackStatus", "PtychoCallback", "Rejection", "ScanSetup"]

logger = logging.getLogger(__name__)

_MAX_REASONS = 100


@dataclass(frozen=True)
class Rejection:
    """The items of one run rejected for one cause: said once, counted.

    Attributes
    ----------
    run_uid : str or None
        The run the items belonged to (None: no run was open).
    cause : str
        What the items have in common: a :class:`~bluesky_ptycho.io.hdf5.ReadCause` name
        (``"FILTER_MISSING"``, ``"TRUNCATED"``, ...), a check of the callback
        (``"NONFINITE"``, ``"OUTSIDE_OBJECT"``, ...), or the reason text itself.
    message : str
        The first item's rejection: where (document name, uid, seq_num), what, and the fix.
    count : int
        Items rejected for this cause in this run.
    first_seq_num, last_seq_num : int or None
        The lowest and highest seq_num among them (None: documents without one).
    """

    run_uid: str | None
    cause: str
    message: str
    count: int
    first_seq_num: int | None
    last_seq_num: int | None

    def text(self) -> str:
        """The message, with the count and seq_num range when more than one item was hit."""
        if self.count == 1:
            return self.message
        seqs = (
            f", seq_num {self.first_seq_num}..{self.last_seq_num}"
            if self.first_seq_num is not None
            else ""
        )
        return f"{self.message} [{self.count} items{seqs}]"


class _FrameRejected(ValueError):
    """A frame fails one of the callback's own checks; ``cause`` groups such frames."""

    def __init__(self, cause: str | ReadCause, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def _cause_key(exc: BaseException) -> str | None:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ReadCause):
        return cause.name
    return cause if isinstance(cause, str) and cause else None


class _Tally:
    """Rejections grouped by (run, cause), in order of first occurrence; not thread-safe."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.total = 0
        self._entries: dict[tuple[str | None, str], Rejection] = {}

    def add(self, run_uid: str | None, cause: str, message: str, seq_num: int | None) -> Rejection:
        self.total += 1
        key = (run_uid, cause)
        old = self._entries.get(key)
        if old is None:
            entry = Rejection(run_uid, cause, message, 1, seq_num, seq_num)
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
        else:
            seqs = [s for s in (old.first_seq_num, old.last_seq_num, seq_num) if s is not None]
            entry = Rejection(
                run_uid,
                cause,
                old.message,
                old.count + 1,
                min(seqs) if seqs else None,
                max(seqs) if seqs else None,
            )
        self._entries[key] = entry
        return entry

    def entries(self, run_uid: str | None = None, *, every_run: bool = True) -> list[Rejection]:
        return [e for e in self._entries.values() if every_run or e.run_uid == run_uid]


def _count_worth_logging(count: int) -> bool:
    """1, 10, 100, 1000, ...: a growing cause is re-logged a few times, not per item."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1


@dataclass(frozen=True)
class CallbackStatus:
    """What the callback has seen and done; cheap to take at any time.

    Attributes
    ----------
    documents : dict
        Documents seen, by name, since the callback was made.
    runs : int
        Runs started.
    run_uid : str or None
        The current (or last) run's start uid.
    frames_received : int
        Frame-bearing events of the current run.
    frames_used : int
        Frames handed to the reconstruction in the current run.
    frames_pending : int
        Frames of the current run received but not yet read, checked and handed on (the
        background thread is still working on them); ``frames_used`` grows as they go.
    finished : bool
        Whether the current (or last) run has stopped and its final passes are done, so that
        :meth:`PtychoCallback.result` returns at once.
    rejected : int
        Items (documents, frames) rejected, over all runs.
    reasons : tuple of str
        One line per cause of rejection (per run), oldest first: the first rejected item's
        reason, with the count and seq_num range when the cause hit more items
        (:meth:`Rejection.text`).
    message : str
        A one-line summary for operators; says when frames are still being processed or the
        final passes are running.
    live : LiveStatus or None
        The reconstruction's own status.
    """

    documents: dict[str, int]
    runs: int
    run_uid: str | None
    frames_received: int
    frames_used: int
    rejected: int
    reasons: tuple[str, ...]
    message: str
    live: LiveStatus | None
    rejections: tuple[Rejection, ...] = ()
    frames_pending: int = 0
    finished: bool = False


@dataclass
class _Run:
    """One run being reconstructed: its setup, reconstruction and counters."""

    uid: str
    setup: ScanSetup
    live: LiveReconstruction
    start_doc: Mapping[str, Any]
    object_frame: ObjectFrame | None = None
    descriptors: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    detector_shape: tuple[int, ...] | None = None
    preprocess: PreprocessConfig | None = None
    frames_received: int = 0
    frames_used: int = 0
    frames_queued: int = 0
    frames_processed: int = 0
    rejected: int = 0
    exit_status: str | None = None
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: ReconstructionState | None = None
    result_path: Path | None = None
    message: str = ""


class PtychoCallback(event_model.DocumentRouter):
    """Reconstruct every run it receives, live.

    Parameters
    ----------
    setup : ScanSetup, optional
        Used for runs whose start document lacks ``start["ptycho"]``, so any bluesky plan works.
    output_dir : str or Path, optional
        Where each run's result is written (HDF5) when it stops.
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
    ) -> None:
        super().__init__()
        self.probe: ProbeInit | np.ndarray | None
        if probe is None or isinstance(probe, (ProbeInit, str, dict)):
            self.probe = None if probe is None else ProbeInit.parse(probe)
        else:
            self.probe = np.asarray(probe, dtype=np.complex64)
        self.on_frame = on_frame
        if setup is not None and not isinstance(setup, ScanSetup):
            raise TypeError(f"setup must be a ScanSetup, got {type(setup).__name__}")
        self.setup = setup
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.options = options or LiveOptions()
        self.final_passes = final_passes
        self.assets = AssetRegistry(handlers)
        self._observers = list(observers)
        self._lock = threading.Lock()
        self._docs: collections.Counter[str] = collections.Counter()
        self._tally = _Tally(_MAX_REASONS)
        self._runs = 0
        self._run: _Run | None = None
        self._last: _Run | None = None
        self._ignored: set[str] = set()  # uids of ignored runs and of their descriptors
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="ptycho-callback", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- public
    def add_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Receive snapshots of this and later runs."""
        self._observers.append(fn)
        if self._run is not None:
            self._run.live.add_observer(fn)

    @property
    def live(self) -> LiveReconstruction | None:
        """The current (or last) run's reconstruction."""
        run = self._run or self._last
        return run.live if run else None

    def result(self, timeout: float | None = 60) -> ReconstructionState:
        """Wait for the last run's final passes after its stop; return its state.

        Raises
        ------
        TimeoutError
            If the run has not finished within ``timeout`` seconds.
        RuntimeError
            If no run was ever started.
        """
        run = self._run or self._last
        if run is None:
            raise RuntimeError("no run has been received yet")
        if not run.done.wait(timeout):
            raise TimeoutError(f"run {run.uid} did not finish within {timeout} s")
        assert run.result is not None
        return run.result

    @property
    def result_path(self) -> Path | None:
        """The last finished run's result file, when an output directory is set."""
        run = self._last or self._run
        return run.result_path if run else None

    @property
    def status(self) -> CallbackStatus:
        """Documents seen, frames used, items rejected and why."""
        with self._lock:
            run = self._run or self._last
            live = run.live.status if run else None
            pending = run.frames_queued - run.frames_processed if run else 0
            if run is None:
                message = "waiting for a run"
            elif run.message:
                message = run.message
            else:
                message = f"run {run.uid[:8]}: {run.frames_used}/{run.frames_received} frames used"
                worst = max(
                    self._tally.entries(run.uid, every_run=False),
                    key=lambda e: e.count,
                    default=None,
                )
                if worst is not None:
                    message += f"; {run.rejected} rejected, most for: {worst.message}"
            if run is not None:
                message += _progress_note(run, pending)
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
                message=message,
                live=live,
                rejections=rejections,
            )

    def close(self, timeout: float | None = 10) -> None:
        """Stop the background thread (after finishing queued work)."""
        self._jobs.put(None)
        self._worker.join(timeout)

    # ----------------------------------------------------------------- dispatch
    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        with self._lock:
            self._docs[name] += 1
        try:
            return super().__call__(name, doc, validate)
        except Exception as exc:  # never let a document kill the RunEngine
            self._reject(
                name,
                doc,
                f"{type(exc).__name__}: {exc}",
                cause=_cause_key(exc),
                exc_info=not isinstance(exc, (AssetError, ValueError)),
            )
            return name, doc

    def _reject(
        self,
        name: str,
        doc: Any,
        reason: str,
        *,
        cause: str | None = None,
        exc_info: bool = False,
    ) -> None:
        seq = doc.get("seq_num") if isinstance(doc, Mapping) else None
        self._record(
            self._run,
            f"{_where(name, doc)}: {reason}",
            cause or f"{name}: {reason}",
            seq if isinstance(seq, int) else None,
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
    ) -> None:
        """Count a rejected item under its cause; log the first, then at 10, 100, 1000..."""
        with self._lock:
            entry = self._tally.add(run.uid if run else None, cause, text, seq_num)
            if run is not None:
                run.rejected += 1
        if entry.count == 1:
            logger.warning("rejected %s", text, exc_info=exc_info)
        elif _count_worth_logging(entry.count):
            logger.warning(
                "rejected %d items so far for the same cause (%s); first: %s",
                entry.count,
                entry.cause,
                entry.text(),
            )
        else:
            logger.debug("rejected %s", text)

    # ----------------------------------------------------------------- documents
    def start(self, doc: RunStart) -> None:
        if self._run is not None:
            self._close_run(self._run, "superseded: a new run started before its stop")
        self.assets.clear()
        uid = str(doc.get("uid", ""))
        try:
            start: Mapping[str, Any] = doc  # start["ptycho"] is the contract's own key
            if START_KEY in start:
                setup = ScanSetup.from_start_doc(start[START_KEY])
            elif self.setup is not None:
                setup = self.setup
            else:
                raise ValueError(
                    f'no start["{START_KEY}"] and no ScanSetup given to PtychoCallback'
                )
        except ValueError as exc:
            self._ignored.add(uid)
            self._reject("start", doc, f"run ignored: {exc}")
            return
        size = setup.frame_size
        try:
            frame = setup.object_frame()
            probe = self._initial_probe(setup)
            live = LiveReconstruction(
                frame.object_shape,
                (size, size),
                expected_patterns=setup.expected_points,
                probe=probe,
                options=self.options,
                name=f"ptycho-{uid[:8]}",
            )
        except (ValueError, OSError) as exc:
            self._ignored.add(uid)
            self._reject("start", doc, f"run ignored: {exc}")
            return
        for fn in self._observers:
            live.add_observer(fn)
        run = _Run(uid=uid, setup=setup, live=live, start_doc=doc, object_frame=frame)
        with self._lock:
            self._run = run
            self._runs += 1
        live.start()

    def _initial_probe(self, setup: ScanSetup) -> Any:
        if self.probe is not None:
            return self.probe
        start = setup.start_probe()
        if isinstance(start, str) and start:
            from bluesky_ptycho.io.result import read_result

            return read_result(start).state.probe
        return start

    def descriptor(self, doc: EventDescriptor) -> None:
        if doc.get("run_start") in self._ignored:
            self._ignored.add(doc.get("uid", ""))
            return
        run = self._current(doc, "descriptor")
        if run is None:
            return
        run.descriptors[doc["uid"]] = doc
        data_keys: Mapping[str, Any] = doc.get("data_keys") or {}
        info: Mapping[str, Any] = data_keys.get(run.setup.detector_key) or {}
        shape = [int(s) for s in info.get("shape") or []]
        while len(shape) > 2 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) == 2:
            run.detector_shape = tuple(shape)

    def event(self, doc: Event) -> Event:
        run = self._current(doc, "event")
        if run is None:
            return doc
        descriptor = run.descriptors.get(doc.get("descriptor"))
        if descriptor is None:
            self._reject("event", doc, f"unknown descriptor {doc.get('descriptor')!r}")
            return doc
        setup = run.setup
        data_keys = descriptor.get("data_keys", {})
        if setup.detector_key not in data_keys:
            return doc  # another stream (baseline, monitors): not ours
        data = doc.get("data", {})
        missing = [k for k in setup.position_keys if k not in data]
        if missing:
            self._reject("event", doc, f"position key(s) {missing} missing from event data")
            return doc
        try:
            readbacks = [float(data[k]) for k in setup.position_keys]
        except (TypeError, ValueError):
            self._reject(
                "event",
                doc,
                f"position readbacks are not numbers: {[data[k] for k in setup.position_keys]!r}",
            )
            return doc
        run.frames_received += 1
        key = setup.detector_key
        external = str(data_keys[key].get("external", ""))
        seq_num = int(doc.get("seq_num", -1))
        if (
            key in data
            and doc.get("filled", {}).get(key, True) is not False
            and not isinstance(data[key], str)
        ):
            source: Any = np.array(data[key], copy=True)  # the device may reuse its buffer
        elif key in data:
            source = self.assets.locate_datum(str(data[key]))
        elif external.startswith("STREAM"):
            source = self.assets.locate_stream(doc["descriptor"], key, seq_num)
        else:
            self._reject("event", doc, f"detector key {key!r} missing from event data")
            return doc
        with self._lock:
            run.frames_queued += 1
        self._jobs.put(("frame", run, _where("event", doc), seq_num, source, readbacks))
        return doc

    def resource(self, doc: Resource) -> None:
        if doc.get("run_start") not in self._ignored:
            self.assets.add_resource(doc)

    def datum(self, doc: Datum) -> Datum:
        self.assets.add_datum(doc)
        return doc

    def stream_resource(self, doc: StreamResource) -> None:
        self.assets.add_stream_resource(doc)

    def stream_datum(self, doc: StreamDatum) -> None:
        self.assets.add_stream_datum(doc)

    def stop(self, doc: RunStop) -> None:
        run = self._current(doc, "stop")
        if run is None:
            return
        status = str(doc.get("exit_status", "success"))
        run.exit_status = status
        if status != "success":
            reason = doc.get("reason", "") or ""
            self._close_run(
                run,
                f"run ended with exit_status {status!r}{': ' + reason if reason else ''}; "
                "kept the frames received",
            )
        else:
            self._close_run(run, "")

    # ----------------------------------------------------------------- helpers
    def _current(self, doc: Mapping[str, Any], name: str) -> _Run | None:
        """The open run a document belongs to; None (reported) when there is none."""
        owner = doc.get("run_start") or doc.get("descriptor")
        if owner is not None and owner in self._ignored:
            return None
        run = self._run
        if run is None:
            self._reject(name, doc, "no run is open (document without its start)")
        return run

    def _close_run(self, run: _Run, message: str) -> None:
        run.message = message
        run.closed = True
        with self._lock:
            self._last = run
            if self._run is run:
                self._run = None
        self._jobs.put(("finish", run))

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
        self, run: _Run, where: str, seq_num: int, source: Any, readbacks: list[float]
    ) -> None:
        try:
            if isinstance(source, (DatumLocator, StreamLocator)):
                raw = self.assets.read(source)
            else:
                raw = source
            raw = np.asarray(raw)
            while raw.ndim > 2 and raw.shape[0] == 1:
                raw = raw[0]
            if raw.ndim != 2:
                raise _FrameRejected(
                    "NOT_2D", f"frame has shape {raw.shape}, expected a 2-D detector image"
                )
            if run.detector_shape is None:
                run.detector_shape = tuple(raw.shape)
            if tuple(raw.shape) != tuple(run.detector_shape):
                cause = ReadCause.SHAPE_CHANGED
                raise _FrameRejected(
                    cause,
                    f"frame shape {tuple(raw.shape)} differs from the detector's "
                    f"{tuple(run.detector_shape)}: {cause.summary}. Fix: {cause.fix}",
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
            run.frames_used += 1
            if self.on_frame is not None:
                self.on_frame(
                    index, out.intensities[0], None if out.mask is None else out.mask[0], pos_px[0]
                )
        except (AssetError, ValueError) as exc:
            text = f"{where}: {exc}"
            self._record(run, text, _cause_key(exc) or str(exc), seq_num)
        except Exception as exc:  # a handler's own error type, a bad array...: still one item
            text = f"{where}: {type(exc).__name__}: {exc}"
            self._record(run, text, _cause_key(exc) or type(exc).__name__, seq_num, exc_info=True)
        finally:
            with self._lock:
                run.frames_processed += 1

    def _finish(self, run: _Run) -> None:
        with self._lock:
            repeated = [e for e in self._tally.entries(run.uid, every_run=False) if e.count > 1]
        for entry in repeated:  # the final count of every cause that hit several items
            logger.warning("run %s: %s", run.uid[:8], entry.text())
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
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(start.get("time", time.time())))
        path = output_dir / f"ptycho-{stamp}-{run.uid[:8]}.h5"
        status = run.live.status
        metadata = {
            "run_uid": run.uid,
            "scan_id": start.get("scan_id"),
            "plan_name": start.get("plan_name"),
            "exit_status": run.exit_status or "unknown",
            "frames_received": run.frames_received,
            "frames_used": run.frames_used,
            "rejected": run.rejected + status.rejected,
            "rejections": [e.text() for e in self.status.rejections if e.run_uid == run.uid],
            "message": run.message,
            START_KEY: run.setup.to_start_doc(),
        }
        return write_result(
            path, state, geometry=run.setup.geometry(), metadata=metadata, overwrite=True
        )


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
