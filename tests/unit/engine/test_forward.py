"""The forward model's conventions."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine.forward import (
    exit_waves,
    far_field_intensities,
    integer_positions,
    object_patches,
    shift_probe,
)


def test_unitary_propagator_conserves_counts_and_centres_zero_frequency():
    rng = np.random.default_rng(0)
    probe = (rng.standard_normal((32, 32)) + 1j * rng.standard_normal((32, 32))).astype(
        np.complex64
    )
    obj = np.ones((40, 40), np.complex64)
    intens = far_field_intensities(obj, probe, [[3, 4]])
    assert intens.shape == (1, 32, 32) and intens.dtype == np.float32
    assert intens.sum() == pytest.approx(np.sum(np.abs(probe) ** 2), rel=1e-5)
    flat = np.ones((32, 32), np.complex64)
    dc = far_field_intensities(obj, flat, [[0, 0]])[0]
    assert np.unravel_index(dc.argmax(), dc.shape) == (16, 16)


def test_positions_are_top_left_corners_rounded_half_up():
    obj = np.arange(100, dtype=np.complex64).reshape(10, 10)
    patches = object_patches(obj, [[2.5, 3.49]], (2, 2))
    np.testing.assert_array_equal(patches[0], obj[3:5, 3:5])
    np.testing.assert_array_equal(integer_positions([[0.5, -0.5]]), [[1, 0]])


def test_subpixel_shift_moves_the_probe():
    probe = np.zeros((16, 16), np.complex64)
    probe[8, 8] = 1
    moved = shift_probe(probe, (1.0, -2.0))
    assert np.unravel_index(np.abs(moved).argmax(), moved.shape) == (9, 6)
    yy, xx = np.mgrid[:16, :16]
    smooth = np.exp(-((yy - 8.0) ** 2 + (xx - 8.0) ** 2) / 8.0).astype(np.complex64)
    waves = exit_waves(np.ones((20, 20), np.complex64), smooth, [[0.5, 0.25]], subpixel=True)
    weight = np.abs(waves[0]) ** 2
    centroid = (np.sum(weight * yy) / weight.sum(), np.sum(weight * xx) / weight.sum())
    # 0.5 rounds up to corner row 1, so the probe moves by -0.5 within that patch: the beam
    # centre lands at object row 1 + 7.5 = 8.5, column 0 + 8.25
    assert centroid == pytest.approx((7.5, 8.25), abs=1e-3)
