"""The device's state, status and set-points as pure functions (no Tango, no threads).

:class:`~bluesky_ptycho.tango_device.device.PtychoReconstruction` gathers plain facts about its
feed, replay and reconstruction into a :class:`DeviceFacts`, and these functions decide the
state, compose the Status text and give the values in force of the memorized set-points. They
are unit-tested on their own (``tests/unit/tango_device/test_logic.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bluesky_ptycho.engine.state import signal_verdict
from bluesky_ptycho.live import LiveOptions

__all__ = [
    "ACTIVE_PHASES",
    "SETPOINTS",
    "STEERABLE_PHASES",
    "DeviceFacts",
    "Integrity",
    "RunLine",
    "evaluate",
    "keep_setpoints",
    "setpoints",
    "signal_text",
    "status_text",
]

ACTIVE_PHASES = ("idle", "waiting", "running", "paused", "finishing")
"""Phases of a live reconstruction in which the device is RUNNING."""

STEERABLE_PHASES = (*ACTIVE_PHASES, "fault")
"""Phases in which a running reconstruction takes new options."""

SETPOINTS = ("IterationsPerBatch", "Alpha", "Beta", "PublishPeriod", "ReplayRate")
"""The memorized writable attributes (their write value is the value in force)."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the device knows at one instant, as plain values.

    Attributes
    ----------
    fault : str or None
        A fault the device recorded itself (failed replay, bad property), kept until Stop or
        Reset.
    feed_address : str or None
        The 0MQ proxy address while the device is armed; None when it is not.
    feed_running : bool
        Whether the armed feed's thread is alive (ignored when ``feed_address`` is None).
    feed_error : str
        The feed's last error ("" when none).
    phase : str or None
        The live reconstruction's phase; None when there is none, or when Stop ended it.
    reconstruction_fault : str
        The live reconstruction's fault text (when ``phase == "fault"``).
    replaying : bool
        A Replay or Follow thread is running.
    feed_connected : bool
        Whether the armed feed is connected to its proxy (ignored when ``feed_address`` is
        None).
    """

    fault: str | None = None
    feed_address: str | None = None
    feed_running: bool = True
    feed_connected: bool = True
    feed_error: str = ""
    phase: str | None = None
    reconstruction_fault: str = ""
    replaying: bool = False


def evaluate(facts: DeviceFacts) -> tuple[str, str]:
    """The device state's name and why.

    Parameters
    ----------
    facts : DeviceFacts

    Returns
    -------
    (str, str)
        ``"FAULT"``, ``"ALARM"``, ``"RUNNING"``, ``"STANDBY"`` or ``"ON"`` (names of
        ``tango.DevState``), and the reason shown as the first line of Status. A recorded fault
        wins over a dead feed, which wins over a reconstruction fault; then an armed feed that
        has lost its proxy (ALARM: documents sent meanwhile are lost); then an active
        reconstruction (RUNNING), a replay or an armed feed (STANDBY), else ON (idle).
    """
    if facts.fault:
        return "FAULT", facts.fault
    if facts.feed_address is not None and not facts.feed_running:
        return "FAULT", f"document feed stopped: {facts.feed_error or 'no reason given'}"
    if facts.phase == "fault":
        return "FAULT", f"reconstruction fault: {facts.reconstruction_fault}"
    if facts.feed_address is not None and not facts.feed_connected:
        doing = f", reconstruction {facts.phase}" if facts.phase in ACTIVE_PHASES else ""
        return (
            "ALARM",
            f"document feed disconnected from the proxy {facts.feed_address}: documents "
            f"published meanwhile are lost{doing}",
        )
    if facts.phase in ACTIVE_PHASES:
        return "RUNNING", f"reconstructing ({facts.phase})"
    if facts.replaying:
        return "STANDBY", "replaying: waiting for the run's documents"
    if facts.feed_address is not None:
        return "STANDBY", f"armed: waiting for a run from {facts.feed_address}"
    return "ON", "idle"


def signal_text(ratio: float) -> str:
    """The validation ratio in words, for Status ("not yet known" while it is NaN)."""
    if not math.isfinite(ratio):
        return "validation ratio not yet known"
    return f"validation ratio {ratio:.2f} ({signal_verdict(ratio)})"


@dataclass(frozen=True)
class RunLine:
    """The counters of the run being reconstructed, for Status.

    Attributes
    ----------
    uid : str
        The run's start uid.
    phase : str
        The live reconstruction's phase.
    received, in_use, iteration, updates : int
        Patterns received and in use, completed passes, pattern updates.
    expected : int or None
        Patterns the start document announces.
    fourier_error : float
        The latest Fourier error (NaN before the first).
    """

    uid: str
    phase: str
    received: int
    in_use: int
    iteration: int
    updates: int
    expected: int | None
    fourier_error: float

    def text(self) -> str:
        """One line: ``run UID: PHASE, R/E patterns received, ...``."""
        expected = f"/{self.expected}" if self.expected else ""
        return (
            f"run {self.uid}: {self.phase}, {self.received}{expected} patterns received, "
            f"{self.in_use} in use, iteration {self.iteration}, {self.updates} updates, "
            f"Fourier error {self.fourier_error:.4g}"
        )


@dataclass(frozen=True)
class Integrity:
    """What the device knows about lost, repeated, held-back and recovered data.

    Attributes
    ----------
    lost : int
        Events of the current run known to be missing (``CallbackStatus.lost``).
    missing_stops : int
        Runs finished by the idle timeout because their stop never came.
    duplicates : int
        Documents and events received again and not used.
    quarantined : int
        Frames held back as implausible (``LiveStatus.quarantined``).
    quarantine_reasons : tuple of str
        Why, most recent last.
    removed : int
        Patterns taken out of the engine because an update with them diverged.
    removal_reasons : tuple of str
        Why, most recent last.
    feed_address : str or None
        The armed feed's address (None: not armed).
    feed_connected : bool
        Whether the armed feed is connected to the proxy.
    feed_age : float or None
        Seconds since the feed's last document.
    recovered : tuple of str
        One sentence per run resumed from a checkpoint at start-up.
    """

    lost: int = 0
    missing_stops: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: tuple[str, ...] = ()
    removed: int = 0
    removal_reasons: tuple[str, ...] = ()
    feed_address: str | None = None
    feed_connected: bool = True
    feed_age: float | None = None
    recovered: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The problems in words, one line each (none when all is well)."""
        out: list[str] = []
        if self.feed_address is not None and not self.feed_connected:
            age = (
                f"; last document {self.feed_age:.0f} s ago"
                if self.feed_age is not None and math.isfinite(self.feed_age)
                else ""
            )
            out.append(
                f"DISCONNECTED: the document feed has lost the proxy {self.feed_address}"
                f"{age}; documents sent meanwhile are lost"
            )
        if self.lost:
            out.append(
                f"LOSS: {self.lost} event(s) of the run are missing (sequence gaps or fewer "
                "than the stop document counts); they are not in the reconstruction"
            )
        if self.missing_stops:
            out.append(
                f"MISSING STOP: {self.missing_stops} run(s) never received their stop "
                "document and were finished and saved after the idle timeout"
            )
        if self.quarantined:
            why = f": {self.quarantine_reasons[-1]}" if self.quarantine_reasons else ""
            out.append(f"QUARANTINED: {self.quarantined} frame(s) held back as implausible{why}")
        if self.removed:
            why = f": {self.removal_reasons[-1]}" if self.removal_reasons else ""
            out.append(f"REMOVED: {self.removed} pattern(s) taken out after a diverged update{why}")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicate document(s) or event(s) ignored")
        out.extend(f"RECOVERED: {text}" for text in self.recovered)
        return out


