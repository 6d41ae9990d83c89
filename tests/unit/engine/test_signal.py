"""The "did it work" signal separates a plateau from a converged reconstruction.

Small simulated raster (81 patterns, 3 held out), the probe 800 um out of focus. Plain ePIE
from the study's Gaussian falls into the raster-grid ambiguity (object error 0.28 after 25
passes, a solution that fits every grid position, so classic cross-validation against the
running error reads about 1); the default start finds the specimen (0.028). Measured ratios:
1.47 and 0.09.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.engine.state import SIGNAL_FOUND, SIGNAL_NOT_FOUND, signal_verdict
from bluesky_ptycho.metrics import illuminated_region, object_error
from bluesky_ptycho.simulate import simulate_dataset, small_preset


@pytest.fixture(scope="module")
def raster():
    return simulate_dataset(dataclasses.replace(small_preset(), defocus_m=0.8e-3))


def _run(ds, probe, options, passes=25):
    engine = EPIE(ds.object.shape, probe=probe, options=options)
    engine.add(ds.intensities, ds.positions_px)
    engine.iterate(passes)
    return engine.state()


def test_the_signal_tells_a_plateau_from_a_converged_run(raster):
    ds = raster
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    plateau = _run(ds, "gaussian", EPIEOptions.study(seed=0, validation_every=25))
    good = _run(ds, None, EPIEOptions(seed=0, validation_every=25))
    assert object_error(plateau.object, ds.object, region=region) > 0.2
    assert object_error(good.object, ds.object, region=region) < 0.05
    assert plateau.validation_ratio > SIGNAL_NOT_FOUND
    assert good.validation_ratio < SIGNAL_FOUND
    assert signal_verdict(plateau.validation_ratio) == "not found"
    assert signal_verdict(good.validation_ratio) == "found the specimen"


def test_held_out_patterns_take_no_update_and_the_signal_needs_coverage(raster):
    ds = raster
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0, validation_every=25))
    engine.add(ds.intensities[:12], ds.positions_px[:12])
    engine.iterate(2)
    # pattern 12 is the first held out; none is held yet
    assert not engine.held_out.any() and np.isnan(engine.state().validation_ratio)
    engine.add(ds.intensities[12:], ds.positions_px[12:])
    engine.iterate(3)
    st = engine.state()
    held = engine.held_out
    assert held.sum() == 3 and np.all(st.updates_per_pattern[held] == 0)
    first = np.arange(ds.n_patterns) < 12
    assert np.all(st.updates_per_pattern[~held & first] == 5)
    assert np.all(st.updates_per_pattern[~held & ~first] == 3)
    assert np.isfinite(st.validation_ratio)
    engine.release_held_out()
    engine.iterate(1)
    st2 = engine.state()
    assert np.all(st2.updates_per_pattern[held] == 1)  # back in use
    assert st2.validation_ratio == pytest.approx(st.validation_ratio, rel=0.2)  # kept
