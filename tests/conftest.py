"""Shared fixtures: simulated datasets and the measured Siemens-star data."""

from __future__ import annotations

import bz2
import io
from pathlib import Path

import numpy as np
import pytest

from bluesky_ptycho.simulate import SimulatedDataset, simulate_dataset, small_preset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STAR_FILE = SHARED_DATA / "siemens-star-small.npz.bz2"


@pytest.fixture(scope="session")
def small_dataset() -> SimulatedDataset:
    """The small simulated preset (64 px frames, 9 x 9 raster), with Poisson noise."""
    return simulate_dataset(small_preset())


@pytest.fixture(scope="session")
def siemens_star() -> dict[str, np.ndarray]:
    """Measured Siemens-star ptychography data (tike's test data), as stored."""
    if not STAR_FILE.exists():
        pytest.skip(f"measured data not found at {STAR_FILE} (shared/ beside the repository)")
    with bz2.open(STAR_FILE) as f:
        arrays = np.load(io.BytesIO(f.read()))
        return {k: arrays[k] for k in arrays.files}