def options_text(options: LiveOptions) -> str:
    """The options in force, in words (no trailing punctuation)."""
    k = int(options.epie.validation_every)
    held = f"every {k}th pattern held out" if k else "no pattern held out"
    return (
        f"options: alpha {options.epie.alpha:g}, beta {options.epie.beta:g}, cap "
        f"{options.pacing.max_updates_per_pattern} updates/pattern ({options.pacing.mode} "
        f"pacing), {held}, final passes {options.final_passes}, publish period "
        f"{options.publish_period_s:g} s, backend {options.backend}, {_engine_text(options)}"
    )


def _engine_text(options: LiveOptions) -> str:
    if options.parallel == "synchronous":
        return f"synchronous engine with {options.workers} worker(s)"
    return "sequential engine"


def status_text(
    state: str,
    why: str,
    *,
    options: LiveOptions,
    run: RunLine | None = None,
    shown_seq: int = 0,
    validation_ratio: float = math.nan,
    callback_message: str = "",
    rejected: int = 0,
    feed: tuple[str, int, int, str] | None = None,
    pushes: int = 0,
    problems: Sequence[str] = (),
    integrity: Integrity | None = None,
) -> str:
    """The device's Status: state and why first, then counters, feed, options and problems.

    Parameters
    ----------
    state, why : str
        As :func:`evaluate` returns them.
    options : LiveOptions
        The options in force.
    run : RunLine, optional
        The run being reconstructed (no run line without it).
    shown_seq : int
        The number of the snapshot shown (0: none yet; then no "did it work" line).
    validation_ratio : float
        The shown snapshot's validation ratio.
    callback_message : str
        The callback's own one-line status.
    rejected : int
        Items the callback rejected.
    feed : (str, int, int, str), optional
        ``(address, documents received, errors, last error)`` while armed.
    pushes : int
        Snapshots pushed as events since the device started.
    problems : sequence of str
        Recent problems, oldest first; duplicates are shown once.
    integrity : Integrity, optional
        Loss, missing stops, a disconnected feed, quarantined frames and recovered runs, in
        words right after the first line.

    Returns
    -------
    str
        Lines joined by newlines; the first is ``"STATE: why"``.
    """
    lines = [f"{state}: {why}"]
    if integrity is not None:
        lines.extend(integrity.lines())
    if run is not None:
        lines.append(run.text())
    if shown_seq:
        lines.append(f"did it work: {signal_text(validation_ratio)}")
    lines.append(f"callback: {callback_message}; {rejected} item(s) rejected")
    if feed is not None:
        address, documents, errors, last = feed
        lines.append(
            f"feed {address}: {documents} documents, {errors} errors"
            + (f" (last: {last})" if last else "")
        )
    lines.append(f"{options_text(options)}; {pushes} snapshots pushed (last seq {shown_seq})")
    unique = list(dict.fromkeys(problems))
    if unique:
        lines.append("recent problems:")
        lines.extend(f"  {p}" for p in unique)
    return "\n".join(lines)


