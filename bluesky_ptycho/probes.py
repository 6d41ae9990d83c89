"""Starting probes from what is known before (or at the very start of) a scan.

Every starting probe is returned in the engine's convention (centred on ``(N//2, N//2)``,
``sum(|P|**2)`` equal to the mean counts of a pattern under the unitary FFT):

- :func:`gaussian_start`: the study's Gaussian with flat phase;
- :func:`pupil_probe`: a model of focusing optics, a circular or zone-plate pupil (optionally
  with a central stop) in the detector plane, propagated by a defocus;
- :func:`mean_pattern_probe`: the pupil read from the bright-field disc of the mean
  diffraction pattern, with a defocus given or estimated from the data
  (:func:`estimate_defocus`);
- :func:`make_start_probe`: one of the above (or an array) from a :class:`ProbeInit`.

Defocus is carried as the *pupil curvature* ``c`` (radians per detector pixel squared): the
probe is ``ifft2(A(k) exp(i c |k|**2))`` with ``k`` the detector pixel offset from the beam
centre. A specimen a distance ``dz`` downstream of the focus (diverging beam) has
``c = -pi dz p**2 / (lambda z**2)`` for detector pixels ``p`` at distance ``z``
(:func:`curvature_from_defocus`). Under defocus the bright-field disc of each pattern holds a
shadow image of the specimen; moving the beam by ``d`` object pixels moves that image by
``pi d / (c N)`` detector pixels, which :func:`estimate_defocus` measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates, uniform_filter

__all__ = [
    "PROBE_INIT_KINDS",
    "DefocusEstimate",
    "ProbeInit",
    "bright_field",
    "curvature_from_defocus",
    "estimate_defocus",
    "gaussian_start",
    "make_start_probe",
    "mean_pattern_probe",
    "pupil_probe",
]

PROBE_INIT_KINDS = ("auto", "gaussian", "optics", "mean_pattern", "array")


@dataclass(frozen=True)
class ProbeInit:
    """How to start the probe.

    Attributes
    ----------
    kind : str
        ``"auto"`` (default): the bright-field pupil of the mean pattern with the defocus
        estimated from the shadow images, falling back to the Gaussian when the data show no
        usable bright field or shadow shift (see :func:`make_start_probe`).
        ``"gaussian"``: the study's Gaussian with flat phase, ``fwhm_px`` wide.
        ``"optics"``: :func:`pupil_probe` with ``pupil_radius_px``, ``stop_radius_px`` and
        ``curvature`` (or ``defocus_m`` with the geometry given to :func:`make_start_probe`).
        ``"mean_pattern"``: :func:`mean_pattern_probe`; ``curvature``/``defocus_m`` when given,
        else estimated.
        ``"array"``: ``array`` as given (e.g. from an earlier scan's result file).
    fwhm_px : float or None
        Gaussian intensity FWHM in pixels (default: an eighth of the frame).
    pupil_radius_px, stop_radius_px : float or None
        Optics model: pupil and central-stop radius in detector pixels of the cropped frame.
    curvature : float or None
        Pupil curvature in radians per pixel squared (see the module docstring).
    defocus_m : float or None
        Distance from the focus to the specimen (positive: downstream, diverging beam); needs
        the wavelength, detector distance and pixel to become a curvature.
    array : ndarray or None
        The probe of kind ``"array"``.
    """

    kind: str = "auto"
    fwhm_px: float | None = None
    pupil_radius_px: float | None = None
    stop_radius_px: float | None = None
    curvature: float | None = None
    defocus_m: float | None = None
    array: Any = None

    def __post_init__(self) -> None:
        if self.kind not in PROBE_INIT_KINDS:
            raise ValueError(
                f"probe_init kind must be one of {PROBE_INIT_KINDS}, got {self.kind!r}"
            )
        for name in ("fwhm_px", "pupil_radius_px"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"probe_init {name} must be positive, got {v!r}")
        if self.stop_radius_px is not None and not (
            math.isfinite(self.stop_radius_px) and self.stop_radius_px >= 0
        ):
            raise ValueError(f"probe_init stop_radius_px must be >= 0, got {self.stop_radius_px!r}")
        for name in ("curvature", "defocus_m"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"probe_init {name} must be finite, got {v!r}")
        if self.kind == "optics" and self.pupil_radius_px is None:
            raise ValueError("probe_init kind 'optics' needs pupil_radius_px")
        if self.kind == "array" and self.array is None:
            raise ValueError("probe_init kind 'array' needs the array")

    @classmethod
    def parse(cls, value: Any) -> ProbeInit:
        """A :class:`ProbeInit` from ``None``, a kind name, a dict of the fields, or an array."""
        if value is None:
            return cls()
        if isinstance(value, ProbeInit):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, dict):
            known = {f for f in cls.__dataclass_fields__}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(
                    f"probe_init has unknown field(s) {unknown}; known: {sorted(known)}"
                )
            fields = dict(value)
            for k, v in list(fields.items()):
                if k not in ("kind", "array") and v is not None:
                    fields[k] = float(v)
            return cls(**fields)
        arr = np.asarray(value)
        if arr.ndim == 2:
            return cls(kind="array", array=arr)
        raise ValueError(f"cannot make a probe_init from {type(value).__name__}")


@dataclass(frozen=True)
class DefocusEstimate:
    """Result of :func:`estimate_defocus`.

    Attributes
    ----------
    curvature : float
        Pupil curvature (rad/px^2); NaN when no estimate could be made.
    shift_per_px : float
        Shadow-image shift (detector px) per object pixel of beam movement.
    score : float
        Mean normalised correlation of neighbouring shadow images at the best shift (about 0.5
        to 0.8 on real data with a clear shadow image; near 0 without one).
    pairs : int
        Neighbour pairs used.
    at_edge : bool
        The best shift lies at the edge of the searched range (no reliable estimate).
    spread : float
        How well the pairs' directions span the plane: the smaller eigenvalue of the mean
        outer product of their unit displacement vectors (0: all along one line, 0.5:
        evenly spread). Pairs along one line (the first line of a raster, the outer ring of
        a spiral) cannot tell a shadow shift along stripes of the specimen from none.
    """

    curvature: float
    shift_per_px: float
    score: float
    pairs: int
    at_edge: bool
    spread: float = 0.5

    @property
    def reliable(self) -> bool:
        """Enough pairs, a clear peak, not at the edge of the search range."""
        return (
            self.pairs >= 8
            and self.spread >= 0.2
            and self.score >= 0.3
            and not self.at_edge
            and math.isfinite(self.curvature)
        )


def _counts(frames: np.ndarray) -> float:
    total = float(np.mean(np.sum(np.clip(frames, 0, None), axis=(-2, -1), dtype=np.float64)))
    return max(total, 1.0)


def _scaled(probe: np.ndarray, counts: float) -> np.ndarray:
    power = float(np.sum(np.abs(probe) ** 2))
    if not power > 0:
        raise ValueError("the starting probe is empty")
    return (probe * math.sqrt(counts / power)).astype(np.complex64)


def gaussian_start(shape: tuple[int, int], fwhm_px: float, counts: float) -> np.ndarray:
    """The study's starting probe: a Gaussian with flat phase, ``sum(|P|**2) == counts``."""
    rows = np.arange(shape[0]) - shape[0] // 2
    cols = np.arange(shape[1]) - shape[1] // 2
    r2 = rows[:, None] ** 2 + cols[None, :] ** 2
    amp = np.exp(-2.0 * math.log(2.0) * r2 / float(fwhm_px) ** 2)  # intensity FWHM = fwhm_px
    return _scaled(amp.astype(np.complex128), counts)


def _k2(shape: tuple[int, int]) -> np.ndarray:
    rows = np.arange(shape[0]) - shape[0] // 2
    cols = np.arange(shape[1]) - shape[1] // 2
    return (rows[:, None] ** 2 + cols[None, :] ** 2).astype(np.float64)


def _from_pupil(pupil: np.ndarray, curvature: float, counts: float) -> np.ndarray:
    """Probe ``ifft2(pupil * exp(i c k^2))`` centred on ``(N//2, N//2)``; pupil centred too."""
    field = pupil * np.exp(1j * float(curvature) * _k2(pupil.shape))
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(field), norm="ortho"))
    return _scaled(probe, counts)


