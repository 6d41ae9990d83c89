"""Pure helpers of the Tango device: what a snapshot looks like as attributes, safe paths.

Nothing here imports Tango, so these functions are unit-testable on their own; the device
(:mod:`bluesky_ptycho.tango_device.device`) only moves their results across the wire.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_ptycho.engine.state import SIGNAL_FOUND
from bluesky_ptycho.live import Snapshot
from bluesky_ptycho.setup import START_KEY, ScanSetup

__all__ = [
    "SIGNAL_OK_RATIO",
    "RunInfo",
    "SnapshotView",
    "confine",
    "make_view",
    "pixel_size_m",
    "progress_percent",
    "resolve_inside",
    "signal_ok",
]

SIGNAL_OK_RATIO = SIGNAL_FOUND
"""``SignalOK`` is True when the validation ratio is at most this (finite) value.

See :attr:`~bluesky_ptycho.engine.state.ReconstructionState.validation_ratio`: measured 0.09
to 0.40 once the reconstruction has found the specimen, 0.87 to 1.66 when it has not.
"""


@dataclass(frozen=True)
class RunInfo:
    """What the device learns from a run's start document.

    Attributes
    ----------
    uid : str
        The start document's uid.
    expected : int or None
        Patterns the scan announces (``start["ptycho"]``, else ``start["num_points"]``).
    setup : ScanSetup or None
        The scan contract, when the start document carries a valid one.
    """

    uid: str
    expected: int | None
    setup: ScanSetup | None

    @classmethod
    def from_start(cls, doc: Mapping[str, Any]) -> RunInfo:
        """Read uid, expected points and setup from a start document; never raises."""
        uid = str(doc.get("uid", ""))
        setup: ScanSetup | None = None
        expected: int | None = None
        ptycho = doc.get(START_KEY)
        if isinstance(ptycho, Mapping):
            try:
                setup = ScanSetup.from_start_doc(ptycho)
                expected = setup.expected_points
            except (TypeError, ValueError, KeyError):
                setup = None
        if expected is None:
            num = doc.get("num_points")
            if isinstance(num, (int, np.integer)) and int(num) > 0:
                expected = int(num)
        return cls(uid=uid, expected=expected, setup=setup)


def pixel_size_m(run: RunInfo | None) -> np.ndarray:
    """The object (and probe) pixel size ``(row, col)`` in metres of a run, for ``PixelSize``.

    Parameters
    ----------
    run : RunInfo or None
        The run shown.

    Returns
    -------
    ndarray of float64, shape (2,)
        From the run's scan contract (``ScanSetup.geometry().pixel_size_m``: wavelength times
        distance over the binned detector's width); ``[nan, nan]`` when there is no run or its
        start document carries no valid contract.
    """
    if run is None or run.setup is None:
        return np.full(2, np.nan)
    try:
        pixel = run.setup.geometry().pixel_size_m
    except (TypeError, ValueError):
        return np.full(2, np.nan)
    return np.asarray(pixel, dtype=np.float64).reshape(2).copy()


def progress_percent(received: int, expected: int | None) -> float:
    """Patterns received as a percentage of those expected, in [0, 100]; 0 when unknown."""
    if not expected or expected <= 0:
        return 0.0
    return float(min(100.0, 100.0 * max(received, 0) / expected))


@dataclass(frozen=True)
class SnapshotView:
    """A published snapshot converted to attribute values (computed once, read many times).

    Attributes
    ----------
    seq : int
        The snapshot's counter (0 for the empty view); also the data-ready counter.
    uid : str
        Start uid of the run shown ("" when none).
    phase : str
        The live reconstruction's phase when the snapshot was taken ("" when none).
    object_amplitude, object_phase : ndarray, float32, shape (H, W)
        ``abs`` and ``angle`` (radians) of the object; shape (0, 0) when empty.
    probe_amplitude, probe_phase : ndarray, float32, shape (N, N)
        ``abs`` (sqrt of counts) and ``angle`` (radians) of the probe.
    positions_px : ndarray, float64, shape (n, 2)
        ``(row, col)`` of each pattern's probe-patch top-left corner, in object pixels.
    iteration : int
        Completed passes over all patterns.
    patterns_received, patterns_in_use : int
        Frames handed to the reconstruction, and patterns the engine holds.
    fourier_error : float
        Latest normalised Fourier error, of a pass or of a chunk of updates while the scan
        runs (``state.latest_error``; NaN before the first).
    error_history : ndarray, float64
        The Fourier error after every chunk of updates, oldest first (``error_trace[:, 1]``,
        thinned to at most a few hundred entries); the per-pass errors when there is no trace.
    validation_error : float
        Fourier error of the held-out patterns (NaN when none are held out or not yet known).
    validation_ratio : float
        ``validation_error / fourier_error``, the "did it work" signal (NaN until known).
    signal_ok : bool
        ``validation_ratio <= SIGNAL_OK_RATIO`` (False while the ratio is NaN).
    progress : float
        Percent of the announced patterns received.
    pixel_size_m : ndarray, float64, shape (2,)
        ``(row, col)`` object pixel size in metres (``[nan, nan]`` when unknown).
    """

    seq: int
    uid: str
    phase: str
    object_amplitude: np.ndarray
    object_phase: np.ndarray
    probe_amplitude: np.ndarray
    probe_phase: np.ndarray
    positions_px: np.ndarray
    iteration: int
    patterns_received: int
    patterns_in_use: int
    fourier_error: float
    error_history: np.ndarray
    validation_error: float
    validation_ratio: float
    signal_ok: bool
    progress: float
    pixel_size_m: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))

    @classmethod
    def empty(cls) -> SnapshotView:
        """The view shown before any snapshot (and after a reset)."""
        img = np.zeros((0, 0), dtype=np.float32)
        return cls(
            seq=0,
            uid="",
            phase="",
            object_amplitude=img,
            object_phase=img,
            probe_amplitude=img,
            probe_phase=img,
            positions_px=np.zeros((0, 2), dtype=np.float64),
            iteration=0,
            patterns_received=0,
            patterns_in_use=0,
            fourier_error=math.nan,
            error_history=np.zeros(0, dtype=np.float64),
            validation_error=math.nan,
            validation_ratio=math.nan,
            signal_ok=False,
            progress=0.0,
        )


def signal_ok(ratio: float) -> bool:
    """True when the validation ratio is known and at most :data:`SIGNAL_OK_RATIO`."""
    return bool(math.isfinite(ratio) and ratio <= SIGNAL_OK_RATIO)


def make_view(
    snapshot: Snapshot,
    *,
    uid: str,
    expected: int | None,
    fourier_error: float = math.nan,
    pixel_size: Any = None,
) -> SnapshotView:
    """Convert a :class:`~bluesky_ptycho.live.Snapshot` into attribute values.

    Parameters
    ----------
    snapshot : Snapshot
        As published by :class:`~bluesky_ptycho.live.LiveReconstruction`.
    uid : str
        The run's start uid.
    expected : int or None
        Patterns announced by the start document (for :attr:`SnapshotView.progress`).
    fourier_error : float, optional
        Used only when the snapshot's state knows no error yet (``state.latest_error`` is
        NaN), e.g. the live reconstruction's status.
    pixel_size : array_like, shape (2,), optional
        ``(row, col)`` object pixel size in metres (:func:`pixel_size_m`); unknown (NaN)
        when omitted.

    Returns
    -------
    SnapshotView
    """
    st = snapshot.state
    obj = np.asarray(st.object)
    probe = np.asarray(st.probe)
    trace = np.asarray(st.error_trace, dtype=np.float64).reshape(-1, 2)
    if trace.shape[0]:
        history = trace[:, 1].copy()
    else:
        history = np.asarray(st.fourier_error, dtype=np.float64).copy()
    err = float(st.latest_error)
    if not math.isfinite(err):
        err = float(fourier_error)
    ratio = float(st.validation_ratio)
    positions = np.asarray(st.positions_px, dtype=np.float64).reshape(-1, 2).copy()
    return SnapshotView(
        seq=int(snapshot.seq),
        uid=str(uid),
        phase=str(snapshot.phase),
        object_amplitude=np.abs(obj).astype(np.float32),
        object_phase=np.angle(obj).astype(np.float32),
        probe_amplitude=np.abs(probe).astype(np.float32),
        probe_phase=np.angle(probe).astype(np.float32),
        positions_px=positions,
        iteration=int(st.iteration),
        patterns_received=int(snapshot.patterns_received),
        patterns_in_use=int(snapshot.patterns_in_use),
        fourier_error=err,
        error_history=history,
        validation_error=float(st.validation_error),
        validation_ratio=ratio,
        signal_ok=signal_ok(ratio),
        progress=progress_percent(int(snapshot.patterns_received), expected),
        pixel_size_m=(
            np.full(2, np.nan)
            if pixel_size is None
            else np.asarray(pixel_size, dtype=np.float64).reshape(2).copy()
        ),
    )


def resolve_inside(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` against ``base`` and insist that the result lies inside ``base``.

    Parameters
    ----------
    base : str or path-like
        The directory files may be written to.
    path : str or path-like
        A file name relative to ``base`` (sub-directories allowed), or an absolute path that
        lies inside ``base``.

    Returns
    -------
    Path
        The absolute, resolved file path (symbolic links followed).

    Raises
    ------
    ValueError
        If ``base`` is empty, ``path`` is empty, or the resolved path is ``base`` itself or lies
        outside it (``..`` components, an absolute path elsewhere, a symbolic link pointing out).
    """
    if not os.fspath(base):
        raise ValueError("no output directory is configured (device property OutputDirectory)")
    return confine(path, [base], what="output directory")


