"""Publishing: numbered snapshots, handed to observers when due."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bluesky_ptycho.engine.state import ReconstructionState

__all__ = ["Publisher", "Snapshot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What observers receive: a published state with counters.

    Attributes
    ----------
    state : ReconstructionState
        Host copies; shared by all observers of this snapshot, so treat it as read-only.
    patterns_received : int
        Frames accepted by :meth:`~bluesky_ptycho.live.LiveReconstruction.submit` so far.
    patterns_in_use : int
        Patterns held by the engine (``state.n_patterns``).
    phase : str
        One of :data:`~bluesky_ptycho.live.PHASES` (the value of a
        :class:`~bluesky_ptycho.live.Phase`).
    message : str
        Human-readable status, or the fault reason.
    seq : int
        Snapshot counter: 1, 2, ...
    time : float
        ``time.monotonic()`` when the snapshot was taken.
    """

    state: ReconstructionState
    patterns_received: int
    patterns_in_use: int
    phase: str
    message: str
    seq: int
    time: float


class Publisher:
    """Numbers snapshots, decides when one is due, and calls the observers.

    Parameters
    ----------
    period_s : float
        Publish at most this often (0: whenever something changed).
    every_updates : int
        Also publish once this many updates were done since the last snapshot, even if the
        period has not elapsed (0: off).
    report : callable
        Called with a message for every observer that raised (after it is logged).
    name : str
        Used in log messages.

    Notes
    -----
    The observer list and the latest snapshot have their own lock, so any thread may add or
    remove observers and read :meth:`latest`. Everything else (the timing, :meth:`make`,
    :meth:`emit`) belongs to the one thread that publishes; observers are called on it.
    """

    def __init__(
        self,
        *,
        period_s: float,
        every_updates: int,
        report: Callable[[str], None],
        name: str = "live",
    ) -> None:
        self._lock = threading.Lock()
        self._observers: list[Callable[[Snapshot], None]] = []
        self._latest: Snapshot | None = None
        self._report = report
        self._name = name
        # ---- the publishing thread's
        self.period_s = float(period_s)
        self._every = int(every_updates)
        self._seq = 0
        self.dirty = True  # something changed since the last snapshot
        self._last = -math.inf
        self._updates_since = 0

    # ------------------------------------------------------------------ any thread
    def add_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Call ``fn(snapshot)`` for every snapshot emitted from now on."""
        if not callable(fn):
            raise TypeError(f"observer must be callable, got {fn!r}")
        with self._lock:
            self._observers.append(fn)

    def remove_observer(self, fn: Callable[[Snapshot], None]) -> None:
        """Stop calling ``fn``; no-op if it is not registered."""
        with self._lock:
            if fn in self._observers:
                self._observers.remove(fn)

    def latest(self) -> Snapshot | None:
        """The latest snapshot emitted (None before the first)."""
        with self._lock:
            return self._latest

    # ------------------------------------------------------------------ the publishing thread
    def changed(self, updates: int = 0) -> None:
        """Note a change worth publishing, with the number of updates it brought."""
        self.dirty = True
        self._updates_since += max(int(updates), 0)

    def due(self, now: float | None = None) -> bool:
        """True if something changed and the period elapsed (or enough updates were done)."""
        if not self.dirty:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last >= self.period_s:
            return True
        return self._every > 0 and self._updates_since >= self._every

    def seconds_until_due(self, now: float | None = None) -> float | None:
        """Seconds until the period elapses (<= 0: now); None if nothing changed."""
        if not self.dirty:
            return None
        now = time.monotonic() if now is None else now
        return self._last + self.period_s - now

    def make(
        self,
        state: ReconstructionState,
        *,
        patterns_received: int,
        patterns_in_use: int,
        phase: str,
        message: str = "",
    ) -> Snapshot:
        """The next snapshot (numbered, timed now); the default message sums up the counters."""
        self._seq += 1
        phase = str(phase)
        if not message:
            message = (
                f"{phase}: {patterns_in_use} of {patterns_received} patterns in use, iteration "
                f"{state.iteration}, {state.pattern_updates} updates"
            )
        return Snapshot(
            state=state,
            patterns_received=patterns_received,
            patterns_in_use=patterns_in_use,
            phase=phase,
            message=message,
            seq=self._seq,
            time=time.monotonic(),
        )

    def emit(self, snap: Snapshot) -> None:
        """Make ``snap`` the latest and call every observer with it (on this thread).

        An observer that raises is logged and reported; the others are still called.
        """
        with self._lock:
            self._latest = snap
            observers = list(self._observers)
        self.dirty = False
        self._updates_since = 0
        self._last = snap.time
        for fn in observers:
            try:
                fn(snap)
            except Exception as exc:
                logger.exception("%s: observer %r failed", self._name, fn)
                self._report(f"observer {getattr(fn, '__name__', fn)!r} failed: {exc!r}")
