"""Quarantine: frames whose counts are implausible are kept aside instead of reconstructed.

A frame multiplied by 1000, scaled by 1e30, carrying detector flag values that were not masked,
or holding no counts at all takes an ePIE reconstruction far from the truth in a few updates.
:class:`Quarantine` screens every frame before it reaches the engine, on the live worker
thread, at a cost of one pass over the frame (a sum and a maximum) plus a few medians of at
most ``window`` numbers:

* from the first frame on, a pixel above the physical bound ``max_pixel`` (no counting
  detector reports that much in one frame, even binned) quarantines the frame;
* once ``warmup`` frames were accepted, the frame's total counts and its brightest pixel must
  lie inside a robust band around those of the frames accepted so far: the median of their
  ``log10`` plus or minus ``band_mads`` median absolute deviations, and never narrower than a
  factor ``min_factor`` either way; a frame with no counts is outside any band. A frame with a
  much larger masked fraction than usual (``masked_jump``) is quarantined too.

While fewer than ``warmup`` frames were accepted, the frames of the chunk being screened are
taken into the reference as well (the median of a chunk is not moved by one bad frame), so a
scan whose frames all arrive at once is screened too. When ``warmup`` frames in a row fall
outside the band the counts have changed level (a filter, a top-up): the statistics restart
from the next frames and a note says so.

Nothing here knows about threads; the owner calls :meth:`Quarantine.screen` from one thread.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["Quarantine", "QuarantinePolicy", "QuarantinedFrame", "Verdicts"]

_LOG_MAD = 1.4826  # MAD of a normal distribution to its standard deviation
_REFRESH = 8  # accepted frames between recomputations of the bands once warmed up


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a frame is quarantined (see the module docstring).

    Attributes
    ----------
    enabled : bool
        Screen frames at all.
    warmup : int
        Accepted frames before the robust band applies (at least 3).
    window : int
        Accepted frames the statistics remember (the most recent).
    band_mads : float
        Half-width of the band in median absolute deviations of ``log10`` counts.
    min_factor : float
        The band is never narrower than this factor above and below the median (> 1).
    max_pixel : float
        Physical bound of one pixel's counts, applied from the first frame.
    masked_jump : float
        A frame whose masked fraction exceeds the median fraction by more than this is
        quarantined (after ``warmup``); 1 switches the check off.
    keep : int
        Quarantined frames kept aside (the most recent) for inspection.
    """

    enabled: bool = True
    warmup: int = 8
    window: int = 256
    band_mads: float = 10.0
    min_factor: float = 20.0
    max_pixel: float = 1e12
    masked_jump: float = 0.5
    keep: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a boolean, got {self.enabled!r}")
        if int(self.warmup) < 3:
            raise ValueError(f"warmup must be >= 3 frames, got {self.warmup!r}")
        if int(self.window) < int(self.warmup):
            raise ValueError(f"window must be >= warmup ({self.warmup}), got {self.window!r}")
        for name in ("band_mads", "max_pixel"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and positive, got {v!r}")
        if not (math.isfinite(float(self.min_factor)) and float(self.min_factor) > 1):
            raise ValueError(f"min_factor must be a finite number > 1, got {self.min_factor!r}")
        if not 0 < float(self.masked_jump) <= 1:
            raise ValueError(f"masked_jump must be in (0, 1], got {self.masked_jump!r}")
        if int(self.keep) < 0:
            raise ValueError(f"keep must be >= 0, got {self.keep!r}")


@dataclass(frozen=True, eq=False)
class QuarantinedFrame:
    """A frame kept aside, with why.

    Attributes
    ----------
    index : int
        Its submit index.
    reason : str
        Why it was quarantined.
    frame : ndarray, shape (N, N)
        The counts as submitted (float32 copy).
    mask : bool ndarray, shape (N, N), or None
    position_px : ndarray, shape (2,)
    """

    index: int
    reason: str
    frame: np.ndarray
    mask: np.ndarray | None
    position_px: np.ndarray


@dataclass(frozen=True)
class Verdicts:
    """The outcome of screening a chunk of frames.

    Attributes
    ----------
    reasons : tuple of (str or None)
        Per frame: why it is quarantined, or None if it is accepted.
    notes : tuple of str
        Other things worth telling (e.g. the statistics restarted).
    """

    reasons: tuple[str | None, ...]
    notes: tuple[str, ...] = ()

    @property
    def rejected(self) -> np.ndarray:
        """Boolean per frame: True where the frame is quarantined."""
        return np.array([r is not None for r in self.reasons], dtype=bool)


class Quarantine:
    """Running statistics of the accepted frames and the screening of new ones.

    Parameters
    ----------
    policy : QuarantinePolicy, optional
    """

    def __init__(self, policy: QuarantinePolicy | None = None) -> None:
        self.policy = policy if policy is not None else QuarantinePolicy()
        self._totals: deque[float] = deque(maxlen=int(self.policy.window))
        self._peaks: deque[float] = deque(maxlen=int(self.policy.window))
        self._masked: deque[float] = deque(maxlen=int(self.policy.window))
        self._outside_in_a_row = 0
        self._accepts = 0  # frames accepted ever
        self._cache: _Bands | None = None
        self._cache_at = 0

    @property
    def accepted(self) -> int:
        """Frames the statistics hold now (at most ``window``)."""
        return len(self._totals)

    def screen(self, frames: np.ndarray, mask: np.ndarray | None = None) -> Verdicts:
        """Screen a stack of frames in order; accepted ones join the statistics.

        Parameters
        ----------
        frames : ndarray, shape (n, N, N)
            Preprocessed counts.
        mask : bool ndarray, shape (n, N, N), or None
            True at bad pixels (left out of the counts).

        Returns
        -------
        Verdicts
        """
        f = np.asarray(frames)
        n = int(f.shape[0]) if f.ndim == 3 else 0
        if n == 0 or not self.policy.enabled:
            return Verdicts(reasons=(None,) * n)
        flat = f.reshape(n, -1)
        if mask is not None:
            m = np.asarray(mask).reshape(n, -1)
            flat = np.where(m, 0, flat)
            masked = m.mean(axis=1, dtype=np.float64)
        else:
            masked = np.zeros(n)
        totals = np.asarray(np.sum(np.maximum(flat, 0), axis=1, dtype=np.float64))
        peaks = np.max(flat, axis=1).astype(np.float64)
        reasons: list[str | None] = []
        notes: list[str] = []
        for k in range(n):
            reason, banded = self._judge(totals, peaks, masked, k)
            reasons.append(reason)
            if reason is None:
                self._outside_in_a_row = 0
                self._totals.append(float(totals[k]))
                self._peaks.append(float(peaks[k]))
                self._masked.append(float(masked[k]))
                self._accepts += 1
                continue
            if not banded:
                continue
            self._outside_in_a_row += 1
            if self._outside_in_a_row >= int(self.policy.warmup):
                notes.append(
                    f"{self._outside_in_a_row} frames in a row outside the band of the accepted "
                    "frames: the counts changed level; the statistics restart"
                )
                self._totals.clear()
                self._peaks.clear()
                self._masked.clear()
                self._outside_in_a_row = 0
                self._cache = None
        return Verdicts(reasons=tuple(reasons), notes=tuple(notes))

    # ------------------------------------------------------------------ helpers
    def _judge(
        self, totals: np.ndarray, peaks: np.ndarray, masked: np.ndarray, k: int
    ) -> tuple[str | None, bool]:
        """Why frame ``k`` is quarantined (None if it is not), and whether by the band."""
        pol = self.policy
        peak, total = float(peaks[k]), float(totals[k])
        if not (math.isfinite(peak) and math.isfinite(total)):
            return "counts are not finite", False
        if peak > pol.max_pixel:
            return (
                f"a pixel holds {peak:.3g} counts, above the physical bound {pol.max_pixel:.3g} "
                "(max_pixel)",
                False,
            )
        bands = self._bands(totals, peaks, masked)
        if bands is None:
            return None, False
        frac = float(masked[k])
        if frac - bands.masked > pol.masked_jump:
            return (
                f"{100 * frac:.0f}% of its pixels are masked (flag values, counts above "
                f"max_count...), typically {100 * bands.masked:.0f}%",
                True,
            )
        for what, value, band in (("total counts", total, bands.total), ("peak", peak, bands.peak)):
            problem = _outside(what, value, band, bands.size)
            if problem is not None:
                if frac > 0:
                    problem += f"; {100 * frac:.0f}% of its pixels are masked"
                return problem, True
        return None, False

    def _bands(self, totals: np.ndarray, peaks: np.ndarray, masked: np.ndarray) -> _Bands | None:
        """The bands to judge by: refreshed every few accepted frames once warmed up."""
        warm = len(self._totals) >= int(self.policy.warmup)
        if warm and self._cache is not None and self._cache_at + _REFRESH > self._accepts:
            return self._cache
        ref_totals, ref_peaks, ref_masked = self._reference(totals, peaks, masked)
        if ref_totals.size < int(self.policy.warmup):
            return None
        bands = _Bands(
            total=self._band(ref_totals),
            peak=self._band(ref_peaks),
            masked=float(np.median(ref_masked)),
            size=int(ref_totals.size),
        )
        if warm:
            self._cache, self._cache_at = bands, self._accepts
        return bands

    def _band(self, ref: np.ndarray) -> tuple[float, float] | None:
        """``(centre, half-width)`` in ``log10`` of the robust band of ``ref``, or None."""
        positive = ref[ref > 0]
        if positive.size < max(3, ref.size // 2):
            return None  # mostly dark frames: no band to speak of
        logs = np.log10(positive)
        centre = float(np.median(logs))
        mad = float(np.median(np.abs(logs - centre))) * _LOG_MAD
        return centre, max(self.policy.band_mads * mad, math.log10(self.policy.min_factor))

    def _reference(
        self, totals: np.ndarray, peaks: np.ndarray, masked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The accepted frames' values; before warmup, with the chunk's own frames added."""
        t = np.fromiter(self._totals, dtype=np.float64, count=len(self._totals))
        p = np.fromiter(self._peaks, dtype=np.float64, count=len(self._peaks))
        m = np.fromiter(self._masked, dtype=np.float64, count=len(self._masked))
        if t.size >= int(self.policy.warmup) or totals.size < 2:
            return t, p, m
        return (
            np.concatenate([t, totals]),
            np.concatenate([p, peaks]),
            np.concatenate([m, masked]),
        )


@dataclass(frozen=True)
class _Bands:
    total: tuple[float, float] | None
    peak: tuple[float, float] | None
    masked: float
    size: int


def _outside(what: str, value: float, band: tuple[float, float] | None, size: int) -> str | None:
    """Why ``value`` lies outside ``band`` (from ``size`` frames), or None if inside."""
    if band is None:
        return None
    centre, half = band
    median = 10.0**centre
    if value <= 0:
        return f"{what} {value:.3g}: no counts (median of the accepted frames {median:.3g})"
    if abs(math.log10(value) - centre) <= half:
        return None
    lo, hi = 10.0 ** (centre - half), 10.0 ** (centre + half)
    return (
        f"{what} {value:.3g} is {value / median:.3g} times the median {median:.3g} of "
        f"{size} accepted frames (band {lo:.3g} to {hi:.3g})"
    )
