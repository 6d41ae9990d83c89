"""The shared input checks: scalars, pairs, positions, extents, frames and masks.

One function per check, each raising ``ValueError`` with a message that starts with the
parameter's name, so that every layer (plans, setup, geometry, readers, the live reconstruction
and the engine) reports the same mistake the same way. This is the bottom layer of the package:
it imports numpy and the standard library only, and every other module may import it.

Each function returns the checked value in its canonical form (a float, an int, a float64
array...), so callers write ``step = check_positive_scalar("step_m", step)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "check_extent",
    "check_finite_array",
    "check_finite_scalar",
    "check_frames",
    "check_mask",
    "check_non_negative_int",
    "check_non_negative_scalar",
    "check_pair",
    "check_positions",
    "check_positive_int",
    "check_positive_scalar",
]

T = TypeVar("T")

#: How many offending indices a message lists at most.
_MAX_LISTED = 10


def _listed(indices: NDArray[np.intp]) -> str:
    """``[0, 3, 7]``, or the first ``_MAX_LISTED`` of them followed by ``...``."""
    shown = indices[:_MAX_LISTED].tolist()
    more = ", ..." if indices.size > _MAX_LISTED else ""
    return f"[{', '.join(map(str, shown))}{more}]"


# --------------------------------------------------------------------------------------------
# scalars
# --------------------------------------------------------------------------------------------


def _item(value: Any) -> Any:
    """A 0-d array as its scalar (an HDF5 scalar dataset reads as one); anything else as is."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _real(name: str, value: Any, what: str) -> float:
    value = _item(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return out


def check_finite_scalar(name: str, value: Any) -> float:
    """``value`` as a finite float (a Python or NumPy real number, or a 0-d array of one).

    Raises
    ------
    ValueError
        ``"<name> must be a finite number, got <value>"`` for NaN, inf, a bool, a string...
    """
    return _real(name, value, "a finite number")


def check_positive_scalar(name: str, value: Any) -> float:
    """``value`` as a finite float ``> 0``.

    Raises
    ------
    ValueError
        ``"<name> must be a positive finite number, got <value>"``.
    """
    out = _real(name, value, "a positive finite number")
    if out <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return out


def check_non_negative_scalar(name: str, value: Any) -> float:
    """``value`` as a finite float ``>= 0``.

    Raises
    ------
    ValueError
        ``"<name> must be a non-negative finite number, got <value>"``.
    """
    out = _real(name, value, "a non-negative finite number")
    if out < 0.0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return out


def _integer(name: str, value: Any, what: str) -> int:
    value = _item(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int ``>= 1`` (a float such as ``4.0`` is refused, as is a bool).

    Raises
    ------
    ValueError
        ``"<name> must be a positive integer, got <value>"``.
    """
    out = _integer(name, value, "a positive integer")
    if out <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return out


def check_non_negative_int(name: str, value: Any) -> int:
    """``value`` as an int ``>= 0``.

    Raises
    ------
    ValueError
        ``"<name> must be a non-negative integer, got <value>"``.
    """
    out = _integer(name, value, "a non-negative integer")
    if out < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return out


def check_pair(
    name: str,
    value: Any,
    check: Callable[[str, Any], T] = check_finite_scalar,  # type: ignore[assignment]
    *,
    what: str = "(row, col)",
    scalar_ok: bool = False,
) -> tuple[T, T]:
    """A pair ``(a, b)``, each element passed through ``check`` (named ``name[0]``, ``name[1]``).

    Parameters
    ----------
    name : str
        The parameter's name, used in messages.
    value : scalar or sequence of two
        The pair; with ``scalar_ok`` a scalar ``s`` stands for ``(s, s)``.
    check : callable ``(name, value) -> T``
        The element check, e.g. :func:`check_positive_scalar`; default
        :func:`check_finite_scalar`.
    what : str
        How the pair is described in messages, e.g. ``"(y, x)"``.
    scalar_ok : bool
        Accept a scalar for both elements.

    Raises
    ------
    ValueError
        ``"<name> must be a pair <what>, got <value>"``, or the element check's message.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        if scalar_ok:
            item = check(name, value)
            return (item, item)
        raise ValueError(f"{name} must be a pair {what}, got {value!r}")
    items = list(value)
    if len(items) != 2:
        kind = "a number or a pair" if scalar_ok else "a pair"
        raise ValueError(f"{name} must be {kind} {what}, got {value!r}")
    return (check(f"{name}[0]", items[0]), check(f"{name}[1]", items[1]))


# --------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------


def _float_array(name: str, value: Any, expected: str) -> NDArray[np.float64]:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        text = repr(value)
        if len(text) > 80:
            text = text[:77] + "..."
        raise ValueError(f"{name} must be numbers with shape {expected}, got {text}") from None


def check_finite_array(name: str, value: Any) -> NDArray[Any]:
    """``value`` as an array of real or complex numbers, all finite.

    Raises
    ------
    ValueError
        ``"<name> must be numbers, got dtype ..."`` or ``"<name> contains NaN or infinite
        values"``.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufc":
        raise ValueError(f"{name} must be numbers, got dtype {arr.dtype}")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_positions(
    name: str, positions: Any, n: int | None = None, *, single_ok: bool = False
) -> NDArray[np.float64]:
    """Positions as a finite float64 array of shape ``(n, 2)`` (row, col).

    Parameters
    ----------
    name : str
        The parameter's name, used in messages.
    positions : array-like, shape (n, 2)
        The positions, in any unit.
    n : int, optional
        The number of positions required (e.g. the number of frames).
    single_ok : bool
        Accept one position of shape ``(2,)`` as ``(1, 2)``.

    Raises
    ------
    ValueError
        ``"<name> must have shape (n, 2) (row, col), got shape ..."``, ``"<name> must have shape
        (5, 2) for 5 frame(s), got shape ..."`` or ``"<name> contains NaN or infinite values at
        row(s) [...]"``.
    """
    pos = _float_array(name, positions, "(n, 2)")
    if single_ok and pos.shape == (2,):
        pos = pos[None]
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) (row, col), got shape {pos.shape}")
    if n is not None and pos.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, 2) for {n} frame(s), got shape {pos.shape}")
    bad = ~np.all(np.isfinite(pos), axis=1)
    if np.any(bad):
        raise ValueError(
            f"{name} contains NaN or infinite values at row(s) {_listed(np.flatnonzero(bad))}"
        )
    return pos


def check_extent(name: str, extent: Any) -> NDArray[np.float64]:
    """A rectangle ``((r0, r1), (c0, c1))`` as a finite float64 ``(2, 2)`` array (unsorted).

    Raises
    ------
    ValueError
        ``"<name> must be ((r0, r1), (c0, c1)), got shape ..."`` or ``"<name> contains NaN or
        infinite values"``.
    """
    ext = _float_array(name, extent, "((r0, r1), (c0, c1))")
    if ext.shape != (2, 2):
        raise ValueError(f"{name} must be ((r0, r1), (c0, c1)), got shape {ext.shape}")
    if not np.all(np.isfinite(ext)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return ext


def check_frames(
    name: str, frames: Any, frame_shape: tuple[int, int] | None = None
) -> NDArray[Any]:
    """Frames as an ``(n, H, W)`` array of real numbers, every value finite.

    A single ``(H, W)`` frame becomes ``(1, H, W)``. The array is a view of the input where
    possible (not copied); integer frames are not scanned for NaN (they cannot hold one).

    Parameters
    ----------
    name : str
        The parameter's name, used in messages.
    frames : array-like, shape (n, H, W) or (H, W)
        The frames.
    frame_shape : (int, int), optional
        The required ``(H, W)``.

    Raises
    ------
    ValueError
        ``"<name> must have shape (n, H, W) or (H, W), got shape ..."``, ``"<name> must have
        frames of shape (H, W), got shape ..."``, ``"<name> must be real numbers, got dtype
        ..."`` or ``"<name> contains NaN or infinite values in frame(s) [...]"``.
    """
    f = np.asarray(frames)
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise ValueError(f"{name} must have shape (n, H, W) or (H, W), got shape {f.shape}")
    if frame_shape is not None and tuple(f.shape[1:]) != tuple(frame_shape):
        h, w = frame_shape
        raise ValueError(
            f"{name} must have frames of shape ({h}, {w}), got shape {tuple(np.shape(frames))}"
        )
    if f.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got dtype {f.dtype}")
    n = int(f.shape[0])
    if f.dtype.kind == "f" and n and f.size:
        bad = ~np.isfinite(f.reshape(n, -1)).all(axis=1)
        if np.any(bad):
            raise ValueError(
                f"{name} contains NaN or infinite values in frame(s) {_listed(np.flatnonzero(bad))}"
            )
    return f


def check_mask(
    name: str, mask: Any, frame_shape: tuple[int, int], n: int | None = None
) -> NDArray[np.bool_]:
    """A boolean bad-pixel mask (True = bad) of shape ``frame_shape``, or ``(n, H, W)``.

    Parameters
    ----------
    name : str
        The parameter's name, used in messages.
    mask : bool array-like
        One mask for every frame, shape ``(H, W)``, or, with ``n``, one per frame.
    frame_shape : (int, int)
        ``(H, W)`` of the frames.
    n : int, optional
        Number of frames: a per-frame mask ``(n, H, W)`` is accepted and an ``(H, W)`` mask is
        broadcast to it (a read-only view).

    Raises
    ------
    ValueError
        ``"<name> must be boolean (True = bad pixel), got dtype ..."`` or ``"<name> must have
        shape ..., got shape ..."``.
    """
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean (True = bad pixel), got dtype {m.dtype}")
    shape = tuple(int(s) for s in frame_shape)
    if n is None:
        if m.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got shape {m.shape}")
        return m
    full = (int(n), *shape)
    if m.shape == shape:
        return np.broadcast_to(m, full)
    if m.shape != full:
        raise ValueError(f"{name} must have shape {shape} or {full}, got shape {m.shape}")
    return m
