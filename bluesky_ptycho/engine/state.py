"""The reconstruction state: host copies of everything needed to resume or publish."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SIGNAL_FOUND", "SIGNAL_NOT_FOUND", "ReconstructionState", "signal_verdict"]

SIGNAL_FOUND = 0.6
"""A validation ratio at most this says the reconstruction has found the specimen.

Measured (``docs/explanation/engine.md``): 0.09 to 0.40 once it has; 0.58 on the way there.
"""
SIGNAL_NOT_FOUND = 0.8
"""A validation ratio above this says it has not (measured 0.87 to 1.66 on plateaus)."""


def signal_verdict(ratio: float) -> str:
    """The validation ratio in words.

    ``"not yet known"`` (NaN), ``"found the specimen"`` (at most :data:`SIGNAL_FOUND`),
    ``"undecided"`` (up to :data:`SIGNAL_NOT_FOUND`) or ``"not found"`` (a plateau or a wrong
    start).
    """
    if not ratio == ratio:
        return "not yet known"
    if ratio <= SIGNAL_FOUND:
        return "found the specimen"
    if ratio <= SIGNAL_NOT_FOUND:
        return "undecided"
    return "not found"


@dataclass
class ReconstructionState:
    """A snapshot of a reconstruction, as host NumPy arrays.

    Attributes
    ----------
    object : ndarray, complex64, shape (H, W)
        The specimen's complex transmission.
    probe : ndarray, complex64, shape (N, N)
        The illumination, scaled so that ``sum(|probe|**2)`` is the counts of one pattern.
    positions_px : ndarray, float64, shape (n, 2)
        ``(row, col)`` of each pattern's probe-patch top-left corner in the object array.
    iteration : int
        Completed passes (a pass visits every pattern held once).
    pattern_updates : int
        Single-pattern ePIE updates done so far, over all passes.
    fourier_error : ndarray, float64, shape (iteration,)
        Normalised Fourier error of each completed pass,
        ``sum((|F(P O)| - sqrt(I))**2) / sum(I)`` over the patterns that pass visited.
    updates_per_pattern : ndarray, int64, shape (n,)
        How often each pattern has been used in an update.
    error_trace : ndarray, float64, shape (k, 2)
        ``(pattern_updates, fourier_error)`` after every chunk of updates, passes or not
        (the live pacing policies update patterns without completing passes); thinned to at
        most a few hundred rows.
    validation_error : float
        Fourier error the model predicts for the held-out patterns (NaN when none are held
        out); see :meth:`bluesky_ptycho.engine.EPIE.validation_error`.
    validation_baseline : float
        The Fourier error of the mean pattern (a model that knows nothing of the specimen) on
        the same held-out patterns (see :meth:`bluesky_ptycho.engine.EPIE.validation`).
    """

    object: np.ndarray
    probe: np.ndarray
    positions_px: np.ndarray
    iteration: int = 0
    pattern_updates: int = 0
    fourier_error: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    updates_per_pattern: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    error_trace: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    validation_error: float = float("nan")
    validation_baseline: float = float("nan")

    @property
    def latest_error(self) -> float:
        """The most recent Fourier error (of a pass or a chunk of updates); NaN if none."""
        if self.error_trace.shape[0]:
            return float(self.error_trace[-1, 1])
        if self.fourier_error.size:
            return float(self.fourier_error[-1])
        return float("nan")

    @property
    def validation_ratio(self) -> float:
        """The "did it work" signal: held-out error over the error of the patterns in use.

        ``validation_error / validation_baseline``: the error the reconstruction makes on
        held-out patterns inside the scanned area, over the error of predicting them by the
        mean pattern (what a model that knows nothing of the specimen would say). Well below 1
        when the reconstruction has found the specimen (measured 0.09 to 0.40); about 1 or
        more when it predicts unseen patterns no better than the mean pattern (plateaus, wrong
        starts and the raster-grid ambiguity: 0.87 to 1.6). NaN until a held-out pattern
        lies inside the scanned area. Values: ``docs/explanation/engine.md``.
        """
        train = self.validation_baseline
        val = self.validation_error
        if not (train > 0 and val == val):
            return float("nan")
        return float(val / train)

    @property
    def n_patterns(self) -> int:
        """Number of patterns the state's positions describe."""
        return int(self.positions_px.shape[0])

    def copy(self) -> ReconstructionState:
        """Return a deep copy."""
        return ReconstructionState(
            object=self.object.copy(),
            probe=self.probe.copy(),
            positions_px=self.positions_px.copy(),
            iteration=self.iteration,
            pattern_updates=self.pattern_updates,
            fourier_error=self.fourier_error.copy(),
            updates_per_pattern=self.updates_per_pattern.copy(),
            error_trace=self.error_trace.copy(),
            validation_error=self.validation_error,
            validation_baseline=self.validation_baseline,
        )
