"""The ``start["ptycho"]`` contract: everything a reconstruction needs to know about a scan.

Plans write it into the start document (:meth:`ScanSetup.to_start_doc`); the callback reads it
back (:meth:`ScanSetup.from_start_doc`) or takes a user-given :class:`ScanSetup` for plans that
do not write one. Plain JSON, SI units; see ``docs/reference/start-document.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from bluesky_ptycho.geometry import Geometry, ObjectFrame
from bluesky_ptycho.preprocess import PreprocessConfig, is_power_of_two
from bluesky_ptycho.probes import PROBE_INIT_KINDS, ProbeInit, curvature_from_defocus
from bluesky_ptycho.validation import (
    check_extent,
    check_non_negative_int,
    check_pair,
    check_positions,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["START_KEY", "Limits", "ScanSetup"]

START_KEY = "ptycho"
"""The start-document key under which plans put the contract."""

_ORIENTATION_KEYS = ("transpose", "flip_rows", "flip_cols")

#: A nominal scan of two or more positions spanning fewer object pixels than this on both axes
#: puts every frame on one spot: a step or a position scale in the wrong unit.
MIN_SCAN_SPAN_PX = 2.0

#: Readback units a position scale may stand for, largest first: (metres per unit, name).
_UNITS: tuple[tuple[float, str], ...] = (
    (1.0, "metres"),
    (1e-3, "millimetres"),
    (1e-6, "micrometres"),
    (1e-9, "nanometres"),
)


@dataclass(frozen=True)
class Limits:
    """Resource bounds checked before anything large is allocated for a scan.

    The defaults let the study's scans through (crops up to 1024 px, objects of a few thousand
    pixels on a side, tens of thousands of frames) and refuse what a mistake or a hostile start
    document asks for. Raise them for a larger scan: ``ScanSetup.from_start_doc(doc,
    limits=Limits(max_crop=2048))``.

    Attributes
    ----------
    max_crop : int
        Largest ``crop`` (frame side before binning, px). The probe, every staged frame and
        every FFT are ``crop x crop``.
    max_object_pixels : int
        Largest object frame, rows x cols (object pixels), including the probe and the margin.
        The default, 2**25 (5,792 px square, 268 MB as complex64), fits a scan of a few thousand
        pixels on a side.
    max_frames : int
        Most frames one run may expect or hold (``num_points``, nominal positions). For the
        callback: a run that delivers more is refused beyond this count.
    max_document_bytes : int
        Largest serialised document a transport accepts (the same default as
        ``DocumentFeed(max_document_bytes=...)``); for the transport, not checked by
        :class:`ScanSetup`.
    """

    max_crop: int = 1024
    max_object_pixels: int = 2**25
    max_frames: int = 65_536
    max_document_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        for f in fields(self):
            check_positive_int(f"Limits.{f.name}", getattr(self, f.name))


def _unit_name(scale: float) -> str:
    for factor, name in _UNITS:
        if math.isclose(scale, factor, rel_tol=1e-9):
            return name
    return f"units of {scale:g} m"


@dataclass(frozen=True, eq=False)
class ScanSetup:
    """A ptychographic scan as the reconstruction sees it.

    Attributes
    ----------
    energy_eV, detector_distance_m, detector_pixel_m : float
        Photon energy, sample-detector distance and detector pixel pitch.
    crop : int
        N, a power of two: frames are cropped N x N around ``beam_center_px``.
    beam_center_px : (float, float) or None
        Zero frequency ``(row, col)`` on the raw detector frame; None: the frame centre.
    transpose, flip_rows, flip_cols : bool
        Orientation applied after cropping, so that frame rows follow the row-axis encoder.
    detector_key : str
        Data key of the frames in events.
    position_keys : (str, str)
        Data keys of the row-axis and column-axis encoders (readbacks).
    position_scale_m : float
        Readback units to metres (1e-6 for micrometres).
    pattern : str or None
        Scan pattern name, informational.
    nominal_positions_m : ndarray (n, 2) or None
        Nominal beam positions on the specimen, (row, col) metres; fixes the object frame.
        May be left out when a plan of :mod:`bluesky_ptycho.plans` fills it in from the scan
        it runs; :meth:`object_frame` needs it or ``extent_m``.
    extent_m : ((r0, r1), (c0, c1)) or None
        Alternative to nominal positions: the nominal scanned rectangle.
    num_points : int or None
        Expected number of frames (defaults to the number of nominal positions).
    mask : list of [row, col] or None
        Bad pixels on the raw detector frame.
    binning : int
        Binning after cropping (power of two).
    saturation : float or None
        Counts at and above which a pixel is treated as bad.
    probe_init : Any
        Optional initial probe description (None: the engine's default).
    margin_px : int
        Object border around the nominal scan, absorbing encoder jitter.
    """

    energy_eV: float
    detector_distance_m: float
    detector_pixel_m: float
    crop: int
    beam_center_px: tuple[float, float] | None = None
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    detector_key: str = "eiger_image"
    position_keys: tuple[str, str] = ("sy", "sx")
    position_scale_m: float = 1.0
    pattern: str | None = None
    nominal_positions_m: np.ndarray | None = None
    extent_m: tuple[tuple[float, float], tuple[float, float]] | None = None
    num_points: int | None = None
    mask: list[list[int]] | None = None
    binning: int = 1
    saturation: float | None = None
    probe_init: Any = None
    margin_px: int = 8
    extra: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ValueError(f"ScanSetup.limits must be a Limits, got {self.limits!r}")
        for name in ("energy_eV", "detector_distance_m", "detector_pixel_m", "position_scale_m"):
            check_positive_scalar(f"ScanSetup.{name}", getattr(self, name))
        if isinstance(self.crop, bool) or not isinstance(self.crop, (int, np.integer)):
            raise ValueError(f"ScanSetup.crop must be an integer, got {self.crop!r}")
        if self.crop > self.limits.max_crop:
            raise ValueError(
                f"ScanSetup.crop {self.crop} exceeds Limits.max_crop {self.limits.max_crop}: "
                f"every frame, the probe and each FFT would be {self.crop} x {self.crop} px "
                f"(give a larger Limits(max_crop=...) if this is intended)"
            )
        if not is_power_of_two(self.crop):
            raise ValueError(f"ScanSetup.crop must be a power of two, got {self.crop}")
        if not is_power_of_two(self.binning) or self.crop % self.binning:
            raise ValueError(
                f"ScanSetup.binning must be a power of two dividing crop, got {self.binning}"
            )
        for name in _ORIENTATION_KEYS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"ScanSetup.{name} must be a boolean")
        if not isinstance(self.detector_key, str) or not self.detector_key:
            raise ValueError("ScanSetup.detector_key must be a non-empty string")
        keys = tuple(self.position_keys)
        if len(keys) != 2 or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(
                f"ScanSetup.position_keys must be two data keys (row, col), got {keys!r}"
            )
        object.__setattr__(self, "position_keys", keys)
        if self.beam_center_px is not None:
            bc: tuple[float, float] = check_pair("ScanSetup.beam_center_px", self.beam_center_px)
            object.__setattr__(self, "beam_center_px", bc)
        max_frames = self.limits.max_frames
        if self.nominal_positions_m is not None:
            count = (
                len(self.nominal_positions_m) if hasattr(self.nominal_positions_m, "__len__") else 0
            )
            if count > max_frames:  # refused before converting a huge list
                raise ValueError(
                    f"ScanSetup.nominal_positions_m has {count} positions, more than "
                    f"Limits.max_frames {max_frames}"
                )
            pos = check_positions("ScanSetup.nominal_positions_m", self.nominal_positions_m)
            if pos.shape[0] == 0:
                raise ValueError(
                    "ScanSetup.nominal_positions_m must have shape (n, 2) with n >= 1, "
                    f"got shape {pos.shape}"
                )
            object.__setattr__(self, "nominal_positions_m", pos)
        if self.extent_m is not None:
            ext = check_extent("ScanSetup.extent_m", self.extent_m)
            object.__setattr__(self, "extent_m", ((ext[0, 0], ext[0, 1]), (ext[1, 0], ext[1, 1])))
        if self.num_points is not None:
            num = check_positive_int("ScanSetup.num_points", self.num_points)
            if num > max_frames:
                raise ValueError(
                    f"ScanSetup.num_points {num} exceeds Limits.max_frames {max_frames}"
                )
        check_non_negative_int("ScanSetup.margin_px", self.margin_px)
        if self.has_nominal_scan:
            self._check_scan_size()

    def _nominal_span(self) -> tuple[np.ndarray, int | None]:
        """The nominal scan's span ``(rows, cols)`` in metres and its number of positions."""
        if self.nominal_positions_m is not None:
            pos = self.nominal_positions_m
            return pos.max(axis=0) - pos.min(axis=0), int(pos.shape[0])
        assert self.extent_m is not None
        ext = np.asarray(self.extent_m, dtype=np.float64)
        return np.abs(ext[:, 1] - ext[:, 0]), self.expected_points

    def _object_size(self, span_px: np.ndarray) -> tuple[float, float]:
        """Object rows and cols (as floats, never overflowing) for a scan span in pixels."""
        extra = self.frame_size + 2 * int(self.margin_px)
        return (math.ceil(span_px[0]) + extra, math.ceil(span_px[1]) + extra)

    def _check_scan_size(self) -> None:
        """Refuse a nominal scan whose object frame is absurdly large or that sits on one spot.

        Only arithmetic on the span: nothing of the object's size is allocated.
        """
        pixel = np.asarray(self.geometry().pixel_size_m, dtype=np.float64)
        span_m, count = self._nominal_span()
        with np.errstate(over="ignore"):
            span_px = span_m / pixel
        if not np.all(np.isfinite(span_px)):
            span_px = np.where(np.isfinite(span_px), span_px, 1e300)
        rows, cols = self._object_size(span_px)
        scale = float(self.position_scale_m)
        limit = self.limits.max_object_pixels
        span_text = f"{span_m[0]:.3g} x {span_m[1]:.3g} m"
        if rows * cols > limit:
            raise ValueError(
                f"ScanSetup: the nominal scan spans {span_text}, an object frame of "
                f"{rows:,.0f} x {cols:,.0f} px at {pixel[0] * 1e9:.3g} nm per pixel, more than "
                f"Limits.max_object_pixels {limit:,}. Check position_scale_m={scale:g} (motors "
                f"read in {_unit_name(scale)}){self._unit_hint(span_px, smaller=True)} "
                f"If the scan really is this large, give a larger Limits(max_object_pixels=...)"
            )
        if count is not None and count >= 2 and float(span_px.max()) < MIN_SCAN_SPAN_PX:
            raise ValueError(
                f"ScanSetup: the {count} nominal positions span only {span_px[0]:.2g} x "
                f"{span_px[1]:.2g} object pixels ({span_text}), less than "
                f"{MIN_SCAN_SPAN_PX:g} px while one probe is {self.frame_size} px: every frame "
                f"would sit on one spot. Check the unit: position_scale_m={scale:g} (motors read "
                f"in {_unit_name(scale)}){self._unit_hint(span_px, smaller=False)} "
                f"Check also that the plan's step and extent were given in motor units, not metres"
            )

    def _unit_hint(self, span_px: np.ndarray, *, smaller: bool) -> str:
        """``": are they in micrometres (...)?"``, or ``"."`` if no other unit fits."""
        scale = float(self.position_scale_m)
        candidates = [f for f, _ in _UNITS if (f < scale * 0.5 if smaller else f > scale * 2)]
        candidates.sort(key=lambda f: abs(math.log10(f / scale)))
        for factor in candidates:
            px = span_px * (factor / scale)
            rows, cols = self._object_size(px)
            if rows * cols <= self.limits.max_object_pixels and px.max() >= MIN_SCAN_SPAN_PX:
                return (
                    f": are they in {_unit_name(factor)} (position_scale_m={factor:g} gives "
                    f"{rows:,.0f} x {cols:,.0f} px)?"
                )
        return "."

    # ------------------------------------------------------------------ derived
    @property
    def frame_size(self) -> int:
        """Side of the frames the engine sees: crop / binning."""
        return self.crop // self.binning

    @property
    def expected_points(self) -> int | None:
        """Frames the scan should deliver, when known."""
        if self.num_points is not None:
            return int(self.num_points)
        if self.nominal_positions_m is not None:
            return int(self.nominal_positions_m.shape[0])
        return None

    def start_probe(self) -> Any:
        """What ``probe_init`` asks for: None, a :class:`ProbeInit`, or a path of a result file.

        ``probe_init`` may be a kind name (``"auto"``, ``"gaussian"``, ``"mean_pattern"``), the
        path of an earlier scan's result file, or a dict with ``kind`` and the fields of
        :class:`~bluesky_ptycho.probes.ProbeInit`. For ``kind: "optics"`` the optics may
        be given physically instead: ``aperture_diameter_m`` and ``focal_length_m`` (or
        ``outer_zone_width_m`` of a zone plate), optional ``central_stop_diameter_m``, and
        ``defocus_m`` (positive: specimen downstream of the focus); they become pupil radii on
        the engine's frames and a pupil curvature with this setup's geometry.
        """
        value = self.probe_init
        if value is None:
            return None
        if isinstance(value, str):
            if value in PROBE_INIT_KINDS:
                return ProbeInit(kind=value)
            return value  # a result file
        if not isinstance(value, dict):
            raise ValueError(f"probe_init must be a kind name, a path or a dict, got {value!r}")
        fields = dict(value)
        geo = self.geometry()
        lam, z = geo.wavelength_m, float(self.detector_distance_m)
        pixel = float(self.detector_pixel_m) * self.binning
        physical = {
            "aperture_diameter_m",
            "focal_length_m",
            "outer_zone_width_m",
            "central_stop_diameter_m",
        }
        if physical & set(fields):
            diameter = float(fields.pop("aperture_diameter_m"))
            focal = fields.pop("focal_length_m", None)
            zone = fields.pop("outer_zone_width_m", None)
            if focal is None:
                if zone is None:
                    raise ValueError("optics need focal_length_m or outer_zone_width_m")
                focal = diameter * float(zone) / lam
            stop = float(fields.pop("central_stop_diameter_m", 0.0) or 0.0)
            scale = z / (float(focal) * pixel)
            fields.setdefault("kind", "optics")
            fields["pupil_radius_px"] = 0.5 * diameter * scale
            fields["stop_radius_px"] = 0.5 * stop * scale
        defocus = fields.pop("defocus_m", None)
        if defocus is not None and fields.get("curvature") is None:
            fields["curvature"] = curvature_from_defocus(float(defocus), lam, z, pixel)
        return ProbeInit.parse(fields)

    def geometry(self) -> Geometry:
        """The diffraction geometry of the frames the engine sees (after binning)."""
        return Geometry(
            energy_eV=float(self.energy_eV),
            detector_distance_m=float(self.detector_distance_m),
            detector_pixel_m=float(self.detector_pixel_m) * self.binning,
            shape=self.frame_size,
        )

    @property
    def has_nominal_scan(self) -> bool:
        """Whether the nominal scan (positions or extent) is known, so the frame is fixed."""
        return self.nominal_positions_m is not None or self.extent_m is not None

    def object_frame(self) -> ObjectFrame:
        """The object frame fixed from the nominal scan.

        Raises
        ------
        ValueError
            If neither ``nominal_positions_m`` nor ``extent_m`` is set.
        """
        geometry = self.geometry()
        if self.nominal_positions_m is not None:
            return geometry.object_frame(self.nominal_positions_m, margin_px=self.margin_px)
        if self.extent_m is None:
            raise ValueError(
                "ScanSetup needs the nominal scan to fix the object frame: nominal_positions_m "
                "or extent_m (the plans of bluesky_ptycho.plans fill it in; give it yourself "
                "for other plans)"
            )
        return geometry.object_frame_from_extent(self.extent_m, margin_px=self.margin_px)

    def preprocess_config(self, raw_shape: Sequence[int] | None = None) -> PreprocessConfig:
        """The frame preprocessing this setup asks for."""
        return PreprocessConfig.from_ptycho_start(self.to_start_doc(), raw_shape=raw_shape)

    def positions_m(self, readbacks: Any) -> np.ndarray:
        """Encoder readbacks ``(n, 2)`` (row, col), in readback units, to metres."""
        return np.asarray(readbacks, dtype=np.float64).reshape(-1, 2) * self.position_scale_m

    # ------------------------------------------------------------------ documents
    def to_start_doc(self) -> dict[str, Any]:
        """The plain-JSON ``start["ptycho"]`` dict."""
        doc: dict[str, Any] = {
            "energy_eV": float(self.energy_eV),
            "detector_distance_m": float(self.detector_distance_m),
            "detector_pixel_m": float(self.detector_pixel_m),
            "crop": int(self.crop),
            "beam_center_px": None if self.beam_center_px is None else list(self.beam_center_px),
            "orientation": {k: bool(getattr(self, k)) for k in _ORIENTATION_KEYS},
            "detector_key": self.detector_key,
            "position_keys": list(self.position_keys),
            "position_scale_m": float(self.position_scale_m),
            "scan": {"pattern": self.pattern, "num_points": self.expected_points},
            "mask": None if self.mask is None else [list(map(int, p)) for p in self.mask],
            "probe_init": self.probe_init,
            "binning": int(self.binning),
            "saturation": None if self.saturation is None else float(self.saturation),
            "margin_px": int(self.margin_px),
        }
        if self.nominal_positions_m is not None:
            doc["scan"]["nominal_positions_m"] = self.nominal_positions_m.tolist()
        if self.extent_m is not None:
            doc["scan"]["extent_m"] = [list(map(float, r)) for r in self.extent_m]
        doc.update(self.extra)
        return doc

    @classmethod
    def from_start_doc(
        cls, ptycho: Mapping[str, Any], *, limits: Limits | None = None, **overrides: Any
    ) -> ScanSetup:
        """Read the ``start["ptycho"]`` dict; ``ValueError`` names a missing or bad key.

        Parameters
        ----------
        ptycho : mapping
            ``start["ptycho"]``.
        limits : Limits, optional
            Resource bounds (default ``Limits()``): a crop, a number of frames or an object
            frame beyond them is refused before anything is allocated. A start document
            cannot set its own limits (a ``limits`` key in it is kept in ``extra``, unused).
        **overrides
            Field values that replace the document's.

        Raises
        ------
        ValueError
            A missing or malformed key, or a scan beyond ``limits`` (the message names the
            field, and for an absurd scan size ``position_scale_m`` and the likely unit).
        """
        if not isinstance(ptycho, Mapping):
            raise ValueError(f'start["{START_KEY}"] must be a dict, got {type(ptycho).__name__}')
        missing = [
            k
            for k in ("energy_eV", "detector_distance_m", "detector_pixel_m", "crop")
            if k not in ptycho and k not in overrides
        ]
        if missing:
            raise ValueError(f'start["{START_KEY}"] lacks required key(s) {missing}')
        scan = ptycho.get("scan") or {}
        if not isinstance(scan, Mapping):
            raise ValueError(f'start["{START_KEY}"]["scan"] must be a dict')
        orientation = ptycho.get("orientation") or {}
        if not isinstance(orientation, Mapping):
            raise ValueError(f'start["{START_KEY}"]["orientation"] must be a dict')
        unknown = set(orientation) - set(_ORIENTATION_KEYS)
        if unknown:
            raise ValueError(f"unknown orientation key(s) {sorted(unknown)}")
        known = {f.name for f in fields(cls)} - {"limits"}
        kwargs: dict[str, Any] = {
            "energy_eV": ptycho.get("energy_eV"),
            "detector_distance_m": ptycho.get("detector_distance_m"),
            "detector_pixel_m": ptycho.get("detector_pixel_m"),
            "crop": ptycho.get("crop"),
            "beam_center_px": ptycho.get("beam_center_px"),
            "detector_key": ptycho.get("detector_key", "eiger_image"),
            "position_keys": tuple(ptycho.get("position_keys", ("sy", "sx"))),
            "position_scale_m": ptycho.get("position_scale_m", 1.0),
            "pattern": scan.get("pattern"),
            "nominal_positions_m": scan.get("nominal_positions_m"),
            "extent_m": scan.get("extent_m"),
            "num_points": scan.get("num_points"),
            "mask": ptycho.get("mask"),
            "binning": ptycho.get("binning", 1) or 1,
            "saturation": ptycho.get("saturation"),
            "probe_init": ptycho.get("probe_init"),
            "margin_px": ptycho.get("margin_px", 8),
        }
        for k in _ORIENTATION_KEYS:
            kwargs[k] = orientation.get(k, False)
        kwargs.update(overrides)
        kwargs["limits"] = Limits() if limits is None else limits
        extra = {
            k: v for k, v in ptycho.items() if k not in known and k not in ("orientation", "scan")
        }
        kwargs["extra"] = extra
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong types deep inside, reported as a contract error
            raise ValueError(f'start["{START_KEY}"] is malformed: {exc}') from None

    def __repr__(self) -> str:
        """The fields, with the nominal positions and the mask summarised rather than listed."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "nominal_positions_m" and value is not None:
                text = f"<{value.shape[0]} positions>"
            elif f.name == "mask" and value is not None:
                text = f"<{len(value)} pixels>"
            elif (f.name == "extra" and not value) or (f.name == "limits" and value == Limits()):
                continue
            else:
                text = repr(value)
            parts.append(f"{f.name}={text}")
        return f"ScanSetup({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScanSetup):
            return NotImplemented
        return self.to_start_doc() == other.to_start_doc()

    __hash__ = None  # type: ignore[assignment]
