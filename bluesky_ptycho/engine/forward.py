"""Forward model of far-field ptychography, separate from any reconstructor.

Conventions shared by every part of the package:

- ``positions_px`` are ``(row, col)`` of the probe patch's top-left corner in the object array,
  possibly fractional. Patches are cut at the rounded position; the fractional remainder can be
  applied to the probe as a Fourier shift (:func:`shift_probe`).
- The far-field propagator is the unitary (orthonormal) 2-D FFT, so ``sum(|P|**2)`` equals the
  counts of a pattern through empty space.
- Detector frames (intensities) have zero spatial frequency at pixel ``(N//2, N//2)``; the
  engine's internal spectra have it at ``(0, 0)``.

All functions take and return arrays of one array-API namespace (NumPy, CuPy, array-api-strict).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_ptycho.backend import backend_for

__all__ = [
    "exit_waves",
    "far_field_intensities",
    "integer_positions",
    "object_patches",
    "shift_probe",
]


def integer_positions(positions_px: Any) -> np.ndarray:
    """Round fractional ``(row, col)`` positions to the integer top-left corners used for patches.

    Returns a host ``int64`` NumPy array of shape ``(n, 2)``.
    """
    p = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    return np.floor(p + 0.5).astype(np.int64)


def object_patches(obj: Any, positions_px: Any, shape: tuple[int, int]) -> Any:
    """Cut ``(n, *shape)`` patches out of ``obj`` at the rounded ``positions_px``."""
    be = backend_for(obj)
    xp = be.xp
    corners = integer_positions(positions_px)
    h, w = shape
    return xp.stack([obj[r : r + h, c : c + w] for r, c in corners.tolist()])


def shift_probe(probe: Any, shift_px: tuple[float, float]) -> Any:
    """Shift a probe by a (sub-pixel) ``(drow, dcol)`` with a Fourier phase ramp (periodic)."""
    be = backend_for(probe)
    xp = be.xp
    n0, n1 = probe.shape[-2:]
    f0 = xp.asarray(np.fft.fftfreq(n0).astype(np.float32))
    f1 = xp.asarray(np.fft.fftfreq(n1).astype(np.float32))
    ramp = -2.0 * np.pi * (float(shift_px[0]) * f0[:, None] + float(shift_px[1]) * f1[None, :])
    phase = xp.cos(ramp) + 1j * xp.sin(ramp)
    phase = xp.astype(phase, xp.complex64)
    return be.ifft2(be.fft2(xp.astype(probe, xp.complex64)) * phase)


def exit_waves(obj: Any, probe: Any, positions_px: Any, *, subpixel: bool = False) -> Any:
    """Exit waves ``P * O_j`` for every position, ``(n, N, N)`` complex64.

    With ``subpixel=True`` the probe is shifted by each position's fractional part; otherwise
    positions are rounded.
    """
    be = backend_for(obj, probe)
    xp = be.xp
    patches = object_patches(obj, positions_px, tuple(probe.shape[-2:]))
    if not subpixel:
        return patches * probe
    p = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    frac = p - integer_positions(p)
    probes = xp.stack([shift_probe(probe, (float(a), float(b))) for a, b in frac.tolist()])
    return patches * probes


def far_field_intensities(
    obj: Any, probe: Any, positions_px: Any, *, subpixel: bool = False
) -> Any:
    """Noise-free far-field intensities, ``(n, N, N)`` float32, zero frequency at ``(N//2, N//2)``.

    Detector convention: this is what a photon-counting detector would record (before noise).
    """
    be = backend_for(obj, probe)
    xp = be.xp
    spectra = be.fft2(exit_waves(obj, probe, positions_px, subpixel=subpixel))
    intens = xp.real(spectra * xp.conj(spectra))
    n0, n1 = probe.shape[-2:]
    intens = xp.roll(intens, (n0 // 2, n1 // 2), axis=(-2, -1))
    return xp.astype(intens, xp.float32)
