"""Book-keeping of :class:`~bluesky_ptycho.callback.PtychoCallback`: rejections, loss, shapes.

Small, thread-agnostic pieces the callback composes (callers hold their own lock): the tally of
rejections by cause, the per-stream sequence accounting that turns ``seq_num`` gaps and the stop
document's ``num_events`` into a count of lost events, the vote that fixes a detector's frame
shape when no descriptor gives it, and the public records the callback hands out
(:class:`Rejection`, :class:`PatternRecord`, :class:`CallbackStatus`). See
``docs/explanation/run-integrity.md``.
"""

from __future__ import annotations

import collections
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bluesky_ptycho.live import LiveStatus
from bluesky_ptycho.live.record import PatternRecord

__all__ = [
    "CallbackStatus",
    "PatternRecord",
    "Rejection",
    "RejectionTally",
    "ShapeVote",
    "StreamCount",
    "count_worth_logging",
    "usable_seq_num",
]


@dataclass(frozen=True)
class Rejection:
    """The items of one run rejected for one cause: said once, counted.

    Attributes
    ----------
    run_uid : str or None
        The run the items belonged to (None: no run could be named).
    cause : str
        What the items have in common: a :class:`~bluesky_ptycho.io.hdf5.ReadCause` name
        (``"FILTER_MISSING"``, ``"TRUNCATED"``, ...), a check of the callback
        (``"NONFINITE"``, ``"OUTSIDE_OBJECT"``, ``"NO_DESCRIPTOR"``, ...), or the reason text.
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


class RejectionTally:
    """Rejections grouped by (run, cause), in order of first occurrence; not thread-safe.

    Parameters
    ----------
    max_entries : int
        Causes kept; the oldest is forgotten beyond (the total keeps counting).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.total = 0
        self._entries: dict[tuple[str | None, str], Rejection] = {}

    def add(self, run_uid: str | None, cause: str, message: str, seq_num: int | None) -> Rejection:
        """Count one item; returns the cause's entry after counting it."""
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
        """All entries, or (``every_run=False``) those of ``run_uid``."""
        return [e for e in self._entries.values() if every_run or e.run_uid == run_uid]


def count_worth_logging(count: int) -> bool:
    """1, 10, 100, 1000, ...: a growing cause is re-logged a few times, not per item."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1


def usable_seq_num(value: Any) -> int | None:
    """``value`` as a sequence number, or None when it is not a whole finite number >= 1.

    Booleans, strings, NaN, infinities and fractions are not sequence numbers.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number != int(number) or number < 1 or number > 2**53:
        return None
    return int(number)


@dataclass
class StreamCount:
    """Events of one descriptor: which sequence numbers arrived, how many were expected.

    ``lost`` is what is known to be missing: the gaps below the highest ``seq_num`` seen, or
    below the stop document's ``num_events`` for the stream once it is known, less the events
    that arrived without a usable ``seq_num`` (they fill some gap, we cannot say which).
    """

    name: str = ""
    seen: set[int] = field(default_factory=set)
    unnumbered: int = 0
    expected: int | None = None

    def add(self, seq_num: int | None) -> None:
        """Note an event (with its seq_num, or None when it has no usable one)."""
        if seq_num is None:
            self.unnumbered += 1
        else:
            self.seen.add(seq_num)

    @property
    def lost(self) -> int:
        top = max(self.seen, default=0)
        if self.expected is not None:
            top = max(top, self.expected)
        return max(0, top - len(self.seen) - self.unnumbered)


class ShapeVote:
    """Fixes a detector's frame shape from the first frames when no descriptor gives it.

    Frames are held until ``quorum`` of them agree on a shape (or ``max_held`` are held, or
    the run ends: then the most common shape wins, the earliest on a tie). One odd first frame
    cannot decide alone: with ``quorum=3`` it takes three frames of the same shape.

    Parameters
    ----------
    quorum : int
        Frames of one shape that decide.
    max_held : int
        Frames held at most before deciding anyway (bounds memory).
    """

    def __init__(self, quorum: int = 3, max_held: int = 8) -> None:
        self.quorum = max(1, int(quorum))
        self.max_held = max(self.quorum, int(max_held))
        self.held: list[tuple[tuple[int, ...], Any]] = []

    def add(self, shape: tuple[int, ...], item: Any) -> tuple[int, ...] | None:
        """Hold ``item`` (a frame of ``shape``); returns the decided shape, or None."""
        self.held.append((shape, item))
        counts = collections.Counter(s for s, _ in self.held)
        if counts[shape] >= self.quorum or len(self.held) >= self.max_held:
            return self.decide()
        return None

    def decide(self) -> tuple[int, ...] | None:
        """The most common shape among the held frames (earliest on a tie); None if none."""
        if not self.held:
            return None
        counts = collections.Counter(s for s, _ in self.held)
        best = max(counts.values())
        return next(s for s, _ in self.held if counts[s] == best)

    def release(self) -> list[Any]:
        """The held items, in arrival order; the vote is emptied."""
        items = [item for _, item in self.held]
        self.held.clear()
        return items


@dataclass(frozen=True)
class CallbackStatus:
    """What the callback has seen and done; cheap to take at any time.

    Attributes
    ----------
    documents : dict
        Documents seen, by name, since the callback was made.
    runs : int
        Runs started (ignored runs are not counted).
    run_uid : str or None
        The current run's start uid: the latest started run, open or not.
    frames_received : int
        Frame-bearing events of the current run.
    frames_used : int
        Frames handed to the reconstruction in the current run.
    rejected : int
        Items (documents, frames) rejected, over all runs.
    reasons : tuple of str
        One line per cause of rejection (per run), oldest first: the first rejected item's
        reason, with the count and seq_num range when the cause hit more items
        (:meth:`Rejection.text`).
    message : str
        A one-line summary for operators; says when frames are still being processed, the
        final passes are running, events were lost, or the stop never came.
    live : LiveStatus or None
        The current run's reconstruction status.
    rejections : tuple of Rejection
        The rejections behind ``reasons``.
    frames_pending : int
        Frames of the current run received but not yet read, checked and handed on.
    finished : bool
        Whether the current run has ended and its final passes are done.
    duplicates : int
        Documents and events received again and not used, over all runs.
    lost : int
        Events of the current run known to be missing: ``seq_num`` gaps per descriptor plus
        the shortfall against the stop document's ``num_events``.
    missing_stops : int
        Runs finished by the idle timeout because their stop never came, over all runs.
    open_runs : tuple of str
        Start uids of the runs open now, oldest first.
    lost_by_run : dict
        ``lost`` of every run still known (open, and the last finished ones), by start uid.
    waiting : int
        Events held now because their descriptor has not arrived (yet).
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
    duplicates: int = 0
    lost: int = 0
    missing_stops: int = 0
    open_runs: tuple[str, ...] = ()
    lost_by_run: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
