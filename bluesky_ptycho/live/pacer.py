"""The pacer: which updates to run while data keeps arriving, per the :class:`PacingPolicy`.

:class:`Pacer` owns no thread and takes no lock. The live worker calls it between ingesting
data and publishing; a test can drive it directly on a real engine::

    engine = EPIE(object_shape, probe_shape=probe_shape)
    pacer = Pacer(engine, PacingPolicy(mode="capped", max_updates_per_pattern=3))
    engine.add(frames, positions)
    pacer.on_added(len(frames))
    while pacer.run_chunk() is not None:
        pass          # every pattern now has 3 updates
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from bluesky_ptycho.live.options import PacingPolicy

__all__ = ["PacedEngine", "Pacer"]


class PacedEngine(Protocol):
    """What the pacer needs of an engine (:class:`~bluesky_ptycho.engine.EPIE` has it)."""

    @property
    def n_patterns(self) -> int:
        """Patterns held."""
        ...

    @property
    def iteration(self) -> int:
        """Completed passes."""
        ...

    @property
    def pattern_updates(self) -> int:
        """Single-pattern updates done."""
        ...

    def step(self, max_updates: int) -> int:
        """Up to ``max_updates`` updates of the current shuffled pass; returns those done."""
        ...

    def update(self, indices: Any) -> float:
        """One update of each given pattern (not counted as a pass); the Fourier error."""
        ...


class Pacer:
    """Runs one chunk of updates at a time as a :class:`PacingPolicy` says.

    Parameters
    ----------
    engine : PacedEngine
        The engine to update, e.g. an :class:`~bluesky_ptycho.engine.EPIE`.
    policy : PacingPolicy
        The policy; replace it with :attr:`policy` at any time.
    seed : int or None
        Seed of the random order among equally updated patterns (``"capped"``).

    Notes
    -----
    The ``"capped"`` choice uses the pacer's own count of updates per pattern. It counts the
    updates the pacer chose itself; call :meth:`sync` with the engine's counts whenever the
    engine updated patterns otherwise (passes of :meth:`step`, a loaded state), as the live
    worker does after every chunk.
    """

    def __init__(self, engine: PacedEngine, policy: PacingPolicy, *, seed: int | None = 0) -> None:
        if not isinstance(policy, PacingPolicy):
            raise TypeError(f"policy must be a PacingPolicy, got {type(policy).__name__}")
        self._engine = engine
        self._policy = policy
        self._rng = np.random.default_rng(seed)
        self._counts = np.zeros(0, dtype=np.int64)  # updates per pattern (mirror)
        self._budget = 0  # "batch": updates left in the current batch
        self._pass_open = False  # engine.step left a pass unfinished

    @property
    def policy(self) -> PacingPolicy:
        """The policy in force; assigning one of another mode drops the batch budget."""
        return self._policy

    @policy.setter
    def policy(self, policy: PacingPolicy) -> None:
        if not isinstance(policy, PacingPolicy):
            raise TypeError(f"policy must be a PacingPolicy, got {type(policy).__name__}")
        if policy.mode != self._policy.mode:
            self._budget = 0
        self._policy = policy

    @property
    def budget(self) -> int:
        """Updates left in the current batch (``"batch"``; 0 otherwise)."""
        return self._budget

    @property
    def pass_open(self) -> bool:
        """True when the last :meth:`step` left a pass unfinished."""
        return self._pass_open

    def on_added(self, n: int) -> None:
        """Tell the pacer that ``n`` patterns were just added to the engine.

        Under ``"batch"`` this opens a batch of ``passes_per_batch`` passes' worth of updates
        over everything held (a budget still open is not added to, only raised).
        """
        if n <= 0:
            return
        if self._policy.mode == "batch":
            want = round(self._policy.passes_per_batch * self._engine.n_patterns)
            self._budget = max(self._budget, want)

    def has_work(self) -> bool:
        """Whether :meth:`run_chunk` would update anything now (no side effects)."""
        policy = self._policy
        n = self._engine.n_patterns
        if n < max(1, int(policy.min_patterns)):
            return False
        if policy.mode == "free":
            return True
        if policy.mode == "batch":
            return self._budget > 0
        counts = np.zeros(n, dtype=np.int64)
        m = min(n, self._counts.size)
        counts[:m] = self._counts[:m]
        usable = np.ones(n, dtype=bool)
        for name in ("held_out", "excluded"):
            unused = getattr(self._engine, name, None)
            if unused is not None and np.any(unused):
                usable &= ~np.asarray(unused, dtype=bool)[:n]
        return bool(np.any(counts[usable] < int(policy.max_updates_per_pattern)))

    def run_chunk(self) -> float | None:
        """Run one chunk of at most ``policy.chunk_updates`` updates, as the policy says.

        Returns
        -------
        float or None
            None when the policy says there is nothing to do (fewer than ``min_patterns``
            held, the batch budget spent, every pattern at the cap): wait for more data.
            Otherwise the chunk's Fourier error (``"capped"``), or NaN when a pass-based chunk
            ran (a pass that ended recorded its error in the engine's history).
        """
        policy = self._policy
        if self._engine.n_patterns < max(1, int(policy.min_patterns)):
            return None
        chunk = int(policy.chunk_updates)
        if policy.mode == "free":
            return self.step(chunk)
        if policy.mode == "batch":
            if self._budget <= 0:
                return None
            before = self._engine.pattern_updates
            err = self.step(min(chunk, self._budget))
            self._budget -= self._engine.pattern_updates - before
            return err
        idx = self._capped_selection(int(policy.max_updates_per_pattern), chunk)
        if idx.size == 0:
            return None
        err = self._engine.update(idx)
        np.add.at(self._counts, idx, 1)
        return err

    def step(self, max_updates: int) -> float:
        """Continue the engine's shuffled pass by up to ``max_updates`` updates (any policy).

        Returns NaN: the error of a pass that ended is in the engine's history.
        """
        before = self._engine.iteration
        done = self._engine.step(max_updates)
        if done:
            self._pass_open = self._engine.iteration == before
        return math.nan

    def sync(self, updates_per_pattern: np.ndarray) -> None:
        """Take the engine's updates per pattern (``state().updates_per_pattern``) as true."""
        self._counts = np.asarray(updates_per_pattern).astype(np.int64, copy=True)

    def state_replaced(self) -> None:
        """The engine's state was replaced (loaded, rolled back): no pass is open any more."""
        self._pass_open = False

    def _capped_selection(self, cap: int, chunk: int) -> np.ndarray:
        """Up to ``chunk`` indices below the cap, fewest-updated first (random ties)."""
        n = self._engine.n_patterns
        if self._counts.size < n:
            self._counts = np.concatenate(
                [self._counts, np.zeros(n - self._counts.size, dtype=np.int64)]
            )
        counts = self._counts[:n].copy()
        for name in ("held_out", "excluded"):  # validation and removed patterns take no update
            unused = getattr(self._engine, name, None)
            if unused is not None and np.any(unused):
                counts[np.asarray(unused, dtype=bool)[:n]] = cap
        picked: list[np.ndarray] = []
        left = chunk
        while left > 0:
            cand = np.flatnonzero(counts < cap)
            if cand.size == 0:
                break
            order = np.lexsort((self._rng.random(cand.size), counts[cand]))
            take = cand[order[:left]]
            picked.append(take)
            counts[take] += 1
            left -= take.size
        if not picked:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(picked)