def setpoints(options: LiveOptions, replay_rate: float) -> Mapping[str, int | float]:
    """The values in force of the memorized set-points, by attribute name.

    The device makes these the attributes' write values at initialisation, so that a client
    showing set-points (a Taurus form) offers the values in force, not 0; a value memorized in
    the database is written afterwards and replaces them.

    Parameters
    ----------
    options : LiveOptions
        The options in force.
    replay_rate : float
        The replay rate in force, frames per second.

    Returns
    -------
    Mapping
        One entry per name of :data:`SETPOINTS`.
    """
    return {
        "IterationsPerBatch": int(options.pacing.max_updates_per_pattern),
        "Alpha": float(options.epie.alpha),
        "Beta": float(options.epie.beta),
        "PublishPeriod": float(options.publish_period_s),
        "ReplayRate": float(replay_rate),
    }


def keep_setpoints(options: LiveOptions, previous: LiveOptions) -> LiveOptions:
    """``options`` (from the device properties) with the set-points in force in ``previous``.

    Tango writes memorized values back into a device when its server starts, but not after the
    ``Init`` command; the device keeps its set-points across ``Init`` with this, so that they
    stay equal to the values memorized in the database.

    Parameters
    ----------
    options : LiveOptions
        The options ``Init`` built from the device properties.
    previous : LiveOptions
        The options in force before ``Init``.

    Returns
    -------
    LiveOptions
        ``options`` with ``alpha``, ``beta``, ``max_updates_per_pattern`` and
        ``publish_period_s`` of ``previous``.
    """
    return replace(
        options,
        epie=replace(options.epie, alpha=previous.epie.alpha, beta=previous.epie.beta),
        pacing=replace(
            options.pacing, max_updates_per_pattern=previous.pacing.max_updates_per_pattern
        ),
        publish_period_s=previous.publish_period_s,
    )
