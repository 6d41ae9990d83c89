"""Measured X-ray data: the Siemens star from tike's test data (see shared/data/README.md).

Conventions established here, and asserted below:

- ``data`` is stored with zero spatial frequency at pixel ``[0, 0]``: it must be fft-shifted
  to the detector convention (zero frequency at ``(N//2, N//2)``). The brightest pixel of the
  mean pattern is near ``[0, 0]`` as stored, and unshifted data does not reconstruct.
- ``scan`` is ``(row, col)`` in object pixels: swapping the columns reconstructs worse.
  Whether a position is a patch corner or centre is a constant offset of every position, which
  moves the object in its frame but does not change the reconstruction; we treat them as
  top-left corners (the engine's convention), shifted so the smallest lands at the margin.
- The supplied probe needs scaling by about 94 in amplitude: ``sum |P|^2`` must equal the
  mean counts of a pattern under the unitary FFT.
"""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.engine.epie import scale_probe
from bluesky_ptycho.metrics import fourier_error

pytestmark = pytest.mark.slow


def _prepare(star, *, shift: bool = True, swap: bool = False, offset=(0.0, 0.0)):
    frames = star["data"][0]
    if shift:
        frames = np.fft.fftshift(frames, axes=(-2, -1))
    pos = star["scan"][0].astype(np.float64)
    if swap:
        pos = pos[:, ::-1]
    pos = pos - pos.min(axis=0) + 4 + np.asarray(offset)
    n = frames.shape[-1]
    shape = tuple(int(v) for v in np.ceil(pos.max(axis=0)) + n + 6)
    probe = scale_probe(star["probe"][0, 0, 0, 0], frames)
    return frames, pos, shape, probe


def _reconstruct(star, passes: int, **kw):
    frames, pos, shape, probe = _prepare(star, **kw)
    engine = EPIE(shape, probe=probe, options=EPIEOptions(seed=0))
    engine.add(frames, pos)
    start = fourier_error(np.ones(shape, np.complex64), probe, frames, pos)
    engine.iterate(passes)
    state = engine.state()
    end = fourier_error(state.object, state.probe, frames, pos)
    return start, end, state


def test_layout_of_the_stored_data(siemens_star):
    star = siemens_star
    assert star["data"].shape == (1, 516, 128, 128)
    assert star["scan"].shape == (1, 516, 2)
    mean = star["data"][0].mean(axis=0)
    peak = np.unravel_index(np.argmax(mean), mean.shape)
    # zero frequency at the corner as stored (within a few pixels, wrapping around)
    assert all(min(p, 128 - p) < 20 for p in peak)
    # the supplied probe's normalisation differs from the unitary-FFT convention by ~94
    factor = np.sqrt(star["data"][0].sum(axis=(1, 2)).mean() / np.sum(np.abs(star["probe"]) ** 2))
    assert 90 < factor < 98


def test_fourier_error_falls_well_below_its_start_within_20_passes(siemens_star):
    start, end, state = _reconstruct(siemens_star, passes=20)
    assert state.iteration == 20
    # measured: ~0.20 at the start, ~0.019 after 20 passes
    assert end < 0.15 * start
    assert np.all(np.isfinite(state.object))


def test_conventions_shifted_rows_cols_reconstruct_best(siemens_star):
    right = _reconstruct(siemens_star, passes=3)[1]
    unshifted = _reconstruct(siemens_star, passes=3, shift=False)[1]
    swapped = _reconstruct(siemens_star, passes=3, swap=True)[1]
    assert right < 0.7 * unshifted
    assert right < 0.9 * swapped


def test_corner_or_centre_is_only_a_constant_offset(siemens_star):
    a = _reconstruct(siemens_star, passes=2)[1]
    b = _reconstruct(siemens_star, passes=2, offset=(3.0, 5.0))[1]
    assert b == pytest.approx(a, rel=0.05)
