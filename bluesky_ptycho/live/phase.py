"""Phases of a live reconstruction and the transitions allowed between them.

The table :data:`ALLOWED` is the whole lifecycle; :class:`~bluesky_ptycho.live.LiveReconstruction`
checks every change of phase against it, so a transition missing from the table is a bug that
shows at once instead of a state nobody planned for::

    idle                      → waiting or paused (start; paused if pause() came first),
                                stopped (stop() before start)
    waiting, running, paused  → one another (data arrives, the pacing policy, pause/resume),
                                finishing (finish()), stopped (stop()),
                                fault (a divergence, rolled back)
    fault                     → waiting (resume()), finishing (finish()), stopped (stop())
    finishing                 → finished, stopped (stop()), fault (the final passes diverged)
    finished, stopped         → fault, only when the worker itself fails (a bug) while
                                publishing its last snapshot

Staying in a phase is always allowed.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ALLOWED", "PHASES", "Phase", "check_transition"]


class Phase(str, Enum):
    """The phase of a live reconstruction; compares equal to its string value."""

    IDLE = "idle"
    """Constructed, worker not started; frames submitted now are kept."""
    WAITING = "waiting"
    """Worker running with nothing to do under the pacing policy (needs more data)."""
    RUNNING = "running"
    """Worker iterating."""
    PAUSED = "paused"
    """:meth:`~bluesky_ptycho.live.LiveReconstruction.pause` was called; data still ingested."""
    FINISHING = "finishing"
    """Running the final passes after the end of data."""
    FINISHED = "finished"
    """Final passes done; the run has ended."""
    STOPPED = "stopped"
    """Aborted by :meth:`~bluesky_ptycho.live.LiveReconstruction.stop`; the run has ended."""
    FAULT = "fault"
    """Diverged and rolled back (waits for resume), or ended by a divergence or a worker bug."""

    def __str__(self) -> str:
        return self.value


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
"""The phase names, in lifecycle order."""

_ACTIVE = (Phase.WAITING, Phase.RUNNING, Phase.PAUSED)

ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.WAITING, Phase.PAUSED, Phase.STOPPED}),
    Phase.WAITING: frozenset({*_ACTIVE, Phase.FINISHING, Phase.STOPPED, Phase.FAULT}),
    Phase.RUNNING: frozenset({*_ACTIVE, Phase.FINISHING, Phase.STOPPED, Phase.FAULT}),
    Phase.PAUSED: frozenset({*_ACTIVE, Phase.FINISHING, Phase.STOPPED, Phase.FAULT}),
    Phase.FAULT: frozenset({Phase.WAITING, Phase.FINISHING, Phase.STOPPED}),
    Phase.FINISHING: frozenset({Phase.FINISHED, Phase.STOPPED, Phase.FAULT}),
    Phase.FINISHED: frozenset({Phase.FAULT}),
    Phase.STOPPED: frozenset({Phase.FAULT}),
}
"""For every phase, the phases it may change to (besides staying where it is)."""


def check_transition(old: Phase | str, new: Phase | str) -> Phase:
    """Check a change of phase against :data:`ALLOWED`.

    Parameters
    ----------
    old, new : Phase or str
        The current and the next phase (members or their string values).

    Returns
    -------
    Phase
        ``new`` as a member.

    Raises
    ------
    ValueError
        If either is not a phase, or the table does not allow ``old`` → ``new``.
    """
    a, b = Phase(old), Phase(new)
    if b is not a and b not in ALLOWED[a]:
        allowed = ", ".join(sorted(p.value for p in ALLOWED[a])) or "nothing"
        raise ValueError(f"phase {a.value!r} cannot change to {b.value!r} (allowed: {allowed})")
    return b
