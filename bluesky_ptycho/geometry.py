"""Experiment geometry: detector → object pixel size, and the object frame of a scan.

Two small immutable value objects live here:

:class:`Geometry`
    Photon energy, sample–detector distance, detector pixel size and the shape of the cropped
    (and binned) diffraction frame. From these follows the object (real-space) pixel size
    ``λ z / (N d)``.

:class:`ObjectFrame`
    The mapping between physical scan positions (metres) and probe-patch corners in the object
    array (pixels). It is fixed once, from the *nominal* scan, so that frames and measured
    positions arriving later never resize the object.

Conventions
-----------
Positions are ``(row, col)`` pairs, i.e. ``(y, x)``: column 0 follows the row-axis encoder,
column 1 the column-axis encoder. A physical position is the beam centre on the specimen. The
mapping to pixels is linear with no sign flip; orientation flips belong to the detector
preprocessing.

This module imports only NumPy, the standard library and :mod:`bluesky_ptycho.validation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bluesky_ptycho.validation import (
    check_extent,
    check_finite_scalar,
    check_non_negative_int,
    check_pair,
    check_positions,
    check_positive_int,
    check_positive_scalar,
)

__all__ = [
    "HC_EV_M",
    "Geometry",
    "ObjectFrame",
    "wavelength_m",
]

#: Planck constant times speed of light in eV·m (CODATA 2018, exact): λ[m] = HC_EV_M / E[eV].
HC_EV_M: float = 1.2398419843320026e-6

# Tolerance (in pixels) absorbed when rounding a scan extent up to whole pixels, so that
# floating-point noise in ``extent / pixel`` never adds a spurious extra row or column.
_EXTENT_ROUNDING_TOL_PX = 1e-6


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


_positive_float = check_positive_scalar
_finite_float = check_finite_scalar
_positive_int = check_positive_int
_non_negative_int = check_non_negative_int


def _pair(name: str, value: Any, convert: Any) -> tuple[Any, Any]:
    """Normalise a scalar or a length-2 sequence into a 2-tuple, converting each element."""
    return check_pair(name, value, convert, what="(rows, cols)", scalar_ok=True)


def _strict_pair(name: str, value: Any, convert: Any) -> tuple[Any, Any]:
    """Like :func:`_pair` but a length-2 sequence is required."""
    return check_pair(name, value, convert, what="(rows, cols)")


def _positions_array(name: str, positions: ArrayLike) -> NDArray[np.float64]:
    """Validate positions as a finite float64 array of shape ``(..., 2)``."""
    arr = np.asarray(positions)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        return check_positions(name, arr)  # raises, naming the shape
    return check_positions(name, arr.reshape(-1, 2)).reshape(arr.shape)


def _require(data: Mapping[str, Any], key: str, owner: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise ValueError(f"{owner}.from_dict: missing key {key!r}") from None


def wavelength_m(energy_eV: float) -> float:
    """Photon wavelength in metres for a photon energy in electronvolts.

    Parameters
    ----------
    energy_eV : float
        Photon energy in eV, positive.

    Returns
    -------
    float
        ``h c / E`` in metres (CODATA: ``1.2398419843320026e-6 / energy_eV``).
    """
    return HC_EV_M / _positive_float("energy_eV", energy_eV)


# --------------------------------------------------------------------------------------------
# ObjectFrame
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectFrame:
    """Mapping between physical positions (m) and probe-patch corners in the object (px).

    A physical position ``pos`` (beam centre on the specimen, ``(row, col)`` in metres) maps to
    the top-left corner of the probe patch in the object array::

        corner_px = (pos - origin_m) / pixel_size_m

    so ``origin_m`` is the beam position whose patch starts at object pixel ``(0, 0)``. With the
    engine's convention (beam centre at pixel ``probe_shape // 2`` of the patch), object pixel
    ``k`` sits at the physical coordinate ``origin_m + (k - probe_shape // 2) * pixel_size_m``
    (see :meth:`axes_m`).

    Parameters
    ----------
    pixel_size_m : tuple of float
        Object pixel size ``(row, col)`` in metres.
    origin_m : tuple of float
        Physical position ``(row, col)`` mapping to corner ``(0, 0)``.
    object_shape : tuple of int
        Shape of the object array ``(rows, cols)``.
    probe_shape : tuple of int
        Shape of the probe (= the preprocessed frame) ``(rows, cols)``.
    """

    pixel_size_m: tuple[float, float]
    origin_m: tuple[float, float]
    object_shape: tuple[int, int]
    probe_shape: tuple[int, int]

    def __post_init__(self) -> None:
        pixel = _strict_pair("pixel_size_m", self.pixel_size_m, _positive_float)
        origin = _strict_pair("origin_m", self.origin_m, _finite_float)
        obj_shape = _strict_pair("object_shape", self.object_shape, _positive_int)
        probe_shape = _strict_pair("probe_shape", self.probe_shape, _positive_int)
        if obj_shape[0] < probe_shape[0] or obj_shape[1] < probe_shape[1]:
            raise ValueError(
                f"object_shape {obj_shape} must be at least probe_shape {probe_shape} on each axis"
            )
        object.__setattr__(self, "pixel_size_m", pixel)
        object.__setattr__(self, "origin_m", origin)
        object.__setattr__(self, "object_shape", obj_shape)
        object.__setattr__(self, "probe_shape", probe_shape)

    def to_pixels(self, positions_m: ArrayLike) -> NDArray[np.float64]:
        """Convert physical positions to (fractional) probe-patch corners in object pixels.

        Parameters
        ----------
        positions_m : array_like, shape (n, 2)
            Beam positions ``(row, col)`` in metres (any leading shape ``(..., 2)`` works).

        Returns
        -------
        ndarray of float64, same shape as ``positions_m``
            Top-left corners ``(pos - origin_m) / pixel_size_m``.
        """
        pos = _positions_array("positions_m", positions_m)
        return (pos - np.asarray(self.origin_m)) / np.asarray(self.pixel_size_m)

    def to_metres(self, positions_px: ArrayLike) -> NDArray[np.float64]:
        """Inverse of :meth:`to_pixels`: patch corners in object pixels → positions in metres.

        Parameters
        ----------
        positions_px : array_like, shape (n, 2)
            Probe-patch corners ``(row, col)`` in object pixels, possibly fractional.

        Returns
        -------
        ndarray of float64, same shape as ``positions_px``
            ``origin_m + positions_px * pixel_size_m``.
        """
        px = _positions_array("positions_px", positions_px)
        return np.asarray(self.origin_m) + px * np.asarray(self.pixel_size_m)

    def contains(self, positions_px: ArrayLike) -> NDArray[np.bool_]:
        """Whether the probe patch at each corner lies entirely inside the object.

        Corners are rounded to the nearest integer the way the engine cuts patches
        (``floor(p + 0.5)``); a patch fits if ``0 <= p`` and ``p + probe_shape <= object_shape``
        on both axes.

        Parameters
        ----------
        positions_px : array_like, shape (n, 2)
            Probe-patch corners in object pixels.

        Returns
        -------
        ndarray of bool, shape (n,)
            ``True`` where the patch is fully inside the object.
        """
        px = np.floor(_positions_array("positions_px", positions_px) + 0.5)
        upper = np.asarray(self.object_shape, dtype=np.float64) - np.asarray(self.probe_shape)
        return np.all((px >= 0.0) & (px <= upper), axis=-1)

    def axes_m(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Physical coordinates of the object's pixel rows and columns, in metres.

        Object pixel ``k`` on an axis lies at ``origin + (k - probe // 2) * pixel``: the beam
        centre of a patch with corner ``c`` is object pixel ``c + probe // 2``.

        Returns
        -------
        (ndarray, ndarray)
            Row coordinates (length ``object_shape[0]``) and column coordinates
            (length ``object_shape[1]``).
        """
        axes = []
        for axis in range(2):
            k = np.arange(self.object_shape[axis], dtype=np.float64)
            offset = k - self.probe_shape[axis] // 2
            axes.append(self.origin_m[axis] + offset * self.pixel_size_m[axis])
        return axes[0], axes[1]

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """Plain-JSON representation (lists of numbers), inverse of :meth:`from_dict`."""
        return {
            "pixel_size_m": [float(v) for v in self.pixel_size_m],
            "origin_m": [float(v) for v in self.origin_m],
            "object_shape": [int(v) for v in self.object_shape],
            "probe_shape": [int(v) for v in self.probe_shape],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObjectFrame:
        """Build an :class:`ObjectFrame` from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a key is missing or a value is invalid.
        """
        return cls(
            pixel_size_m=tuple(_require(data, "pixel_size_m", "ObjectFrame")),
            origin_m=tuple(_require(data, "origin_m", "ObjectFrame")),
            object_shape=tuple(_require(data, "object_shape", "ObjectFrame")),
            probe_shape=tuple(_require(data, "probe_shape", "ObjectFrame")),
        )


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Far-field ptychography geometry.

    Parameters
    ----------
    energy_eV : float
        Photon energy in eV.
    detector_distance_m : float
        Sample–detector distance in metres.
    detector_pixel_m : float
        Detector pixel pitch in metres, *after* binning (square pixels).
    shape : int or tuple of int
        Shape ``N`` of the cropped (and binned) frame, an int for a square frame or
        ``(N0, N1)``. Normalised to a tuple on construction; see :attr:`frame_shape`.

    Raises
    ------
    ValueError
        If a number is not positive and finite, or the shape is not positive integers; the
        message names the field.

    Examples
    --------
    >>> g = Geometry(13500.0, 3.2, 75e-6, 256)
    >>> round(g.square_pixel_size_m * 1e9, 2)
    15.31
    """

    energy_eV: float
    detector_distance_m: float
    detector_pixel_m: float
    shape: int | tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "energy_eV", _positive_float("energy_eV", self.energy_eV))
        object.__setattr__(
            self,
            "detector_distance_m",
            _positive_float("detector_distance_m", self.detector_distance_m),
        )
        object.__setattr__(
            self, "detector_pixel_m", _positive_float("detector_pixel_m", self.detector_pixel_m)
        )
        object.__setattr__(self, "shape", _pair("shape", self.shape, _positive_int))

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Cropped frame (and probe) shape ``(rows, cols)``."""
        return self.shape  # type: ignore[return-value]  # normalised in __post_init__

    @property
    def wavelength_m(self) -> float:
        """Photon wavelength ``h c / E`` in metres."""
        return HC_EV_M / self.energy_eV

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        """Object pixel size ``(row, col)`` in metres: ``λ z / (N d)`` per axis."""
        lz = self.wavelength_m * self.detector_distance_m
        n0, n1 = self.frame_shape
        return (lz / (n0 * self.detector_pixel_m), lz / (n1 * self.detector_pixel_m))

    @property
    def square_pixel_size_m(self) -> float:
        """Object pixel size as a scalar, for square frames.

        Raises
        ------
        ValueError
            If the frame is not square (row and column pixel sizes differ).
        """
        n0, n1 = self.frame_shape
        if n0 != n1:
            raise ValueError(
                f"frame shape {self.frame_shape} is not square; use pixel_size_m (row, col)"
            )
        return self.pixel_size_m[0]

    def object_frame(
        self,
        nominal_positions_m: ArrayLike | None = None,
        *,
        extent_m: ArrayLike | None = None,
        margin_px: int = 8,
    ) -> ObjectFrame:
        """Fix the object frame from the nominal scan.

        The object is large enough for every nominal patch plus ``margin_px`` pixels on each
        side (to absorb encoder jitter and measured positions slightly outside the nominal
        extent)::

            object_shape = ceil(extent / pixel) + frame_shape + 2 * margin_px

        and the minimum nominal position maps to corner ``(margin_px, margin_px)``.

        Parameters
        ----------
        nominal_positions_m : array_like, shape (n, 2), optional
            Nominal beam positions ``(row, col)`` in metres.
        extent_m : array_like, ((r0, r1), (c0, c1)), optional
            Alternatively, the scan extent (min/max beam position per axis) in metres. Give
            exactly one of ``nominal_positions_m`` and ``extent_m``.
        margin_px : int, optional
            Extra object pixels on each side, default 8.

        Returns
        -------
        ObjectFrame

        Raises
        ------
        ValueError
            If both or neither of the position arguments are given, or they are invalid.
        """
        if (nominal_positions_m is None) == (extent_m is None):
            raise ValueError("give exactly one of nominal_positions_m and extent_m")
        if extent_m is not None:
            return self.object_frame_from_extent(extent_m, margin_px=margin_px)
        assert nominal_positions_m is not None  # exactly one of the two is given
        pos = _positions_array("nominal_positions_m", nominal_positions_m)
        pos = pos.reshape(-1, 2)
        if pos.shape[0] == 0:
            raise ValueError("nominal_positions_m must contain at least one position")
        lo = pos.min(axis=0)
        hi = pos.max(axis=0)
        return self._frame(lo, hi, margin_px)

    def object_frame_from_extent(self, extent_m: ArrayLike, *, margin_px: int = 8) -> ObjectFrame:
        """Fix the object frame from the scan extent ``((r0, r1), (c0, c1))`` in metres.

        Same as :meth:`object_frame` but from the minimum and maximum beam position on each
        axis (the order within each pair does not matter).

        Parameters
        ----------
        extent_m : array_like, shape (2, 2)
            ``((row_min, row_max), (col_min, col_max))`` in metres.
        margin_px : int, optional
            Extra object pixels on each side, default 8.

        Returns
        -------
        ObjectFrame
        """
        ext = check_extent("extent_m", extent_m)
        return self._frame(ext.min(axis=1), ext.max(axis=1), margin_px)

    def _frame(
        self, lo: NDArray[np.float64], hi: NDArray[np.float64], margin_px: int
    ) -> ObjectFrame:
        margin = _non_negative_int("margin_px", margin_px)
        pixel = np.asarray(self.pixel_size_m)
        extent_px = (hi - lo) / pixel
        scan_px = np.ceil(extent_px - _EXTENT_ROUNDING_TOL_PX).clip(min=0).astype(int)
        probe = self.frame_shape
        obj_shape = (
            int(scan_px[0]) + probe[0] + 2 * margin,
            int(scan_px[1]) + probe[1] + 2 * margin,
        )
        origin = lo - margin * pixel
        return ObjectFrame(
            pixel_size_m=self.pixel_size_m,
            origin_m=(float(origin[0]), float(origin[1])),
            object_shape=obj_shape,
            probe_shape=probe,
        )

    def to_dict(self) -> dict[str, float | list[int]]:
        """Plain-JSON representation, inverse of :meth:`from_dict`."""
        return {
            "energy_eV": self.energy_eV,
            "detector_distance_m": self.detector_distance_m,
            "detector_pixel_m": self.detector_pixel_m,
            "shape": list(self.frame_shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Build a :class:`Geometry` from :meth:`to_dict` output.

        Extra keys are ignored, and ``"crop"`` is accepted in place of ``"shape"``, so the
        start document's ``start["ptycho"]`` dict can be passed directly.

        Raises
        ------
        ValueError
            If a required key is missing or a value is invalid.
        """
        if "shape" in data:
            shape = data["shape"]
        elif "crop" in data:
            shape = data["crop"]
        else:
            raise ValueError("Geometry.from_dict: missing key 'shape' (or 'crop')")
        if isinstance(shape, list):
            shape = tuple(shape)
        return cls(
            energy_eV=_require(data, "energy_eV", "Geometry"),
            detector_distance_m=_require(data, "detector_distance_m", "Geometry"),
            detector_pixel_m=_require(data, "detector_pixel_m", "Geometry"),
            shape=shape,
        )
