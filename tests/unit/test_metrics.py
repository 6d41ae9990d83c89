"""Tests of bluesky_ptycho.metrics: regions, registration, alignment and errors."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine.forward import far_field_intensities
from bluesky_ptycho.metrics import (
    align_to_reference,
    fourier_error,
    fourier_shift,
    illuminated_region,
    object_error,
    probe_error,
    register_shift,
)
from bluesky_ptycho.simulate import gaussian_probe, resolution_chart

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


def smooth_complex_image(shape: tuple[int, int], seed: int, width: float = 3.0) -> np.ndarray:
    """Band-limited random complex image (Gaussian low-pass of white noise), periodic."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    f0 = np.fft.fftfreq(shape[0])[:, None]
    f1 = np.fft.fftfreq(shape[1])[None, :]
    lowpass = np.exp(-2.0 * (np.pi * width) ** 2 * (f0**2 + f1**2))
    return np.fft.ifft2(np.fft.fft2(noise) * lowpass)


@pytest.fixture(scope="module")
def chart() -> np.ndarray:
    """A chart whose features stay away from the array edges."""
    return resolution_chart((96, 96), box=(16, 16, 80, 80), seed=2).astype(np.complex128)


@pytest.fixture(scope="module")
def inner() -> np.ndarray:
    region = np.zeros((96, 96), dtype=bool)
    region[12:84, 12:84] = True
    return region


@pytest.fixture(scope="module")
def scan() -> dict[str, np.ndarray]:
    """Noise-free data of a chart with fractional positions."""
    rng = np.random.default_rng(0)
    obj = resolution_chart((72, 72), box=(8, 8, 64, 64), seed=1)
    probe = gaussian_probe(32, 9.0, total_counts=1e5)
    grid = np.stack(np.meshgrid(np.arange(6) * 6.0, np.arange(6) * 6.0, indexing="ij"), -1)
    positions = grid.reshape(-1, 2) + 4.0 + rng.uniform(-0.4, 0.4, size=(36, 2))
    intensities = far_field_intensities(obj, probe, positions, subpixel=True)
    return {"obj": obj, "probe": probe, "positions": positions, "intensities": intensities}


# --------------------------------------------------------------------------------------------
# illuminated_region
# --------------------------------------------------------------------------------------------


def test_illuminated_region_single_top_hat() -> None:
    probe = np.zeros((8, 8), dtype=np.complex64)
    probe[2:6, 3:7] = 1.0
    region = illuminated_region(probe, [[5, 10]], (20, 30))
    expected = np.zeros((20, 30), dtype=bool)
    expected[7:11, 13:17] = True
    assert region.dtype == bool
    assert np.array_equal(region, expected)


def test_illuminated_region_sums_positions_and_thresholds() -> None:
    probe = gaussian_probe(16, 4.0)
    positions = np.array([[0.0, 0.0], [0.0, 20.0]])
    region = illuminated_region(probe, positions, (16, 36), threshold=0.5)
    # two separate discs around the two beam centres, nothing between them
    assert region[8, 8] and region[8, 28]
    assert not region[8, 18]
    assert region.sum() == pytest.approx(2 * np.pi * (4.0 / 2.0) ** 2, rel=0.35)
    # a lower threshold gives a larger region containing the smaller one
    wide = illuminated_region(probe, positions, (16, 36), threshold=0.05)
    assert wide.sum() > region.sum()
    assert np.all(wide[region])


def test_illuminated_region_rounds_fractional_positions() -> None:
    probe = np.ones((4, 4), dtype=np.complex64)
    region = illuminated_region(probe, [[1.4, 2.6]], (10, 10))
    assert np.argwhere(region).min(axis=0).tolist() == [1, 3]


def test_illuminated_region_refuses_patch_outside_object() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        illuminated_region(np.ones((8, 8)), [[0, 5]], (8, 12))


# --------------------------------------------------------------------------------------------
# fourier_shift and register_shift
# --------------------------------------------------------------------------------------------


def test_fourier_shift_integer_is_roll_and_round_trip() -> None:
    img = smooth_complex_image((40, 50), seed=0)
    assert np.allclose(fourier_shift(img, (3, -7)), np.roll(img, (3, -7), axis=(0, 1)))
    there = fourier_shift(img, (1.3, -2.45))
    assert np.allclose(fourier_shift(there, (-1.3, 2.45)), img, atol=1e-10)
    # direction: positive shift moves content to larger indices
    point = np.zeros((16, 16))
    point[4, 4] = 1.0
    moved = np.abs(fourier_shift(point, (2, 3)))
    assert np.unravel_index(np.argmax(moved), moved.shape) == (6, 7)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.7), (2.45, 1.15), (-5.8, 3.33)])
def test_register_shift_recovers_subpixel_shifts(shift: tuple[float, float]) -> None:
    ref = smooth_complex_image((64, 72), seed=1)
    moving = fourier_shift(ref, shift)
    found = register_shift(ref, moving)
    assert found == pytest.approx(shift, abs=0.05)