def confine(
    path: str | os.PathLike[str],
    roots: Sequence[str | os.PathLike[str]],
    *,
    what: str = "data directories",
    setting: str = "DataDirectories",
) -> Path:
    """The one path check of the device: ``path`` resolved must lie inside one of ``roots``.

    Used for ``Save`` (the output directory) and for ``Replay``, ``Follow`` and the start
    document's ``probe_init`` file (the data directories).

    Parameters
    ----------
    path : str or path-like
        Relative to the first root, or absolute.
    roots : sequence of str or path-like
        The allowed directories (empty entries are ignored).
    what : str
        The directories in words, for the message.
    setting : str
        The device property that configures them, for the message.

    Returns
    -------
    Path
        The absolute, resolved path (symbolic links and ``..`` followed), inside a root.

    Raises
    ------
    ValueError
        If ``path`` is empty, no root is configured, or the resolved path is a root itself or
        lies outside all of them. The message depends only on the text given and the roots,
        never on whether the file exists (no existence oracle).
    """
    text = os.fspath(path).strip()
    dirs = [Path(r).expanduser().resolve() for r in roots if os.fspath(r).strip()]
    if not dirs:
        raise ValueError(f"{text!r} refused: no {what} are configured (device property {setting})")
    if not text:
        raise ValueError(f"the path is empty; give a file name inside the {what}")
    target = (dirs[0] / Path(text).expanduser()).resolve()
    if not any(target != d and target.is_relative_to(d) for d in dirs):
        shown = ", ".join(repr(str(d)) for d in dirs)
        raise ValueError(
            f"{text!r} is not a file inside the {what} {shown}; give a path inside "
            f"{'it' if len(dirs) == 1 else 'one of them'}"
        )
    return target
