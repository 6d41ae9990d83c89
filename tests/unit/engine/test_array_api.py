"""The engine under array-api-strict: every line CuPy would run, exercised without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.backend import get_backend, to_numpy
from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.engine.forward import far_field_intensities
from bluesky_ptycho.engine.kernels import ArrayAPIKernel, NumpyKernel
from bluesky_ptycho.metrics import illuminated_region, object_error

xps = pytest.importorskip("array_api_strict")


class _Speckle:
    """A well-conditioned dataset: a speckled probe lights every detector pixel.

    Where a probe's far field is dark (the tails of a Gaussian, outside a focusing pupil), the
    modulus constraint divides FFT rounding noise by eps, and two FFT libraries give different,
    equally valid updates. To compare kernels arithmetic for arithmetic, use data without dark
    regions.
    """

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        n, size = 32, 80
        yy, xx = np.mgrid[:n, :n] - n // 2
        envelope = np.exp(-(yy**2 + xx**2) / (2 * 7.0**2))
        self.probe = (40 * envelope * np.exp(2j * np.pi * rng.random((n, n)))).astype(np.complex64)
        oy, ox = np.mgrid[:size, :size]
        self.object = np.exp(0.4j * np.sin(ox / 4.0) * np.cos(oy / 6.0)).astype(np.complex64)
        grid = np.arange(2, size - n - 1, 5)
        self.positions_px = np.array([(a, b) for a in grid for b in grid], dtype=float)
        self.intensities = rng.poisson(
            far_field_intensities(self.object, self.probe, self.positions_px)
        ).astype(np.float32)


@pytest.fixture(scope="module")
def speckle():
    return _Speckle()


def _start_probe(ds) -> np.ndarray:
    n = ds.probe.shape[0]
    yy, xx = np.mgrid[:n, :n] / n
    return (0.9 * ds.probe * np.exp(0.3j * (yy - xx))).astype(np.complex64)


def _run(ds, backend: str, passes: int, **options):
    engine = EPIE(
        ds.object.shape,
        probe=_start_probe(ds),
        options=EPIEOptions(seed=0, **options),
        backend=backend,
    )
    half = len(ds.intensities) // 2
    engine.add(ds.intensities[:half], ds.positions_px[:half])
    engine.iterate(passes)
    engine.add(ds.intensities[half:], ds.positions_px[half:])  # incremental, on every backend
    engine.iterate(passes)
    return engine


def test_strict_namespace_runs_the_engine_and_matches_numpy(speckle):
    ds = speckle
    strict = _run(ds, "array_api_strict", 3)
    reference = _run(ds, "numpy", 3)
    assert isinstance(strict._kernel, ArrayAPIKernel)
    assert isinstance(reference._kernel, NumpyKernel)
    # the engine really computes with array-api-strict arrays
    assert type(strict._object).__module__.startswith("array_api_strict")
    a, b = strict.state(), reference.state()
    assert a.object.dtype == np.complex64 and a.probe.dtype == np.complex64
    np.testing.assert_allclose(a.object, b.object, rtol=0, atol=1e-3)
    np.testing.assert_allclose(a.probe, b.probe, rtol=0, atol=1e-3 * np.abs(b.probe).max())
    np.testing.assert_allclose(a.fourier_error, b.fourier_error, rtol=1e-4)


def test_strict_namespace_converges(small_dataset):
    ds = small_dataset
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0), backend="array_api_strict")
    engine.add(ds.intensities, ds.positions_px)
    engine.iterate(25)
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    assert object_error(engine.state().object, ds.object, region=region) < 0.2


def test_strict_masks_and_subpixel_paths(speckle):
    """The masked and sub-pixel branches of the array-API kernel, against NumPy."""
    ds = speckle
    mask = np.zeros(ds.intensities.shape[1:], dtype=bool)
    mask[:3, :] = True
    positions = ds.positions_px + 0.3
    states = []
    for backend in ("array_api_strict", "numpy"):
        engine = EPIE(
            ds.object.shape,
            probe=_start_probe(ds),
            options=EPIEOptions(seed=0, subpixel=True),
            backend=backend,
        )
        engine.add(ds.intensities, positions, mask=mask)
        errors = engine.iterate(2)
        assert np.all(np.isfinite(errors))
        states.append(engine.state())
    np.testing.assert_allclose(states[0].object, states[1].object, atol=1e-3)


def test_numpy_kernel_agrees_with_the_array_api_kernel_on_masked_data(speckle):
    ds = speckle
    mask = np.zeros(ds.intensities.shape, dtype=bool)
    mask[::3, 10:14, :] = True
    objs = []
    for kernel in (NumpyKernel, ArrayAPIKernel):
        engine = EPIE(ds.object.shape, probe=_start_probe(ds), options=EPIEOptions(seed=0))
        engine.add(ds.intensities, ds.positions_px, mask=mask)
        engine._kernel = kernel(engine.backend, engine.probe_shape)
        engine.iterate(3)
        assert isinstance(engine._kernel, kernel)
        objs.append(engine.state())
    np.testing.assert_allclose(objs[0].object, objs[1].object, atol=1e-3)
    np.testing.assert_allclose(objs[0].fourier_error, objs[1].fourier_error, rtol=1e-4)


def test_backend_helpers_round_trip():
    be = get_backend("array_api_strict")
    a = be.xp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(to_numpy(a), np.arange(6).reshape(2, 3))
    z = be.xp.astype(be.xp.ones((4, 4)), be.xp.complex64)
    spec = to_numpy(be.fft2(z))
    assert spec[0, 0] == pytest.approx(4.0)  # unitary: sum 16 / sqrt(16)
    back = to_numpy(be.ifft2(be.fft2(z)))
    np.testing.assert_allclose(back, np.ones((4, 4)), atol=1e-6)


@pytest.mark.gpu
def test_cupy_backend_matches_numpy(speckle):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (gpu extra)")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver / no device
        pytest.skip(f"no usable GPU: {exc}")
    ds = speckle
    gpu = _run(ds, "cupy", 3)
    cpu = _run(ds, "numpy", 3)
    np.testing.assert_allclose(gpu.state().object, cpu.state().object, atol=1e-3)
