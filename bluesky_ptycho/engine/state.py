"""The reconstruction state: host copies of everything needed to resume or publish."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ReconstructionState"]


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
        The error of the patterns in use at the moment ``validation_error`` was measured when
        that was earlier (the held-out patterns were put back into use for the final passes);
        NaN while the validation is current (``latest_error`` is then the baseline).
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

        About 1 (measured 0.95 to 1.3) when the reconstruction has found the specimen: the
        model predicts patterns it never saw as well as those it was fitted to. Well above 1
        (measured 2 to 6) on a plateau, where probe and object fit the patterns in use without
        being the specimen and illumination. NaN until both errors are known.
        """
        train = self.validation_baseline
        if not train == train:
            train = self.latest_error
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
