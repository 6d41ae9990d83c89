"""Errors of a reconstruction against a ground truth or a reference, ambiguities removed.

A ptychographic reconstruction is defined only up to a few transformations that leave every
diffraction pattern unchanged: a global complex factor (object times ``c``, probe divided by
``c``), a translation of the object together with the positions, and a linear phase ramp shared
between object and probe. The functions here remove them before comparing:

- :func:`register_shift` finds a sub-pixel translation by cross-correlation, refined with a
  local matrix-multiply DFT (upsampled cross-correlation) and a parabolic fit of the peak;
- :func:`align_to_reference` applies the translation (Fourier shift), optionally a phase
  ramp, and the least-squares complex factor;
- :func:`object_error` and :func:`probe_error` are normalised rms errors after alignment;
- :func:`fourier_error` compares model amplitudes with measured intensities, with the same
  normalisation the engine reports;
- :func:`illuminated_region` gives the region where the comparison makes sense.

Everything works on host NumPy arrays: array-API inputs (CuPy, array-api-strict) are copied to
the host with :func:`bluesky_ptycho.backend.to_numpy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from bluesky_ptycho.backend import to_numpy
from bluesky_ptycho.engine.forward import exit_waves, integer_positions

__all__ = [
    "align_to_reference",
    "fourier_error",
    "fourier_shift",
    "illuminated_region",
    "object_error",
    "probe_error",
    "register_shift",
]

# Patterns per chunk when evaluating the forward model (bounds memory for large frames).
_CHUNK = 32


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _host_2d(name: str, a: Any) -> NDArray[Any]:
    arr = to_numpy(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    return arr


def _region_mask(region: Any, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    if region is None:
        return np.ones(shape, dtype=bool)
    mask = to_numpy(region).astype(bool)
    if mask.shape != shape:
        raise ValueError(f"region has shape {mask.shape}, expected {shape}")
    if not mask.any():
        raise ValueError("region selects no pixel")
    return mask


def fourier_shift(a: Any, shift_px: tuple[float, float]) -> NDArray[np.complex128]:
    """Translate a 2-D array by ``(drow, dcol)`` pixels with a Fourier phase ramp.

    The result ``b`` satisfies ``b(x) = a(x - shift)`` (periodic boundary). Integer shifts
    are exact rolls; fractional shifts interpolate with the band-limited (sinc) kernel.

    Parameters
    ----------
    a : array_like, shape (H, W)
        Real or complex image.
    shift_px : (float, float)
        Translation in pixels, positive moves content to larger indices.

    Returns
    -------
    ndarray of complex128, shape (H, W)
    """
    arr = _host_2d("a", a).astype(np.complex128)
    s0, s1 = float(shift_px[0]), float(shift_px[1])
    if s0 == round(s0) and s1 == round(s1):
        return np.roll(arr, (round(s0), round(s1)), axis=(0, 1))
    f0 = np.fft.fftfreq(arr.shape[0])[:, None]
    f1 = np.fft.fftfreq(arr.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (s0 * f0 + s1 * f1))
    return np.fft.ifft2(np.fft.fft2(arr) * ramp)


def _upsampled_magnitude(
    spectrum: NDArray[np.complex128],
    freqs: tuple[NDArray[np.float64], NDArray[np.float64]],
    centre: tuple[float, float],
    upsample: int,
    half_width: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``|sum_k S[k] exp(2πi x·f_k)|`` on a grid ``1 / upsample`` fine around ``centre``.

    A matrix-multiply DFT evaluated only where it is needed. Returns the magnitudes, shape
    ``(m, m)``, and the row and column sample coordinates.
    """
    m = 2 * int(np.ceil(half_width * upsample)) + 1
    offsets = (np.arange(m) - m // 2) / upsample
    x0 = centre[0] + offsets
    x1 = centre[1] + offsets
    e0 = np.exp(2j * np.pi * np.outer(x0, freqs[0]))  # (m, n0)
    e1 = np.exp(2j * np.pi * np.outer(freqs[1], x1))  # (n1, m)
    return np.abs(e0 @ spectrum @ e1), x0, x1


def _parabolic_offset(left: float, mid: float, right: float) -> float:
    """Vertex offset (in samples, within ±0.5) of the parabola through three samples."""
    denom = left - 2.0 * mid + right
    if denom >= 0.0:  # not a strict maximum: keep the sample
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def _peak_position(
    spectrum: NDArray[np.complex128],
    upsample: int,
    freqs: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> tuple[float, float]:
    """Sub-pixel maximum of ``g(x) = |sum_k S[k] exp(2πi x·f_k)|``.

    With the default ``f = fftfreq(n)``, ``g`` on integers is ``|ifft2(S)|`` (times ``n0 n1``)
    and the result is a signed position in pixels. The coarse maximum is taken on the
    integers, refined on a ``1 / upsample`` grid within ±1.5 samples, then by a parabola.
    """
    n0, n1 = spectrum.shape
    if freqs is None:
        freqs = (
            np.fft.fftfreq(n0).astype(np.float64, copy=False),
            np.fft.fftfreq(n1).astype(np.float64, copy=False),
        )
    coarse = np.abs(np.fft.ifft2(spectrum))
    i0, i1 = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    p0 = float(i0 - n0 if i0 > n0 // 2 else i0)
    p1 = float(i1 - n1 if i1 > n1 // 2 else i1)
    if upsample <= 1:
        return p0, p1
    fine, x0, x1 = _upsampled_magnitude(spectrum, freqs, (p0, p1), upsample, 1.5)
    j0, j1 = np.unravel_index(int(np.argmax(fine)), fine.shape)
    r0, r1 = float(x0[j0]), float(x1[j1])
    step = 1.0 / upsample
    if 0 < j0 < fine.shape[0] - 1:
        r0 += step * _parabolic_offset(fine[j0 - 1, j1], fine[j0, j1], fine[j0 + 1, j1])
    if 0 < j1 < fine.shape[1] - 1:
        r1 += step * _parabolic_offset(fine[j0, j1 - 1], fine[j0, j1], fine[j0, j1 + 1])
    return r0, r1


def _prepare_for_registration(
    a: NDArray[Any], weight: NDArray[np.float64]
) -> NDArray[np.complex128]:
    """Remove the weighted mean (the flat background carries no position) and window."""
    c = a.astype(np.complex128)
    mean = np.sum(c * weight) / np.sum(weight)
    return np.asarray((c - mean) * weight, dtype=np.complex128)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def illuminated_region(
    probe: Any,
    positions_px: Any,
    object_shape: tuple[int, int],
    *,
    threshold: float = 0.1,
) -> NDArray[np.bool_]:
    """Object pixels that the scan illuminated.

    Parameters
    ----------
    probe : array_like, shape (N0, N1)
        The probe (complex amplitude).
    positions_px : array_like, shape (n, 2)
        Probe-patch top-left corners ``(row, col)`` in object pixels (rounded as the engine
        cuts patches).
    object_shape : (int, int)
        Shape of the object array.
    threshold : float, optional
        Fraction of the maximum of the summed probe intensity above which a pixel counts as
        illuminated (default 0.1).

    Returns
    -------
    ndarray of bool, shape object_shape
        ``True`` where ``sum_j |P(r - r_j)|**2 > threshold * max``.

    Raises
    ------
    ValueError
        If a patch falls outside the object.
    """
    intensity = np.abs(_host_2d("probe", probe)) ** 2
    h, w = (int(object_shape[0]), int(object_shape[1]))
    n0, n1 = intensity.shape
    total = np.zeros((h, w), dtype=np.float64)
    for r, c in integer_positions(to_numpy(positions_px)).tolist():
        if r < 0 or c < 0 or r + n0 > h or c + n1 > w:
            raise ValueError(
                f"probe patch at corner ({r}, {c}) does not fit in object shape {(h, w)}"
            )
        total[r : r + n0, c : c + n1] += intensity
    peak = total.max()
    if peak <= 0.0:
        return np.zeros((h, w), dtype=bool)
    return total > threshold * peak


def register_shift(
    reference: Any,
    moving: Any,
    *,
    upsample: int = 20,
    region: Any = None,
) -> tuple[float, float]:
    """Sub-pixel translation of ``moving`` relative to ``reference``.

    The cross-correlation of the two (mean-removed, optionally windowed) images is located on
    the pixel grid by FFT, refined on a grid ``1 / upsample`` pixel fine within ±1.5 px of the
    coarse peak by a matrix-multiply DFT, and finished with a parabolic fit of the fine peak.

    Parameters
    ----------
    reference, moving : array_like, shape (H, W)
        Real or complex images of the same shape. Complex images may differ by a global
        complex factor (only the correlation magnitude is used).
    upsample : int, optional
        Refinement factor; 1 gives integer shifts only. Default 20.
    region : array_like of bool, shape (H, W), optional
        Only these pixels take part (both images are windowed by it).

    Returns
    -------
    (float, float)
        ``(drow, dcol)`` such that ``moving(x) ≈ reference(x - shift)``: pass its negative to
        :func:`fourier_shift` to bring ``moving`` onto ``reference``.
    """
    ref = _host_2d("reference", reference)
    mov = _host_2d("moving", moving)
    if ref.shape != mov.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, moving {mov.shape}")
    weight = _region_mask(region, ref.shape).astype(np.float64)
    a = _prepare_for_registration(ref, weight)
    b = _prepare_for_registration(mov, weight)
    cross_power = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    return _peak_position(cross_power, int(upsample))


def _phase_ramp_frequency(
    estimate: NDArray[np.complex128], reference: NDArray[Any], weight: NDArray[np.float64]
) -> tuple[float, float]:
    """Frequency ``q`` (cycles per pixel) of the linear phase ramp in ``reference / estimate``.

    ``w = reference * conj(estimate)`` is ``|estimate|**2 c exp(2πi q·x)``; ``q`` maximises
    ``|sum_x w(x) exp(-2πi q·x)| = |sum_x conj(w(x)) exp(2πi q·x)|``, which is the peak search
    of :func:`_peak_position` with ``S = conj(w)`` and "frequencies" ``x / n`` (``q`` then comes
    out in units of ``1 / n``).
    """
    w = reference.astype(np.complex128) * np.conj(estimate) * weight
    n0, n1 = w.shape
    freqs = (np.arange(n0) / n0, np.arange(n1) / n1)
    u0, u1 = _peak_position(np.conj(w), 20, freqs)
    return u0 / n0, u1 / n1


def align_to_reference(
    estimate: Any,
    reference: Any,
    region: Any = None,
    *,
    subpixel: bool = True,
    shift: bool = True,
    remove_ramp: bool = False,
) -> NDArray[np.complex128]:
    """Bring ``estimate`` onto ``reference``, removing the ptychographic ambiguities.

    In order: the translation found by :func:`register_shift` is undone with a Fourier shift
    (periodic; edges are unreliable), then the global complex factor
    ``c = sum(conj(est) * ref) / sum(|est|**2)`` over ``region`` is applied. With
    ``remove_ramp`` a linear phase ramp (the frequency of the peak of the spectrum of
    ``ref * conj(est)``) is removed before and again after the translation.

    Parameters
    ----------
    estimate, reference : array_like, shape (H, W)
        Complex images of the same shape.
    region : array_like of bool, shape (H, W), optional
        Pixels used for registration and for ``c`` (all pixels if None).
    subpixel : bool, optional
        Remove sub-pixel translations (default); otherwise whole pixels only.
    shift : bool, optional
        Remove a translation at all (default True).
    remove_ramp : bool, optional
        Also remove a linear phase ramp (object and probe can trade one). Default False.

    Returns
    -------
    ndarray of complex128, shape (H, W)
        ``c * estimate`` translated (and de-ramped), over the whole array.
    """
    est = _host_2d("estimate", estimate).astype(np.complex128)
    ref = _host_2d("reference", reference)
    if est.shape != ref.shape:
        raise ValueError(f"shapes differ: estimate {est.shape}, reference {ref.shape}")
    mask = _region_mask(region, est.shape)
    weight = mask.astype(np.float64)
    rows = np.arange(est.shape[0])[:, None]
    cols = np.arange(est.shape[1])[None, :]

    def deramp(a: NDArray[np.complex128]) -> NDArray[np.complex128]:
        q0, q1 = _phase_ramp_frequency(a, ref, weight)
        return a * np.exp(2j * np.pi * (q0 * rows + q1 * cols))

    if remove_ramp:  # a ramp misleads the registration: remove it first, again after it
        est = deramp(est)
    if shift:
        s = register_shift(ref, est, upsample=20 if subpixel else 1, region=mask)
        if s != (0.0, 0.0):
            est = fourier_shift(est, (-s[0], -s[1]))
    if remove_ramp and shift:
        est = deramp(est)
    e = est[mask]
    norm = np.sum(np.abs(e) ** 2)
    c = np.sum(np.conj(e) * ref[mask]) / norm if norm > 0 else 0.0
    return c * est


def object_error(
    estimate: Any,
    truth: Any,
    *,
    region: Any = None,
    subpixel: bool = True,
    shift: bool = True,
    remove_ramp: bool = False,
) -> float:
    """Normalised rms error of an object after removing the ambiguities.

    ``sqrt(sum |c * est_shifted - truth|**2 / sum |truth|**2)`` over ``region``, with the
    translation, optional phase ramp and complex factor ``c`` found by
    :func:`align_to_reference`.

    Parameters
    ----------
    estimate, truth : array_like, shape (H, W)
        Reconstructed and true object.
    region : array_like of bool, shape (H, W), optional
        Pixels compared (all if None); use :func:`illuminated_region`, kept away from the
        array edges when shifts are expected.
    subpixel, shift, remove_ramp : bool, optional
        See :func:`align_to_reference`.

    Returns
    -------
    float
        0 for a perfect estimate; about 1 or more for an unrelated one.
    """
    ref = _host_2d("truth", truth).astype(np.complex128)
    mask = _region_mask(region, ref.shape)
    aligned = align_to_reference(
        estimate, ref, mask, subpixel=subpixel, shift=shift, remove_ramp=remove_ramp
    )
    denom = np.sum(np.abs(ref[mask]) ** 2)
    if denom == 0.0:
        raise ValueError("truth is zero over the region")
    return float(np.sqrt(np.sum(np.abs(aligned[mask] - ref[mask]) ** 2) / denom))


def probe_error(
    estimate: Any,
    truth: Any,
    *,
    region: Any = None,
    shift: bool = False,
    subpixel: bool = True,
) -> float:
    """Normalised rms error of a probe after removing a global complex factor.

    Parameters
    ----------
    estimate, truth : array_like, shape (N, N)
        Reconstructed and true probe.
    region : array_like of bool, optional
        Pixels compared (all if None).
    shift : bool, optional
        Also remove a translation (default False: the probe position is fixed by the
        object frame).
    subpixel : bool, optional
        With ``shift``, allow sub-pixel translations.

    Returns
    -------
    float
        ``sqrt(sum |c * est - truth|**2 / sum |truth|**2)``; scale invariant, so a probe with
        the right shape but the wrong intensity scores 0.
    """
    return object_error(estimate, truth, region=region, subpixel=subpixel, shift=shift)


def fourier_error(
    obj: Any,
    probe: Any,
    intensities: Any,
    positions_px: Any,
    *,
    mask: Any = None,
    subpixel: bool = True,
) -> float:
    """Normalised Fourier error of an object and probe against measured intensities.

    ``sum_j sum_k (|F(P O_j)|_k - sqrt(I_jk))**2 / sum_jk I_jk`` over the unmasked pixels of
    all patterns, with the forward model of :mod:`bluesky_ptycho.engine.forward`.

    Parameters
    ----------
    obj : array_like, shape (H, W)
        Complex object.
    probe : array_like, shape (N, N)
        Complex probe.
    intensities : array_like, shape (n, N, N)
        Measured patterns in the detector convention (zero frequency at ``(N//2, N//2)``);
        negative values count as 0.
    positions_px : array_like, shape (n, 2)
        Probe-patch corners in object pixels.
    mask : array_like of bool, shape (N, N) or (n, N, N), optional
        ``True`` marks pixels to ignore.
    subpixel : bool, optional
        Shift the probe by each position's fractional part, as :mod:`bluesky_ptycho.simulate`
        does (default True); otherwise round the positions.

    Returns
    -------
    float
        0 for noise-free data with the true object and probe.
    """
    o = _host_2d("obj", obj).astype(np.complex64)
    p = _host_2d("probe", probe).astype(np.complex64)
    data = to_numpy(intensities).astype(np.float64)
    pos = to_numpy(positions_px).astype(np.float64).reshape(-1, 2)
    n0, n1 = p.shape
    if data.ndim == 2:
        data = data[None]
    if data.shape[1:] != (n0, n1) or data.shape[0] != pos.shape[0]:
        raise ValueError(
            f"intensities of shape {data.shape} do not match probe {p.shape} "
            f"and {pos.shape[0]} positions"
        )
    keep: NDArray[np.bool_] | None = None
    if mask is not None:
        m = to_numpy(mask).astype(bool)
        if m.shape not in ((n0, n1), data.shape):
            raise ValueError(f"mask of shape {m.shape} matches neither {(n0, n1)} nor {data.shape}")
        keep = np.broadcast_to(~m, data.shape)
    measured = np.sqrt(np.clip(data, 0.0, None))
    numerator = 0.0
    for start in range(0, pos.shape[0], _CHUNK):
        stop = min(start + _CHUNK, pos.shape[0])
        waves = exit_waves(o, p, pos[start:stop], subpixel=subpixel)
        model = np.abs(np.fft.fftshift(np.fft.fft2(waves, norm="ortho"), axes=(-2, -1)))
        diff2 = (model - measured[start:stop]) ** 2
        if keep is not None:
            diff2 = diff2[keep[start:stop]]
        numerator += float(np.sum(diff2))
    clipped = measured**2
    denom = float(np.sum(clipped[keep] if keep is not None else clipped))
    if denom <= 0.0:
        raise ValueError("intensities sum to zero over the unmasked pixels")
    return numerator / denom