def curvature_from_defocus(
    defocus_m: float, wavelength_m: float, detector_distance_m: float, detector_pixel_m: float
) -> float:
    """Pupil curvature (rad/px^2) of a specimen ``defocus_m`` downstream of the focus."""
    if not (wavelength_m > 0 and detector_distance_m > 0 and detector_pixel_m > 0):
        raise ValueError("wavelength, detector distance and pixel must be positive")
    return -math.pi * defocus_m * detector_pixel_m**2 / (wavelength_m * detector_distance_m**2)


def pupil_probe(
    shape: tuple[int, int],
    pupil_radius_px: float,
    *,
    stop_radius_px: float = 0.0,
    curvature: float = 0.0,
    counts: float = 1.0,
    edge_px: float = 1.0,
) -> np.ndarray:
    """A model of focusing optics: a circular (zone-plate) pupil, propagated by a defocus.

    Parameters
    ----------
    shape : (int, int)
        Frame shape.
    pupil_radius_px : float
        Radius of the bright-field disc on the cropped detector frame, in pixels
        (``NA * z / p`` for numerical aperture ``NA``, detector distance ``z``, pixel ``p``).
    stop_radius_px : float
        Radius of the central stop's shadow (0: none).
    curvature : float
        Pupil curvature in rad/px^2 (0: the specimen in focus).
    counts : float
        ``sum(|P|**2)`` of the result.
    edge_px : float
        Width of the soft pupil edge in pixels.

    Returns
    -------
    ndarray of complex64
    """
    if not (pupil_radius_px > 0 and 0 <= stop_radius_px < pupil_radius_px):
        raise ValueError(
            f"need 0 <= stop_radius_px < pupil_radius_px, got {stop_radius_px}, {pupil_radius_px}"
        )
    r = np.sqrt(_k2(shape))
    w = max(float(edge_px), 1e-3)
    outer = np.clip((pupil_radius_px - r) / w + 0.5, 0.0, 1.0)
    inner = np.clip((r - stop_radius_px) / w + 0.5, 0.0, 1.0) if stop_radius_px > 0 else 1.0
    return _from_pupil(outer * inner, curvature, counts)


