"""Ground truth and forward-simulated ptychography datasets.

- :func:`resolution_chart`: a complex test object (Siemens star, bar groups, discs);
- :func:`gaussian_probe`, :func:`focused_probe`: illuminations (a focused beam seen out of
  focus, propagated with the angular-spectrum method);
- :func:`poisson`: photon-counting noise;
- :class:`SimulationPreset`, :func:`study_offline_preset`, :func:`small_preset`: numbers of a
  simulated experiment;
- :func:`simulate_dataset`: positions, object frame, object, probe and noisy patterns, with the
  forward model of :mod:`bluesky_ptycho.engine.forward`.

Nothing here reconstructs; the reconstructor and the metrics sit beside this module.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bluesky_ptycho.engine.forward import far_field_intensities, integer_positions
from bluesky_ptycho.geometry import Geometry, ObjectFrame
from bluesky_ptycho.patterns import fermat_spiral, meander, random_grid, raster, spirangle

__all__ = [
    "SimulatedDataset",
    "SimulationPreset",
    "angular_spectrum_kernel",
    "focused_probe",
    "gaussian_probe",
    "nominal_positions",
    "poisson",
    "preset_geometry",
    "resolution_chart",
    "simulate_dataset",
    "small_preset",
    "study_offline_preset",
]

SeedLike = int | np.random.SeedSequence | np.random.Generator | None

# FWHM of the Airy intensity pattern of a circular pupil of radius f_c (cycles per metre) is
# AIRY_FWHM_FACTOR / f_c (2 * 1.6163 / (2π), the half-maximum of (2 J1(v) / v)**2 at v = 1.6163).
AIRY_FWHM_FACTOR = 0.51445

# Patterns per forward-model call in simulate_dataset (bounds memory for 256 px frames).
_CHUNK = 32


# --------------------------------------------------------------------------------------------
# object
# --------------------------------------------------------------------------------------------


def _siemens_star(
    y: NDArray[np.float64],
    x: NDArray[np.float64],
    centre: tuple[float, float],
    radius: float,
    n_spokes: int,
    rotation: float,
) -> NDArray[np.float64]:
    dy = y - centre[0]
    dx = x - centre[1]
    r = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    spokes = np.sin(n_spokes * (theta + rotation)) > 0.0
    inside = (r <= radius) & (r >= 0.06 * radius)
    return (spokes & inside).astype(np.float64)


def _bar_groups(
    along: NDArray[np.float64],
    across: NDArray[np.float64],
    start: float,
    stop: float,
    band: tuple[float, float],
    widest: float,
) -> NDArray[np.float64]:
    """Groups of three bars (each ``w`` wide, ``w`` apart), ``w`` shrinking by 1.4 per group.

    Bars are laid out along ``along`` from ``start`` to ``stop`` and span ``band`` across.
    """
    out = np.zeros(along.shape, dtype=np.float64)
    in_band = (across >= band[0]) & (across < band[1])
    pos = start
    width = widest
    while width >= 0.7 and pos + 5.0 * width <= stop:
        for k in range(3):
            lo = pos + 2.0 * k * width
            out[in_band & (along >= lo) & (along < lo + width)] = 1.0
        pos += 5.0 * width + max(2.0 * width, 2.0)
        width /= 1.4
    return out


def resolution_chart(
    shape: tuple[int, int],
    *,
    phase_max: float = 0.6,
    amplitude_min: float = 0.7,
    seed: int = 0,
    box: tuple[int, int, int, int] | None = None,
    supersample: int = 3,
) -> NDArray[np.complex64]:
    """A complex resolution chart: Siemens star, bar groups of decreasing width, discs.

    The chart is laid out inside ``box`` (the whole array by default) in fractions of its
    size: a 16-spoke Siemens star (spokes narrowing to about a pixel towards its centre), two
    strips of three-bar groups (vertical bars along the bottom, horizontal bars along the
    right; bar width shrinking by 1.4 per group down to about a pixel) and a few discs of random
    size, position and composition. Star and bars are one material of thickness ``t`` in
    [0, 1]: amplitude ``amplitude_min ** t`` and phase ``phase_max * t``; each disc has its own
    independent amplitude and phase strength, so amplitude and phase are not proportional
    everywhere. Outside the features the transmission is exactly 1. Edges are anti-aliased by
    averaging the thicknesses over ``supersample**2`` samples per pixel.

    Parameters
    ----------
    shape : (int, int)
        Object shape ``(H, W)``.
    phase_max : float, optional
        Largest phase shift in radians (default 0.6), at least 0.
    amplitude_min : float, optional
        Smallest transmission amplitude, in (0, 1] (default 0.7).
    seed : int, optional
        Seed of the star rotation and of the discs; the chart is a deterministic function of
        its arguments.
    box : (int, int, int, int), optional
        ``(row0, col0, row1, col1)``, the half-open pixel box the features fill (e.g. the
        illuminated part of the object); default the whole array.
    supersample : int, optional
        Samples per pixel and axis for anti-aliasing (default 3; 1 gives hard pixel edges).

    Returns
    -------
    ndarray of complex64, shape ``shape``

    Raises
    ------
    ValueError
        If the bounds or the box are invalid.
    """
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive, got {shape!r}")
    if phase_max < 0.0 or not math.isfinite(phase_max):
        raise ValueError(f"phase_max must be finite and >= 0, got {phase_max!r}")
    if not 0.0 < amplitude_min <= 1.0:
        raise ValueError(f"amplitude_min must be in (0, 1], got {amplitude_min!r}")
    r0, c0, r1, c1 = (0, 0, h, w) if box is None else (int(v) for v in box)
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if r1 - r0 < 4 or c1 - c0 < 4:
        raise ValueError(f"box {box!r} leaves fewer than 4 x 4 pixels inside shape {shape!r}")
    bh, bw = float(r1 - r0), float(c1 - c0)
    size = min(bh, bw)
    rng = np.random.default_rng(seed)

    ss = max(int(supersample), 1)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    ys = (np.arange(r1 - r0)[:, None] + sub[None, :]).ravel()  # box-relative pixel coords
    xs = (np.arange(c1 - c0)[:, None] + sub[None, :]).ravel()
    y, x = np.meshgrid(ys, xs, indexing="ij")

    # One material: star and bar groups.
    thickness = _siemens_star(
        y,
        x,
        centre=(0.40 * bh, 0.40 * bw),
        radius=0.32 * size,
        n_spokes=16,
        rotation=float(rng.uniform(0.0, 2.0 * np.pi)),
    )
    widest = max(size / 26.0, 1.0)
    bottom = (0.80 * bh, 0.94 * bh)
    right = (0.80 * bw, 0.94 * bw)
    thickness = np.maximum(
        thickness, _bar_groups(x, y, 0.06 * bw, 0.78 * bw, bottom, widest)
    )  # vertical bars
    thickness = np.maximum(
        thickness, _bar_groups(y, x, 0.06 * bh, 0.78 * bh, right, widest)
    )  # horizontal bars
    t_amp = thickness.copy()
    t_phase = thickness

    # Discs of other materials.
    for _ in range(6):
        radius = rng.uniform(0.02, 0.07) * size
        cy = rng.uniform(0.05, 0.95) * bh
        cx = rng.uniform(0.05, 0.95) * bw
        strength_amp, strength_phase = rng.uniform(0.2, 1.0, size=2)
        disc = np.hypot(y - cy, x - cx) <= max(radius, 0.8)
        t_amp = np.where(disc, np.maximum(t_amp, strength_amp), t_amp)
        t_phase = np.where(disc, np.maximum(t_phase, strength_phase), t_phase)

    # Average the thicknesses (not the complex field) over the sub-samples, so a pure phase
    # object keeps modulus exactly 1 and the bounds hold.
    t_amp = t_amp.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))
    t_phase = t_phase.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))
    field_box = amplitude_min**t_amp * np.exp(1j * phase_max * t_phase)
    out = np.ones((h, w), dtype=np.complex64)
    out[r0:r1, c0:c1] = field_box
    return out


# --------------------------------------------------------------------------------------------
# probes
# --------------------------------------------------------------------------------------------


def _scale_counts(probe: NDArray[np.complex128], total_counts: float | None) -> NDArray:
    if total_counts is not None:
        if not total_counts > 0.0:
            raise ValueError(f"total_counts must be positive, got {total_counts!r}")
        probe = probe * math.sqrt(total_counts / float(np.sum(np.abs(probe) ** 2)))
    return probe.astype(np.complex64)


def gaussian_probe(
    n: int, fwhm_px: float, *, total_counts: float | None = None
) -> NDArray[np.complex64]:
    """A Gaussian probe with flat phase, centred on pixel ``(n//2, n//2)``.

    Parameters
    ----------
    n : int
        Side of the square probe array.
    fwhm_px : float
        Full width at half maximum of the *intensity* ``|P|**2``, in pixels.
    total_counts : float, optional
        Scale so that ``sum(|P|**2) == total_counts``; by default the peak amplitude is 1.

    Returns
    -------
    ndarray of complex64, shape (n, n)
    """
    if n <= 0 or not fwhm_px > 0.0:
        raise ValueError(f"need n > 0 and fwhm_px > 0, got n={n!r}, fwhm_px={fwhm_px!r}")
    coords = np.arange(n, dtype=np.float64) - n // 2
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    amplitude = np.exp(-2.0 * math.log(2.0) * r2 / fwhm_px**2)
    return _scale_counts(amplitude.astype(np.complex128), total_counts)


def angular_spectrum_kernel(
    n: int, pixel_size_m: float, wavelength_m: float, distance_m: float
) -> NDArray[np.complex128]:
    """Angular-spectrum transfer function for free-space propagation over ``distance_m``.

    ``H(f) = exp(2πi z (sqrt(1/λ² - |f|²) - 1/λ))`` on the unshifted FFT grid (the constant
    phase ``exp(2πi z / λ)`` is dropped). Multiplying a field's ``fft2`` by ``H`` propagates it
    downstream by ``z`` (NumPy's FFT sign convention, fields ``exp(i(kz - ωt))``).

    Parameters
    ----------
    n : int
        Grid side.
    pixel_size_m, wavelength_m, distance_m : float
        Sampling, wavelength and propagation distance (negative: upstream) in metres.

    Returns
    -------
    ndarray of complex128, shape (n, n)
    """
    f = np.fft.fftfreq(n, d=pixel_size_m)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    inv_l2 = 1.0 / wavelength_m**2
    if np.any(f2 >= inv_l2):
        raise ValueError("pixel size below half the wavelength: evanescent waves on the grid")
    # sqrt(1/λ² - f²) - 1/λ, written to avoid cancellation
    kz_minus_k = -f2 / (np.sqrt(inv_l2 - f2) + 1.0 / wavelength_m)
    return np.exp(2j * np.pi * distance_m * kz_minus_k)


def _circular_pupil(
    n: int, pixel_size_m: float, f_cut: float, edge_taper: float
) -> NDArray[np.float64]:
    """Pupil amplitude on the unshifted FFT grid: 1 inside, cos² roll-off to 0 at the edge.

    The amplitude is 1/2 at ``f_cut`` and rolls off between ``f_cut (1 - edge_taper)`` and
    ``f_cut (1 + edge_taper)``; with ``edge_taper = 0`` the edge is hard, anti-aliased over
    one frequency pixel.
    """
    f = np.fft.fftfreq(n, d=pixel_size_m)
    fr = np.hypot(f[:, None], f[None, :])
    if edge_taper <= 0.0:
        df = 1.0 / (n * pixel_size_m)
        return np.clip((f_cut - fr) / df + 0.5, 0.0, 1.0)
    x = np.clip((fr - f_cut * (1.0 - edge_taper)) / (2.0 * edge_taper * f_cut), 0.0, 1.0)
    return np.cos(0.5 * np.pi * x) ** 2


def _focus_fwhm_px(pupil: NDArray[np.float64]) -> float:
    """Intensity FWHM (pixels) of the focus ``ifft2(pupil)`` of a centro-symmetric pupil.

    The band-limited focus is evaluated off the grid (along a line through its centre, from
    the pupil's marginal spectrum), so the width is exact rather than limited by the pixels.
    """
    n = pupil.shape[1]
    q = pupil.sum(axis=0).astype(np.complex128)
    freqs = np.fft.fftfreq(n)

    def intensity(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.abs(np.exp(2j * np.pi * np.outer(x, freqs)) @ q) ** 2

    half = 0.5 * intensity(np.zeros(1))[0]
    coarse = intensity(np.arange(n // 2 + 1, dtype=np.float64))
    below = np.flatnonzero(coarse < half)
    if below.size == 0:
        return float(n)
    k = int(below[0])
    fine_x = np.linspace(k - 1.0, float(k), 1001)
    fine = intensity(fine_x)
    j = int(np.flatnonzero(fine < half)[0])
    x0, x1, y0, y1 = fine_x[j - 1], fine_x[j], fine[j - 1], fine[j]
    return float(2.0 * (x0 + (y0 - half) * (x1 - x0) / (y0 - y1)))


def focused_probe(
    n: int,
    pixel_size_m: float,
    wavelength_m: float,
    *,
    focus_fwhm_m: float,
    defocus_m: float,
    total_counts: float | None = None,
    aperture: Literal["circular", "gaussian"] = "circular",
    edge_taper: float = 0.15,
) -> NDArray[np.complex64]:
    """A focused beam seen ``defocus_m`` away from its focus, on an ``n x n`` grid.

    The focus is built first, centred on pixel ``(n//2, n//2)`` with a flat phase. For
    ``aperture="circular"`` it is the focus of a uniformly filled circular pupil (lens, zone
    plate, KB mirror pair) whose edge rolls off softly (``edge_taper``); the pupil radius is
    adjusted until the focal intensity has the requested FWHM (an Airy spot, radius
    ``0.514 / focus_fwhm_m`` cycles per metre, for a hard edge). For ``"gaussian"`` the focus
    is a Gaussian spot. The focus is then propagated by ``defocus_m`` with the angular-spectrum
    method (periodic on the grid), which gives the beam its size, its Fresnel fringes and its
    curvature phase. A beam's depth of focus is about ``λ / NA²``: within it the beam barely
    grows.

    Parameters
    ----------
    n : int
        Grid side (the probe/frame size ``N``).
    pixel_size_m : float
        Object pixel size in metres.
    wavelength_m : float
        Wavelength in metres.
    focus_fwhm_m : float
        FWHM of the focal-spot intensity in metres.
    defocus_m : float
        Distance from the focus to the specimen in metres; positive means the specimen is
        downstream of the focus (diverging beam), negative upstream (converging beam).
        ``focused_probe(-z)`` is the complex conjugate of ``focused_probe(z)``.
    total_counts : float, optional
        Scale so that ``sum(|P|**2) == total_counts``; by default the focus has peak amplitude
        1 (and the same total intensity at any defocus).
    aperture : {"circular", "gaussian"}, optional
        Shape of the pupil (default "circular").
    edge_taper : float, optional
        Circular pupil only: the amplitude rolls off as cos² from ``(1 - edge_taper)`` to
        ``(1 + edge_taper)`` times the pupil radius. 0 is a hard edge (Airy focus, sharp
        Fresnel fringes and a bright central spot out of focus); the default 0.15 softens
        them, as the imperfect edges of real optics do.

    Returns
    -------
    ndarray of complex64, shape (n, n)

    Raises
    ------
    ValueError
        If the focus is too small for the grid (pupil beyond the Nyquist frequency).

    Warns
    -----
    UserWarning
        If more than 1 % of the beam's intensity lies in the outer eighth of the grid on any
        side (the beam wraps around: use a larger ``n`` or less defocus).
    """
    if n <= 0 or not pixel_size_m > 0.0 or not wavelength_m > 0.0 or not focus_fwhm_m > 0.0:
        raise ValueError("n, pixel_size_m, wavelength_m and focus_fwhm_m must be positive")
    if not 0.0 <= edge_taper < 1.0:
        raise ValueError(f"edge_taper must be in [0, 1), got {edge_taper!r}")
    nyquist = 0.5 / pixel_size_m
    if aperture == "circular":
        target_px = focus_fwhm_m / pixel_size_m
        f_cut = AIRY_FWHM_FACTOR / focus_fwhm_m
        for _ in range(30):  # the FWHM scales as 1 / f_cut: a fixed point in a few steps
            if f_cut * (1.0 + edge_taper) > nyquist:
                raise ValueError(
                    f"a focus of {focus_fwhm_m:.3g} m FWHM needs a pupil beyond the Nyquist "
                    f"frequency of {pixel_size_m:.3g} m pixels: use a larger focus, smaller "
                    f"pixels or a smaller edge_taper"
                )
            pupil = _circular_pupil(n, pixel_size_m, f_cut, edge_taper)
            ratio = _focus_fwhm_px(pupil) / target_px
            if abs(ratio - 1.0) < 1e-4:
                break
            f_cut *= ratio
        spectrum = pupil.astype(np.complex128)
    elif aperture == "gaussian":
        coords = np.fft.fftfreq(n, d=1.0 / n)  # pixel offsets from the origin, periodic
        r2 = (coords[:, None] ** 2 + coords[None, :] ** 2) * pixel_size_m**2
        focus = np.exp(-2.0 * math.log(2.0) * r2 / focus_fwhm_m**2)
        spectrum = np.fft.fft2(focus)
    else:
        raise ValueError(f"aperture must be 'circular' or 'gaussian', got {aperture!r}")
    focus_peak = abs(np.sum(spectrum)) / (n * n)  # value of ifft2(spectrum) at the origin
    spectrum = spectrum / focus_peak
    kernel = angular_spectrum_kernel(n, pixel_size_m, wavelength_m, defocus_m)
    probe = np.fft.fftshift(np.fft.ifft2(spectrum * kernel))
    intensity = np.abs(probe) ** 2
    edge = max(n // 8, 1)
    inner = intensity[edge:-edge, edge:-edge].sum() if n > 2 * edge else 0.0
    if intensity.sum() - inner > 0.01 * intensity.sum():
        warnings.warn(
            f"the probe ({focus_fwhm_m:.3g} m focus, {defocus_m:.3g} m defocus) fills the "
            f"{n} px grid: more than 1 % of its intensity is near the edges and wraps around",
            UserWarning,
            stacklevel=2,
        )
    return _scale_counts(probe, total_counts)


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------


def poisson(intensities: ArrayLike, *, seed: SeedLike) -> NDArray[np.float32]:
    """Photon-counting (Poisson) noise on expected counts.

    Parameters
    ----------
    intensities : array_like
        Expected counts per pixel, non-negative.
    seed : int, SeedSequence, Generator or None
        Passed to ``numpy.random.default_rng``; give an int for reproducible noise.

    Returns
    -------
    ndarray of float32, same shape
        Integer counts stored as float32.
    """
    lam = np.asarray(intensities, dtype=np.float64)
    if np.any(lam < 0.0) or not np.all(np.isfinite(lam)):
        raise ValueError("intensities must be finite and non-negative")
    return np.random.default_rng(seed).poisson(lam).astype(np.float32)


# --------------------------------------------------------------------------------------------
# presets and datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationPreset:
    """Numbers of a simulated far-field ptychography experiment (SI units).

    Attributes
    ----------
    energy_eV : float
        Photon energy.
    detector_distance_m : float
        Specimen–detector distance.
    detector_pixel_m : float
        Detector pixel pitch.
    shape : int
        Side ``N`` of the (cropped) diffraction frames and the probe.
    pattern : str
        Scan pattern: ``"raster"``, ``"meander"``, ``"random"`` (raster grid in random order),
        ``"spirangle"`` (needs ``n_rows == n_cols``) or ``"fermat"`` (``n_rows * n_cols``
        points).
    n_rows, n_cols : int
        Grid points along rows (y) and columns (x).
    step_m : float
        Scan step.
    focus_fwhm_m : float
        FWHM of the focal spot (circular pupil, see :func:`focused_probe`).
    defocus_m : float
        Distance from the focus to the specimen (positive: downstream).
    pupil_edge_taper : float
        Soft edge of the circular pupil (``edge_taper`` of :func:`focused_probe`).
    photons_per_pattern : float
        Total counts of a pattern through empty space (``sum |P|**2``).
    phase_max, amplitude_min : float
        Object contrast (see :func:`resolution_chart`).
    margin_px : int
        Object margin around the scanned area (see :meth:`Geometry.object_frame`).
    seed : int
        Seed of object, scan order, jitter and noise.
    """

    energy_eV: float
    detector_distance_m: float
    detector_pixel_m: float
    shape: int
    pattern: str
    n_rows: int
    n_cols: int
    step_m: float
    focus_fwhm_m: float
    defocus_m: float
    photons_per_pattern: float
    pupil_edge_taper: float = 0.15
    phase_max: float = 0.6
    amplitude_min: float = 0.7
    margin_px: int = 8
    seed: int = 0

    @property
    def n_patterns(self) -> int:
        """Number of scan positions."""
        return self.n_rows * self.n_cols


def study_offline_preset() -> SimulationPreset:
    """The study's offline dataset.

    13.5 keV, 3.2 m to a 75 µm-pixel detector cropped to 256 x 256 (object pixel
    ``λ z / (N d)`` = 15.31 nm), a 21 x 21 raster with a 50 nm step (3.27 px, so positions are
    fractional; 441 patterns), a 120 nm focus (NA about 0.4 mrad) seen 200 µm downstream of the
    focus. 200 µm is well inside the depth of focus ``λ / NA²`` (about 0.6 mm), so the beam
    barely grows: about 7.9 px (121 nm) FWHM with a slightly curved phase; linear overlap
    about 60 %. Object 338 x 338 px.

    Photons per pattern: 1e7 in the whole pattern through empty space, as from a coherent
    flux of about 1e9 photons/s (a fourth-generation undulator source behind focusing optics)
    and 10 ms exposures; the direct beam then peaks near 1.2e4 counts per pixel, within a
    photon-counting detector's range.
    """
    return SimulationPreset(
        energy_eV=13_500.0,
        detector_distance_m=3.2,
        detector_pixel_m=75e-6,
        shape=256,
        pattern="raster",
        n_rows=21,
        n_cols=21,
        step_m=50e-9,
        focus_fwhm_m=120e-9,
        defocus_m=200e-6,
        photons_per_pattern=1e7,
    )


def small_preset() -> SimulationPreset:
    """A small dataset for unit tests and demos: reconstructs in about a second.

    10 keV, 2.0 m, 75 µm pixels, 64 x 64 frames: object pixel 51.66 nm. A 9 x 9 raster with a
    step of exactly 4 object pixels (206.6 nm, so nominal positions are whole pixels; 81
    patterns), an 80 nm focus seen 600 µm downstream: a beam about 12 px across (a bright
    central spot inside a ring; the half-maximum area has an 11 px equivalent diameter, twice
    the rms radius is 13 px) with a curved phase, linear overlap about 65 %. 1e6 photons per
    pattern; object 112 x 112 px.

    Plain ePIE (alpha = beta = 1, Gaussian start, whole-pixel positions) brings the object
    error (:func:`bluesky_ptycho.metrics.object_error`) to about 0.03 within 40 passes for
    11 of seeds 0..11; like any ePIE it sometimes lingers on a plateau much longer.
    """
    energy_eV, distance_m, pixel_m, n = 10_000.0, 2.0, 75e-6, 64
    object_pixel_m = Geometry(energy_eV, distance_m, pixel_m, n).pixel_size_m[0]
    return SimulationPreset(
        energy_eV=energy_eV,
        detector_distance_m=distance_m,
        detector_pixel_m=pixel_m,
        shape=n,
        pattern="raster",
        n_rows=9,
        n_cols=9,
        step_m=4.0 * object_pixel_m,
        focus_fwhm_m=80e-9,
        defocus_m=600e-6,
        photons_per_pattern=1e6,
    )


def preset_geometry(preset: SimulationPreset) -> Geometry:
    """The :class:`Geometry` of a preset."""
    return Geometry(
        preset.energy_eV, preset.detector_distance_m, preset.detector_pixel_m, preset.shape
    )


def nominal_positions(preset: SimulationPreset) -> NDArray[np.float64]:
    """Nominal beam positions ``(row, col)`` in metres, in visiting order, centred on 0.

    Raises
    ------
    ValueError
        If the pattern name is unknown or ``"spirangle"`` is asked for a non-square grid.
    """
    p = preset
    if p.pattern == "raster":
        return raster(p.n_rows, p.n_cols, p.step_m)
    if p.pattern == "meander":
        return meander(p.n_rows, p.n_cols, p.step_m)
    if p.pattern == "random":
        return random_grid(p.n_rows, p.n_cols, p.step_m, seed=p.seed)
    if p.pattern == "spirangle":
        if p.n_rows != p.n_cols:
            raise ValueError(f"spirangle needs n_rows == n_cols, got {p.n_rows} x {p.n_cols}")
        return spirangle(p.n_rows, p.step_m)
    if p.pattern == "fermat":
        return fermat_spiral(p.n_rows * p.n_cols, p.step_m)
    raise ValueError(
        f"unknown pattern {p.pattern!r}; use raster, meander, random, spirangle or fermat"
    )


@dataclass(frozen=True, eq=False)
class SimulatedDataset:
    """A simulated scan with its ground truth.

    Attributes
    ----------
    intensities : ndarray of float32, shape (n, N, N)
        Patterns in the detector convention (zero frequency at ``(N//2, N//2)``), in counts.
    positions_px : ndarray of float64, shape (n, 2)
        Measured probe-patch top-left corners ``(row, col)`` in the object array.
    nominal_positions_m : ndarray of float64, shape (n, 2)
        Positions the scan asked for (beam centre, metres).
    positions_m : ndarray of float64, shape (n, 2)
        Positions where the patterns were taken (nominal plus jitter), metres.
    object : ndarray of complex64, shape (H, W)
        True object on the object frame.
    probe : ndarray of complex64, shape (N, N)
        True probe, ``sum |P|**2 = photons_per_pattern``.
    geometry : Geometry
    frame : ObjectFrame
        Fixed from the nominal positions.
    preset : SimulationPreset
        The preset the dataset came from (with ``seed`` as used).
    """

    intensities: NDArray[np.float32]
    positions_px: NDArray[np.float64]
    nominal_positions_m: NDArray[np.float64]
    positions_m: NDArray[np.float64]
    object: NDArray[np.complex64]
    probe: NDArray[np.complex64]
    geometry: Geometry
    frame: ObjectFrame
    preset: SimulationPreset | None = field(default=None)

    @property
    def n_patterns(self) -> int:
        """Number of patterns."""
        return int(self.intensities.shape[0])


def _illuminated_box(
    probe: NDArray[np.complex64],
    positions_px: NDArray[np.float64],
    object_shape: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Pixel box ``(r0, c0, r1, c1)`` the probe's bright part sweeps over the scan."""
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    spans = []
    for axis in (1, 0):  # marginal along rows (sum over cols), then along cols
        marginal = intensity.sum(axis=axis)
        idx = np.flatnonzero(marginal > 0.02 * marginal.max())
        spans.append((int(idx[0]), int(idx[-1]) + 1))
    corners = integer_positions(positions_px)
    r0 = int(corners[:, 0].min()) + spans[0][0]
    r1 = int(corners[:, 0].max()) + spans[0][1]
    c0 = int(corners[:, 1].min()) + spans[1][0]
    c1 = int(corners[:, 1].max()) + spans[1][1]
    h, w = object_shape
    return max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)


def simulate_dataset(
    preset: SimulationPreset,
    *,
    noise: bool = True,
    position_jitter_m: float = 0.0,
    seed: int | None = None,
) -> SimulatedDataset:
    """Forward-simulate a scan of the resolution chart.

    Steps: nominal positions (:func:`nominal_positions`), geometry and object frame from the
    nominal positions, the probe (:func:`focused_probe`), the chart on the object frame with
    its features in the illuminated box, measured positions (nominal plus Gaussian jitter),
    noise-free intensities with sub-pixel probe shifts
    (:func:`~bluesky_ptycho.engine.forward.far_field_intensities`), then Poisson noise.

    Parameters
    ----------
    preset : SimulationPreset
        The experiment.
    noise : bool, optional
        Add Poisson noise (default). With False the intensities are exactly the forward model.
    position_jitter_m : float, optional
        Standard deviation, per axis, of the Gaussian error of the measured positions around
        the nominal ones (default 0: measured = nominal).
    seed : int, optional
        Overrides ``preset.seed`` (object, scan order of ``"random"``, jitter and noise).

    Returns
    -------
    SimulatedDataset

    Raises
    ------
    ValueError
        If a jittered position leaves the object frame (raise ``margin_px``).
    """
    if seed is not None:
        preset = replace(preset, seed=int(seed))
    object_seed, jitter_seed, noise_seed = np.random.SeedSequence(preset.seed).spawn(3)
    geometry = preset_geometry(preset)
    pixel = geometry.pixel_size_m
    nominal = nominal_positions(preset)
    frame = geometry.object_frame(nominal, margin_px=preset.margin_px)

    measured = nominal.copy()
    if position_jitter_m < 0.0 or not math.isfinite(position_jitter_m):
        raise ValueError(f"position_jitter_m must be >= 0, got {position_jitter_m!r}")
    if position_jitter_m > 0.0:
        jitter_rng = np.random.default_rng(jitter_seed)
        measured = measured + jitter_rng.normal(0.0, position_jitter_m, size=measured.shape)
    positions_px = frame.to_pixels(measured)
    outside = ~frame.contains(positions_px)
    if np.any(outside):
        raise ValueError(
            f"{int(outside.sum())} jittered positions leave the object frame of shape "
            f"{frame.object_shape}; raise margin_px (now {preset.margin_px}) or lower the jitter"
        )

    probe = focused_probe(
        preset.shape,
        pixel[0],
        geometry.wavelength_m,
        focus_fwhm_m=preset.focus_fwhm_m,
        defocus_m=preset.defocus_m,
        total_counts=preset.photons_per_pattern,
        edge_taper=preset.pupil_edge_taper,
    )
    obj_seed_int = int(object_seed.generate_state(1)[0])
    box = _illuminated_box(probe, frame.to_pixels(nominal), frame.object_shape)
    obj = resolution_chart(
        frame.object_shape,
        phase_max=preset.phase_max,
        amplitude_min=preset.amplitude_min,
        seed=obj_seed_int,
        box=box,
    )

    n = positions_px.shape[0]
    intensities = np.empty((n, preset.shape, preset.shape), dtype=np.float32)
    noise_rng = np.random.default_rng(noise_seed)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk = far_field_intensities(obj, probe, positions_px[start:stop], subpixel=True)
        intensities[start:stop] = poisson(chunk, seed=noise_rng) if noise else chunk
    return SimulatedDataset(
        intensities=intensities,
        positions_px=positions_px,
        nominal_positions_m=nominal,
        positions_m=measured,
        object=obj,
        probe=probe,
        geometry=geometry,
        frame=frame,
        preset=preset,
    )
