"""The batched (synchronous) kernels under array-api-strict: the GPU code path without a GPU."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bluesky_ptycho.backend import get_backend, to_numpy
from bluesky_ptycho.engine import EPIEOptions, SynchronousEPIE
from bluesky_ptycho.engine.batched import BatchedKernel
from bluesky_ptycho.engine.forward import far_field_intensities
from bluesky_ptycho.engine.workers import InlineWorkers, ThreadWorkers

pytest.importorskip("array_api_strict")


@pytest.fixture(scope="module")
def speckle():
    """A speckled probe lights every detector pixel (see test_array_api: where a far field is
    dark, two FFT libraries' rounding divided by eps gives different, equally valid updates)."""
    rng = np.random.default_rng(7)
    n, size = 32, 80
    yy, xx = np.mgrid[:n, :n] - n // 2
    envelope = np.exp(-(yy**2 + xx**2) / (2 * 7.0**2))
    probe = (40 * envelope * np.exp(2j * np.pi * rng.random((n, n)))).astype(np.complex64)
    oy, ox = np.mgrid[:size, :size]
    obj = np.exp(0.4j * np.sin(ox / 4.0) * np.cos(oy / 6.0)).astype(np.complex64)
    grid = np.arange(2, size - n - 1, 5)
    positions = np.array([(a, b) for a in grid for b in grid], dtype=float)
    frames = rng.poisson(far_field_intensities(obj, probe, positions)).astype(np.float32)
    return SimpleNamespace(probe=probe, object=obj, positions_px=positions, intensities=frames)


def _run(ds, backend: str, workers, passes: int = 3):
    engine = SynchronousEPIE(
        ds.object.shape,
        probe=ds.probe,
        options=EPIEOptions(seed=0),
        backend=backend,
        batch_size=16,
        workers=workers,
    )
    half = len(ds.intensities) // 2
    mask = np.zeros(ds.intensities.shape[1:], dtype=bool)
    mask[:2, :] = True  # the masked branch too
    engine.add(ds.intensities[:half], ds.positions_px[:half], mask=mask)
    engine.iterate(passes)
    engine.add(ds.intensities[half:], ds.positions_px[half:], mask=mask)
    engine.iterate(passes)
    return engine


def test_strict_synchronous_is_independent_of_the_workers_and_matches_numpy(speckle):
    ds = speckle
    one = _run(ds, "array_api_strict", InlineWorkers())
    pool = ThreadWorkers(2)
    try:
        two = _run(ds, "array_api_strict", pool)
    finally:
        pool.close()
    # every array the engine holds is an array-api-strict array
    assert type(one._object).__module__.startswith("array_api_strict")
    a, b = one.state(), two.state()
    np.testing.assert_allclose(a.object, b.object, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.probe, b.probe, rtol=1e-5, atol=1e-5 * np.abs(b.probe).max())
    reference = _run(ds, "numpy", InlineWorkers()).state()
    np.testing.assert_allclose(a.object, reference.object, atol=1e-3)
    np.testing.assert_allclose(a.fourier_error, reference.fourier_error, rtol=1e-3)
    assert a.fourier_error[-1] < a.fourier_error[0]


def test_strict_batched_kernel_equals_one_pattern_at_a_time(small_dataset):
    """A batch of b patterns in one call gives each pattern's single-call terms."""
    ds = small_dataset
    engine = SynchronousEPIE(ds.object.shape, probe=ds.probe, backend="array_api_strict")
    engine.add(ds.intensities[:12], ds.positions_px[:12])
    be = get_backend("array_api_strict")
    xp = be.xp
    kernel = BatchedKernel(be, ds.probe.shape)
    obj = xp.asarray(ds.object.astype(np.complex64))
    probe = xp.asarray(ds.probe.astype(np.complex64))
    store = engine._store
    idx = np.arange(12)
    whole = kernel.contributions(obj, probe, store, idx, 1e-4)
    for j in (0, 5, 11):
        one = kernel.contributions(obj, probe, store, idx[j : j + 1], 1e-4)
        single, batched = to_numpy(one.object_num[0, ...]), to_numpy(whole.object_num[j, ...])
        np.testing.assert_allclose(single, batched, rtol=1e-5, atol=1e-3)
        assert one.error_num[0] == pytest.approx(whole.error_num[j], rel=1e-5)
