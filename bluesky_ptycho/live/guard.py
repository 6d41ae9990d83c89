"""The divergence guard: spot NaN/inf after a chunk and roll back to the last good state."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from bluesky_ptycho.engine.state import ReconstructionState

__all__ = ["DivergenceGuard", "divergence"]


def divergence(state: ReconstructionState, err: float) -> str | None:
    """Why ``state`` (after a chunk with Fourier error ``err``) is diverged, or None.

    A NaN error alone is not divergence: the engine reports NaN when the visited patterns have
    no counts at all (dark frames); a diverged update always leaves NaN/inf in object or probe.

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
    """Holds the last state known to be good and rolls an engine back to it.

    The owner marks states good as it publishes them (:meth:`mark_good`), checks every chunk
    with :meth:`check`, and on divergence calls :meth:`roll_back`. Not thread-safe: one thread
    (the live worker) uses it.
    """

    def __init__(self) -> None:
        self._good: ReconstructionState | None = None

    @property
    def good(self) -> ReconstructionState | None:
        """The last good state (None before the first)."""
        return self._good

    def mark_good(self, state: ReconstructionState) -> None:
        """Remember ``state`` (not copied: treat it as read-only) as the one to roll back to."""
        self._good = state

    def ensure_good(self, engine: _Restorable) -> None:
        """Take the engine's state as the good one if there is none yet and it holds data."""
        if self._good is None and engine.n_patterns:
            self._good = engine.state()

    @staticmethod
    def check(state: ReconstructionState, err: float = math.nan) -> str | None:
        """What is diverged in ``state``, or None; see :func:`divergence`."""
        return divergence(state, err)

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
                f"{good.pattern_updates} updates; resume() to continue"
            )
        else:
            reason = f"divergence: {problem}; no good state to roll back to"
        return engine.state(), reason
