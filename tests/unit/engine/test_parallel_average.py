"""average_states: the study's merge of subset reconstructions."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.engine.parallel import average_states, illumination
from bluesky_ptycho.engine.state import ReconstructionState


def _state(obj, probe, positions) -> ReconstructionState:
    return ReconstructionState(
        object=np.asarray(obj, np.complex64),
        probe=np.asarray(probe, np.complex64),
        positions_px=np.asarray(positions, float),
    )


def test_each_object_pixel_follows_the_subsets_that_lit_it():
    probe = np.ones((4, 4), np.complex64)
    shape = (4, 12)
    left = _state(np.full(shape, 2.0), probe, [[0, 0]])  # lights columns 0..3
    right = _state(np.full(shape, 1j), probe, [[0, 8]])  # lights columns 8..11
    obj, p = average_states([left, right])
    np.testing.assert_allclose(obj[:, :4], 2.0, atol=1e-3)
    np.testing.assert_allclose(obj[:, 8:], 1j, atol=1e-3)
    # nobody lit columns 4..7: the plain mean
    np.testing.assert_allclose(obj[:, 4:8], (2.0 + 1j) / 2, atol=1e-6)
    np.testing.assert_allclose(p, probe)
    # a plain mean would have halved both sides: the weighting is what keeps them
    assert not np.allclose(obj[:, :4], (2.0 + 1j) / 2)


def test_overlap_is_weighted_by_illumination_and_weights():
    probe = np.ones((2, 2), np.complex64)
    a = _state(np.full((2, 2), 1.0), probe, [[0, 0], [0, 0], [0, 0]])  # lit 3 times
    b = _state(np.full((2, 2), 3.0), 2 * probe, [[0, 0]])  # lit once, 4x as bright
    obj, p = average_states([a, b], weights=[1.0, 1.0])
    np.testing.assert_allclose(obj, (3 * 1.0 + 4 * 3.0) / 7, rtol=1e-5)
    np.testing.assert_allclose(p, 1.5 * probe, rtol=1e-6)
    # default weights: patterns per subset (3 and 1)
    _, p_default = average_states([a, b])
    np.testing.assert_allclose(p_default, (3 * 1 + 1 * 2) / 4 * probe, rtol=1e-6)


def test_engines_are_accepted_and_bad_input_is_refused(small_dataset):
    ds = small_dataset
    half = len(ds.intensities) // 2
    engines = []
    for sl in (slice(None, half), slice(half, None)):
        e = EPIE(ds.object.shape, probe=ds.probe, options=EPIEOptions(seed=0))
        e.add(ds.intensities[sl], ds.positions_px[sl])
        e.iterate(1)
        engines.append(e)
    obj, probe = average_states(engines)
    assert obj.shape == ds.object.shape and obj.dtype == np.complex64
    assert probe.shape == ds.probe.shape and np.all(np.isfinite(obj))
    lit = illumination(probe, ds.positions_px, ds.object.shape)
    assert lit.shape == ds.object.shape and lit.max() > 0
    with pytest.raises(ValueError, match="at least one"):
        average_states([])
    with pytest.raises(ValueError, match="one weight per state"):
        average_states(engines, weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        average_states(engines, weights=[-1.0, 1.0])
    other = _state(np.ones((3, 3)), np.ones((2, 2)), [[0, 0]])
    with pytest.raises(ValueError, match="differ in shape"):
        average_states([engines[0], other])
    with pytest.raises(TypeError):
        average_states([object()])
