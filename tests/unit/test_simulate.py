"""Tests of bluesky_ptycho.simulate: objects, probes, noise, presets and datasets."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from bluesky_ptycho.engine.forward import far_field_intensities
from bluesky_ptycho.simulate import (
    SimulatedDataset,
    angular_spectrum_kernel,
    focused_probe,
    gaussian_probe,
    nominal_positions,
    poisson,
    preset_geometry,
    resolution_chart,
    simulate_dataset,
    small_preset,
    study_offline_preset,
)

# --------------------------------------------------------------------------------------------
# helpers (independent of the module under test)
# --------------------------------------------------------------------------------------------


def fwhm_1d(profile: np.ndarray) -> float:
    """FWHM of a single-peaked profile, half-maximum crossings linearly interpolated."""
    prof = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(prof))
    half = prof[i] / 2.0
    j = i
    while j > 0 and prof[j - 1] > half:
        j -= 1
    left = (j - 1) + (half - prof[j - 1]) / (prof[j] - prof[j - 1])
    j = i
    while j < prof.size - 1 and prof[j + 1] > half:
        j += 1
    right = j + (prof[j] - half) / (prof[j] - prof[j + 1])
    return right - left


def central_fwhm(probe: np.ndarray) -> float:
    """Mean FWHM of the row and column intensity profiles through the probe's centre."""
    intensity = np.abs(probe) ** 2
    c0, c1 = probe.shape[0] // 2, probe.shape[1] // 2
    return 0.5 * (fwhm_1d(intensity[c0, :]) + fwhm_1d(intensity[:, c1]))