def test_register_shift_is_much_finer_than_the_upsampled_grid() -> None:
    """The parabolic finish puts noise-free estimates well inside the 1/20 px grid."""
    ref = smooth_complex_image((64, 72), seed=1)
    rng = np.random.default_rng(11)
    for shift in rng.uniform(-6.0, 6.0, size=(10, 2)):
        found = register_shift(ref, fourier_shift(ref, tuple(shift)))
        assert found == pytest.approx(tuple(shift), abs=0.005)


def test_register_shift_with_noise() -> None:
    rng = np.random.default_rng(12)
    ref = smooth_complex_image((64, 64), seed=8)
    scale = np.sqrt(np.mean(np.abs(ref) ** 2))
    moving = fourier_shift(ref, (3.71, -0.46))
    moving = moving + 0.2 * scale * (rng.normal(size=ref.shape) + 1j * rng.normal(size=ref.shape))
    assert register_shift(ref, moving) == pytest.approx((3.71, -0.46), abs=0.05)


def test_register_shift_on_a_real_image_with_global_factor() -> None:
    ref = smooth_complex_image((64, 64), seed=2).real
    moving = 3.0 * np.exp(0.8j) * fourier_shift(ref, (-1.62, 0.87))
    assert register_shift(ref, moving) == pytest.approx((-1.62, 0.87), abs=0.05)


def test_register_shift_integer_mode() -> None:
    ref = smooth_complex_image((48, 48), seed=3)
    moving = np.roll(ref, (4, -9), axis=(0, 1))
    assert register_shift(ref, moving, upsample=1) == (4.0, -9.0)
    # with upsample=1 a fractional shift comes back rounded to whole pixels
    found = register_shift(ref, fourier_shift(ref, (2.2, -3.9)), upsample=1)
    assert found == (2.0, -4.0)


def test_register_shift_chart_with_flat_background(chart: np.ndarray, inner: np.ndarray) -> None:
    moving = fourier_shift(chart, (1.37, -2.62))
    assert register_shift(chart, moving, region=inner) == pytest.approx((1.37, -2.62), abs=0.05)


def test_register_shift_checks_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        register_shift(np.ones((8, 8)), np.ones((8, 9)))


# --------------------------------------------------------------------------------------------
# align_to_reference and object_error
# --------------------------------------------------------------------------------------------


def test_object_error_is_zero_for_a_perfect_estimate(chart: np.ndarray) -> None:
    assert object_error(chart, chart) < 1e-7
    assert object_error(chart.astype(np.complex64), chart) < 1e-6


def test_object_error_ignores_global_complex_factor(chart: np.ndarray) -> None:
    estimate = 0.37 * np.exp(-2.1j) * chart
    assert object_error(estimate, chart) < 1e-7
    aligned = align_to_reference(estimate, chart)
    assert np.allclose(aligned, chart, atol=1e-7)


@pytest.mark.parametrize("shift", [(3, -5), (1.37, -2.62), (-0.5, 0.25)])
def test_object_error_ignores_shifts(
    chart: np.ndarray, inner: np.ndarray, shift: tuple[float, float]
) -> None:
    estimate = 1.8j * fourier_shift(chart, shift)
    assert object_error(estimate, chart, region=inner) < 0.01
    # without shift removal the same estimate is far off
    assert object_error(estimate, chart, region=inner, shift=False) > 0.05


def test_object_error_integer_alignment_only(chart: np.ndarray, inner: np.ndarray) -> None:
    estimate = fourier_shift(chart, (2.0, 1.5))
    whole = object_error(estimate, chart, region=inner, subpixel=False)
    sub = object_error(estimate, chart, region=inner, subpixel=True)
    assert sub < 0.01
    assert whole > 5.0 * sub


