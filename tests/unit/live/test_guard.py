"""DivergenceGuard: NaN/inf or a finite blow-up after a chunk roll the engine back; culprits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.live.guard import DivergenceGuard, GuardPolicy, divergence


def _engine(ds) -> EPIE:
    engine = EPIE(
        ds.object.shape, options=EPIEOptions(seed=0), probe_shape=ds.intensities.shape[1:]
    )
    engine.add(ds.intensities, ds.positions_px)
    return engine


def test_nan_in_the_object_rolls_back_to_the_good_state(small_dataset):
    engine = _engine(small_dataset)
    guard = DivergenceGuard()
    assert guard.good is None
    guard.ensure_good(engine)
    assert guard.good is None  # no probe yet: rolling back to it would leave a probe of zeros
    engine.prepare()
    guard.ensure_good(engine)
    first = guard.good
    assert first is not None and first.pattern_updates == 0 and np.any(first.probe)

    engine.iterate(2)
    good = engine.state()
    assert guard.check(good) is None
    guard.mark_good(good)
    guard.ensure_good(engine)  # keeps the one it has
    assert guard.good is good

    engine.step(10)
    engine._object[10:13, 10:13] = np.nan  # what a numerical blow-up leaves
    bad = engine.state()
    problem = guard.check(bad, math.nan)
    assert problem == "the object has 9 NaN or infinite values"

    state, reason = guard.roll_back(engine, problem)
    assert "rolled back" in reason and problem in reason
    assert f"iteration {good.iteration}" in reason
    np.testing.assert_array_equal(state.object, good.object)
    np.testing.assert_array_equal(state.probe, good.probe)
    assert state.pattern_updates == good.pattern_updates == engine.pattern_updates
    np.testing.assert_array_equal(engine.state().object, good.object)
    assert guard.check(engine.state()) is None


def test_without_a_good_state_nothing_is_loaded(small_dataset):
    engine = _engine(small_dataset)
    engine.step(5)
    engine._probe[0, 0] = np.inf
    guard = DivergenceGuard()
    problem = guard.check(engine.state())
    assert problem is not None and "probe" in problem
    state, reason = guard.roll_back(engine, problem)
    assert "no good state" in reason
    assert not np.all(np.isfinite(state.probe))


def test_what_counts_as_divergence(small_dataset):
    engine = _engine(small_dataset)
    st = engine.state()
    assert divergence(st, math.nan) is None  # a NaN error alone (dark frames) is not
    assert divergence(st, 0.5) is None
    assert divergence(st, math.inf) == "the Fourier error is inf"
    engine.iterate(1)
    st = engine.state()
    st.fourier_error[-1] = np.inf
    assert "last pass" in divergence(st, math.nan)
    st = engine.state()
    st.probe[3, 4] = complex(np.nan, 0.0)
    assert divergence(st, 0.1) == "the probe has 1 NaN or infinite values"


# ---------------------------------------------------------------------- finite blow-ups


def test_a_finite_jump_of_the_error_is_divergence(small_dataset):
    engine = _engine(small_dataset)
    guard = DivergenceGuard()
    engine.iterate(2)
    st = engine.state()
    updates = st.pattern_updates
    for k, e in enumerate((0.05, 0.04, 0.05)):
        st.pattern_updates = updates + k + 1
        assert guard.check(st, chunk_error=e) is None
    st.pattern_updates += 1
    assert guard.check(st, chunk_error=3.0) is None  # 60 times the level, below the ceiling
    st.pattern_updates += 1
    problem = guard.check(st, chunk_error=9.0)
    assert problem is not None
    assert problem.startswith("the Fourier error jumped to 9, ") and "recent level 0.05" in problem
    # the same chunk error is not looked at twice (no update since)
    assert guard.check(st, chunk_error=9.0) is None


def test_no_jump_without_a_recent_level(small_dataset):
    engine = _engine(small_dataset)
    guard = DivergenceGuard()
    st = engine.state()
    st.pattern_updates = 1
    assert guard.check(st, chunk_error=50.0) is None  # nothing to compare with yet


def test_object_amplitude_far_above_its_bound(small_dataset):
    engine = _engine(small_dataset)
    engine.iterate(1)
    st = engine.state()
    guard = DivergenceGuard(GuardPolicy(amplitude_factor=10.0))
    assert guard.check(st, amplitude_max=2.0) is None
    st.object[5, 5] = 25.0
    assert guard.check(st, amplitude_max=2.0) == "the object amplitude reached 25, above 20"
    assert guard.check(st, amplitude_max=None) == "the object amplitude reached 25, above 10"


def test_find_culprits_blames_the_poisoned_pattern(small_dataset):
    ds = small_dataset
    frames = ds.intensities.copy()
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0))
    engine.add(frames[:40], ds.positions_px[:40])
    guard = DivergenceGuard()
    guard.ensure_good(engine)
    engine.iterate(5)
    guard.mark_good(engine.state())
    poisoned = frames[40:].copy()
    poisoned[3] *= 1000  # pattern 43
    engine.add(poisoned, ds.positions_px[40:])
    engine.step(64)
    diverged = engine.state()
    problem = guard.check(diverged, chunk_error=engine.last_error)
    guard.roll_back(engine, problem or "test")
    culprits = guard.find_culprits(engine, diverged)
    assert [j for j, _ in culprits] == [43]
    assert culprits[0][1].startswith("pattern 43: ")
    assert "times the usual ratio" in culprits[0][1]
    # nothing stands out in clean data
    engine.exclude([43])
    assert guard.find_culprits(engine, diverged) == []


def test_without_a_good_state_nobody_is_blamed(small_dataset):
    engine = _engine(small_dataset)
    assert DivergenceGuard().find_culprits(engine, engine.state()) == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"error_jump": 0.0}, "error_jump"),
        ({"error_ceiling": float("nan")}, "error_ceiling"),
        ({"history": 0}, "history"),
        ({"culprit_factor": -1.0}, "culprit_factor"),
        ({"max_removals": -1}, "max_removals"),
        ({"candidates": 0}, "candidates"),
    ],
)
def test_bad_guard_policies_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GuardPolicy(**kwargs)
