"""DivergenceGuard: NaN/inf found after a chunk roll the engine back to the good state."""

from __future__ import annotations

import math

import numpy as np

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.live.guard import DivergenceGuard, divergence


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
    first = guard.good
    assert first is not None and first.pattern_updates == 0

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
