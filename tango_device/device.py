"""``PtychoReconstruction``: a Tango device server over :class:`~bluesky_ptycho.PtychoCallback`.

The device is a thin shell: documents arrive over the bluesky 0MQ proxy (a
:class:`~bluesky_ptycho.transport.DocumentFeed`) or from a replay
(:func:`bluesky_ptycho.io.replay.replay`) and go to a
:class:`~bluesky_ptycho.callback.PtychoCallback`, which reconstructs each run live with a
:class:`~bluesky_ptycho.live.LiveReconstruction`. Every snapshot the reconstruction publishes
becomes attribute values with change and data-ready events.

Threads
-------
* Tango's own threads run the commands, attribute reads and writes, State and Status.
* The feed thread (or the replay thread) hands documents to the callback, which only enqueues.
* The reconstruction's worker thread calls the snapshot observer, which only stores the
  snapshot and wakes the pusher: it never touches Tango.
* The pusher thread, made in ``init_device``, runs inside ``tango.EnsureOmniThread()``, converts
  the latest snapshot to attribute values at most once per ``PublishPeriod`` and pushes the
  events. Only it and Tango's threads call Tango.

Nothing a document, a snapshot or a push does can raise out of these threads: errors are logged
and shown in Status (and turn the state to FAULT where they stop the device from working).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState, DispLevel
from tango.server import Device, attribute, command, device_property

from bluesky_ptycho import callback as callback_module
from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.engine.state import SIGNAL_FOUND, SIGNAL_NOT_FOUND
from bluesky_ptycho.io.result import write_result
from bluesky_ptycho.live import LiveOptions, LiveReconstruction, Snapshot

from .logic import (
    STEERABLE_PHASES,
    DeviceFacts,
    Integrity,
    RunLine,
    evaluate,
    keep_setpoints,
    setpoints,
    status_text,
)
from .recovery import RunCheckpoints
from .views import (
    SIGNAL_OK_RATIO,
    RunInfo,
    SnapshotView,
    confine,
    make_view,
    pixel_size_m,
    resolve_inside,
)

__all__ = ["EVENT_ATTRIBUTES", "PtychoReconstruction"]

logger = logging.getLogger(__name__)

EVENT_ATTRIBUTES = (
    "ObjectAmplitude",
    "ObjectPhase",
    "ProbeAmplitude",
    "ProbePhase",
    "ScanPositions",
    "Iteration",
    "PatternsReceived",
    "PatternsInUse",
    "FourierError",
    "ErrorHistory",
    "ValidationError",
    "ValidationRatio",
    "SignalOK",
    "ScanUid",
    "Progress",
    "RunPhase",
    "PixelSize",
)
"""Attributes with change and data-ready events, pushed for every published snapshot."""

_MAX_IMAGE = 4096
_MAX_POSITIONS = 1_000_000
_MAX_HISTORY = 1_000_000
_MAX_NOTES = 10
_CONNECT_GRACE_S = 5.0
"""Seconds a newly armed feed may take to connect before the device says ALARM."""
_JOIN_S = 5.0
_CATALOG_ID = re.compile(r"[A-Za-z0-9_\-]+")  # a run uid, uid prefix or scan id: not a path


@dataclass(frozen=True)
class _Pending:
    """The newest snapshot waiting for the pusher (``snapshot=None``: push the empty view)."""

    generation: int
    snapshot: Snapshot | None
    uid: str
    run: RunInfo | None


class _Cancelled(Exception):
    """Raised into a replay by the device to abandon it (Stop, Reset, shutdown)."""


def _refuse(reason: str, desc: str, origin: str) -> None:
    """Raise a ``DevFailed`` with a reason code and a sentence saying why."""
    tango.Except.throw_exception(reason, desc, origin)


class PtychoReconstruction(Device):
    """Live ptychographic reconstruction of Bluesky scans.

    States: ON (idle, data kept), STANDBY (armed: waiting for a run), RUNNING (a run is being
    reconstructed), FAULT (the reason is in Status). See ``docs/how-to/tango.md``.
    """

    # ------------------------------------------------------------------ properties
    ZmqAddress = device_property(
        dtype=str,
        default_value="",
        doc='The bluesky 0MQ proxy\'s OUT address, "host:port" (e.g. "127.0.0.1:5578"); '
        '"" = no document feed (Start is refused; use Replay).',
    )
    ZmqPrefix = device_property(
        dtype=str,
        default_value="",
        doc='Only documents published with this prefix are used ("" = all).',
    )
    Backend = device_property(
        dtype=str,
        default_value="numpy",
        doc='Engine array backend: "numpy", "cupy" (GPU) or "array_api_strict".',
    )
    OutputDirectory = device_property(
        dtype=str,
        default_value="",
        doc="Directory for Save(path) and for each finished run's result file; "
        '"" = saving disabled.',
    )
    AutoSave = device_property(
        dtype=bool,
        default_value=True,
        doc="Write every finished run's result into OutputDirectory (when it is set).",
    )
    PublishPeriod = device_property(
        dtype=float,
        default_value=0.5,
        doc="Initial publish period in seconds (the memorized attribute overrides it).",
    )
    FinalPasses = device_property(
        dtype=int,
        default_value=20,
        doc="Full passes over all patterns after a run stops.",
    )
    Catalog = device_property(
        dtype=str,
        default_value="",
        doc="databroker catalog (name or URI) in which Replay looks up run uids.",
    )
    Parallel = device_property(
        dtype=str,
        default_value="sequential",
        doc="The engine: 'sequential' ePIE, or 'synchronous' (mini-batch ePIE whose result "
        "does not depend on Workers; see docs/explanation/parallel.md).",
    )
    Workers = device_property(
        dtype=int,
        default_value=1,
        doc="Worker threads of the synchronous engine (Parallel = 'synchronous').",
    )
    AutoStart = device_property(
        dtype=bool,
        default_value=False,
        doc="Arm (as the Start command) when the device initialises.",
    )
    IdleTimeout = device_property(
        dtype=float,
        default_value=300.0,
        doc="Seconds without documents after which a run whose stop never came is finished "
        "and saved (Status then says MISSING STOP).",
    )
    CheckpointDirectory = device_property(
        dtype=str,
        default_value="",
        doc="Directory for crash-recovery checkpoints of the open runs (patterns as they "
        "arrive, object and probe every CheckpointPeriod); a server restarted after a crash "
        'resumes the open runs from it. "" = no checkpoints.',
    )
    CheckpointPeriod = device_property(
        dtype=float,
        default_value=10.0,
        doc="Seconds between writes of the object and probe into the checkpoint (patterns are "
        "written as they arrive).",
    )
    DataDirectories = device_property(
        dtype=(str,),
        default_value=[],
        doc="Directories Replay and Follow may read, and from which a start document's "
        "probe_init file may come (symbolic links and .. are resolved first); empty = no "
        "files. Catalog run uids and http(s) URIs are not files and are not affected.",
    )

    # ------------------------------------------------------------------ lifecycle
    def init_device(self) -> None:
        """Per-device state, the callback and the pusher thread; arms if AutoStart is set."""
        super().init_device()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._pending: _Pending | None = None
        self._generation = 0  # bumped by Reset: older snapshots are dropped
        self._view = SnapshotView.empty()
        self._run: RunInfo | None = None
        self._feed: Any = None
        self._armed_at = 0.0  # time.monotonic() when the feed was last armed
        self._replay_thread: threading.Thread | None = None
        self._replay_cancel = threading.Event()
        self._stopped: LiveReconstruction | None = None  # the reconstruction Stop ended
        self._fault: str | None = None
        self._notes: deque[str] = deque(maxlen=_MAX_NOTES)
        self._pushes = 0
        # set when the Init command re-initialises: Tango writes memorized values only at
        # server start, so Init keeps the set-points in force (= the memorized ones)
        previous = getattr(self, "_options", None)
        previous_rate = float(getattr(self, "_replay_rate", 0.0))
        self._options = LiveOptions()
        try:
            from bluesky_ptycho.backend import get_backend

            get_backend(str(self.Backend))
            self._options = LiveOptions(
                publish_period_s=float(self.PublishPeriod),
                final_passes=int(self.FinalPasses),
                backend=str(self.Backend),
                parallel=str(self.Parallel),
                workers=int(self.Workers),
            )
        except Exception as exc:  # a bad property must not keep the server from starting
            self._fail(f"bad device property: {type(exc).__name__}: {exc}")
        if isinstance(previous, LiveOptions):
            self._options = keep_setpoints(self._options, previous)
        self._period = float(self._options.publish_period_s)
        self._replay_rate = previous_rate
        self._checkpoints: RunCheckpoints | None = None
        if str(self.CheckpointDirectory).strip():
            try:
                self._checkpoints = RunCheckpoints(str(self.CheckpointDirectory), self._note)
            except Exception as exc:
                self._fail(f"bad device property CheckpointDirectory: {exc}")
        self._callback = self._new_callback()
        self._resume()
        self._show_setpoints()
        for name in EVENT_ATTRIBUTES:
            self.set_change_event(name, True, False)
            self.set_data_ready_event(name, True)
        self._pusher = threading.Thread(
            target=self._pusher_main,
            args=(self._closing,),
            name=f"{self.get_name()}-pusher",
            daemon=True,
        )
        self._pusher.start()
        self._checkpointer: threading.Thread | None = None
        if self._checkpoints is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_main,
                args=(self._closing, self._checkpoints),
                name=f"{self.get_name()}-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()
        if self.AutoStart and self.ZmqAddress and self._fault is None:
            try:
                self._arm()
            except Exception as exc:
                self._fail(f"AutoStart failed: {exc}")

    def _show_setpoints(self) -> None:
        """Make the values in force the write values of the memorized attributes.

        Without this a fresh device reports ``w_value`` 0 for them, and a client showing
        set-points (a Taurus form) would offer 0. A value memorized in the database is written
        after ``init_device`` and becomes the write value then.
        """
        attrs = self.get_device_attr()
        for name, value in setpoints(self._callback.options, self._replay_rate).items():
            try:
                attrs.get_w_attr_by_name(name).set_write_value(value)
            except Exception as exc:  # never keep the server from starting
                self._note(f"cannot show the set-point of {name}: {exc}")

    def delete_device(self) -> None:
        """Stop feed, replay, reconstruction and pusher (bounded waits)."""
        self._closing.set()
        with self._wake:
            self._wake.notify_all()
        self._disarm()
        self._cancel_replay()
        live = self._callback.live
        if live is not None:
            live.stop()
        self._callback.close(timeout=_JOIN_S)
        self._pusher.join(_JOIN_S)
        if self._checkpointer is not None:
            self._checkpointer.join(_JOIN_S)
        if self._checkpoints is not None:
            self._checkpoints.close()  # kept on disk: a restart resumes the open runs
        super().delete_device()

    def _new_callback(self) -> PtychoCallback:
        out = str(self.OutputDirectory)
        extra: dict[str, Any] = {}
        accepted = inspect.signature(PtychoCallback).parameters
        if "probe_dirs" in accepted:
            extra["probe_dirs"] = self._data_dirs()
        if "idle_timeout" in accepted and float(self.IdleTimeout) > 0:
            extra["idle_timeout"] = float(self.IdleTimeout)
        if self._checkpoints is not None and "on_pattern" in accepted:
            extra["on_pattern"] = self._checkpoints.on_pattern
        return PtychoCallback(
            output_dir=out if (out and self.AutoSave) else None,
            options=self._options,
            observers=[self._on_snapshot],
            **extra,
        )

    def _data_dirs(self) -> list[str]:
        return [str(d) for d in (self.DataDirectories or ()) if str(d).strip()]

    # ------------------------------------------------------------------ crash recovery
    def _resume(self) -> None:
        """Reopen the runs a killed server left checkpoints of (init_device)."""
        checkpoints = self._checkpoints
        if checkpoints is None:
            return
        record_type = getattr(callback_module, "PatternRecord", None)
        if record_type is None:
            self._note("checkpoints cannot be resumed: this callback has no PatternRecord")
            return
        try:
            for rec in checkpoints.resume(
                self._callback, record_type, lambda stop: self._on_document("stop", stop)
            ):
                self._run = RunInfo.from_start(rec.start)
        except Exception as exc:
            logger.exception("resuming from checkpoints failed")
            self._note(f"resuming from checkpoints failed: {type(exc).__name__}: {exc}")

    def _drop_checkpoints(self) -> None:
        """Delete the checkpoints of the open runs (Stop and Reset end them on purpose)."""
        checkpoints = self._checkpoints
        if checkpoints is not None:
            for run_uid in checkpoints.open_runs:
                checkpoints.finish(run_uid)

    def _checkpoint_main(self, closing: threading.Event, checkpoints: RunCheckpoints) -> None:
        """Every CheckpointPeriod: the object and probe into the checkpoint; drop saved runs."""
        period = max(0.1, float(self.CheckpointPeriod))
        while not closing.wait(period):
            checkpoints.tick(self._callback)

    def _fail(self, reason: str) -> None:
        """Enter FAULT with ``reason`` (kept until Stop or Reset)."""
        logger.error("%s", reason)
        with self._lock:
            self._fault = reason
            self._notes.append(reason)

    def _note(self, text: str) -> None:
        logger.warning("%s", text)
        with self._lock:
            self._notes.append(text)

    # ------------------------------------------------------------------ documents in
    def _on_document(self, name: str, doc: dict) -> None:
        """Hand a document to the callback (feed or replay thread); never raises."""
        checkpoints = self._checkpoints
        try:
            if checkpoints is not None:
                checkpoints.before(name, doc)
            if name == "start" and isinstance(doc, dict):
                info = RunInfo.from_start(doc)
                self._callback(name, doc)
                status = self._callback.status
                if status.run_uid == info.uid:
                    with self._lock:
                        self._run = info
                if checkpoints is not None:
                    opened = tuple(getattr(status, "open_runs", ()) or ())
                    checkpoints.after(name, doc, (*opened, status.run_uid or ""))
            else:
                self._callback(name, doc)
        except Exception as exc:  # the callback does not raise; this is a last resort
            logger.exception("document %s failed", name)
            self._note(f"{name} document failed: {type(exc).__name__}: {exc}")

    def _on_snapshot(self, snap: Snapshot) -> None:
        """Observer (reconstruction worker thread): keep the newest snapshot, wake the pusher."""
        try:
            live = self._callback.live
            if live is None or live.latest() is not snap:
                return  # from a superseded run or a reset reconstruction
            uid = self._callback.status.run_uid or ""
            with self._wake:
                run = self._run if self._run is not None and self._run.uid == uid else None
                self._pending = _Pending(self._generation, snap, uid, run)
                self._wake.notify_all()
        except Exception as exc:
            logger.exception("snapshot observer failed")
            self._note(f"snapshot observer failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ events out
    def _pusher_main(self, closing: threading.Event) -> None:
        """Convert the newest snapshot and push events, at most once per PublishPeriod."""
        with tango.EnsureOmniThread():
            last = -math.inf
            while not closing.is_set():
                with self._wake:
                    while self._pending is None and not closing.is_set():
                        self._wake.wait(0.5)
                if closing.is_set():
                    return
                due = last + self._period - time.monotonic()
                if due > 0 and closing.wait(due):
                    return
                with self._wake:
                    pending, self._pending = self._pending, None
                if pending is None:
                    continue
                last = time.monotonic()
                try:
                    self._publish(pending)
                except Exception as exc:
                    logger.exception("pushing events failed")
                    self._note(f"pushing events failed: {type(exc).__name__}: {exc}")

    def _publish(self, pending: _Pending) -> None:
        if pending.snapshot is None:
            view = SnapshotView.empty()
        else:
            live = self._callback.live
            error = live.status.fourier_error if live is not None else math.nan
            expected = pending.run.expected if pending.run is not None else None
            view = make_view(
                pending.snapshot,
                uid=pending.uid,
                expected=expected,
                fourier_error=error,
                pixel_size=pixel_size_m(pending.run),
            )
        with self._lock:
            if pending.generation != self._generation:
                return  # a Reset came in meanwhile
            self._view = view
        for name, value in self._values(view).items():
            self.push_change_event(name, value)
            self.push_data_ready_event(name, view.seq)
        self._pushes += 1

    @staticmethod
    def _values(view: SnapshotView) -> dict[str, Any]:
        return {
            "ObjectAmplitude": view.object_amplitude,
            "ObjectPhase": view.object_phase,
            "ProbeAmplitude": view.probe_amplitude,
            "ProbePhase": view.probe_phase,
            "ScanPositions": view.positions_px,
            "Iteration": view.iteration,
            "PatternsReceived": view.patterns_received,
            "PatternsInUse": view.patterns_in_use,
            "FourierError": view.fourier_error,
            "ErrorHistory": view.error_history,
            "ValidationError": view.validation_error,
            "ValidationRatio": view.validation_ratio,
            "SignalOK": view.signal_ok,
            "ScanUid": view.uid,
            "Progress": view.progress,
            "RunPhase": view.phase,
            "PixelSize": view.pixel_size_m,
        }

    # ------------------------------------------------------------------ state
    def _facts(self) -> DeviceFacts:
        """The plain facts :func:`~.logic.evaluate` decides the state from."""
        with self._lock:
            fault = self._fault
        feed = self._feed
        live = self._callback.live
        status = live.status if live is not None else None
        if live is not None and live is self._stopped:
            status = None  # Stop was requested: it ends at its next step, whatever it says now
        thread = self._replay_thread
        return DeviceFacts(
            fault=fault,
            feed_address=feed.address if feed is not None else None,
            feed_running=bool(feed.running) if feed is not None else True,
            feed_connected=self._feed_connected(feed),
            feed_error=str(feed.last_error or "") if feed is not None else "",
            phase=status.phase if status is not None else None,
            reconstruction_fault=str(status.fault) if status is not None else "",
            replaying=thread is not None and thread.is_alive(),
        )

    def _feed_connected(self, feed: Any) -> bool:
        """Connected, or armed moments ago and still connecting (never yet connected)."""
        if feed is None:
            return True
        status = feed.status
        if status.connected:
            return True
        connecting = status.connections == 0
        return connecting and time.monotonic() - self._armed_at < _CONNECT_GRACE_S

    def _evaluate(self) -> tuple[DevState, str]:
        """The device state and why, from the library's own status."""
        name, why = evaluate(self._facts())
        return DevState.names[name], why

    def dev_state(self) -> DevState:
        """State computed from the reconstruction, feed and replay."""
        state, _ = self._evaluate()
        self.set_state(state)
        return state

    def dev_status(self) -> str:
        """State, reason, run counters, feed and the latest problems."""
        state, why = self._evaluate()
        cb = self._callback.status
        view = self._view
        live = cb.live
        run_line = None
        if cb.run_uid is not None and live is not None:
            run = self._run
            run_line = RunLine(
                uid=cb.run_uid,
                phase=live.phase,
                received=live.patterns_received,
                in_use=live.patterns_in_use,
                iteration=live.iteration,
                updates=live.pattern_updates,
                expected=run.expected if run is not None and run.uid == cb.run_uid else None,
                fourier_error=live.fourier_error,
            )
        feed = self._feed
        with self._lock:
            notes = list(self._notes)
        integrity = self._integrity(cb, feed)
        text = status_text(
            str(state),
            why,
            options=self._callback.options,
            run=run_line,
            shown_seq=view.seq,
            validation_ratio=view.validation_ratio,
            callback_message=cb.message,
            rejected=cb.rejected,
            feed=(
                (feed.address, feed.documents_received, feed.errors, feed.last_error or "")
                if feed is not None
                else None
            ),
            pushes=self._pushes,
            # the callback reports rejections to both lists; status_text shows each once
            problems=[*cb.reasons[-3:], *(live.messages[-3:] if live else ()), *notes[-3:]],
            integrity=integrity,
        )
        self.set_status(text)
        return text

    def _integrity(self, cb: Any, feed: Any) -> Integrity:
        """Loss, repeats, quarantine, the feed's link and recovered runs, for Status."""
        live = cb.live
        feed_status = self._feed_status(feed)
        lost = int(getattr(cb, "lost", 0) or 0)
        checkpoints = self._checkpoints
        recovered = tuple(r.text(lost) for r in checkpoints.recovered) if checkpoints else ()
        return Integrity(
            lost=lost,
            missing_stops=int(getattr(cb, "missing_stops", 0) or 0),
            duplicates=int(getattr(cb, "duplicates", 0) or 0),
            quarantined=int(getattr(live, "quarantined", 0) or 0) if live is not None else 0,
            quarantine_reasons=tuple(getattr(live, "quarantine_reasons", ()) or ()),
            removed=int(getattr(live, "removed", 0) or 0) if live is not None else 0,
            removal_reasons=tuple(getattr(live, "removal_reasons", ()) or ()),
            feed_address=feed.address if feed is not None else None,
            feed_connected=bool(getattr(feed_status, "connected", True)),
            feed_age=getattr(feed_status, "last_document_age", None),
            recovered=recovered,
        )

    @staticmethod
    def _feed_status(feed: Any) -> Any:
        """The feed's ``FeedStatus`` (None when not armed or not available)."""
        if feed is None:
            return None
        try:
            return getattr(feed, "status", None)
        except Exception:  # a feed without the status property, or one failing to report
            return None

    def _require(self, command_name: str, allowed: tuple[DevState, ...], hint: str) -> bool:
        state, why = self._evaluate()
        if state not in allowed:
            _refuse(
                "PTYCHO_WrongState",
                f"{command_name} is not allowed in state {state} ({why}); {hint}",
                f"PtychoReconstruction.{command_name}",
            )
        return True

    # ------------------------------------------------------------------ read attributes
    ObjectAmplitude = attribute(
        dtype=((np.float32,),),
        max_dim_x=_MAX_IMAGE,
        max_dim_y=_MAX_IMAGE,
        unit="",
        format="%.4f",
        label="Object amplitude",
        description="|object|: the specimen's transmission modulus (1 = transparent), "
        "object pixels, (0, 0) before the first snapshot.",
    )
    ObjectPhase = attribute(
        dtype=((np.float32,),),
        max_dim_x=_MAX_IMAGE,
        max_dim_y=_MAX_IMAGE,
        unit="rad",
        format="%.4f",
        label="Object phase",
        description="angle(object) in radians, in (-pi, pi], object pixels.",
    )
    ProbeAmplitude = attribute(
        dtype=((np.float32,),),
        max_dim_x=_MAX_IMAGE,
        max_dim_y=_MAX_IMAGE,
        unit="sqrt(counts)",
        format="%.4g",
        label="Probe amplitude",
        description="|probe| (sum |probe|^2 = counts of one pattern), detector-frame pixels.",
    )
    ProbePhase = attribute(
        dtype=((np.float32,),),
        max_dim_x=_MAX_IMAGE,
        max_dim_y=_MAX_IMAGE,
        unit="rad",
        format="%.4f",
        label="Probe phase",
        description="angle(probe) in radians, in (-pi, pi].",
    )
    ScanPositions = attribute(
        dtype=((np.float64,),),
        max_dim_x=2,
        max_dim_y=_MAX_POSITIONS,
        unit="px",
        format="%.3f",
        label="Scan positions",
        description="(n, 2) image: (row, col) of each pattern's probe-patch top-left corner in "
        "OBJECT PIXELS (the object arrays' index space), from the measured encoder readbacks.",
    )
    Iteration = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Iteration",
        description="Completed passes over all patterns, during the scan (the default batch "
        "pacing runs whole passes) and the final passes.",
    )
    PatternsReceived = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Patterns received",
        description="Frames handed to the reconstruction in the current run.",
    )
    PatternsInUse = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Patterns in use",
        description="Patterns the engine holds (received minus rejected minus not yet ingested).",
    )
    FourierError = attribute(
        dtype=float,
        unit="",
        format="%.5f",
        label="Fourier error",
        description="Latest normalised Fourier error sum((|F(PO)| - sqrt(I))^2) / sum(I) of "
        "the patterns in use, after the latest chunk of updates or pass (also while the scan "
        "runs); NaN before the first update.",
    )
    ErrorHistory = attribute(
        dtype=(np.float64,),
        max_dim_x=_MAX_HISTORY,
        unit="",
        format="%.5f",
        label="Error history",
        description="Normalised Fourier error after every chunk of updates (during the scan "
        "and the final passes), oldest first; thinned to every other entry when it grows "
        "past a few hundred. The last entry is FourierError.",
    )
    ValidationError = attribute(
        dtype=float,
        unit="",
        format="%.5f",
        label="Validation error",
        description="Normalised Fourier error the current probe and object predict for the "
        "held-out patterns (every 25th pattern is never used in an update); NaN when none is "
        "held out yet.",
    )
    ValidationRatio = attribute(
        dtype=float,
        unit="",
        format="%.3f",
        max_warning=SIGNAL_FOUND,
        max_alarm=SIGNAL_NOT_FOUND,
        label="Validation ratio",
        description="The 'did it work' signal: the Fourier error of held-out patterns (never "
        "used in an update) divided by that of predicting them by the mean pattern (a model "
        "that knows nothing of the specimen). Well below 1 (measured 0.09 to 0.40): the "
        "reconstruction has found the specimen. About 1 or more (measured 0.87 to 1.66): it "
        "has not (a plateau, a wrong starting probe). NaN: not yet known (no held-out "
        f"pattern inside the scanned area yet). Quality WARNING above {SIGNAL_FOUND:g}, "
        f"ALARM above {SIGNAL_NOT_FOUND:g}.",
    )
    SignalOK = attribute(
        dtype=bool,
        label="Signal OK",
        description=f"True when ValidationRatio is known and at most {SIGNAL_OK_RATIO:g} "
        "(the reconstruction has found the specimen); False otherwise or while unknown.",
    )
    ScanUid = attribute(
        dtype=str,
        label="Scan uid",
        description="Start-document uid of the run shown ('' when none).",
    )
    Progress = attribute(
        dtype=float,
        unit="%",
        format="%.1f",
        min_value=0.0,
        max_value=100.0,
        label="Progress",
        description="Patterns received as a percentage of the patterns announced by the start "
        "document (0 when it announces none).",
    )
    RunPhase = attribute(
        dtype=str,
        label="Run phase",
        description="Phase of the run shown: waiting, running, paused, finishing, finished, "
        "stopped or fault ('' when none).",
        display_level=DispLevel.EXPERT,
    )

    PixelSize = attribute(
        dtype=(np.float64,),
        max_dim_x=2,
        unit="m",
        format="%.4g",
        label="Pixel size",
        description="(row, col) size in metres of one object pixel, which is also the probe's "
        "pixel (wavelength x distance / binned detector width), from the run's start document; "
        "[NaN, NaN] when unknown. Multiply image and ScanPositions pixels by it for physical "
        "axes.",
    )

    DocumentsReceived = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Documents received",
        description="Documents the 0MQ feed received since the last Start (0 when not armed); "
        "for checking the link to the proxy.",
        display_level=DispLevel.EXPERT,
    )

    FramesLost = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Frames lost",
        description="Events of the current run known to be missing: gaps in the seq_num of "
        "each descriptor's events, plus the shortfall against the stop document's num_events "
        "(e.g. frames published while the proxy or this server was down).",
    )
    DuplicateDocuments = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Duplicate documents",
        description="Documents and events received again (same uid, or same descriptor and "
        "seq_num) and not used a second time.",
        display_level=DispLevel.EXPERT,
    )
    FeedConnected = attribute(
        dtype=bool,
        label="Feed connected",
        description="True while the 0MQ document feed is armed and connected to the proxy; "
        "False when not armed or when the link is lost (documents sent meanwhile are lost).",
    )
    PatternsQuarantined = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Patterns quarantined",
        description="Frames of the current run held back because their counts are implausible "
        "against the running statistics (the reasons are in Status).",
    )
    RecoveredPatterns = attribute(
        dtype=int,
        unit="",
        format="%d",
        label="Recovered patterns",
        description="Patterns restored from the crash-recovery checkpoint (CheckpointDirectory) "
        "when this server started; 0 when nothing was resumed. FramesLost says how many events "
        "of the resumed run were missed while the server was down.",
    )

    def read_FramesLost(self) -> int:
        return int(getattr(self._callback.status, "lost", 0) or 0)

    def read_DuplicateDocuments(self) -> int:
        return int(getattr(self._callback.status, "duplicates", 0) or 0)

    def read_FeedConnected(self) -> bool:
        feed = self._feed
        if feed is None:
            return False
        status = self._feed_status(feed)
        if status is None:  # a feed that cannot tell: connected while its thread runs
            return bool(feed.running)
        return bool(getattr(status, "connected", False))

    def read_PatternsQuarantined(self) -> int:
        live = self._callback.live
        return int(getattr(live.status, "quarantined", 0) or 0) if live is not None else 0

    def read_RecoveredPatterns(self) -> int:
        checkpoints = self._checkpoints
        return checkpoints.recovered_patterns if checkpoints is not None else 0

    def read_PixelSize(self) -> np.ndarray:
        return self._view.pixel_size_m

    def read_DocumentsReceived(self) -> int:
        feed = self._feed
        return int(feed.documents_received) if feed is not None else 0

    def read_ObjectAmplitude(self) -> np.ndarray:
        return self._view.object_amplitude

    def read_ObjectPhase(self) -> np.ndarray:
        return self._view.object_phase

    def read_ProbeAmplitude(self) -> np.ndarray:
        return self._view.probe_amplitude

    def read_ProbePhase(self) -> np.ndarray:
        return self._view.probe_phase

    def read_ScanPositions(self) -> np.ndarray:
        return self._view.positions_px

    def read_Iteration(self) -> int:
        return self._view.iteration

    def read_PatternsReceived(self) -> int:
        return self._view.patterns_received

    def read_PatternsInUse(self) -> int:
        return self._view.patterns_in_use

    def read_FourierError(self) -> float:
        return self._view.fourier_error

    def read_ErrorHistory(self) -> np.ndarray:
        return self._view.error_history

    def read_ValidationError(self) -> float:
        return self._view.validation_error

    def read_ValidationRatio(self) -> float:
        return self._view.validation_ratio

    def read_SignalOK(self) -> bool:
        return self._view.signal_ok

    def read_ScanUid(self) -> str:
        return self._view.uid

    def read_Progress(self) -> float:
        return self._view.progress

    def read_RunPhase(self) -> str:
        return self._view.phase

    # ------------------------------------------------------------------ steering attributes
    IterationsPerBatch = attribute(
        dtype=int,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        min_value=1,
        max_value=1000,
        unit="updates/pattern",
        format="%d",
        label="Iterations per batch",
        description="Cap of the 'capped' pacing policy: each pattern is used in at most this "
        "many ePIE updates before new data arrives (PacingPolicy.max_updates_per_pattern). "
        "The default 'batch' policy does not use it. Applies to the running and the next "
        "runs; 1..1000.",
    )

    def read_IterationsPerBatch(self) -> int:
        return int(self._callback.options.pacing.max_updates_per_pattern)

    def write_IterationsPerBatch(self, value: int) -> None:
        opts = self._callback.options
        pacing = self._checked(
            "IterationsPerBatch", lambda: replace(opts.pacing, max_updates_per_pattern=int(value))
        )
        self._steer(replace(opts, pacing=pacing), pacing=pacing)

    Alpha = attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        min_value=0.001,
        max_value=2.0,
        unit="",
        format="%.3f",
        label="Alpha",
        description="ePIE object update strength, 0.001..2 (1 as in the study). Applies to the "
        "running and the next runs.",
    )

    def read_Alpha(self) -> float:
        return float(self._callback.options.epie.alpha)

    def write_Alpha(self, value: float) -> None:
        opts = self._callback.options
        epie = self._checked("Alpha", lambda: replace(opts.epie, alpha=float(value)))
        self._steer(replace(opts, epie=epie), epie=epie)

    Beta = attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        min_value=0.0,
        max_value=2.0,
        unit="",
        format="%.3f",
        label="Beta",
        description="ePIE probe update strength, 0..2 (0 keeps the probe fixed). Applies to "
        "the running and the next runs.",
    )

    def read_Beta(self) -> float:
        return float(self._callback.options.epie.beta)

    def write_Beta(self, value: float) -> None:
        opts = self._callback.options
        epie = self._checked("Beta", lambda: replace(opts.epie, beta=float(value)))
        self._steer(replace(opts, epie=epie), epie=epie)

    ReplayRate = attribute(
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        min_value=0.0,
        max_value=100_000.0,
        unit="Hz",
        format="%.1f",
        label="Replay rate",
        description="Frames per second at which Replay sends a recorded scan through the "
        "pipeline, so that it can be watched as it happened; 0 (default): as fast as possible. "
        "Applies to the next Replay.",
    )

    def read_ReplayRate(self) -> float:
        return float(self._replay_rate)

    def write_ReplayRate(self, value: float) -> None:
        self._replay_rate = float(value)

    # the Python name differs from the Tango name: PublishPeriod is also a device property
    publish_period_attribute = attribute(
        name="PublishPeriod",
        dtype=float,
        access=AttrWriteType.READ_WRITE,
        memorized=True,
        hw_memorized=True,
        min_value=0.05,
        max_value=60.0,
        unit="s",
        format="%.2f",
        label="Publish period",
        description="Snapshots (and events) at most this often while reconstructing, "
        "0.05..60 s. Applies to the running and the next runs.",
    )

    def read_PublishPeriod(self) -> float:
        return float(self._callback.options.publish_period_s)

    def write_PublishPeriod(self, value: float) -> None:
        opts = self._callback.options
        new = self._checked("PublishPeriod", lambda: replace(opts, publish_period_s=float(value)))
        self._period = float(value)
        self._steer(new, publish_period_s=float(value))

    @staticmethod
    def _checked(name: str, make: Any) -> Any:
        """Build new options; a refusal by the library becomes a clear DevFailed."""
        try:
            return make()
        except (TypeError, ValueError) as exc:
            _refuse("PTYCHO_BadValue", f"{name} refused: {exc}", f"PtychoReconstruction.{name}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _steer(self, options: LiveOptions, **changes: Any) -> None:
        """New options for the next runs, and the same change for the running one."""
        self._options = options
        self._callback.options = options
        live: LiveReconstruction | None = self._callback.live
        if live is not None and live.status.phase in STEERABLE_PHASES:
            live.set_options(**changes)

    # ------------------------------------------------------------------ commands
    @command(doc_in="", doc_out="")
    def Start(self) -> None:
        """Arm: subscribe to the 0MQ proxy (ZmqAddress) and reconstruct every run it sends."""
        if not self.ZmqAddress:
            _refuse(
                "PTYCHO_NoFeed",
                "Start needs the ZmqAddress device property (the 0MQ proxy's OUT address, e.g. "
                "127.0.0.1:5578); without it, use Replay(file or uid)",
                "PtychoReconstruction.Start",
            )
        try:
            self._arm()
        except Exception as exc:
            _refuse(
                "PTYCHO_FeedFailed",
                f"Start failed: cannot subscribe to {self.ZmqAddress}: {exc}",
                "PtychoReconstruction.Start",
            )

    def is_Start_allowed(self) -> bool:
        return self._require("Start", (DevState.ON,), "Stop first (or Reset after a FAULT)")

    def _arm(self) -> None:
        from bluesky_ptycho.transport import DocumentFeed

        feed = DocumentFeed(
            str(self.ZmqAddress),
            self._on_document,
            prefix=str(self.ZmqPrefix).encode(),
            name=f"{self.get_name()}-feed",
        )
        feed.start(timeout=10.0)
        self._armed_at = time.monotonic()
        self._feed = feed

    def _disarm(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            try:
                feed.stop(timeout=_JOIN_S)
            except Exception as exc:
                self._note(f"stopping the document feed failed: {exc}")

    @command(doc_in="", doc_out="")
    def Stop(self) -> None:
        """Stop the feed (or replay) and the current reconstruction; keep its data (ON)."""
        self._disarm()
        self._cancel_replay()
        live = self._callback.live
        self._drop_checkpoints()  # a stopped run is not resumed by a restart
        if live is not None and live.status.phase in STEERABLE_PHASES:
            live.stop()
            self._stopped = live
            try:  # usually at once; a starved worker ends later (the state is ON anyway)
                live.wait(timeout=_JOIN_S)
            except (TimeoutError, RuntimeError) as exc:
                logger.info("Stop: %s", exc)
        with self._lock:
            self._fault = None

    def is_Stop_allowed(self) -> bool:
        return self._require(
            "Stop", (DevState.STANDBY, DevState.RUNNING, DevState.FAULT), "nothing to stop"
        )

    @command(doc_in="", doc_out="")
    def Reset(self) -> None:
        """Drop the reconstruction and everything shown; clear a FAULT (ON)."""
        self._disarm()
        self._cancel_replay()
        old = self._callback
        live = old.live
        if live is not None:
            live.stop()
        self._drop_checkpoints()  # Reset drops the runs: nothing to resume
        self._callback = self._new_callback()
        old.close(timeout=_JOIN_S)
        with self._wake:
            self._generation += 1
            self._view = SnapshotView.empty()
            self._pending = _Pending(self._generation, None, "", None)  # the pusher clears
            self._run = None
            self._fault = None
            self._notes.clear()
            self._wake.notify_all()

    def is_Reset_allowed(self) -> bool:
        return self._require("Reset", (DevState.ON, DevState.FAULT), "Stop first")

    @command(
        dtype_in=str,
        doc_in="File name inside OutputDirectory (sub-directories allowed; .. and paths "
        "elsewhere are refused)",
        dtype_out=str,
        doc_out="The absolute path written",
    )
    def Save(self, path: str) -> str:
        """Write the current reconstruction (object, probe, positions, errors) to HDF5."""
        origin = "PtychoReconstruction.Save"
        try:
            target = resolve_inside(str(self.OutputDirectory), path)
        except ValueError as exc:
            _refuse("PTYCHO_PathRefused", f"Save refused: {exc}", origin)
        live = self._callback.live
        if live is None:
            _refuse("PTYCHO_NoData", "Save refused: there is no reconstruction to save", origin)
        assert live is not None  # _refuse raised
        if target.exists():
            _refuse(
                "PTYCHO_PathRefused",
                f"Save refused: {str(target)!r} exists; give a new file name",
                origin,
            )
        state = live.state()
        cb = self._callback.status
        run = self._run
        setup = run.setup if run is not None and run.uid == cb.run_uid else None
        metadata = {
            "run_uid": cb.run_uid or "",
            "device": self.get_name(),
            "phase": live.status.phase,
            "frames_received": cb.frames_received,
            "frames_used": cb.frames_used,
            "rejected": cb.rejected,
        }
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            written = write_result(
                target,
                state,
                geometry=setup.geometry() if setup is not None else None,
                metadata=metadata,
            )
        except Exception as exc:
            _refuse("PTYCHO_SaveFailed", f"Save failed writing {str(target)!r}: {exc}", origin)
        return str(written)

    @command(
        dtype_in=str,
        doc_in="A CXI/HDF5 scan file or scan directory inside DataDirectories, a run uid in the "
        "Catalog property's databroker, or an http(s) URI of a run in a tiled server",
        doc_out="",
    )
    def Replay(self, source: str) -> None:
        """Reconstruct a saved scan through the same pipeline, in a background thread."""
        origin = "PtychoReconstruction.Replay"
        text = source.strip()
        if not text:
            _refuse("PTYCHO_BadSource", "Replay refused: give a file path or a run uid", origin)
        if text.startswith(("http://", "https://")) or (
            self.Catalog and _CATALOG_ID.fullmatch(text)
        ):
            self._start_source(self._replay_main, text, "ptycho-replay")  # not a file
            return
        target = self._confined("Replay", text)
        self._start_source(self._replay_main, str(target), "ptycho-replay")

    def _confined(self, name: str, text: str) -> Path:
        """``text`` inside DataDirectories, or a refusal that does not say whether it exists."""
        try:
            return confine(text, self._data_dirs())
        except ValueError as exc:
            hint = (
                "; a run uid needs the Catalog device property"
                if name == "Replay" and not self.Catalog
                else ""
            )
            _refuse(
                "PTYCHO_PathRefused",
                f"{name} refused: {exc} (not an existing file inside the data directories; "
                f"every path outside them gets this same answer){hint}",
                f"PtychoReconstruction.{name}",
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def is_Replay_allowed(self) -> bool:
        return self._require("Replay", (DevState.ON,), "Stop first (or Reset after a FAULT)")

    def _start_source(
        self, target: Callable[[str, threading.Event], None], source: str, name: str
    ) -> None:
        """Run ``target(source, cancel)`` (a replay or a follow) in a background thread."""
        self._replay_cancel = cancel = threading.Event()
        thread = threading.Thread(target=target, args=(source, cancel), name=name, daemon=True)
        self._replay_thread = thread
        thread.start()

    def _forwarder(self, cancel: threading.Event) -> Callable[[str, dict], None]:
        """Documents of a replay or follow into the callback, until ``cancel`` is set."""

        def forward(name: str, doc: dict) -> None:
            if cancel.is_set():
                raise _Cancelled
            self._on_document(name, doc)

        return forward

    def _replay_main(self, source: str, cancel: threading.Event) -> None:
        from bluesky_ptycho.io.replay import replay, replay_run

        forward = self._forwarder(cancel)
        try:
            if Path(source).is_absolute() or source.startswith(("http://", "https://")):
                uid = replay(source, forward, rate_hz=self._replay_rate)  # confined by Replay
            else:  # a run uid: looked up in the catalog only, never as a file
                uid = replay_run(str(self.Catalog), source, forward, rate_hz=self._replay_rate)
            logger.info("replayed %s (run %s)", source, uid)
        except _Cancelled:
            self._note(f"Replay({source!r}) cancelled")
        except Exception as exc:
            logger.exception("replay of %s failed", source)
            self._fail(f"Replay({source!r}) failed: {type(exc).__name__}: {exc}")

    @command(
        dtype_in=str,
        doc_in="A scan directory inside DataDirectories that a detector is writing (Eiger "
        "master + data files, or chunk files, plus a positions file and setup.json/yaml)",
        doc_out="",
    )
    def Follow(self, directory: str) -> None:
        """Reconstruct a scan from its directory while it is written, in a background thread.

        Ends at the scan's last frame, its stop marker (``scan.done``) or after 60 s without
        new data; problems (bad or missing files) are counted as rejections and shown in
        Status. Stop and Reset end it, like a replay.
        """
        origin = "PtychoReconstruction.Follow"
        text = directory.strip()
        if not text:
            _refuse("PTYCHO_BadSource", "Follow refused: give a scan directory", origin)
        target = self._confined("Follow", text)
        if target.exists() and not target.is_dir():
            _refuse("PTYCHO_BadSource", f"Follow refused: {text!r} is not a directory", origin)
        self._start_source(self._follow_main, str(target), "ptycho-follow")

    def is_Follow_allowed(self) -> bool:
        return self._require("Follow", (DevState.ON,), "Stop first (or Reset after a FAULT)")

    def _follow_main(self, directory: str, cancel: threading.Event) -> None:
        from bluesky_ptycho.io.follow import Follower

        forward = self._forwarder(cancel)

        def problem(text: str) -> None:
            live = self._callback.live
            if live is not None:
                live.record_rejection(f"Follow: {text}")

        try:
            report = Follower(directory).run(forward, cancel=cancel, on_problem=problem)
            logger.info("followed %s: %s", directory, report.message)
            if report.uid is None:
                self._fail(f"Follow({directory!r}): no frame could be read ({report.message})")
            elif report.problems:
                self._note(f"Follow({directory!r}): {report.message}")
        except _Cancelled:
            self._note(f"Follow({directory!r}) cancelled")
        except Exception as exc:
            logger.exception("follow of %s failed", directory)
            self._fail(f"Follow({directory!r}) failed: {type(exc).__name__}: {exc}")

    def _cancel_replay(self) -> None:
        self._replay_cancel.set()
        thread = self._replay_thread
        if thread is not None:
            thread.join(_JOIN_S)
            if not thread.is_alive():
                self._replay_thread = None
