"""The mini-batch ePIE update: many patterns from one object and probe, combined in fixed order.

For a batch ``B`` of patterns, every exit-wave update is computed from the same object ``O``
and probe ``P`` (:meth:`BatchedKernel.contributions`, one batched FFT pair per call: the shape
a GPU wants), and the updates are then summed in batch order and applied once
(:func:`apply_batch`), a regularised least-squares step::

    dpsi_j = F^-1[ Psi_j (sqrt(I_j) / (|Psi_j| + eps) - 1) ],   Psi_j = F[P O_j]
    O     += alpha sum_j conj(P) dpsi_j   / ((1 - g) sum_j |P|^2     + g max sum_j |P|^2)
    P     += beta  sum_j conj(O_j) dpsi_j / ((1 - g) sum_j |O_j|^2   + g max sum_j |O_j|^2)

(sums over the batch, each ``P`` term placed at its patch). With ``g = 1`` this is ePIE's step
averaged over the batch; small ``g`` approaches the per-pixel least-squares (error-reduction)
step. The contributions of each pattern depend only on ``O``, ``P`` and the pattern, and the sums
run in batch order, so however the batch is split across workers the result is the same.

Everything here is array-API code: it runs on NumPy, CuPy and array-api-strict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_ptycho.backend import Backend, to_numpy
from bluesky_ptycho.engine.kernels import UpdateStep, absolute_eps
from bluesky_ptycho.engine.store import BAD_CODE, PatternStore

__all__ = ["BatchedKernel", "Contributions", "apply_batch"]

_TINY = 1e-30


@dataclass
class Contributions:
    """The per-pattern terms of one batch (or of a contiguous slice of it), in batch order.

    Attributes
    ----------
    object_num : array (b, N, N) complex64
        ``conj(P) dpsi_j``, to be added at pattern ``j``'s patch.
    probe_num : array (b, N, N) complex64
        ``conj(O_j) dpsi_j``.
    probe_den : array (b, N, N) float32
        ``|O_j|**2``.
    error_num : ndarray (b,) float64
        ``sum((|Psi_j| - sqrt(I_j))**2)`` over the good pixels (before the update).
    """

    object_num: Any
    probe_num: Any
    probe_den: Any
    error_num: np.ndarray

    def __len__(self) -> int:
        return int(self.error_num.shape[0])


class BatchedKernel:
    """Exit-wave updates of many patterns in one call (array API; batched FFTs).

    Parameters
    ----------
    backend : Backend
    shape : (int, int)
        Frame shape.
    """

    def __init__(self, backend: Backend, shape: tuple[int, int]) -> None:
        self.backend = backend
        self.shape = (int(shape[0]), int(shape[1]))

    def contributions(
        self, obj: Any, probe: Any, store: PatternStore, indices: np.ndarray, eps: float
    ) -> Contributions:
        """The terms of patterns ``indices`` against the same ``obj`` and ``probe``.

        Parameters
        ----------
        obj, probe : arrays of the backend
        store : PatternStore
        indices : ndarray of int
        eps : float
            Regulariser of the modulus constraint, relative to each pattern's mean amplitude.
        """
        xp = self.backend.xp
        n0, n1 = self.shape
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            empty = xp.zeros((0, n0, n1), dtype=xp.complex64)
            return Contributions(empty, empty, xp.zeros((0, n0, n1), dtype=xp.float32), np.zeros(0))
        corners = store.corners[idx]
        codes = xp.stack([store.codes(int(j)) for j in idx.tolist()])
        scales = xp.asarray(store.scales[idx].astype(np.float32))
        amp = xp.astype(codes, xp.float32) * scales[:, None, None]
        patches = xp.stack([obj[r : r + n0, c : c + n1] for r, c in corners.tolist()])
        spectra = self.backend.fft2(patches * probe)
        modulus = xp.abs(spectra)
        eps_abs = xp.asarray(absolute_eps(store, idx, eps))[:, None, None]
        factor = amp / (modulus + eps_abs) - 1.0
        diff = modulus - amp
        if bool(np.any(store.masked[idx])):
            valid = codes != BAD_CODE
            zero = xp.zeros_like(amp)
            factor = xp.where(valid, factor, zero)
            diff = xp.where(valid, diff, zero)
        err = xp.sum(xp.reshape(diff * diff, (idx.size, n0 * n1)), axis=1)
        dpsi = self.backend.ifft2(spectra * factor)
        object_num = xp.conj(probe) * dpsi
        probe_num = xp.conj(patches) * dpsi
        probe_den = xp.real(patches * xp.conj(patches))
        return Contributions(
            object_num,
            probe_num,
            probe_den,
            np.asarray(to_numpy(err), dtype=np.float64).reshape(-1),
        )


def apply_batch(
    backend: Backend,
    obj: Any,
    probe: Any,
    corners: np.ndarray,
    parts: Contributions,
    step: UpdateStep,
    regulariser: float,
) -> tuple[Any, Any]:
    """Sum a batch's contributions in batch order and apply them once.

    Parameters
    ----------
    backend : Backend
    obj, probe : arrays
        The object and probe the contributions were computed from (not changed).
    corners : ndarray (b, 2) of int
        Patch corners of the batch's patterns, in batch order.
    parts : Contributions
        All the batch's terms, in batch order.
    step : UpdateStep
        ``alpha``, ``beta`` and ``update_probe`` are used.
    regulariser : float
        ``g`` in (0, 1] of the module docstring.

    Returns
    -------
    object, probe : new arrays
    """
    xp = backend.xp
    n0, n1 = probe.shape
    b = len(parts)
    if b == 0:
        return obj, probe
    g = float(regulariser)
    r0, c0 = (int(v) for v in corners.min(axis=0))
    r1, c1 = (int(v) + n for v, n in zip(corners.max(axis=0), (n0, n1), strict=True))
    num = xp.zeros((r1 - r0, c1 - c0), dtype=xp.complex64)
    den = xp.zeros((r1 - r0, c1 - c0), dtype=xp.float32)
    p2 = xp.real(probe * xp.conj(probe))
    for k, (r, c) in enumerate(corners.tolist()):
        rr, cc = r - r0, c - c0
        num[rr : rr + n0, cc : cc + n1] = num[rr : rr + n0, cc : cc + n1] + parts.object_num[k, ...]
        den[rr : rr + n0, cc : cc + n1] = den[rr : rr + n0, cc : cc + n1] + p2
    scale = (1.0 - g) * den + (g * float(xp.max(den)) + _TINY)
    new_obj = xp.asarray(obj, copy=True)
    new_obj[r0:r1, c0:c1] = obj[r0:r1, c0:c1] + xp.astype(
        float(step.alpha) * num / scale, xp.complex64
    )
    new_probe = probe
    if step.update_probe:
        pnum = _ordered_sum(xp, parts.probe_num)
        pden = _ordered_sum(xp, parts.probe_den)
        pscale = (1.0 - g) * pden + (g * float(xp.max(pden)) + _TINY)
        new_probe = probe + xp.astype(float(step.beta) * pnum / pscale, xp.complex64)
    return new_obj, new_probe


def _ordered_sum(xp: Any, a: Any) -> Any:
    """``a[0] + a[1] + ...`` in index order (the same association whatever produced ``a``)."""
    out = a[0, ...]
    for k in range(1, int(a.shape[0])):
        out = out + a[k, ...]
    return out
