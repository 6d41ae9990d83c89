"""Phase: the enum and its table of allowed transitions."""

from __future__ import annotations

import pytest

from bluesky_ptycho.live import PHASES, Phase
from bluesky_ptycho.live.phase import ALLOWED, check_transition


def test_phases_are_strings_in_lifecycle_order():
    assert PHASES == (
        "idle",
        "waiting",
        "running",
        "paused",
        "finishing",
        "finished",
        "stopped",
        "fault",
    )
    assert Phase.RUNNING == "running" and Phase("fault") is Phase.FAULT
    assert str(Phase.PAUSED) == "paused" and f"{Phase.WAITING}" == "waiting"
    assert set(ALLOWED) == set(Phase)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("idle", "waiting"),
        ("idle", "paused"),
        ("idle", "stopped"),
        ("waiting", "running"),
        ("running", "waiting"),
        ("running", "paused"),
        ("paused", "running"),
        ("running", "fault"),
        ("fault", "waiting"),
        ("fault", "finishing"),
        ("paused", "finishing"),
        ("finishing", "finished"),
        ("finishing", "fault"),
        ("finishing", "stopped"),
        ("running", "running"),
        ("fault", "fault"),
        ("finished", "finished"),
    ],
)
def test_legal_transitions(old, new):
    assert check_transition(old, new) is Phase(new)
    assert check_transition(Phase(old), Phase(new)) is Phase(new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("idle", "running"),
        ("idle", "finished"),
        ("idle", "fault"),
        ("waiting", "finished"),
        ("running", "idle"),
        ("fault", "running"),
        ("fault", "paused"),
        ("finishing", "running"),
        ("finished", "running"),
        ("finished", "stopped"),
        ("stopped", "waiting"),
        ("stopped", "idle"),
    ],
)
def test_illegal_transitions_raise(old, new):
    with pytest.raises(ValueError, match=f"'{old}' cannot change to '{new}'"):
        check_transition(old, new)


def test_nothing_leads_back_to_idle_and_the_ends_only_to_fault():
    assert all(Phase.IDLE not in targets for targets in ALLOWED.values())
    assert ALLOWED[Phase.FINISHED] == ALLOWED[Phase.STOPPED] == frozenset({Phase.FAULT})


def test_unknown_phase_raises():
    with pytest.raises(ValueError):
        check_transition("idle", "sleeping")
