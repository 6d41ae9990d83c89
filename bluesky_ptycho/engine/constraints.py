"""Convergence aids applied between chunks of ePIE updates, in array-API operations.

Each function takes arrays of one namespace (NumPy, CuPy, array-api-strict) and returns new
arrays of it; none changes what a converged reconstruction means, they only remove freedoms the
data do not fix (the probe's power and position in its array) or bound unphysical values:

- :func:`hold_probe_power`: ``sum(|P|**2)`` equal to the measured mean counts, the object
  scaled inversely (ePIE lets power drift between them: a global factor the data cannot fix);
- :func:`centre_probe`: the object/probe shift ambiguity resolved by moving the probe's
  intensity centroid to the array centre and the object with it (whole pixels, no wrap);
- :func:`probe_support`: the probe is zero outside a disc;
- :func:`bound_object_amplitude`: ``|O| <= bound`` (a transmission cannot amplify).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "bound_object_amplitude",
    "centre_probe",
    "centroid_offset",
    "hold_probe_power",
    "probe_support",
    "support_mask",
]


def hold_probe_power(xp: Any, obj: Any, probe: Any, counts: float) -> tuple[Any, Any]:
    """Scale the probe so that ``sum(|P|**2) == counts``, and the object inversely.

    ``(s P) (O / s)`` is the same exit wave: only the global factor that the data cannot fix
    moves, so object and probe keep a fixed normalisation (an empty beam's transmission is then
    about 1 when the specimen is weak) instead of trading power back and forth. Unchanged if
    the probe is empty.
    """
    power = float(xp.sum(xp.real(probe * xp.conj(probe))))
    if not (power > 0 and counts > 0 and math.isfinite(power)):
        return obj, probe
    s = math.sqrt(counts / power)
    if abs(s - 1.0) < 1e-6:
        return obj, probe
    return obj * float(1.0 / s), probe * float(s)


def centroid_offset(xp: Any, probe: Any) -> tuple[float, float]:
    """Offset ``(drow, dcol)`` of the probe's intensity centroid from ``(N//2, N//2)``."""
    n0, n1 = probe.shape
    inten = xp.real(probe * xp.conj(probe))
    total = float(xp.sum(inten))
    if not total > 0:
        return 0.0, 0.0
    rows = xp.asarray(np.arange(n0, dtype=np.float32))
    cols = xp.asarray(np.arange(n1, dtype=np.float32))
    r = float(xp.sum(xp.sum(inten, axis=1) * rows)) / total
    c = float(xp.sum(xp.sum(inten, axis=0) * cols)) / total
    return r - n0 // 2, c - n1 // 2


def _shift_fill(xp: Any, a: Any, dr: int, dc: int, fill: Any) -> Any:
    """``a`` moved by ``(dr, dc)`` whole pixels; uncovered pixels get ``fill`` (no wrap)."""
    h, w = a.shape
    out = xp.full(a.shape, fill, dtype=a.dtype)
    if abs(dr) >= h or abs(dc) >= w:
        return out
    src = a[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
    out[max(0, dr) : max(0, dr) + src.shape[0], max(0, dc) : max(0, dc) + src.shape[1]] = src
    return out


def centre_probe(xp: Any, obj: Any, probe: Any, *, min_shift: int = 1) -> tuple[Any, Any, int, int]:
    """Move the probe's centroid to the array centre, and the object with it.

    ``P(r - d) O(r - d + r_j)`` gives the same patterns as ``P(r) O(r + r_j)``: shifting both
    by the same whole-pixel ``d`` changes nothing the data see, and keeps the probe from
    drifting to the edge of its array (and wrapping round) over long reconstructions. Object
    pixels uncovered at the edge are filled with the mean of the object's border.

    Returns
    -------
    obj, probe, drow, dcol
        The moved arrays and the shift applied (0, 0 when below ``min_shift``).
    """
    off_r, off_c = centroid_offset(xp, probe)
    dr, dc = -round(off_r), -round(off_c)
    if max(abs(dr), abs(dc)) < min_shift:
        return obj, probe, 0, 0
    border = xp.concat([obj[0, :], obj[-1, :], obj[:, 0], obj[:, -1]])
    fill = complex(xp.mean(border))
    obj = _shift_fill(xp, obj, dr, dc, fill)
    probe = _shift_fill(xp, probe, dr, dc, 0j)
    return obj, probe, dr, dc


def support_mask(shape: tuple[int, int], radius_px: float) -> np.ndarray:
    """Disc of ``radius_px`` around ``(N//2, N//2)`` with a one-pixel soft edge (float32)."""
    rows = np.arange(shape[0]) - shape[0] // 2
    cols = np.arange(shape[1]) - shape[1] // 2
    r = np.hypot(rows[:, None], cols[None, :])
    return np.clip(radius_px - r + 0.5, 0.0, 1.0).astype(np.float32)


def probe_support(xp: Any, probe: Any, mask: Any) -> Any:
    """The probe times a support ``mask`` (see :func:`support_mask`)."""
    return probe * xp.astype(mask, probe.dtype)


def bound_object_amplitude(xp: Any, obj: Any, bound: float) -> Any:
    """``obj`` with every amplitude above ``bound`` brought down to ``bound`` (phase kept)."""
    amp = xp.abs(obj)
    over = amp > bound
    if not bool(xp.any(over)):
        return obj
    safe = xp.where(over, amp, xp.ones_like(amp))
    factor = xp.where(over, bound / safe, xp.ones_like(amp))
    return obj * xp.astype(factor, obj.dtype)
