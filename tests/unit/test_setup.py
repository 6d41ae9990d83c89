"""ScanSetup: the nominal scan may come later (from a plan); a short repr."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.setup import ScanSetup

_GEOMETRY = {
    "energy_eV": 8000.0,
    "detector_distance_m": 2.0,
    "detector_pixel_m": 75e-6,
    "crop": 64,
}


def test_setup_without_the_nominal_scan_is_accepted_until_the_frame_is_needed() -> None:
    setup = ScanSetup(**_GEOMETRY, position_scale_m=1e-6)
    assert not setup.has_nominal_scan
    assert setup.expected_points is None
    with pytest.raises(ValueError, match="nominal_positions_m or extent_m"):
        setup.object_frame()
    extent = ScanSetup(**_GEOMETRY, extent_m=((0.0, 2e-6), (0.0, 3e-6)))
    assert extent.has_nominal_scan
    assert extent.object_frame().object_shape[0] > 2 * extent.margin_px


def test_repr_summarises_the_positions_and_the_mask() -> None:
    positions = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2) * 1e-7
    setup = ScanSetup(**_GEOMETRY, nominal_positions_m=positions, mask=[[1, 2], [3, 4]])
    text = repr(setup)
    assert "nominal_positions_m=<400 positions>" in text
    assert "mask=<2 pixels>" in text
    assert "energy_eV=8000.0" in text and "crop=64" in text
    assert len(text) < 600  # not one number per position
    assert "1e-07" not in text
