"""Detector frames → engine frames: crop around the beam centre, orient, mask, bin.

Pure NumPy functions, vectorised over stacks of frames; the same :class:`PreprocessConfig` is
applied live (by the callback) and offline (replay, HDF5), so both see identical frames.

Processing order (docs/explanation/architecture.md, "Frame processing order"):

1. crop an ``N x N`` window so that the beam centre (zero spatial frequency on the raw frame,
   rounded to the nearest pixel, halves up) lands on pixel ``(N//2, N//2)``; pixels of the
   window that fall outside the raw frame are filled with zero and **masked as bad**;
2. transpose, then flip rows, then flip columns. Flips act on spatial frequency, i.e. they are
   mirror images *about the zero-frequency pixel*, so the zero frequency stays at
   ``(N//2, N//2)``. For even ``N`` a plain array flip would move it to ``N//2 - 1``; instead
   the window is taken from the mirrored raw frame, so that the first row (column) of a flipped
   frame holds the detector's ``+N/2`` frequency and every other row (column) ``i`` holds the
   unflipped row ``N - i``;
3. bin ``b x b`` blocks by summing counts. The bins are centred on the zero frequency (to half a
   detector pixel, the best an even ``b`` allows): binned pixel ``(M//2, M//2)``, ``M = N/b``,
   sums the detector pixels at offsets ``-b//2 .. b - b//2 - 1`` from the beam centre along each
   axis. The window cut in step 1 is shifted by ``b//2`` accordingly (it is exactly ``N x N``
   for ``b = 1``).

Masked pixels (bad pixels of the configured detector mask, padding, saturated, non-finite) have
their intensity set to 0 *and* are flagged in the returned mask, which the engine leaves out of
the modulus constraint. A binned pixel is masked if any of its constituents is masked. Negative
counts (e.g. after dark subtraction) are clipped to 0 and not masked.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_COUNT",
    "Orientation",
    "PreprocessConfig",
    "PreprocessedFrames",
    "apply_orientation",
    "bin_frames",
    "crop_centered",
    "detector_flag",
    "flagged_pixels",
    "is_power_of_two",
    "orientation_from_dict",
    "oriented_beam_center",
    "preprocess",
    "round_half_up",
    "to_amplitude",
]

_ORIENTATION_KEYS = ("transpose", "flip_rows", "flip_cols")
_FLAG_KEYS = ("mask_flags", "flag_values", "max_count")

DEFAULT_MAX_COUNT = float(2**32 - 1)
"""Default :attr:`PreprocessConfig.max_count`: the largest count of a 32-bit counter."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def is_power_of_two(n: Any) -> bool:
    """Whether ``n`` is a positive integral power of two (1, 2, 4, ...).

    Parameters
    ----------
    n : int
        Value to test. Booleans and non-integers (including ``4.0``) are not powers of two.

    Returns
    -------
    bool
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        return False
    n = int(n)
    return n > 0 and (n & (n - 1)) == 0


def round_half_up(x: float) -> int:
    """Round a pixel coordinate to the nearest integer, halves up (``floor(x + 0.5)``).

    This is the rounding used for the beam centre (and by the engine for scan positions).
    """
    return math.floor(float(x) + 0.5)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be a boolean (true/false), got {value!r}")


# --------------------------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Orientation:
    """Detector orientation, applied in the order transpose, flip rows, flip columns.

    Attributes
    ----------
    transpose : bool
        Swap rows and columns.
    flip_rows : bool
        Reverse the order of the rows (``np.flipud``).
    flip_cols : bool
        Reverse the order of the columns (``np.fliplr``).
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def __post_init__(self) -> None:
        for key in _ORIENTATION_KEYS:
            object.__setattr__(self, key, _as_bool(getattr(self, key), key))

    def to_dict(self) -> dict[str, bool]:
        """The start-document form ``{"transpose": ..., "flip_rows": ..., "flip_cols": ...}``."""
        return {key: getattr(self, key) for key in _ORIENTATION_KEYS}


