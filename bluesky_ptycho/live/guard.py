"""The divergence guard: spot a blow-up after a chunk, roll back, and find the pattern behind it.

A chunk of updates has diverged when it leaves NaN/inf in object or probe (:func:`divergence`),
and also when it stays finite but blows up (:meth:`DivergenceGuard.check`): the Fourier error
jumps far above its recent level, or the object amplitude far above its bound. The guard then
loads the last good state (:meth:`DivergenceGuard.roll_back`) and looks for the pattern that
caused it (:meth:`DivergenceGuard.find_culprits`): among the patterns updated or added since the
good state, one whose data the good model explains far worse than it explains the others (a
poisoned frame: flag values, a frame scaled by 1000...). The owner excludes it from the engine,
so the reconstruction continues without it instead of diverging again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bluesky_ptycho.engine.state import ReconstructionState

__all__ = ["DivergenceGuard", "GuardPolicy", "divergence"]

_CULPRIT_MADS = 10.0  # a culprit's ratio lies this many MADs (in log10) above the median


@dataclass(frozen=True)
class GuardPolicy:
    """When a finite state counts as diverged, and when a pattern is blamed for it.

    Attributes
    ----------
    error_jump : float
        Diverged when the Fourier error exceeds this factor times its recent level (the
        median of the last ``history`` errors of good chunks, once there are 3)...
    error_ceiling : float
        ... and also exceeds this value. With the probe power equal to the measured counts the
        normalised error is at most 2; above 4 the model's power is off by more than 3 times.
    history : int
        Errors of good chunks remembered for the recent level.
    amplitude_factor : float
        Diverged when the object amplitude exceeds this factor times ``object_amplitude_max``
        (times 1 when there is no bound).
    culprit_factor : float
        A pattern is blamed when its measured counts exceed the counts the good model predicts
        for it by this factor times the median such ratio of the patterns examined.
    max_removals : int
        Patterns removed at most per run; a divergence after that is a fault again.
    reference_sample : int
        Patterns (besides the candidates) that join the median when there are few candidates.
    candidates : int
        Patterns examined at most: all when there are no more, else those updated since the
        good state plus the most recently added (one FFT each).
    """

    error_jump: float = 10.0
    error_ceiling: float = 4.0
    history: int = 8
    amplitude_factor: float = 100.0
    culprit_factor: float = 10.0
    max_removals: int = 16
    reference_sample: int = 64
    candidates: int = 4096

    def __post_init__(self) -> None:
        for name in ("error_jump", "error_ceiling", "amplitude_factor", "culprit_factor"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and positive, got {v!r}")
        for name in ("history", "reference_sample", "candidates"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.max_removals) < 0:
            raise ValueError(f"max_removals must be >= 0, got {self.max_removals!r}")


def divergence(state: ReconstructionState, err: float) -> str | None:
    """Why ``state`` (after a chunk with Fourier error ``err``) holds NaN/inf, or None.

    A NaN error alone is not divergence: the engine reports NaN when the visited patterns have
    no counts at all (dark frames); a diverged update always leaves NaN/inf in object or probe.
    Finite blow-ups are :meth:`DivergenceGuard.check`'s.

    Parameters
    ----------
    state : ReconstructionState
        The engine's state after the chunk.
    err : float
        The chunk's Fourier error, NaN if unknown.

    Returns
    -------
    str or None
        What is wrong, in words; None if the state is good.
    """
    for what, arr in (("object", state.object), ("probe", state.probe)):
        if not np.isfinite(np.sum(arr, dtype=np.complex128)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                return f"the {what} has {bad} NaN or infinite values"
            return f"the {what} overflows"
    if math.isinf(err):
        return f"the Fourier error is {err}"
    if state.fourier_error.size and np.isinf(state.fourier_error[-1]):
        return f"the Fourier error of the last pass is {state.fourier_error[-1]}"
    return None


class _Restorable(Protocol):
    @property
    def n_patterns(self) -> int: ...

    def state(self) -> ReconstructionState: ...

    def load_state(self, state: ReconstructionState) -> None: ...


class DivergenceGuard:
    """Holds the last state known to be good, rolls an engine back to it, finds culprits.

    The owner marks states good as it publishes them (:meth:`mark_good`), checks every chunk
    with :meth:`check`, and on divergence calls :meth:`roll_back` and then
    :meth:`find_culprits`. Not thread-safe: one thread (the live worker) uses it.

    Parameters
    ----------
    policy : GuardPolicy, optional
    """

    def __init__(self, policy: GuardPolicy | None = None) -> None:
        self.policy = policy if policy is not None else GuardPolicy()
        self._good: ReconstructionState | None = None
        self._levels: deque[float] = deque(maxlen=int(self.policy.history))
        self._passes_seen = 0
        self._updates_seen = -1
        self.model_scale = math.nan
        """Median ratio of measured to predicted counts seen by the last :meth:`find_culprits`
        (about 1 for a good model; far from 1 when the good state itself was spoilt)."""

    @property
    def good(self) -> ReconstructionState | None:
        """The last good state (None before the first)."""
        return self._good

    def mark_good(self, state: ReconstructionState) -> None:
        """Remember ``state`` (not copied: treat it as read-only) as the one to roll back to.

        A state without a probe (none made yet) is ignored: see :meth:`ensure_good`.
        """
        if np.any(state.probe):
            self._good = state

    def ensure_good(self, engine: _Restorable) -> None:
        """Take the engine's state as the good one if there is none yet and it holds data.

        A state without a probe yet (the engine makes it from the data at its first update) is
        not taken: rolling back to it would leave the engine with a probe of zeros.
        """
        if self._good is None and engine.n_patterns:
            state = engine.state()
            if np.any(state.probe):
                self._good = state

    def check(
        self,
        state: ReconstructionState,
        err: float = math.nan,
        amplitude_max: float | None = None,
        chunk_error: float = math.nan,
    ) -> str | None:
        """What is diverged in ``state``, or None.

        NaN/inf (:func:`divergence`); a Fourier error (``err``, else ``chunk_error``, the
        engine's error of the chunk just run, else the last pass's when a pass ended since the
        previous check) above ``error_ceiling`` and ``error_jump`` times the recent level; an
        object amplitude above ``amplitude_factor * amplitude_max``. The error of a good state
        joins the recent level.
        """
        problem = divergence(state, err)
        if problem is not None:
            return problem
        pol = self.policy
        moved = int(state.pattern_updates) != self._updates_seen
        self._updates_seen = int(state.pattern_updates)
        e = err if math.isfinite(err) else (chunk_error if moved else math.nan)
        passes = int(state.fourier_error.size)
        if not math.isfinite(e) and passes > self._passes_seen:
            e = float(state.fourier_error[-1])
        self._passes_seen = passes
        if math.isfinite(e) and len(self._levels) >= 3:
            level = float(np.median(np.fromiter(self._levels, dtype=np.float64)))
            if e > pol.error_ceiling and e > pol.error_jump * level:
                return (
                    f"the Fourier error jumped to {e:.3g}, {e / level:.3g} times its recent "
                    f"level {level:.3g}"
                )
        limit = pol.amplitude_factor * (1.0 if amplitude_max is None else float(amplitude_max))
        if state.object.size:
            amax = float(np.max(np.abs(state.object)))
            if amax > limit:
                return f"the object amplitude reached {amax:.3g}, above {limit:.3g}"
        if math.isfinite(e):
            self._levels.append(e)
        return None

    def roll_back(self, engine: _Restorable, problem: str) -> tuple[ReconstructionState, str]:
        """Load the last good state into ``engine``.

        Parameters
        ----------
        engine : EPIE or alike
            The diverged engine.
        problem : str
            What :meth:`check` found.

        Returns
        -------
        state : ReconstructionState
            The engine's state afterwards (still the diverged one if there was no good state).
        reason : str
            The fault reason to report.
        """
        good = self._good
        if good is not None:
            engine.load_state(good)
            reason = (
                f"divergence: {problem}; rolled back to the state of iteration {good.iteration}, "
                f"{good.pattern_updates} updates"
            )
        else:
            reason = f"divergence: {problem}; no good state to roll back to"
        state = engine.state()
        self._passes_seen = int(state.fourier_error.size)
        self._updates_seen = int(state.pattern_updates)
        return state, reason

    def find_culprits(
        self, engine: Any, diverged: ReconstructionState, *, seed: int = 0
    ) -> list[tuple[int, str]]:
        """The patterns to blame for a divergence, with the reason for each.

        Call after :meth:`roll_back` (the engine holds the good state). A poisoned frame (a
        frame scaled by 1000, flag values that were not masked) holds far more counts than
        the model can explain, and through the probe-power constraint it spoils the updates of
        every pattern, visited or not. So the patterns examined are all those held (up to
        ``candidates``: then the ones updated since the good state and the most recently
        added), and a pattern is blamed when the ratio of its measured counts to the counts
        the good model predicts for it
        (:meth:`~bluesky_ptycho.engine.EPIE.pattern_residuals`) exceeds ``culprit_factor``
        times the median ratio and lies 10 median absolute deviations (of ``log10``) above it
        (a good state spoilt by the culprit predicts the other patterns poorly too). The
        median ratio is kept in :attr:`model_scale`.

        Parameters
        ----------
        engine : EPIE
            With ``pattern_residuals``, ``excluded`` and ``n_patterns``.
        diverged : ReconstructionState
            The state that failed the check.
        seed : int
            Seed of the reference sample.

        Returns
        -------
        list of (int, str)
            Pattern index and reason; empty if nothing stands out (or there was no good state).
        """
        good = self._good
        if good is None or not hasattr(engine, "pattern_residuals"):
            return []
        pol = self.policy
        n = int(engine.n_patterns)
        excluded = np.asarray(engine.excluded, dtype=bool)
        usable = np.flatnonzero(~excluded)
        if usable.size <= int(pol.candidates):
            candidates = usable
        else:
            before = np.zeros(n, dtype=np.int64)
            k = min(n, good.updates_per_pattern.size)
            before[:k] = good.updates_per_pattern[:k]
            after = np.zeros(n, dtype=np.int64)
            k = min(n, diverged.updates_per_pattern.size)
            after[:k] = diverged.updates_per_pattern[:k]
            visited = np.flatnonzero((after > before) & ~excluded)
            recent = usable[-int(pol.candidates) :]
            candidates = np.union1d(visited, recent)
        if candidates.size == 0:
            return []
        sample = candidates[:0]
        if candidates.size < int(pol.reference_sample):
            others = usable[~np.isin(usable, candidates)]
            take = min(others.size, int(pol.reference_sample))
            if take:
                sample = np.random.default_rng(seed).choice(others, size=take, replace=False)
        _, counts, model = engine.pattern_residuals(np.concatenate([candidates, sample]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(model > 0, counts / model, np.where(counts > 0, np.inf, 1.0))
        self.model_scale = math.nan
        positive = ratio[(ratio > 0) & np.isfinite(ratio)]
        if positive.size < max(3, ratio.size // 2):
            return []
        logs = np.log10(positive)
        centre = float(np.median(logs))
        self.model_scale = 10.0**centre
        # blamed: far above the others, by a factor and by the spread of the others' ratios
        mad = float(np.median(np.abs(logs - centre))) * 1.4826
        threshold = max(math.log10(pol.culprit_factor), _CULPRIT_MADS * mad)
        with np.errstate(divide="ignore"):
            log_scores = np.log10(ratio[: candidates.size]) - centre
        scores = 10.0**log_scores
        out: list[tuple[int, str]] = []
        for j in np.flatnonzero(log_scores > threshold).tolist():
            out.append(
                (
                    int(candidates[j]),
                    f"pattern {int(candidates[j])}: {counts[j]:.3g} counts where the good model "
                    f"predicts {model[j]:.3g}, {scores[j]:.3g} times the usual ratio",
                )
            )
        return out
