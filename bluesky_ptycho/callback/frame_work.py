"""The callback's frame worker: read, check, preprocess and hand frames on; finish runs.

A mixin of :class:`~bluesky_ptycho.callback.PtychoCallback` (internal): everything here runs
on the callback's background threads, never on the RunEngine's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_ptycho.callback.run_state import FrameRejected, Run, cause_key
from bluesky_ptycho.callback.runs import PatternRecord, RejectionTally
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.io.assets import AssetError, DatumLocator, StreamLocator
from bluesky_ptycho.io.hdf5 import ReadCause
from bluesky_ptycho.io.result import write_result
from bluesky_ptycho.live import LiveOptions, lower_thread_priority
from bluesky_ptycho.preprocess import preprocess
from bluesky_ptycho.setup import START_KEY

__all__ = ["FrameWork"]

logger = logging.getLogger("bluesky_ptycho.callback")


class FrameWork:
    """The background half of the callback (a mixin; the callback sets the attributes)."""

    options: LiveOptions
    output_dir: Path | None
    final_passes: int | None
    on_frame: Callable[[int, np.ndarray, np.ndarray | None, np.ndarray], None] | None
    on_pattern: Callable[[PatternRecord], None] | None
    _lock: threading.RLock
    _tally: RejectionTally
    _jobs: queue.SimpleQueue[tuple[Any, ...] | None]
    _backlog_bytes: int

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
        raise NotImplementedError

    def _work(self) -> None:
        lower_thread_priority(max(0, int(self.options.worker_nice) // 2))
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job[0] == "frame":
                    self._dequeued(job[5])
                    self._ingest(*job[1:])
                else:
                    self._finish(job[1])
            except Exception:  # keep the worker alive whatever happens
                logger.exception("ptycho callback worker failed on %s", job[0])

    def _dequeued(self, source: Any) -> None:
        """A queued frame left the queue: its bytes no longer count against the backlog."""
        if isinstance(source, np.ndarray):
            with self._lock:
                self._backlog_bytes -= source.nbytes

    def _ingest(
        self,
        run: Run,
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
                raise FrameRejected(
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

    def _settle_shape(self, run: Run, shape: tuple[int, ...]) -> None:
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

    def _frame_failed(self, run: Run, item: tuple[Any, ...], exc: BaseException) -> None:
        where, seq_num = item[0], item[1]
        try:
            if isinstance(exc, (AssetError, ValueError)):
                self._record(run, f"{where}: {exc}", cause_key(exc) or str(exc), seq_num)
            else:  # a handler's own error type, a bad array...: still one item
                self._record(
                    run,
                    f"{where}: {type(exc).__name__}: {exc}",
                    cause_key(exc) or type(exc).__name__,
                    seq_num,
                    exc_info=True,
                )
        finally:
            with self._lock:
                run.frames_processed += 1

    def _use(self, run: Run, item: tuple[Any, ...]) -> None:
        _, seq_num, desc, raw, readbacks = item
        try:
            if tuple(raw.shape) != tuple(run.detector_shape or raw.shape):
                cause = ReadCause.SHAPE_CHANGED
                raise FrameRejected(
                    cause,
                    f"frame shape {tuple(raw.shape)} differs from the detector's "
                    f"{tuple(run.detector_shape or ())}: {cause.summary}. Fix: {cause.fix}",
                )
            if run.preprocess is None:
                run.preprocess = run.setup.preprocess_config(raw_shape=raw.shape)
            config = run.preprocess
            if not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
                raise FrameRejected("DTYPE", f"frame dtype {raw.dtype} is not a real number type")
            bad = ~np.isfinite(raw) if raw.dtype.kind == "f" else None
            if bad is not None and config.mask is not None:
                bad &= ~config.mask
            if bad is not None and bad.any():
                raise FrameRejected(
                    "NONFINITE", f"frame has {int(bad.sum())} NaN or infinite pixel(s)"
                )
            out = preprocess(raw, config)
            pos_m = run.setup.positions_m(np.asarray(readbacks)[None])
            object_frame = run.object_frame
            assert object_frame is not None
            pos_px = object_frame.to_pixels(pos_m)
            if not object_frame.contains(pos_px)[0]:
                raise FrameRejected(
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
        run: Run,
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

    def _finish(self, run: Run) -> None:
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
        if run.duplicates:
            logger.info(
                "run %s: %d duplicate document(s) received and not used",
                run.uid[:8],
                run.duplicates,
            )
        live = run.live
        live.finish(self.final_passes)
        threading.Thread(
            target=self._await_result, args=(run,), name=f"{live.name}-finish", daemon=True
        ).start()

    def _await_result(self, run: Run) -> None:
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

    def _save(self, run: Run, state: ReconstructionState) -> Path:
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
        with self._lock:
            rejections = [e.text() for e in self._tally.entries(run.uid, every_run=False)]
        metadata = {
            "run_uid": run.uid,
            "scan_id": start.get("scan_id"),
            "plan_name": start.get("plan_name"),
            "exit_status": run.exit_status or ("no stop" if run.missing_stop else "unknown"),
            "frames_received": run.frames_received,
            "frames_used": run.frames_used,
            "rejected": run.rejected + status.rejected,
            "rejections": rejections,
            "lost": run.lost,
            "missing_stop": run.missing_stop,
            "quarantined": status.quarantined,
            "quarantine_reasons": list(status.quarantine_reasons),
            "removed": status.removed,
            "removal_reasons": list(status.removal_reasons),
            "faults": list(status.faults),
            "fault": status.fault or "",
            "message": run.message,
            START_KEY: run.setup.to_start_doc(),
        }
        return write_result(
            path, state, geometry=run.setup.geometry(), metadata=metadata, overwrite=True
        )