def orientation_from_dict(d: Mapping[str, Any] | None) -> Orientation:
    """Parse the start document's ``{"transpose": false, "flip_rows": false, "flip_cols": false}``.

    Parameters
    ----------
    d : mapping or None
        Missing keys default to ``False``; ``None`` means no reorientation.

    Returns
    -------
    Orientation

    Raises
    ------
    ValueError
        On an unknown key, or a value that is not a boolean (strings such as ``"false"`` are
        rejected rather than read as true).
    """
    if d is None:
        return Orientation()
    if not isinstance(d, Mapping):
        raise ValueError(f"orientation must be a mapping or null, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_ORIENTATION_KEYS))
    if unknown:
        raise ValueError(
            f"orientation has unknown keys {unknown}; expected some of {list(_ORIENTATION_KEYS)}"
        )
    values = {key: _as_bool(d.get(key, False), f"orientation.{key}") for key in _ORIENTATION_KEYS}
    return Orientation(**values)


def apply_orientation(
    frames: np.ndarray, *, transpose: bool = False, flip_rows: bool = False, flip_cols: bool = False
) -> np.ndarray:
    """Transpose, then flip rows, then flip columns of the last two axes.

    Exactly ``np.fliplr(np.flipud(np.transpose(frame)))`` (with the steps that are off left
    out) for each frame of a stack ``(..., H, W)``. These are plain array flips: use them on raw
    frames and masks, before cropping (as :func:`preprocess` does); flipping an already centred
    even-sized frame would move its zero frequency from ``N//2`` to ``N//2 - 1``.

    Parameters
    ----------
    frames : ndarray, shape (..., H, W)
        Frames or masks.
    transpose, flip_rows, flip_cols : bool
        The operations to apply.

    Returns
    -------
    ndarray, shape (..., H, W) or (..., W, H) if transposed
        A view of ``frames`` (no copy).
    """
    a = np.asarray(frames)
    if a.ndim < 2:
        raise ValueError(f"frames must have at least 2 dimensions, got shape {a.shape}")
    if transpose:
        a = np.swapaxes(a, -1, -2)
    if flip_rows:
        a = a[..., ::-1, :]
    if flip_cols:
        a = a[..., :, ::-1]
    return a


def oriented_beam_center(
    beam_center_px: tuple[int, int],
    raw_shape: tuple[int, int],
    *,
    transpose: bool = False,
    flip_rows: bool = False,
    flip_cols: bool = False,
) -> tuple[int, int]:
    """Where an integer pixel ``(row, col)`` of the raw frame goes under :func:`apply_orientation`.

    Parameters
    ----------
    beam_center_px : (int, int)
        Pixel on the raw frame.
    raw_shape : (int, int)
        ``(H, W)`` of the raw frame.
    transpose, flip_rows, flip_cols : bool
        The orientation.

    Returns
    -------
    (int, int)
        The pixel's ``(row, col)`` in the oriented frame.
    """
    r, c = (int(v) for v in beam_center_px)
    h, w = (int(v) for v in raw_shape)
    if transpose:
        r, c, h, w = c, r, w, h
    if flip_rows:
        r = h - 1 - r
    if flip_cols:
        c = w - 1 - c
    return r, c


# --------------------------------------------------------------------------------------------
# crop and bin
# --------------------------------------------------------------------------------------------
def _window(length: int, start: int, size: int) -> tuple[slice, slice]:
    """Source and destination slices of the 1-D window ``[start, start + size)`` in a frame."""
    lo = max(start, 0)
    hi = min(start + size, length)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - start, hi - start)


def _crop_at(frames: np.ndarray, size: int, start: tuple[int, int], fill_value: Any) -> np.ndarray:
    """``size x size`` window with top-left corner ``start`` (may lie outside), as a new array."""
    h, w = frames.shape[-2:]
    src_r, dst_r = _window(h, start[0], size)
    src_c, dst_c = _window(w, start[1], size)
    inside = dst_r == slice(0, size) and dst_c == slice(0, size)
    if inside:
        return np.array(frames[..., src_r, src_c])
    out = np.full((*frames.shape[:-2], size, size), fill_value, dtype=frames.dtype)
    out[..., dst_r, dst_c] = frames[..., src_r, src_c]
    return out


