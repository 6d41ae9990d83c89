"""Crash recovery of the device: checkpoints of the open runs and their resumption (no Tango).

:class:`RunCheckpoints` sits between the device's document feed and its
:class:`~bluesky_ptycho.callback.PtychoCallback`: it watches the documents going in (start,
descriptor, stop), receives every pattern the callback hands to a reconstruction (the
callback's ``on_pattern`` hook) and appends it to the run's
:class:`~bluesky_ptycho.checkpoint.CheckpointWriter`; :meth:`RunCheckpoints.tick`, called every
``CheckpointPeriod`` seconds from the device's checkpoint thread, writes the latest object and
probe and deletes the checkpoints of runs that are finished and saved. At start-up
:meth:`RunCheckpoints.resume` reads the checkpoints left by a killed server and reopens their
runs in the callback (``PtychoCallback.resume_run``).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_ptycho.checkpoint import (
    FAILED_SUFFIX,
    Checkpoint,
    CheckpointWriter,
    read_checkpoints,
)

__all__ = ["Recovered", "RunCheckpoints"]

logger = logging.getLogger(__name__)

_MAX_STARTS = 16  # start documents remembered until their run opens or is ignored


@dataclass(frozen=True)
class Recovered:
    """One run resumed from a checkpoint.

    Attributes
    ----------
    run_uid : str
        The run's start uid.
    patterns : int
        Patterns restored from the checkpoint.
    iteration : int
        Iteration of the restored object and probe (0: none restored).
    stopped : bool
        The stop document had arrived before the crash (the run is finished and saved now).
    start : dict
        The run's start document.
    """

    run_uid: str
    patterns: int
    iteration: int
    stopped: bool
    start: dict[str, Any] = field(default_factory=dict)

    def text(self, lost: int) -> str:
        """One sentence for Status, with the events of the run known to be missing."""
        state = f" (object and probe of iteration {self.iteration})" if self.iteration else ""
        return (
            f"run {self.run_uid}: {self.patterns} pattern(s) restored from the checkpoint"
            f"{state} after a restart; {lost} event(s) of the run lost"
        )


class RunCheckpoints:
    """Checkpoints of the open runs of one callback.

    Parameters
    ----------
    directory : str or Path
        ``CheckpointDirectory``; created when missing.
    report : callable
        ``report(text)`` for problems (shown in the device's Status); never raises here.
    """

    def __init__(self, directory: str | Path, report: Callable[[str], None]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._report = report
        self._lock = threading.Lock()
        self._starts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._writers: dict[str, CheckpointWriter] = {}
        self._stopped: set[str] = set()
        self._written: dict[str, tuple[int, int]] = {}  # run -> (iteration, updates) written
        self.recovered: list[Recovered] = []

    # ------------------------------------------------------------------ documents
    def before(self, name: str, doc: Any) -> None:
        """See a document before the callback does (feed thread); never raises."""
        try:
            if not isinstance(doc, Mapping):
                return
            if name == "start":
                with self._lock:
                    self._starts[str(doc.get("uid", ""))] = dict(doc)
                    while len(self._starts) > _MAX_STARTS:
                        self._starts.popitem(last=False)
            elif name == "descriptor":
                writer = self._writers.get(str(doc.get("run_start", "")))
                if writer is not None:
                    writer.add_descriptor(doc)
            elif name == "stop":
                uid = str(doc.get("run_start", ""))
                writer = self._writers.get(uid)
                if writer is not None:
                    writer.mark_stopped(doc)
                    with self._lock:
                        self._stopped.add(uid)
        except Exception as exc:
            self._problem(f"checkpoint of a {name} document failed", exc)

    def after(self, name: str, doc: Any, open_runs: tuple[str, ...]) -> None:
        """See a document after the callback did: a start it opened gets a checkpoint."""
        if name != "start" or not isinstance(doc, Mapping):
            return
        uid = str(doc.get("uid", ""))
        with self._lock:
            start = self._starts.pop(uid, None)
        if start is None or uid not in open_runs or uid in self._writers:
            return
        try:
            writer = CheckpointWriter(self.directory, uid, start)
        except Exception as exc:
            self._problem(f"cannot open the checkpoint of run {uid}", exc)
            return
        with self._lock:
            self._writers[uid] = writer

    def on_pattern(self, record: Any) -> None:
        """The callback's ``on_pattern`` hook (its worker thread): append; never raises."""
        try:
            writer = self._writers.get(str(record.run_uid))
            if writer is not None:
                writer.append(record)
        except Exception as exc:
            self._problem(f"checkpoint of pattern {getattr(record, 'seq_num', '?')} failed", exc)

    # ------------------------------------------------------------------ periodic
    def tick(self, callback: Any) -> None:
        """Write the current run's object and probe (when changed); drop saved runs.

        Parameters
        ----------
        callback : PtychoCallback
            Its ``status`` (run uid, finished), ``live.state()`` and ``result(timeout=0,
            run_uid=...)`` (a run is done once finished and saved) are read.
        """
        try:
            status = callback.status
            live = callback.live
            uid = status.run_uid
            writer = self._writers.get(uid) if uid is not None else None
            if writer is not None and live is not None and not status.finished:
                st = live.status
                mark = (int(st.iteration), int(st.pattern_updates))
                # before its first update the engine may not have made its probe yet
                if st.pattern_updates > 0 and self._written.get(uid) != mark:
                    state = live.state()
                    writer.write_state(state.object, state.probe, int(state.iteration))
                    self._written[uid] = mark
            for run_uid in list(self._writers):
                if self._saved(callback, run_uid):
                    self.finish(run_uid)
        except Exception as exc:
            self._problem("writing the checkpoint state failed", exc)

    @staticmethod
    def _saved(callback: Any, run_uid: str) -> bool:
        """Whether the callback has finished (and, with an output directory, saved) a run."""
        try:
            callback.result(timeout=0, run_uid=run_uid)
        except (TimeoutError, RuntimeError):  # not finished yet; or not (yet) known
            return False
        return True

    def finish(self, run_uid: str) -> None:
        """Delete a run's checkpoint (it is finished and saved)."""
        with self._lock:
            writer = self._writers.pop(run_uid, None)
            self._stopped.discard(run_uid)
            self._written.pop(run_uid, None)
        if writer is not None:
            writer.remove()

    def close(self) -> None:
        """Close every writer; the checkpoints stay on disk (for the next start)."""
        with self._lock:
            writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()

    @property
    def open_runs(self) -> tuple[str, ...]:
        """Runs with a checkpoint being written."""
        return tuple(self._writers)

    @property
    def recovered_patterns(self) -> int:
        """Patterns restored from checkpoints when the device started."""
        return sum(r.patterns for r in self.recovered)

    # ------------------------------------------------------------------ start-up
    def resume(
        self,
        callback: Any,
        record_type: Any,
        replay_stop: Callable[[dict[str, Any]], None],
    ) -> list[Recovered]:
        """Reopen in ``callback`` every run a killed server left a checkpoint of.

        Parameters
        ----------
        callback : PtychoCallback
            Must have ``resume_run`` (else nothing is resumed and the reason is reported).
        record_type : type
            ``callback.PatternRecord``: the restored patterns are handed over as these.
        replay_stop : callable
            Called with the stop document of a run that had stopped before the crash, after
            the run is resumed (so that it is finished and saved now).

        Returns
        -------
        list of Recovered
            One per run resumed (also in :attr:`recovered`).
        """
        found, problems = read_checkpoints(self.directory)
        for text in problems:
            self._report(f"checkpoint not resumed: {text}")
        resume_run: Callable[..., None] | None = getattr(callback, "resume_run", None)
        if resume_run is None:
            if found:
                self._report("checkpoints found, but this callback cannot resume runs")
            return []
        for cp in found:
            try:
                self._resume_one(cp, resume_run, record_type, replay_stop)
            except Exception as exc:
                with self._lock:
                    writer = self._writers.pop(cp.run_uid, None)
                if writer is not None:
                    writer.close()
                kept = self._set_aside(cp.directory)
                self._problem(
                    f"resuming run {cp.run_uid} from its checkpoint failed (kept as {kept})", exc
                )
        return list(self.recovered)

    def _resume_one(
        self,
        cp: Checkpoint,
        resume_run: Callable[..., None],
        record_type: Any,
        replay_stop: Callable[[dict[str, Any]], None],
    ) -> None:
        names = [f.name for f in fields(record_type)]
        patterns = [record_type(**{n: getattr(p, n) for n in names}) for p in cp.patterns]
        # the writer first: patterns the callback hands to on_pattern again are not re-stored
        writer = CheckpointWriter(self.directory, cp.run_uid, cp.start, cp.descriptors)
        with self._lock:
            self._writers[cp.run_uid] = writer
        obj, probe = cp.object, cp.probe
        if probe is None or not np.any(np.abs(probe) > 0):  # no usable state: patterns only
            obj = probe = None
        resume_run(cp.start, cp.descriptors, patterns, object_=obj, probe=probe)
        rec = Recovered(
            run_uid=cp.run_uid,
            patterns=len(patterns),
            iteration=cp.iteration if obj is not None else 0,
            stopped=cp.stop is not None,
            start=dict(cp.start),
        )
        self.recovered.append(rec)
        logger.warning("resumed %s", cp.summary())
        if cp.stop is not None:
            with self._lock:
                self._stopped.add(cp.run_uid)
            replay_stop(dict(cp.stop))

    @staticmethod
    def _set_aside(directory: Path) -> Path:
        """Rename a checkpoint that cannot be resumed, so that the next start does not retry
        it; its files stay for a person to look at."""
        target = directory.with_name(directory.name + FAILED_SUFFIX)
        try:
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            directory.rename(target)
        except OSError:
            return directory
        return target

    def _problem(self, text: str, exc: BaseException) -> None:
        logger.exception("%s", text)
        try:
            self._report(f"{text}: {type(exc).__name__}: {exc}")
        except Exception:  # the report must never take the caller down
            logger.exception("reporting a checkpoint problem failed")