def test_object_error_measures_added_noise(chart: np.ndarray, inner: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    level = 0.05
    rms_truth = np.sqrt(np.mean(np.abs(chart[inner]) ** 2))
    noise = rng.normal(size=chart.shape) + 1j * rng.normal(size=chart.shape)
    estimate = chart + level * rms_truth * noise / np.sqrt(2.0)
    err = object_error(estimate, chart, region=inner, shift=False)
    assert err == pytest.approx(level, rel=0.1)


def test_object_error_is_large_for_an_unrelated_object(chart: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    unrelated = np.exp(1j * rng.uniform(-np.pi, np.pi, size=chart.shape))
    assert object_error(unrelated, chart) > 0.3
    other = smooth_complex_image(chart.shape, seed=6)
    assert object_error(other, chart) > 0.3


def test_object_error_removes_a_phase_ramp_on_request(chart: np.ndarray, inner: np.ndarray) -> None:
    rows, cols = np.indices(chart.shape)
    ramp = np.exp(2j * np.pi * (0.031 * rows - 0.0173 * cols))
    estimate = chart * ramp
    assert object_error(estimate, chart, region=inner) > 0.3
    assert object_error(estimate, chart, region=inner, remove_ramp=True) < 0.01
    # together with a shift
    moved = fourier_shift(chart, (-1.4, 2.3)) * ramp
    assert object_error(moved, chart, region=inner, remove_ramp=True) < 0.01


def test_object_error_region_restricts_the_comparison(chart: np.ndarray) -> None:
    estimate = chart.copy()
    estimate[:10] = 0.0  # garbage outside the region
    region = np.zeros(chart.shape, dtype=bool)
    region[20:70, 20:70] = True
    assert object_error(estimate, chart, region=region, shift=False) < 1e-7
    assert object_error(estimate, chart, shift=False) > 0.1


def test_object_error_input_checks(chart: np.ndarray) -> None:
    with pytest.raises(ValueError, match="region"):
        object_error(chart, chart, region=np.zeros(chart.shape, dtype=bool))
    with pytest.raises(ValueError, match="shapes differ"):
        object_error(chart[:-1], chart)


def test_metrics_accept_array_api_inputs(chart: np.ndarray) -> None:
    xp = pytest.importorskip("array_api_strict")
    estimate = xp.asarray((0.5j * chart).astype(np.complex64))
    truth = xp.asarray(chart.astype(np.complex64))
    assert object_error(estimate, truth) < 1e-6
    assert probe_error(estimate, truth) < 1e-6


# --------------------------------------------------------------------------------------------
# probe_error
# --------------------------------------------------------------------------------------------


def test_probe_error_global_factor_and_scale() -> None:
    probe = smooth_complex_image((32, 32), seed=7)
    assert probe_error(probe, probe) < 1e-7
    assert probe_error(250.0 * np.exp(0.4j) * probe, probe) < 1e-7
    assert probe_error(np.conj(probe), probe) > 0.3


def test_probe_error_shift_is_optional() -> None:
    probe = gaussian_probe(48, 8.0) * np.exp(
        1j * 0.02 * ((np.arange(48)[:, None] - 24) ** 2 + (np.arange(48)[None, :] - 24) ** 2)
    )
    moved = fourier_shift(probe, (1.5, -2.25))
    assert probe_error(moved, probe) > 0.3
    assert probe_error(moved, probe, shift=True) < 0.01


# --------------------------------------------------------------------------------------------
# fourier_error
# --------------------------------------------------------------------------------------------


def test_fourier_error_zero_for_truth(scan: dict[str, np.ndarray]) -> None:
    err = fourier_error(scan["obj"], scan["probe"], scan["intensities"], scan["positions"])
    assert err < 1e-9


def test_fourier_error_rounding_positions_is_not_the_truth(scan: dict[str, np.ndarray]) -> None:
    rounded = fourier_error(
        scan["obj"], scan["probe"], scan["intensities"], scan["positions"], subpixel=False
    )
    assert rounded > 1e-5


def test_fourier_error_value_for_a_scaled_probe(scan: dict[str, np.ndarray]) -> None:
    # |F(1.1 P O)| - |F(P O)| = 0.1 |F(P O)|, so the error is exactly 0.1**2
    err = fourier_error(scan["obj"], 1.1 * scan["probe"], scan["intensities"], scan["positions"])
    assert err == pytest.approx(0.01, rel=1e-4)


def test_fourier_error_wrong_object(scan: dict[str, np.ndarray]) -> None:
    empty = np.ones_like(scan["obj"])
    assert fourier_error(empty, scan["probe"], scan["intensities"], scan["positions"]) > 1e-3


def test_fourier_error_mask_ignores_bad_pixels(scan: dict[str, np.ndarray]) -> None:
    data = scan["intensities"].copy()
    bad = np.zeros(data.shape[1:], dtype=bool)
    bad[3, 5] = bad[20, 7] = True
    data[:, bad] = 1e7
    args = (scan["obj"], scan["probe"], data, scan["positions"])
    assert fourier_error(*args) > 0.5
    assert fourier_error(*args, mask=bad) < 1e-9
    per_pattern = np.broadcast_to(bad, data.shape).copy()
    assert fourier_error(*args, mask=per_pattern) < 1e-9


def test_fourier_error_uses_detector_convention(scan: dict[str, np.ndarray]) -> None:
    unshifted = np.fft.ifftshift(scan["intensities"], axes=(-2, -1))
    err = fourier_error(scan["obj"], scan["probe"], unshifted, scan["positions"])
    assert err > 0.1


def test_fourier_error_checks_shapes(scan: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="do not match"):
        fourier_error(scan["obj"], scan["probe"], scan["intensities"][:-1], scan["positions"])
    with pytest.raises(ValueError, match="mask"):
        fourier_error(
            scan["obj"],
            scan["probe"],
            scan["intensities"],
            scan["positions"],
            mask=np.zeros((5, 5), dtype=bool),
        )