def _padding_mask(raw_shape: tuple[int, int], size: int, start: tuple[int, int]) -> np.ndarray:
    """``(size, size)`` bool, True where the window starting at ``start`` leaves the frame."""
    rows = np.arange(start[0], start[0] + size)
    cols = np.arange(start[1], start[1] + size)
    out_r = (rows < 0) | (rows >= raw_shape[0])
    out_c = (cols < 0) | (cols >= raw_shape[1])
    return out_r[:, None] | out_c[None, :]


def _center_pixel(
    beam_center_px: tuple[float, float] | None, raw_shape: tuple[int, int]
) -> tuple[int, int]:
    if beam_center_px is None:
        return raw_shape[0] // 2, raw_shape[1] // 2
    return round_half_up(beam_center_px[0]), round_half_up(beam_center_px[1])


def crop_centered(
    frames: np.ndarray,
    size: int,
    beam_center_px: tuple[float, float] | None = None,
    *,
    fill_value: Any = 0,
) -> np.ndarray:
    """Cut a ``size x size`` window so that the beam centre lands on ``(size//2, size//2)``.

    Parameters
    ----------
    frames : ndarray, shape (..., H, W)
        Frames or masks.
    size : int
        Side of the square window (any positive integer).
    beam_center_px : (float, float), optional
        ``(row, col)`` of the beam centre on ``frames``, rounded to the nearest pixel (halves
        up). ``None`` means the frame centre ``(H//2, W//2)``.
    fill_value : scalar
        Value of window pixels that fall outside the frame (use ``True`` for bad-pixel masks).

    Returns
    -------
    ndarray, shape (..., size, size)
        A new array of the dtype of ``frames``.
    """
    a = np.asarray(frames)
    if a.ndim < 2:
        raise ValueError(f"frames must have at least 2 dimensions, got shape {a.shape}")
    if not _is_int(size) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    r, c = _center_pixel(beam_center_px, a.shape[-2:])
    return _crop_at(a, size, (r - size // 2, c - size // 2), fill_value)


def bin_frames(frames: np.ndarray, b: int) -> np.ndarray:
    """Sum ``b x b`` blocks of the last two axes (block ``k`` holds pixels ``k*b .. k*b + b-1``).

    Boolean input (masks) is reduced with *any*: a binned pixel is bad if any constituent is.
    Numeric input is summed; counts are conserved. Zero frequency at ``M//2 * b + b//2`` of the
    input lands on ``M//2`` of the output (``M = N/b``); :func:`preprocess` cuts its window so.

    Parameters
    ----------
    frames : ndarray, shape (..., N, N2)
        Frames or masks; ``b`` must divide both sides.
    b : int
        Bin factor (a positive integer; ``1`` returns the input unchanged).

    Returns
    -------
    ndarray, shape (..., N/b, N2/b)
        Summed frames (float input keeps its dtype, integer input is summed in its NumPy
        accumulator type), or a bool mask.
    """
    a = np.asarray(frames)
    if not _is_int(b) or b < 1:
        raise ValueError(f"binning must be a positive integer, got {b!r}")
    b = int(b)
    if a.ndim < 2:
        raise ValueError(f"frames must have at least 2 dimensions, got shape {a.shape}")
    if b == 1:
        return a
    n0, n1 = a.shape[-2:]
    if n0 % b or n1 % b:
        raise ValueError(f"binning {b} does not divide the frame shape {(n0, n1)}")
    blocks = a.reshape(*a.shape[:-2], n0 // b, b, n1 // b, b)
    if a.dtype == np.bool_:
        return np.asarray(blocks.any(axis=(-3, -1)))
    return blocks.sum(axis=(-3, -1), dtype=a.dtype if a.dtype.kind == "f" else None)


def to_amplitude(intensities: np.ndarray) -> np.ndarray:
    """Amplitudes ``sqrt(max(I, 0))`` as float32 (non-finite intensities give 0).

    Parameters
    ----------
    intensities : array_like
        Counts.

    Returns
    -------
    ndarray of float32, same shape
    """
    i = np.asarray(intensities, dtype=np.float32)
    i = np.where(np.isfinite(i), i, np.float32(0))
    return np.sqrt(np.maximum(i, np.float32(0)))


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def _mask_to_json(mask: np.ndarray) -> dict[str, Any]:
    bad = np.argwhere(mask)
    return {"shape": [int(s) for s in mask.shape], "bad_pixels": bad.tolist()}


def _mask_from_bad_pixels(bad: Any, shape: Sequence[int], name: str = "mask") -> np.ndarray:
    shape_t = tuple(shape)
    if len(shape_t) != 2 or not all(_is_int(s) and s > 0 for s in shape_t):
        raise ValueError(f"{name} shape must be two positive integers, got {list(shape)!r}")
    mask = np.zeros(shape_t, dtype=bool)
    pix = np.asarray(bad if bad is not None else [], dtype=object)
    if pix.size == 0:
        return mask
    if pix.ndim != 2 or pix.shape[1] != 2 or not all(_is_int(v) for v in pix.ravel()):
        raise ValueError(f"{name} bad pixels must be a list of integer [row, col] pairs")
    pix = pix.astype(np.int64)
    outside = (pix < 0).any(axis=1) | (pix[:, 0] >= shape_t[0]) | (pix[:, 1] >= shape_t[1])
    if outside.any():
        first = pix[np.argmax(outside)].tolist()
        raise ValueError(f"{name} bad pixel {first} lies outside the frame shape {shape_t}")
    mask[pix[:, 0], pix[:, 1]] = True
    return mask


def _mask_from_json(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"shape", "bad_pixels"}:
        raise ValueError('mask must be null or {"shape": [H, W], "bad_pixels": [[row, col], ...]}')
    return _mask_from_bad_pixels(value["bad_pixels"], value["shape"])


@dataclass(frozen=True, eq=False)
class PreprocessConfig:
    """How raw detector frames become engine frames (see the module docstring for the order).

    Attributes
    ----------
    crop : int or None
        Side ``N`` of the square window, a power of two. ``None`` keeps the raw frame size (the
        raw frame must then be square); the window is still re-centred on the beam centre.
    beam_center_px : (float, float) or None
        ``(row, col)`` of zero spatial frequency on the RAW frame, rounded to the nearest pixel
        (halves up). ``None`` means the raw frame centre ``(H//2, W//2)``.
    transpose, flip_rows, flip_cols : bool
        Orientation, applied in this order after cropping.
    binning : int
        Bin factor ``b``, a power of two dividing ``N``; output frames are ``N/b x N/b``.
    mask : bool ndarray (H, W) or None
        Bad pixels of the RAW detector frame (True = bad). Stored as a read-only copy.
    saturation : float or None
        Counts at or above this value are masked, frame by frame.
    mask_nonfinite : bool
        Mask NaN/inf pixels (True), or replace them by 0 unmasked (False).
    mask_flags : bool
        Mask detector flag values (True, default): in integer frames of 16 bits or more, the
        largest value of the dtype (65535 in uint16, 2**32-1 in uint32, 2**31-1 in int32...),
        which Eiger and other photon-counting detectors write for bad or dead pixels; a
        single such pixel among ordinary counts would otherwise dominate its pattern.
    flag_values : tuple of int or None
        The flag values to mask when ``mask_flags`` is on. None (default): the dtype's largest
        value, as above (see :func:`detector_flag`); a tuple: exactly these values, in frames
        of any dtype (e.g. ``(2**32 - 1, 2**32 - 2)`` for a detector with two flag codes).
    max_count : float or None
        Counts above this value are masked as flags too (when ``mask_flags`` is on), in any
        dtype: no counting detector reports more per pixel and frame. Default ``2**32 - 1``, the
        largest count of a 32-bit counter, which catches ``2**63`` in uint64/int64 frames and
        absurd values in float frames. None: no bound.
    """

    crop: int | None = None
    beam_center_px: tuple[float, float] | None = None
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    binning: int = 1
    mask: np.ndarray | None = field(default=None, repr=False)
    saturation: float | None = None
    mask_nonfinite: bool = True
    mask_flags: bool = True
    flag_values: tuple[int, ...] | None = None
    max_count: float | None = DEFAULT_MAX_COUNT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.crop is not None:
            if not is_power_of_two(self.crop):
                raise ValueError(f"crop must be a power of two or None, got {self.crop!r}")
            set_(self, "crop", int(self.crop))
        if self.beam_center_px is not None:
            bc = self.beam_center_px
            if isinstance(bc, (str, bytes)) or not isinstance(bc, (Sequence, np.ndarray)):
                raise ValueError(f"beam_center_px must be (row, col) or None, got {bc!r}")
            if len(bc) != 2 or not all(
                isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in bc
            ):
                raise ValueError(f"beam_center_px must be two numbers (row, col), got {bc!r}")
            if not all(math.isfinite(float(v)) for v in bc):
                raise ValueError(f"beam_center_px must be finite, got {bc!r}")
            set_(self, "beam_center_px", (float(bc[0]), float(bc[1])))
        for key in _ORIENTATION_KEYS:
            set_(self, key, _as_bool(getattr(self, key), key))
        if not is_power_of_two(self.binning):
            raise ValueError(f"binning must be a power of two, got {self.binning!r}")
        set_(self, "binning", int(self.binning))
        if self.crop is not None and self.crop % self.binning:
            raise ValueError(f"binning {self.binning} does not divide crop {self.crop}")
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2 or 0 in m.shape:
                raise ValueError(f"mask must be a 2-D (H, W) array, got shape {m.shape}")
            if m.dtype != np.bool_:
                if m.dtype.kind not in "iu" or not np.isin(m, (0, 1)).all():
                    raise ValueError(f"mask must be boolean (True = bad pixel), got {m.dtype}")
            m = np.array(m, dtype=bool)  # own copy
            m.flags.writeable = False
            set_(self, "mask", m)
        if self.saturation is not None:
            s = self.saturation
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Real):
                raise ValueError(f"saturation must be a number or None, got {s!r}")
            if not (math.isfinite(float(s)) and float(s) > 0):
                raise ValueError(f"saturation must be finite and positive, got {s!r}")
            set_(self, "saturation", float(s))
        set_(self, "mask_nonfinite", _as_bool(self.mask_nonfinite, "mask_nonfinite"))
        set_(self, "mask_flags", _as_bool(self.mask_flags, "mask_flags"))
        set_(self, "flag_values", _check_flag_values(self.flag_values))
        set_(self, "max_count", _check_max_count(self.max_count))

    # -- identity ---------------------------------------------------------------------------
    def _key(self) -> tuple[Any, ...]:
        m = self.mask
        mkey = None if m is None else (m.shape, np.packbits(m).tobytes())
        return (
            self.crop,
            self.beam_center_px,
            self.transpose,
            self.flip_rows,
            self.flip_cols,
            self.binning,
            mkey,
            self.saturation,
            self.mask_nonfinite,
            self.mask_flags,
            self.flag_values,
            self.max_count,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreprocessConfig):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # -- derived ------------------------------------------------------------------------------
    @property
    def orientation(self) -> Orientation:
        """The orientation fields as an :class:`Orientation`."""
        return Orientation(self.transpose, self.flip_rows, self.flip_cols)

    def check_raw_shape(self, raw_shape: Sequence[int]) -> None:
        """Raise ValueError if frames of ``raw_shape`` ``(H, W)`` cannot be processed.

        The configured mask must have the raw frame shape, and without ``crop`` the raw frame
        must be square with a side divisible by ``binning``.
        """
        shape = tuple(int(s) for s in raw_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"raw frame shape must be (H, W), got {shape}")
        if self.mask is not None and self.mask.shape != shape:
            raise ValueError(
                f"mask shape {self.mask.shape} differs from the raw frame shape {shape}"
            )
        if self.crop is None:
            if shape[0] != shape[1]:
                raise ValueError(f"crop is None but the raw frame shape {shape} is not square")
            if shape[0] % self.binning:
                raise ValueError(
                    f"binning {self.binning} does not divide the raw frame size {shape[0]} "
                    "(crop is None)"
                )

    def output_size(self, raw_shape: Sequence[int]) -> int:
        """Side ``M = N / binning`` of processed frames for raw frames of ``raw_shape``."""
        self.check_raw_shape(raw_shape)
        n = self.crop if self.crop is not None else int(raw_shape[0])
        return n // self.binning

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict; the mask as ``{"shape": [H, W], "bad_pixels": [[r, c], ...]}``."""
        return {
            "crop": self.crop,
            "beam_center_px": None if self.beam_center_px is None else list(self.beam_center_px),
            "orientation": self.orientation.to_dict(),
            "binning": self.binning,
            "mask": None if self.mask is None else _mask_to_json(self.mask),
            "saturation": self.saturation,
            "mask_nonfinite": self.mask_nonfinite,
            "mask_flags": self.mask_flags,
            "flag_values": None if self.flag_values is None else list(self.flag_values),
            "max_count": self.max_count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict` (missing keys take their defaults; unknown keys raise)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a mapping, got {type(d).__name__}")
        known = {"crop", "beam_center_px", "orientation", "binning", "mask", "saturation"}
        known.update(("mask_nonfinite", *_FLAG_KEYS))
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing config keys {unknown}")
        orientation = orientation_from_dict(d.get("orientation"))
        return cls(
            crop=d.get("crop"),
            beam_center_px=d.get("beam_center_px"),
            binning=d.get("binning", 1),
            mask=_mask_from_json(d.get("mask")),
            saturation=d.get("saturation"),
            mask_nonfinite=d.get("mask_nonfinite", True),
            **_flag_options(d),
            transpose=orientation.transpose,
            flip_rows=orientation.flip_rows,
            flip_cols=orientation.flip_cols,
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> PreprocessConfig:
        """Inverse of :meth:`to_json`."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"preprocessing config is not valid JSON: {exc}") from exc
        return cls.from_dict(d)

    @classmethod
    def from_ptycho_start(
        cls,
        ptycho: Mapping[str, Any],
        *,
        raw_shape: Sequence[int] | None = None,
        binning: int | None = None,
        saturation: float | None = None,
        mask_nonfinite: bool | None = None,
    ) -> PreprocessConfig:
        """Build the config from the ``start["ptycho"]`` dict (docs/reference/start-document.md).

        Reads ``crop``, ``beam_center_px``, ``orientation`` and ``mask``, plus the optional
        ``binning``, ``saturation``, ``mask_nonfinite``, ``mask_flags``, ``flag_values`` and
        ``max_count`` if present (keyword arguments override them). Other keys (energy, scan,
        ...) are ignored.

        Parameters
        ----------
        ptycho : mapping
            The ``start["ptycho"]`` dict.
        raw_shape : (int, int), optional
            Raw detector frame shape. Needed when ``mask`` is a list of ``[row, col]`` bad
            pixels (the start document does not carry the detector shape; the descriptor
            does). ``mask`` may instead be ``{"shape": [H, W], "bad_pixels": [...]}``.
        binning, saturation, mask_nonfinite : optional
            Overrides.

        Returns
        -------
        PreprocessConfig
        """
        if not isinstance(ptycho, Mapping):
            raise ValueError(f"start['ptycho'] must be a mapping, got {type(ptycho).__name__}")
        mask_value = ptycho.get("mask")
        if mask_value is None:
            mask = None
        elif isinstance(mask_value, Mapping):
            mask = _mask_from_json(mask_value)
            if raw_shape is not None and mask is not None:
                if mask.shape != tuple(int(s) for s in raw_shape):
                    raise ValueError(
                        f"mask shape {mask.shape} differs from the raw frame shape "
                        f"{tuple(raw_shape)}"
                    )
        elif isinstance(mask_value, (list, tuple)):
            if raw_shape is None:
                raise ValueError(
                    "mask is a list of bad pixels: pass raw_shape (the detector frame shape)"
                )
            mask = _mask_from_bad_pixels(mask_value, [int(s) for s in raw_shape])
        else:
            raise ValueError(f"mask must be null or a list of [row, col] pairs, got {mask_value!r}")
        orientation = orientation_from_dict(ptycho.get("orientation"))
        return cls(
            crop=ptycho.get("crop"),
            beam_center_px=ptycho.get("beam_center_px"),
            binning=binning if binning is not None else ptycho.get("binning", 1),
            mask=mask,
            saturation=saturation if saturation is not None else ptycho.get("saturation"),
            mask_nonfinite=(
                mask_nonfinite if mask_nonfinite is not None else ptycho.get("mask_nonfinite", True)
            ),
            **_flag_options(ptycho),
            transpose=orientation.transpose,
            flip_rows=orientation.flip_rows,
            flip_cols=orientation.flip_cols,
        )


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreprocessedFrames:
    """Frames in the engine convention.

    Attributes
    ----------
    intensities : float32 ndarray, shape (n, M, M)
        Counts, zero frequency at ``(M//2, M//2)``; 0 at masked pixels, never negative.
    mask : bool ndarray, shape (n, M, M), or None
        True = leave the pixel out of the modulus constraint; ``None`` if nothing is masked.
    """

    intensities: np.ndarray
    mask: np.ndarray | None

    def __len__(self) -> int:
        return int(self.intensities.shape[0])

    def amplitudes(self) -> np.ndarray:
        """``sqrt`` of the intensities, float32 (see :func:`to_amplitude`)."""
        return to_amplitude(self.intensities)


def detector_flag(dtype: Any) -> int | None:
    """The value photon-counting detectors write for bad pixels in frames of ``dtype``.

    The largest value of integer dtypes of 16 bits or more (65535, 2**32-1, 2**31-1, ...);
    None for floating-point and 8-bit frames.
    """
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or dt.itemsize < 2:
        return None
    return int(np.iinfo(dt).max)


def flagged_pixels(frames: np.ndarray, config: PreprocessConfig) -> np.ndarray | None:
    """Where ``frames`` (raw dtype) hold a detector flag value or counts above ``max_count``.

    Parameters
    ----------
    frames : ndarray
        Raw frames (or a crop of them) in their own dtype.
    config : PreprocessConfig
        ``flag_values`` (None: :func:`detector_flag` of the dtype) and ``max_count``;
        ``mask_flags`` is not looked at (the caller decides).

    Returns
    -------
    bool ndarray of the shape of ``frames``, or None when nothing can be flagged (e.g. a float
    frame with ``max_count=None``).
    """
    a = np.asarray(frames)
    out: np.ndarray | None = None
    if config.flag_values is None:
        flag = detector_flag(a.dtype)
        values: tuple[int, ...] = () if flag is None else (flag,)
    else:
        values = config.flag_values
    integer = a.dtype.kind in "iu"
    if integer:
        info = np.iinfo(a.dtype)
        values = tuple(v for v in values if info.min <= v <= info.max)  # others cannot occur
    for v in values:
        hit = a == (a.dtype.type(v) if integer else v)
        out = hit if out is None else out | hit
    bound = config.max_count
    if bound is not None and not (integer and bound >= np.iinfo(a.dtype).max):
        above = a > (a.dtype.type(math.floor(bound)) if integer else bound)
        out = above if out is None else out | above
    return out


def _check_flag_values(values: Any) -> tuple[int, ...] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"flag_values must be a sequence of integers or None, got {values!r}")
    if not all(_is_int(v) for v in values):
        raise ValueError(f"flag_values must be integers, got {list(values)!r}")
    return tuple(int(v) for v in values)


def _check_max_count(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"max_count must be a number or None, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"max_count must be finite and positive, got {value!r}")
    return float(value)


def _flag_options(d: Mapping[str, Any]) -> dict[str, Any]:
    """The flag keys present in ``d`` (absent ones keep their defaults)."""
    out = {key: d[key] for key in _FLAG_KEYS if key in d}
    if isinstance(out.get("flag_values"), list):
        out["flag_values"] = tuple(out["flag_values"])
    return out


def preprocess(frames: Any, config: PreprocessConfig) -> PreprocessedFrames:
    """Crop, orient, mask and bin raw detector frames (order in the module docstring).

    Parameters
    ----------
    frames : array_like, shape (H, W) or (n, H, W)
        Raw frames of any real dtype (uint16, uint32, int32, float32, ...).
    config : PreprocessConfig
        What to do.

    Returns
    -------
    PreprocessedFrames
        Always a stack ``(n, M, M)``, also for a single frame. Pixels are masked (and set to 0)
        where the configured detector mask is bad, where the crop window runs outside the raw
        frame (zero padding), where counts reach ``config.saturation``, where a frame holds
        a detector flag value or counts above ``config.max_count`` (``config.mask_flags``,
        :func:`flagged_pixels`) and, with ``config.mask_nonfinite``, where values are NaN or
        infinite. A binned pixel is masked if any of its ``b x b`` constituents is. Negative
        counts are clipped to 0, not masked.

    Raises
    ------
    ValueError
        If the frames are not 2-D/3-D real arrays, or their shape does not fit the config
        (see :meth:`PreprocessConfig.check_raw_shape`).
    """
    a = np.asarray(frames)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"frames must be (H, W) or (n, H, W), got shape {a.shape}")
    if a.dtype.kind not in "iuf":
        raise ValueError(f"frames must have a real numeric dtype, got {a.dtype}")
    raw_shape = (int(a.shape[1]), int(a.shape[2]))
    config.check_raw_shape(raw_shape)
    n_side = config.crop if config.crop is not None else raw_shape[0]
    b = config.binning
    m_side = n_side // b

    orient = config.orientation.to_dict()
    oriented = apply_orientation(a, **orient)  # views
    o_shape = (int(oriented.shape[1]), int(oriented.shape[2]))
    center = oriented_beam_center(
        _center_pixel(config.beam_center_px, raw_shape), raw_shape, **orient
    )
    # Fine-grid index of the beam centre inside the window: N//2 without binning, else the
    # middle of the block that becomes pixel M//2 (see bin_frames).
    target = (m_side // 2) * b + b // 2
    start = (center[0] - target, center[1] - target)

    cropped = _crop_at(oriented, n_side, start, 0)
    bad = _padding_mask(o_shape, n_side, start)
    if config.mask is not None:
        bad = bad | _crop_at(apply_orientation(config.mask, **orient), n_side, start, True)
    static_bad = bool(bad.any())
    frame_bad: np.ndarray | None = None
    if config.saturation is not None:
        frame_bad = cropped >= config.saturation  # compared in the raw dtype's precision
    flagged = flagged_pixels(cropped, config) if config.mask_flags else None
    if flagged is not None and flagged.any():
        frame_bad = flagged if frame_bad is None else frame_bad | flagged

    intensities = cropped.astype(np.float32, copy=False)
    if a.dtype.kind == "f":  # integers cannot overflow float32
        nonfinite = ~np.isfinite(intensities)
        if nonfinite.any():
            if config.mask_nonfinite:
                frame_bad = nonfinite if frame_bad is None else frame_bad | nonfinite
            else:
                intensities[nonfinite] = 0
    np.maximum(intensities, np.float32(0), out=intensities)

    if frame_bad is not None:
        if static_bad:
            frame_bad |= bad
        mask = frame_bad
    elif static_bad:
        mask = np.repeat(bad[None], intensities.shape[0], axis=0)
    else:
        mask = None
    if mask is not None:
        intensities[mask] = 0
        if b > 1:
            mask = bin_frames(mask, b)
        if not mask.any():
            mask = None
    if b > 1:
        intensities = bin_frames(intensities, b)
    return PreprocessedFrames(intensities=np.ascontiguousarray(intensities), mask=mask)