def rms_radius(probe: np.ndarray) -> float:
    intensity = np.abs(probe) ** 2
    rows, cols = np.indices(intensity.shape)
    r2 = (rows - probe.shape[0] // 2) ** 2 + (cols - probe.shape[1] // 2) ** 2
    return float(np.sqrt(np.sum(intensity * r2) / np.sum(intensity)))


def centroid(probe: np.ndarray) -> tuple[float, float]:
    intensity = np.abs(probe) ** 2
    rows, cols = np.indices(intensity.shape)
    total = intensity.sum()
    return float((intensity * rows).sum() / total), float((intensity * cols).sum() / total)


# --------------------------------------------------------------------------------------------
# probes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fwhm", [4.0, 10.0, 15.5])
def test_gaussian_probe_fwhm_centre_and_flat_phase(fwhm: float) -> None:
    probe = gaussian_probe(64, fwhm)
    assert probe.dtype == np.complex64
    assert probe.shape == (64, 64)
    assert central_fwhm(probe) == pytest.approx(fwhm, rel=0.02)
    assert np.unravel_index(np.argmax(np.abs(probe)), probe.shape) == (32, 32)
    assert np.abs(probe).max() == pytest.approx(1.0)
    assert np.allclose(np.angle(probe), 0.0)


def test_gaussian_probe_total_counts() -> None:
    probe = gaussian_probe(63, 9.0, total_counts=2.5e6)
    assert np.sum(np.abs(probe.astype(np.complex128)) ** 2) == pytest.approx(2.5e6, rel=1e-5)
    assert np.unravel_index(np.argmax(np.abs(probe)), probe.shape) == (31, 31)
    assert centroid(probe) == pytest.approx((31.0, 31.0), abs=1e-4)


def test_gaussian_probe_rejects_bad_width() -> None:
    with pytest.raises(ValueError):
        gaussian_probe(64, 0.0)


@pytest.mark.parametrize(("fwhm_px", "edge_taper"), [(3.9, 0.0), (3.9, 0.15), (7.84, 0.15)])
def test_focused_probe_in_focus_has_requested_fwhm(fwhm_px: float, edge_taper: float) -> None:
    pixel = 15.3e-9
    probe = focused_probe(
        256,
        pixel,
        9.18e-11,
        focus_fwhm_m=fwhm_px * pixel,
        defocus_m=0.0,
        edge_taper=edge_taper,
    )
    assert central_fwhm(probe) == pytest.approx(fwhm_px, rel=0.15)
    assert centroid(probe) == pytest.approx((128.0, 128.0), abs=0.01)
    # in focus, the phase across the bright spot is flat
    bright = np.abs(probe) ** 2 > 0.5 * np.max(np.abs(probe) ** 2)
    assert np.ptp(np.angle(probe[bright])) < 1e-3


def test_focused_probe_total_counts_at_any_defocus() -> None:
    for z in (0.0, 3e-4, -6e-4):
        probe = focused_probe(
            64, 51.66e-9, 1.24e-10, focus_fwhm_m=80e-9, defocus_m=z, total_counts=1e6
        )
        assert probe.dtype == np.complex64
        assert np.sum(np.abs(probe.astype(np.complex128)) ** 2) == pytest.approx(1e6, rel=1e-5)


def test_focused_probe_spreads_with_defocus() -> None:
    radii = [
        rms_radius(focused_probe(64, 51.66e-9, 1.24e-10, focus_fwhm_m=80e-9, defocus_m=z))
        for z in (0.0, 2e-4, 4e-4, 6e-4, 8e-4)
    ]
    assert np.all(np.diff(radii) > 0.3), radii
    assert radii[-1] > 3.0 * radii[0]


def test_focused_probe_opposite_defocus_is_conjugate() -> None:
    args = dict(focus_fwhm_m=80e-9, total_counts=1e6)
    down = focused_probe(64, 51.66e-9, 1.24e-10, defocus_m=5e-4, **args)
    up = focused_probe(64, 51.66e-9, 1.24e-10, defocus_m=-5e-4, **args)
    scale = np.abs(down).max()
    assert np.max(np.abs(up - np.conj(down))) < 1e-4 * scale
    # and defocus does add phase structure (the probe is not real)
    assert np.max(np.abs(down.imag)) > 0.1 * scale


def test_gaussian_aperture_follows_gaussian_beam_optics() -> None:
    """At one Rayleigh range the FWHM grows by sqrt(2) and the wavefront radius is 2 z_R."""
    n, pixel, wavelength = 128, 50e-9, 1.24e-10
    fwhm0 = 6.0 * pixel
    w0 = fwhm0 / math.sqrt(2.0 * math.log(2.0))  # 1/e^2 intensity radius
    z_r = math.pi * w0**2 / wavelength
    probe = focused_probe(
        n, pixel, wavelength, focus_fwhm_m=fwhm0, defocus_m=z_r, aperture="gaussian"
    )
    assert central_fwhm(probe) * pixel == pytest.approx(fwhm0 * math.sqrt(2.0), rel=0.03)
    # diverging beam: phase k r^2 / (2 R) with R = 2 z_R, relative to the centre
    r_px = 5
    dphi = np.angle(probe[n // 2, n // 2 + r_px] / probe[n // 2, n // 2])
    expected = 2.0 * math.pi / wavelength * (r_px * pixel) ** 2 / (2.0 * 2.0 * z_r)
    assert dphi == pytest.approx(expected, rel=0.05)


def test_angular_spectrum_kernel_is_unitary_and_reversible() -> None:
    h = angular_spectrum_kernel(32, 50e-9, 1.24e-10, 1e-3)
    assert np.allclose(np.abs(h), 1.0)
    back = angular_spectrum_kernel(32, 50e-9, 1.24e-10, -1e-3)
    assert np.allclose(h * back, 1.0)
    assert h[0, 0] == pytest.approx(1.0)


def test_focused_probe_rejects_focus_below_grid_resolution() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        focused_probe(64, 50e-9, 1.24e-10, focus_fwhm_m=40e-9, defocus_m=0.0)


def test_focused_probe_warns_when_beam_wraps_around() -> None:
    with pytest.warns(UserWarning, match="wraps"):
        focused_probe(32, 50e-9, 1.24e-10, focus_fwhm_m=80e-9, defocus_m=2e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        focused_probe(64, 51.66e-9, 1.24e-10, focus_fwhm_m=80e-9, defocus_m=6e-4)


# --------------------------------------------------------------------------------------------
# object
# --------------------------------------------------------------------------------------------


def test_resolution_chart_is_deterministic_and_seeded() -> None:
    a = resolution_chart((96, 120), seed=3)
    b = resolution_chart((96, 120), seed=3)
    c = resolution_chart((96, 120), seed=4)
    assert a.dtype == np.complex64
    assert a.shape == (96, 120)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("phase_max", "amplitude_min"), [(0.6, 0.7), (1.5, 0.2), (0.3, 1.0)])
def test_resolution_chart_bounds_and_contrast(phase_max: float, amplitude_min: float) -> None:
    chart = resolution_chart((128, 128), phase_max=phase_max, amplitude_min=amplitude_min)
    amp = np.abs(chart)
    phase = np.angle(chart)
    tol = 1e-5
    assert amp.min() >= amplitude_min - tol
    assert amp.max() <= 1.0 + tol
    assert phase.min() >= -tol
    assert phase.max() <= phase_max + tol
    # the full contrast is reached, and features cover a fair part of the chart
    assert phase.max() > 0.95 * phase_max
    assert amp.min() < amplitude_min + 0.05 * (1.0 - amplitude_min) + tol
    featured = phase > 0.05 * phase_max
    assert 0.1 < featured.mean() < 0.7


def test_resolution_chart_has_fine_and_coarse_features() -> None:
    chart = resolution_chart((128, 128), amplitude_min=1.0)
    phase = np.angle(chart).astype(np.float64)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(phase - phase.mean()))) ** 2
    f = np.fft.fftshift(np.fft.fftfreq(128))
    fr = np.hypot(f[:, None], f[None, :])
    total = spectrum.sum()
    coarse = spectrum[fr < 0.05].sum() / total
    fine = spectrum[(fr > 0.2) & (fr < 0.5)].sum() / total
    assert coarse > 0.2
    assert fine > 0.02


def test_resolution_chart_box_leaves_background_at_one() -> None:
    chart = resolution_chart((100, 90), box=(20, 30, 70, 80), seed=1)
    outside = np.ones(chart.shape, dtype=bool)
    outside[20:70, 30:80] = False
    assert np.all(chart[outside] == 1.0)
    assert np.mean(np.angle(chart[20:70, 30:80]) > 0.01) > 0.1


def test_resolution_chart_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        resolution_chart((64, 64), amplitude_min=0.0)
    with pytest.raises(ValueError):
        resolution_chart((64, 64), phase_max=-0.1)
    with pytest.raises(ValueError):
        resolution_chart((64, 64), box=(10, 10, 12, 40))


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------


def test_poisson_statistics_and_reproducibility() -> None:
    lam = np.full((200, 200), 50.0)
    lam[:10] = 0.0
    a = poisson(lam, seed=7)
    assert a.dtype == np.float32
    assert a.shape == lam.shape
    assert np.all(a[:10] == 0.0)
    assert np.array_equal(a, np.round(a))
    body = a[10:].astype(np.float64)
    assert body.mean() == pytest.approx(50.0, rel=0.01)
    assert body.var() == pytest.approx(50.0, rel=0.05)
    assert np.array_equal(a, poisson(lam, seed=7))
    assert not np.array_equal(a, poisson(lam, seed=8))


def test_poisson_rejects_negative_expectations() -> None:
    with pytest.raises(ValueError):
        poisson(np.array([1.0, -1.0]), seed=0)


# --------------------------------------------------------------------------------------------
# presets and datasets
# --------------------------------------------------------------------------------------------


def test_study_preset_numbers() -> None:
    preset = study_offline_preset()
    geometry = preset_geometry(preset)
    assert geometry.pixel_size_m[0] == pytest.approx(15.3e-9, rel=0.01)
    assert geometry.pixel_size_m[0] == pytest.approx(geometry.pixel_size_m[1])
    nominal = nominal_positions(preset)
    assert nominal.shape == (441, 2)
    assert preset.n_patterns == 441
    frame = geometry.object_frame(nominal, margin_px=preset.margin_px)
    px = frame.to_pixels(nominal)
    assert np.all(frame.contains(px))
    steps = np.unique(np.round(np.diff(np.unique(px[:, 0])), 6))
    assert steps == pytest.approx([50e-9 / geometry.pixel_size_m[0]])
    assert frame.object_shape[0] > 256 + 65


def test_small_preset_is_small_and_whole_pixel() -> None:
    preset = small_preset()
    geometry = preset_geometry(preset)
    nominal = nominal_positions(preset)
    frame = geometry.object_frame(nominal, margin_px=preset.margin_px)
    px = frame.to_pixels(nominal)
    assert preset.shape == 64
    assert 64 <= nominal.shape[0] <= 100
    assert np.allclose(px, np.round(px), atol=1e-9)
    assert preset.step_m / geometry.pixel_size_m[0] == pytest.approx(4.0)
    probe = focused_probe(
        preset.shape,
        geometry.pixel_size_m[0],
        geometry.wavelength_m,
        focus_fwhm_m=preset.focus_fwhm_m,
        defocus_m=preset.defocus_m,
        edge_taper=preset.pupil_edge_taper,
    )
    # beam "diameter" as twice the rms radius: 10-16 px, for 60-75 % linear overlap at 4 px
    assert 10.0 < 2.0 * rms_radius(probe) < 16.0


@pytest.fixture(scope="module")
def small() -> SimulatedDataset:
    return simulate_dataset(small_preset())


def test_dataset_shapes_and_dtypes(small: SimulatedDataset) -> None:
    preset = small_preset()
    n, big_n = preset.n_patterns, preset.shape
    assert small.intensities.shape == (n, big_n, big_n)
    assert small.intensities.dtype == np.float32
    assert small.positions_px.shape == (n, 2)
    assert small.positions_px.dtype == np.float64
    assert small.nominal_positions_m.shape == (n, 2)
    assert small.positions_m.shape == (n, 2)
    assert small.object.dtype == np.complex64
    assert small.object.shape == small.frame.object_shape
    assert small.probe.shape == (big_n, big_n)
    assert small.probe.dtype == np.complex64
    assert small.n_patterns == n
    assert small.geometry == preset_geometry(preset)
    assert np.all(small.intensities >= 0.0)
    assert np.array_equal(small.intensities, np.round(small.intensities))


def test_dataset_positions_consistent_and_inside(small: SimulatedDataset) -> None:
    assert np.all(small.frame.contains(small.positions_px))
    assert np.array_equal(small.positions_m, small.nominal_positions_m)
    assert np.allclose(small.positions_px, small.frame.to_pixels(small.positions_m))
    assert np.allclose(small.nominal_positions_m, nominal_positions(small_preset()))


def test_dataset_probe_counts_and_object_bounds(small: SimulatedDataset) -> None:
    preset = small_preset()
    total = np.sum(np.abs(small.probe.astype(np.complex128)) ** 2)
    assert total == pytest.approx(preset.photons_per_pattern, rel=1e-5)
    amp = np.abs(small.object)
    assert amp.min() >= preset.amplitude_min - 1e-5
    assert amp.max() <= 1.0 + 1e-5
    # the chart's features lie where the beam goes
    phase = np.angle(small.object)
    r, c = np.nonzero(phase > 0.05)
    lo = small.positions_px.min(axis=0)
    hi = small.positions_px.max(axis=0) + preset.shape
    assert r.min() >= lo[0] and r.max() < hi[0]
    assert c.min() >= lo[1] and c.max() < hi[1]


def test_dataset_counts_per_pattern_for_a_transparent_object() -> None:
    preset = replace(small_preset(), amplitude_min=1.0)  # a pure phase object
    data = simulate_dataset(preset)
    counts = data.intensities.astype(np.float64).sum(axis=(1, 2))
    photons = preset.photons_per_pattern
    assert np.all(np.abs(counts - photons) < 6.0 * math.sqrt(photons))
    # an absorbing object removes counts
    absorbing = simulate_dataset(small_preset(), noise=False)
    assert absorbing.intensities.sum(axis=(1, 2)).mean() < 0.97 * photons


def test_noise_free_dataset_is_exactly_the_forward_model() -> None:
    data = simulate_dataset(small_preset(), noise=False, position_jitter_m=20e-9)
    expected = far_field_intensities(data.object, data.probe, data.positions_px, subpixel=True)
    assert np.array_equal(data.intensities, expected)
    noisy = simulate_dataset(small_preset(), position_jitter_m=20e-9)
    assert not np.array_equal(noisy.intensities, data.intensities)
    assert np.array_equal(noisy.object, data.object)
    assert np.array_equal(noisy.positions_px, data.positions_px)
    # Poisson: relative deviation of the bright pixels is about 1/sqrt(counts)
    bright = expected > 100.0
    rel = (noisy.intensities[bright] - expected[bright]) / np.sqrt(expected[bright])
    assert np.std(rel) == pytest.approx(1.0, rel=0.1)


def test_position_jitter_has_requested_rms() -> None:
    jitter = 30e-9
    data = simulate_dataset(replace(small_preset(), n_rows=10, n_cols=10), position_jitter_m=jitter)
    delta = data.positions_m - data.nominal_positions_m
    assert np.std(delta, axis=0) == pytest.approx([jitter, jitter], rel=0.2)
    assert abs(np.mean(delta)) < 0.3 * jitter
    pixel = data.geometry.pixel_size_m[0]
    delta_px = data.positions_px - data.frame.to_pixels(data.nominal_positions_m)
    assert np.allclose(delta_px * pixel, delta)
    assert np.all(data.frame.contains(data.positions_px))


def test_jitter_beyond_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin_px"):
        simulate_dataset(small_preset(), position_jitter_m=2e-6, noise=False)


def test_seed_controls_object_and_noise() -> None:
    preset = small_preset()
    a = simulate_dataset(preset, seed=5)
    b = simulate_dataset(preset, seed=5)
    c = simulate_dataset(preset, seed=6)
    assert np.array_equal(a.intensities, b.intensities)
    assert np.array_equal(a.object, b.object)
    assert not np.array_equal(a.object, c.object)
    assert a.preset is not None and a.preset.seed == 5


@pytest.mark.parametrize("pattern", ["raster", "meander", "random", "spirangle", "fermat"])
def test_patterns_give_the_preset_number_of_positions(pattern: str) -> None:
    preset = replace(small_preset(), pattern=pattern)
    pos = nominal_positions(preset)
    assert pos.shape == (81, 2)
    assert np.allclose(pos.mean(axis=0), 0.0, atol=preset.step_m)


def test_bad_patterns_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown pattern"):
        nominal_positions(replace(small_preset(), pattern="zigzag"))
    with pytest.raises(ValueError, match="n_rows == n_cols"):
        nominal_positions(replace(small_preset(), pattern="spirangle", n_cols=8))


def test_study_dataset_counts() -> None:
    preset = replace(study_offline_preset(), amplitude_min=1.0)
    data = simulate_dataset(preset, noise=False)
    assert data.intensities.shape == (441, 256, 256)
    assert data.geometry.pixel_size_m[0] == pytest.approx(15.31e-9, rel=1e-3)
    counts = data.intensities.astype(np.float64).sum(axis=(1, 2))
    assert counts == pytest.approx(np.full(441, preset.photons_per_pattern), rel=1e-4)
    assert np.all(data.frame.contains(data.positions_px))
