"""State, Status and set-points of the Tango device as pure functions (no Tango involved)."""

from __future__ import annotations

import math

import pytest
from bluesky_ptycho.tango_device.logic import (
    SETPOINTS,
    DeviceFacts,
    RunLine,
    evaluate,
    keep_setpoints,
    setpoints,
    signal_text,
    status_text,
)

from bluesky_ptycho.live import LiveOptions


@pytest.mark.parametrize(
    ("facts", "state", "words"),
    [
        (DeviceFacts(), "ON", "idle"),
        (DeviceFacts(feed_address="127.0.0.1:5578"), "STANDBY", "armed"),
        (DeviceFacts(replaying=True), "STANDBY", "replaying"),
        (DeviceFacts(phase="running", feed_address="h:1"), "RUNNING", "reconstructing (running)"),
        (DeviceFacts(phase="finishing", replaying=True), "RUNNING", "finishing"),
        (DeviceFacts(phase="finished"), "ON", "idle"),
        (DeviceFacts(phase="stopped", feed_address="h:1"), "STANDBY", "h:1"),
        (DeviceFacts(phase="fault", reconstruction_fault="diverged"), "FAULT", "diverged"),
        (
            DeviceFacts(feed_address="h:1", feed_running=False, feed_error="socket closed"),
            "FAULT",
            "document feed stopped: socket closed",
        ),
        (
            DeviceFacts(feed_address="h:1", feed_running=False),
            "FAULT",
            "no reason given",
        ),
        (DeviceFacts(fault="Replay('x') failed", phase="running"), "FAULT", "Replay('x')"),
        (
            DeviceFacts(feed_address="h:1", feed_connected=False, phase="running"),
            "ALARM",
            "document feed disconnected from the proxy h:1: documents published meanwhile are "
            "lost, reconstruction running",
        ),
        (DeviceFacts(feed_address="h:1", feed_connected=False), "ALARM", "disconnected"),
        (DeviceFacts(feed_connected=False, phase="running"), "RUNNING", "reconstructing"),
    ],
)
def test_evaluate_decides_the_state_and_says_why(
    facts: DeviceFacts, state: str, words: str
) -> None:
    got, why = evaluate(facts)
    assert got == state
    assert words in why


def test_a_recorded_fault_wins_over_a_dead_feed_and_a_reconstruction_fault() -> None:
    facts = DeviceFacts(fault="bad property", feed_address="h:1", feed_running=False, phase="fault")
    assert evaluate(facts) == ("FAULT", "bad property")


def test_signal_text_says_not_yet_known_for_nan_and_gives_the_verdict() -> None:
    assert signal_text(math.nan) == "validation ratio not yet known"
    assert signal_text(0.2).startswith("validation ratio 0.20 (")
    assert signal_text(0.2) != signal_text(1.2)


def test_status_text_first_line_is_state_and_why_then_run_options_and_problems() -> None:
    run = RunLine(
        uid="abc",
        phase="running",
        received=12,
        in_use=11,
        iteration=3,
        updates=40,
        expected=81,
        fourier_error=0.0123,
    )
    text = status_text(
        "RUNNING",
        "reconstructing (running)",
        options=LiveOptions(),
        run=run,
        shown_seq=4,
        validation_ratio=0.25,
        callback_message="run abc",
        rejected=1,
        feed=("127.0.0.1:5578", 20, 0, ""),
        pushes=4,
        problems=["frame 3 rejected", "frame 3 rejected", "late frame"],
    )
    lines = text.splitlines()
    assert lines[0] == "RUNNING: reconstructing (running)"
    assert "run abc: running, 12/81 patterns received, 11 in use, iteration 3" in lines[1]
    assert lines[2] == "did it work: " + signal_text(0.25)
    assert "1 item(s) rejected" in text
    assert "feed 127.0.0.1:5578: 20 documents, 0 errors" in text
    assert "alpha 1, beta 1" in text and "4 snapshots pushed (last seq 4)" in text
    assert lines[-3:] == ["recent problems:", "  frame 3 rejected", "  late frame"]


def test_status_text_without_run_snapshot_feed_or_problems_is_short() -> None:
    text = status_text("ON", "idle", options=LiveOptions())
    assert text.splitlines()[0] == "ON: idle"
    assert "did it work" not in text and "feed" not in text and "problems" not in text
    assert len(text.splitlines()) == 3


def test_setpoints_are_the_options_in_force() -> None:
    opts = LiveOptions(publish_period_s=0.25)
    values = setpoints(opts, 12.5)
    assert tuple(values) == SETPOINTS
    assert values["Alpha"] == opts.epie.alpha and values["Beta"] == opts.epie.beta
    assert values["IterationsPerBatch"] == opts.pacing.max_updates_per_pattern
    assert values["PublishPeriod"] == 0.25 and values["ReplayRate"] == 12.5
    assert all(v != 0 for k, v in values.items() if k != "ReplayRate")


def test_keep_setpoints_takes_the_set_points_and_nothing_else() -> None:
    from dataclasses import replace

    before = LiveOptions(publish_period_s=0.4, final_passes=3)
    before = replace(
        before,
        epie=replace(before.epie, alpha=0.7, beta=0.2),
        pacing=replace(before.pacing, max_updates_per_pattern=7),
    )
    fresh = LiveOptions(publish_period_s=0.5, final_passes=9, backend="numpy")
    kept = keep_setpoints(fresh, before)
    assert setpoints(kept, 0.0) == setpoints(before, 0.0)
    assert kept.final_passes == 9  # the properties' other options stay


def test_integrity_problems_are_in_words_right_after_the_state() -> None:
    from bluesky_ptycho.tango_device.logic import Integrity

    assert Integrity().lines() == []
    assert Integrity(feed_address="127.0.0.1:5578", feed_connected=True).lines() == []
    integrity = Integrity(
        lost=12,
        missing_stops=1,
        duplicates=3,
        quarantined=2,
        quarantine_reasons=("frame 7: total counts 1e9, 40 x the running median",),
        removed=1,
        removal_reasons=("pattern 12: the update diverged",),
        feed_address="127.0.0.1:5578",
        feed_connected=False,
        feed_age=15.6,
        recovered=("run abc: 40 pattern(s) restored from the checkpoint; 5 event(s) lost",),
    )
    lines = integrity.lines()
    text = "\n".join(lines)
    assert "DISCONNECTED" in text and "127.0.0.1:5578" in text and "16 s ago" in text
    assert "LOSS: 12 event(s)" in text
    assert "MISSING STOP: 1 run(s)" in text
    assert "QUARANTINED: 2 frame(s)" in text and "running median" in text
    assert "REMOVED: 1 pattern(s)" in text and "pattern 12" in text
    assert "3 duplicate" in text
    assert "RECOVERED: run abc: 40 pattern(s)" in text
    status = status_text(
        "RUNNING", "reconstructing (running)", options=LiveOptions(), integrity=integrity
    )
    assert status.splitlines()[1 : 1 + len(lines)] == lines