def bright_field(frames: np.ndarray, threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The bright-field disc of the mean pattern: ``(mean pattern, disc mask)``.

    The disc is where the mean pattern, smoothed over 5 x 5 pixels, exceeds ``threshold`` times
    its maximum; a central stop's shadow stays out of it.
    """
    mean = np.mean(np.clip(np.asarray(frames, dtype=np.float64), 0, None), axis=0)
    smooth = uniform_filter(mean, 5)
    peak = float(smooth.max())
    disc = smooth > threshold * peak if peak > 0 else np.zeros(mean.shape, bool)
    return mean, disc


def mean_pattern_probe(
    frames: np.ndarray,
    positions_px: np.ndarray | None = None,
    *,
    curvature: float | None = None,
    threshold: float = 0.1,
) -> tuple[np.ndarray, DefocusEstimate | None]:
    """A probe whose pupil is the bright-field disc of the mean diffraction pattern.

    Parameters
    ----------
    frames : ndarray (n, N, N)
        Counts, zero frequency at ``(N//2, N//2)``.
    positions_px : ndarray (n, 2), optional
        Needed when ``curvature`` is None: the defocus is then estimated.
    curvature : float, optional
        Pupil curvature (rad/px^2); None estimates it (0 when the estimate is unreliable).
    threshold : float
        See :func:`bright_field`.

    Returns
    -------
    probe : ndarray of complex64
    estimate : DefocusEstimate or None
        The estimate made (None when ``curvature`` was given).
    """
    mean, disc = bright_field(frames, threshold)
    if not disc.any():
        raise ValueError("the mean pattern has no bright field (all frames empty?)")
    pupil = np.sqrt(mean) * disc
    est = None
    if curvature is None:
        if positions_px is None:
            raise ValueError("estimating the defocus needs positions_px")
        est = estimate_defocus(frames, positions_px, disc=disc, mean=mean)
        curvature = est.curvature if est.reliable else 0.0
    return _from_pupil(pupil, curvature, _counts(frames)), est


def estimate_defocus(
    frames: np.ndarray,
    positions_px: np.ndarray,
    *,
    disc: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    max_pairs: int = 200,
    seed: int = 0,
) -> DefocusEstimate:
    """Estimate the pupil curvature from how shadow images move with the beam.

    For close pairs of positions the bright-field parts of the two patterns (flat-fielded by
    the mean pattern) are cross-correlated; the shift ``s`` (detector px per object px) that
    best explains all pairs at once, ``shift = s * (r_j - r_i)``, gives ``c = pi / (N s)``.

    Returns
    -------
    DefocusEstimate
    """
    f = np.asarray(frames, dtype=np.float64)
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    n = f.shape[-1]
    if mean is None or disc is None:
        mean, disc = bright_field(f)
    nan = DefocusEstimate(math.nan, math.nan, 0.0, 0, True, 0.0)
    area = float(disc.sum())
    if area < 16 or len(pos) < 2:
        return nan
    rad = math.sqrt(area / math.pi)
    pairs = _neighbour_pairs(pos, rad / 2.0)
    if not pairs:
        return nan
    rng = np.random.default_rng(seed)
    if len(pairs) > max_pairs:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), max_pairs, replace=False))]
    w = disc.astype(np.float64)
    flat = np.where(disc, mean, 1.0)
    flat = np.where(flat > 0, flat, 1.0)
    wf = np.fft.fft2(w)
    overlap = np.real(np.fft.ifft2(wf * np.conj(wf)))
    overlap = np.maximum(overlap, 0.25 * area)
    spectra: dict[int, tuple[np.ndarray, float]] = {}

    def spectrum(j: int) -> tuple[np.ndarray, float]:
        if j not in spectra:
            a = (f[j] / flat - 1.0) * w
            a -= w * (a.sum() / area)
            s = np.fft.fft2(a)
            spectra[j] = (s, float(np.sqrt(np.sum(a * a))))
        return spectra[j]

    ccs, shifts = [], []
    for i, j in pairs:
        si, ni = spectrum(i)
        sj, nj = spectrum(j)
        if ni == 0 or nj == 0:
            continue
        cc = np.real(np.fft.ifft2(sj * np.conj(si))) * (area / overlap) / (ni * nj)
        ccs.append(np.fft.fftshift(cc))
        shifts.append(pos[j] - pos[i])
    if not ccs:
        return nan
    d = np.asarray(shifts)
    lengths = np.hypot(d[:, 0], d[:, 1])
    unit = d / lengths[:, None]
    spread = float(np.linalg.eigvalsh(unit.T @ unit / len(unit))[0])
    dmax = float(np.max(lengths))
    smax = rad / dmax
    candidates = np.linspace(-smax, smax, 801)
    score = np.zeros_like(candidates)
    for cc, dd in zip(ccs, d, strict=True):
        coords = np.array([n // 2 + candidates * dd[0], n // 2 + candidates * dd[1]])
        score += map_coordinates(cc, coords, order=1, mode="wrap")
    score /= len(ccs)
    # a zero shift means infinite defocus: not a usable estimate, and detector artefacts
    # that do not move with the beam correlate there; search away from it
    away = np.abs(candidates) > 2.0 / dmax
    k = int(np.flatnonzero(away)[np.argmax(score[away])])
    s = float(candidates[k])
    at_edge = k in (0, candidates.size - 1)
    return DefocusEstimate(
        curvature=math.pi / (n * s),
        shift_per_px=s,
        score=float(score[k]),
        pairs=len(ccs),
        at_edge=at_edge,
        spread=spread,
    )


def _neighbour_pairs(pos: np.ndarray, max_dist: float) -> list[tuple[int, int]]:
    from scipy.spatial import cKDTree

    tree = cKDTree(pos)
    k = min(5, len(pos))
    dist, nb = tree.query(pos, k=k)
    pairs = set()
    for i in range(len(pos)):
        for dd, j in zip(dist[i, 1:], nb[i, 1:], strict=True):
            if 0 < dd <= max_dist:
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def make_start_probe(
    init: ProbeInit,
    frames: np.ndarray,
    positions_px: np.ndarray,
    *,
    fwhm_fraction: float = 0.125,
    wavelength_m: float | None = None,
    detector_distance_m: float | None = None,
    detector_pixel_m: float | None = None,
) -> tuple[np.ndarray, str]:
    """The starting probe ``init`` asks for, scaled to the mean counts of ``frames``.

    Returns
    -------
    probe : ndarray of complex64
    description : str
        What was made, e.g. ``"mean_pattern, curvature -0.033 (estimated, score 0.71)"``.
    """
    f = np.asarray(frames, dtype=np.float64)
    shape = (int(f.shape[-2]), int(f.shape[-1]))
    counts = _counts(f)
    curvature = init.curvature
    if curvature is None and init.defocus_m is not None:
        if wavelength_m is None or detector_distance_m is None or detector_pixel_m is None:
            raise ValueError("probe_init defocus_m needs the energy and detector geometry")
        curvature = curvature_from_defocus(
            init.defocus_m, wavelength_m, detector_distance_m, detector_pixel_m
        )
    if init.kind == "array":
        p = np.asarray(init.array)
        if p.shape != shape:
            raise ValueError(f"probe_init array has shape {p.shape}, frames are {shape}")
        return _scaled(p.astype(np.complex128), counts), "array (scaled to the counts)"
    if init.kind == "gaussian":
        fwhm = init.fwhm_px or fwhm_fraction * shape[0]
        return gaussian_start(shape, fwhm, counts), f"gaussian, FWHM {fwhm:.1f} px"
    if init.kind == "optics":
        assert init.pupil_radius_px is not None
        c = curvature or 0.0
        probe = pupil_probe(
            shape,
            init.pupil_radius_px,
            stop_radius_px=init.stop_radius_px or 0.0,
            curvature=c,
            counts=counts,
        )
        return probe, f"optics, pupil {init.pupil_radius_px:.1f} px, curvature {c:.4g}"
    # mean_pattern / auto
    _, disc = bright_field(f)
    if not disc.any():
        fwhm = init.fwhm_px or fwhm_fraction * shape[0]
        return gaussian_start(shape, fwhm, counts), "gaussian (no bright field in the data)"
    probe, est = mean_pattern_probe(f, positions_px, curvature=curvature)
    if est is None:
        return probe, f"mean_pattern, curvature {curvature:.4g} (given)"
    if est.reliable:
        return probe, (
            f"mean_pattern, curvature {est.curvature:.4g} (estimated from {est.pairs} pairs, "
            f"score {est.score:.2f})"
        )
    if init.kind == "auto":
        fwhm = init.fwhm_px or fwhm_fraction * shape[0]
        return gaussian_start(shape, fwhm, counts), (
            f"gaussian, FWHM {fwhm:.1f} px (no reliable shadow-image defocus: score "
            f"{est.score:.2f}, {est.pairs} pairs, spread {est.spread:.2f})"
        )
    return probe, f"mean_pattern, in focus (no reliable defocus estimate, score {est.score:.2f})"
