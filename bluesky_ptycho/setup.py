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

__all__ = ["START_KEY", "ScanSetup"]

START_KEY = "ptycho"
"""The start-document key under which plans put the contract."""

_ORIENTATION_KEYS = ("transpose", "flip_rows", "flip_cols")


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

    def __post_init__(self) -> None:
        for name in ("energy_eV", "detector_distance_m", "detector_pixel_m", "position_scale_m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ScanSetup.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ScanSetup.{name} must be positive and finite, got {value!r}")
        if isinstance(self.crop, bool) or not isinstance(self.crop, (int, np.integer)):
            raise ValueError(f"ScanSetup.crop must be an integer, got {self.crop!r}")
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
            bc = tuple(float(v) for v in self.beam_center_px)
            if len(bc) != 2 or not all(math.isfinite(v) for v in bc):
                raise ValueError(f"ScanSetup.beam_center_px must be (row, col), got {bc!r}")
            object.__setattr__(self, "beam_center_px", bc)
        if self.nominal_positions_m is not None:
            pos = np.asarray(self.nominal_positions_m, dtype=np.float64)
            if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
                raise ValueError(
                    f"ScanSetup.nominal_positions_m must have shape (n, 2), got {pos.shape}"
                )
            if not np.all(np.isfinite(pos)):
                raise ValueError("ScanSetup.nominal_positions_m contains NaN or inf")
            object.__setattr__(self, "nominal_positions_m", pos)
        if self.extent_m is not None:
            ext = np.asarray(self.extent_m, dtype=np.float64)
            if ext.shape != (2, 2) or not np.all(np.isfinite(ext)):
                raise ValueError(
                    f"ScanSetup.extent_m must be ((r0, r1), (c0, c1)), got {self.extent_m!r}"
                )
            object.__setattr__(self, "extent_m", ((ext[0, 0], ext[0, 1]), (ext[1, 0], ext[1, 1])))
        if self.num_points is not None and int(self.num_points) <= 0:
            raise ValueError(f"ScanSetup.num_points must be positive, got {self.num_points}")
        if self.margin_px < 0:
            raise ValueError(f"ScanSetup.margin_px must be >= 0, got {self.margin_px}")

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
    def from_start_doc(cls, ptycho: Mapping[str, Any], **overrides: Any) -> ScanSetup:
        """Read the ``start["ptycho"]`` dict; ``ValueError`` names a missing or bad key."""
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
        known = {f.name for f in fields(cls)}
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
            elif f.name == "extra" and not value:
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
