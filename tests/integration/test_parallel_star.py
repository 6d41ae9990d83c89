"""The synchronous scheme on the measured Siemens star, against the sequential ePIE."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIEOptions, ParallelOptions, reconstruct
from bluesky_ptycho.engine.epie import scale_probe
from bluesky_ptycho.metrics import fourier_error

pytestmark = pytest.mark.slow

# Measured after 20 passes from the supplied probe (seed 0): Fourier error 0.0188 sequential,
# 0.0134 synchronous (batch 32, regulariser 0.5; 0.013 to 0.015 for batches 16 to 64 and
# regularisers 0.1 to 1); 0.20 at the start. Stated: synchronous at least 90 % of the
# sequential quality, i.e. a Fourier error at most 1/0.9 of the sequential one.
QUALITY_FRACTION = 0.9


def test_synchronous_reaches_sequential_quality_on_the_measured_star(siemens_star):
    frames = np.fft.fftshift(siemens_star["data"][0], axes=(-2, -1))
    pos = siemens_star["scan"][0].astype(np.float64)
    probe = scale_probe(siemens_star["probe"][0, 0, 0, 0], frames)
    common = {"probe": probe, "passes": 20, "margin_px": 4, "options": EPIEOptions(seed=0)}

    def error(state) -> float:
        return fourier_error(state.object, state.probe, frames, state.positions_px)

    sequential = reconstruct(frames, pos, **common)
    synchronous = reconstruct(
        frames,
        pos,
        parallel="synchronous",
        workers=2,
        parallel_options=ParallelOptions(batch_size=32),
        **common,
    )
    start = fourier_error(np.ones_like(sequential.object), probe, frames, sequential.positions_px)
    assert error(sequential) < 0.15 * start  # the sequential engine works (test_siemens_star)
    assert error(synchronous) <= error(sequential) / QUALITY_FRACTION
    assert error(synchronous) < 0.15 * start
