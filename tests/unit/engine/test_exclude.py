"""EPIE.exclude and EPIE.pattern_residuals: removing a poisoned pattern from the engine."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.metrics import illuminated_region, object_error

POISONED = 40


def _engine(ds, frames) -> EPIE:
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0))
    engine.add(frames, ds.positions_px)
    return engine


def _error(ds, engine: EPIE) -> float:
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    return object_error(engine.state().object, ds.object, region=region)


def test_excluding_the_poisoned_pattern_restores_the_clean_result(small_dataset):
    ds = small_dataset
    clean = _engine(ds, ds.intensities)
    clean.iterate(30)
    poisoned = ds.intensities.copy()
    poisoned[POISONED] *= 1000
    spoilt = _engine(ds, poisoned)
    spoilt.iterate(30)
    assert _error(ds, spoilt) > 2 * _error(ds, clean)  # the frame does spoil it

    fixed = _engine(ds, poisoned)
    assert fixed.exclude([POISONED]).tolist() == [POISONED]
    fixed.iterate(30)
    assert _error(ds, fixed) < 1.1 * _error(ds, clean)
    st = fixed.state()
    assert st.updates_per_pattern[POISONED] == 0
    assert np.all(np.delete(st.updates_per_pattern, POISONED) == 30)
    assert fixed.n_patterns == ds.n_patterns  # indices do not move
    assert fixed.excluded.tolist() == [j == POISONED for j in range(ds.n_patterns)]


def test_exclude_mid_pass_and_in_update(small_dataset):
    ds = small_dataset
    engine = _engine(ds, ds.intensities)
    engine.step(10)
    st = engine.state()
    untouched = int(np.flatnonzero(st.updates_per_pattern == 0)[0])
    engine.exclude(untouched)
    engine.step(10_000)  # the rest of the pass
    st = engine.state()
    assert st.iteration == 1 and st.updates_per_pattern[untouched] == 0
    assert st.pattern_updates == ds.n_patterns - 1
    assert np.isnan(engine.update([untouched]))  # nothing to do
    assert engine.exclude([untouched]).size == 0  # already excluded
    # patterns added later keep their own indices and are used
    new = engine.add(ds.intensities[:2], ds.positions_px[:2])
    engine.iterate(1)
    assert engine.state().updates_per_pattern[new].tolist() == [1, 1]


def test_excluded_patterns_leave_the_probe_power_and_validation(small_dataset):
    ds = small_dataset
    poisoned = ds.intensities.copy()
    poisoned[POISONED] *= 1000
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0, validation_every=5))
    engine.add(poisoned, ds.positions_px)
    engine.exclude([POISONED, 2])  # 2 would be held out (2 % 5 == 5 // 2)
    assert not engine.held_out[2] or engine.excluded[2]
    engine.iterate(3)
    power = float(np.sum(np.abs(engine.state().probe) ** 2))
    mean_clean = float(np.mean(np.delete(ds.intensities, [POISONED, 2], axis=0).sum(axis=(1, 2))))
    assert power == pytest.approx(mean_clean, rel=0.02)


def test_pattern_residuals_point_at_the_poisoned_pattern(small_dataset):
    ds = small_dataset
    poisoned = ds.intensities.copy()
    poisoned[POISONED] *= 1000
    engine = _engine(ds, poisoned)
    engine.prepare()
    residual, counts, model = engine.pattern_residuals(np.arange(ds.n_patterns))
    assert residual.shape == counts.shape == model.shape == (ds.n_patterns,)
    ratio = counts / model
    assert int(np.argmax(ratio)) == POISONED
    assert ratio[POISONED] > 100 * np.median(ratio)
    assert counts[POISONED] == pytest.approx(1000 * ds.intensities[POISONED].sum(), rel=1e-3)


def test_bad_indices_raise(small_dataset):
    ds = small_dataset
    engine = _engine(ds, ds.intensities)
    with pytest.raises(ValueError, match="pattern indices"):
        engine.exclude([ds.n_patterns])
    with pytest.raises(ValueError, match="pattern indices"):
        engine.exclude(-1)
    with pytest.raises(ValueError, match="pattern indices"):
        engine.pattern_residuals([ds.n_patterns + 3])
    assert not engine.excluded.any()


def test_restart_starts_over_without_the_excluded_patterns(small_dataset):
    ds = small_dataset
    poisoned = ds.intensities.copy()
    poisoned[POISONED] *= 1000
    engine = _engine(ds, poisoned)
    engine.iterate(3)  # the probe is scaled to mean counts that include the poisoned pattern
    spoilt_power = float(np.sum(np.abs(engine.state().probe) ** 2))
    engine.exclude([POISONED])
    engine.restart()
    st = engine.state()
    assert np.all(st.object == 1) and not np.any(st.probe)  # the probe is made again...
    assert st.iteration == 3 and not st.updates_per_pattern.any()
    engine.iterate(30)  # ... at the next update, from the patterns in use
    power = float(np.sum(np.abs(engine.state().probe) ** 2))
    mean_clean = float(np.mean(np.delete(ds.intensities, POISONED, axis=0).sum(axis=(1, 2))))
    assert power == pytest.approx(mean_clean, rel=0.02) and spoilt_power > 5 * mean_clean
    clean = _engine(ds, ds.intensities)
    clean.iterate(30)
    assert _error(ds, engine) < 1.1 * _error(ds, clean)


def test_restart_rescales_a_given_probe(small_dataset):
    ds = small_dataset
    probe = ds.probe * 3.0  # nine times the power of the counts
    engine = EPIE(ds.object.shape, probe=probe, options=EPIEOptions(seed=0, probe_power=False))
    engine.add(ds.intensities, ds.positions_px)
    engine.restart()
    power = float(np.sum(np.abs(engine.state().probe) ** 2))
    assert power == pytest.approx(float(np.mean(ds.intensities.sum(axis=(1, 2)))), rel=1e-3)
