"""Crash recovery of the device's callback (``tango_device.recovery.RunCheckpoints``).

A real :class:`~bluesky_ptycho.callback.PtychoCallback` receives a composed run through the
checkpoints as the device hands documents over; then it is abandoned mid-scan (as a killed
server leaves it), a new callback resumes the run from the files alone, and the rest of the
scan arrives with a gap: the gap is reported as loss and the run ends saved. The real
``kill -9`` of a server process is in ``tests/system/test_crash_recovery.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bluesky_ptycho.tango_device.recovery import RunCheckpoints

from bluesky_ptycho.callback import PatternRecord, PtychoCallback
from bluesky_ptycho.checkpoint import read_checkpoints
from bluesky_ptycho.live import LiveOptions

OPTIONS = LiveOptions(final_passes=2, publish_period_s=0.1)


def hand_over(rc: RunCheckpoints, cb: PtychoCallback) -> Any:
    """What the device's ``_on_document`` does around the callback."""

    def send(name: str, doc: dict) -> None:
        rc.before(name, doc)
        cb(name, doc)
        status = cb.status
        rc.after(name, doc, (*status.open_runs, status.run_uid or ""))

    return send


def wait_used(cb: PtychoCallback, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while cb.status.frames_used < n or cb.status.frames_pending:
        assert time.monotonic() < deadline, cb.status.message
        time.sleep(0.02)


def test_a_run_abandoned_mid_scan_is_resumed_and_ends_saved(
    tmp_path: Path, callback_setup: Any, small_dataset: Any, doc_run: Any, make_callback: Any
) -> None:
    cpdir, out = tmp_path / "checkpoints", tmp_path / "out"
    notes: list[str] = []
    rc1 = RunCheckpoints(cpdir, notes.append)
    cb1 = make_callback(callback_setup, output_dir=out, options=OPTIONS, on_pattern=rc1.on_pattern)
    n = small_dataset.intensities.shape[0]
    run = doc_run(hand_over(rc1, cb1))
    first, gap = 30, 12
    run.feed(small_dataset, range(first))
    wait_used(cb1, first)
    deadline = time.monotonic() + 60
    while cb1.live is None or cb1.live.status.pattern_updates == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rc1.tick(cb1)  # the periodic object/probe write
    assert rc1.open_runs == (run.uid,)
    # the server dies here: nothing more reaches cb1 or rc1
    found, problems = read_checkpoints(cpdir)
    assert problems == [] and len(found) == 1
    assert len(found[0].patterns) == first and found[0].object is not None

    rc2 = RunCheckpoints(cpdir, notes.append)
    cb2 = make_callback(callback_setup, output_dir=out, options=OPTIONS, on_pattern=rc2.on_pattern)
    stops: list[dict] = []
    recovered = rc2.resume(cb2, PatternRecord, stops.append)
    assert [(r.run_uid, r.patterns) for r in recovered] == [(run.uid, first)]
    assert rc2.recovered_patterns == first and stops == []
    assert cb2.status.run_uid == run.uid

    # the scan goes on; the events sent while the server was down never arrive
    run.cb = hand_over(rc2, cb2)
    run.seq += gap
    run.feed(small_dataset, range(first + gap, n))
    wait_used(cb2, n - gap)
    assert [len(cp.patterns) for cp in read_checkpoints(cpdir)[0]] == [n - gap]
    run.stop()
    cb2.result(timeout=120, run_uid=run.uid)
    status = cb2.status
    assert status.lost == gap, status.message
    assert status.frames_used == n - gap
    assert cb2.result_path is not None and cb2.result_path.is_file()
    rc2.tick(cb2)  # finished and saved: the checkpoint goes
    assert read_checkpoints(cpdir) == ([], [])
    assert notes == []


def test_a_run_stopped_before_the_crash_is_finished_at_restart(
    tmp_path: Path, callback_setup: Any, small_dataset: Any, doc_run: Any, make_callback: Any
) -> None:
    cpdir, out = tmp_path / "checkpoints", tmp_path / "out"
    rc1 = RunCheckpoints(cpdir, lambda text: None)
    cb1 = make_callback(callback_setup, options=OPTIONS, on_pattern=rc1.on_pattern)
    run = doc_run(hand_over(rc1, cb1))
    run.feed(small_dataset, range(20))
    wait_used(cb1, 20)
    rc1.before("stop", run.stop(send=False))  # the stop was seen; the save never happened

    rc2 = RunCheckpoints(cpdir, lambda text: None)
    cb2 = make_callback(callback_setup, output_dir=out, options=OPTIONS, on_pattern=rc2.on_pattern)
    send = hand_over(rc2, cb2)
    recovered = rc2.resume(cb2, PatternRecord, lambda stop: send("stop", stop))
    assert recovered[0].stopped and recovered[0].patterns == 20
    cb2.result(timeout=120, run_uid=run.uid)
    assert cb2.status.frames_used == 20 and cb2.result_path is not None
    rc2.tick(cb2)
    assert read_checkpoints(cpdir) == ([], [])


def test_a_run_the_callback_ignores_gets_no_checkpoint(
    tmp_path: Path, doc_run: Any, make_callback: Any
) -> None:
    rc = RunCheckpoints(tmp_path, lambda text: None)
    cb = make_callback(options=OPTIONS, on_pattern=rc.on_pattern)  # no fallback setup
    doc_run(hand_over(rc, cb), md={"plan_name": "count"})
    assert rc.open_runs == () and read_checkpoints(tmp_path) == ([], [])


def test_a_checkpoint_that_cannot_be_resumed_is_set_aside_and_reported(
    tmp_path: Path, small_dataset: Any, doc_run: Any, make_callback: Any, callback_setup: Any
) -> None:
    rc1 = RunCheckpoints(tmp_path, lambda text: None)
    cb1 = make_callback(callback_setup, options=OPTIONS, on_pattern=rc1.on_pattern)
    run = doc_run(hand_over(rc1, cb1))
    run.feed(small_dataset, range(5))
    wait_used(cb1, 5)
    notes: list[str] = []
    rc2 = RunCheckpoints(tmp_path, notes.append)
    cb2 = make_callback(options=OPTIONS)  # no fallback setup: this run cannot be reopened
    assert rc2.resume(cb2, PatternRecord, lambda stop: None) == []
    assert len(notes) == 1 and run.uid in notes[0] and ".failed" in notes[0]
    assert (tmp_path / f"{run.uid}.failed").is_dir() and not (tmp_path / run.uid).exists()
    assert read_checkpoints(tmp_path) == ([], [])  # not retried at the next start
    assert rc2.open_runs == ()
