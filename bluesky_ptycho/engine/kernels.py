"""The ePIE update loop behind a small protocol, as array-API code and as in-place NumPy.

A kernel receives arrays (object, probe, the pattern store, the indices to visit and the step
sizes) and returns the updated object and probe with the Fourier error of the patterns it
visited; it knows nothing of the engine that calls it. :class:`ArrayAPIKernel` is the
reference: only array-API standard operations, so it runs on CuPy and on array-api-strict
unchanged. :class:`NumpyKernel` performs the same arithmetic with preallocated buffers, ``out=``
arguments, BLAS dot products for the error and FFTW/SciPy; the tests check that it agrees with
the reference to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import scipy.fft

from bluesky_ptycho.backend import Backend
from bluesky_ptycho.engine.forward import shift_probe
from bluesky_ptycho.engine.store import BAD_CODE, PatternStore

__all__ = [
    "ArrayAPIKernel",
    "Kernel",
    "KernelResult",
    "NumpyKernel",
    "UnnormalisedFFT",
    "UpdateStep",
    "absolute_eps",
    "select_kernel",
]

_TINY = 1e-30


@dataclass(frozen=True)
class UpdateStep:
    """The step sizes of one chunk of updates.

    Attributes
    ----------
    alpha, beta : float
        Object and probe update strengths.
    eps : float
        Regulariser of the modulus constraint, relative to each pattern's mean amplitude.
    rpie_alpha : float or None
        The rPIE regulariser of the object step; None for ePIE's ``1 / max|P|**2``.
    update_probe : bool
        Whether the probe is updated.
    """

    alpha: float = 1.0
    beta: float = 1.0
    eps: float = 1e-4
    rpie_alpha: float | None = None
    update_probe: bool = True


class KernelResult(NamedTuple):
    """What a kernel returns: the updated arrays and the error of the patterns visited.

    ``object`` may be the array passed in, updated in place; ``error_num / error_den`` is the
    normalised Fourier error ``sum((|F(P O)| - sqrt(I))**2) / sum(I)`` before the updates.
    """

    object: Any
    probe: Any
    error_num: float
    error_den: float


class Kernel(Protocol):
    """The update loop the engine calls; arrays in, updates out."""

    def matches(self, backend: Backend, shape: tuple[int, int], subpixel: bool) -> bool:
        """Whether this kernel can run for ``backend``, frame ``shape`` and ``subpixel``."""
        ...

    def run(
        self, obj: Any, probe: Any, store: PatternStore, indices: np.ndarray, step: UpdateStep
    ) -> KernelResult:
        """Visit ``indices`` in order, one ePIE update each."""
        ...


def select_kernel(backend: Backend, shape: tuple[int, int], subpixel: bool) -> Kernel:
    """The fastest kernel that implements these settings on ``backend``."""
    if backend.is_numpy and not subpixel:
        return NumpyKernel(backend, shape)
    return ArrayAPIKernel(backend, shape, subpixel=subpixel)


def absolute_eps(store: PatternStore, indices: np.ndarray, eps: float) -> np.ndarray:
    """Absolute regularisers: ``eps`` times each pattern's mean measured amplitude."""
    n0, n1 = store.frame_shape
    mean_amp = np.sqrt(np.maximum(store.sums[indices], 1.0) / (n0 * n1))
    return (eps * mean_amp + 1e-12).astype(np.float32)


class _Kernel:
    def __init__(self, backend: Backend, shape: tuple[int, int], subpixel: bool = False) -> None:
        self.backend = backend
        self.shape = (int(shape[0]), int(shape[1]))
        self.subpixel = bool(subpixel)

    def matches(self, backend: Backend, shape: tuple[int, int], subpixel: bool) -> bool:
        return (
            backend.name == self.backend.name
            and tuple(shape) == self.shape
            and bool(subpixel) == self.subpixel
        )


class ArrayAPIKernel(_Kernel):
    """Reference ePIE loop in array-API standard operations (NumPy, CuPy, array-api-strict)."""

    def run(
        self, obj: Any, probe: Any, store: PatternStore, indices: np.ndarray, step: UpdateStep
    ) -> KernelResult:
        xp = self.backend.xp
        fft2, ifft2 = self.backend.fft2, self.backend.ifft2
        n0, n1 = self.shape
        corners = store.corners
        frac = store.positions - corners if self.subpixel else None
        scales = store.scales
        eps_all = absolute_eps(store, indices, step.eps)
        rpie = step.rpie_alpha is not None
        gamma = float(step.rpie_alpha) if step.rpie_alpha is not None else 1.0
        update_probe = step.update_probe
        errors = []
        for k, j in enumerate(indices.tolist()):
            codes = store.codes(j)
            a = xp.astype(codes, xp.float32) * float(scales[j])
            r, c = (int(v) for v in corners[j])
            patch = obj[r : r + n0, c : c + n1]
            if frac is not None:
                shift = (float(frac[j, 0]), float(frac[j, 1]))
                p = shift_probe(probe, shift)
            else:
                p = probe
            spectrum = fft2(p * patch)
            modulus = xp.abs(spectrum)
            eps = float(eps_all[k])
            if store.masked[j]:
                valid = codes != BAD_CODE
                zero = xp.zeros_like(a)
                diff = xp.where(valid, modulus - a, zero)
                factor = xp.where(valid, a / (modulus + eps) - 1.0, zero)
            else:
                diff = modulus - a
                factor = a / (modulus + eps) - 1.0
            errors.append(xp.sum(diff * diff))
            dpsi = ifft2(spectrum * factor)
            p_conj = xp.conj(p)
            p_abs2 = xp.real(p * p_conj)
            p_max = xp.max(p_abs2) + _TINY
            if rpie:
                denom = (1.0 - gamma) * p_abs2 + gamma * p_max
                d_obj = step.alpha * p_conj * dpsi / denom
            else:
                d_obj = (step.alpha / p_max) * p_conj * dpsi
            if update_probe:
                o_conj = xp.conj(patch)
                o_max = xp.max(xp.real(patch * o_conj)) + _TINY
                d_probe = (step.beta / o_max) * o_conj * dpsi
                if frac is not None:
                    d_probe = shift_probe(d_probe, (-float(frac[j, 0]), -float(frac[j, 1])))
                probe = probe + d_probe
            obj[r : r + n0, c : c + n1] = patch + d_obj
        num = float(xp.sum(xp.stack(errors))) if errors else 0.0
        den = float(np.sum(store.sums[indices]))
        return KernelResult(obj, probe, num, den)


class NumpyKernel(_Kernel):
    """The same update in place on NumPy arrays: no allocation per update.

    Transforms are unnormalised (FFTW through pyFFTW when installed, else SciPy); the unitary
    scaling is folded into the measured amplitudes and the modulus factor.
    """

    def __init__(self, backend: Backend, shape: tuple[int, int]) -> None:
        super().__init__(backend, shape, subpixel=False)
        shape = self.shape
        self._fft = UnnormalisedFFT(shape)
        self._a = np.empty(shape, np.float32)
        self._m = np.empty(shape, np.float32)
        self._valid = np.empty(shape, bool)
        self._o_conj = np.empty(shape, np.complex64)
        self._p_conj = np.empty(shape, np.complex64)
        self._r = np.empty(shape, np.float32)

    def run(
        self, obj: Any, probe: Any, store: PatternStore, indices: np.ndarray, step: UpdateStep
    ) -> KernelResult:
        alpha, beta = float(step.alpha), float(step.beta)
        rpie = step.rpie_alpha is not None
        gamma = np.float32(step.rpie_alpha if rpie else 1.0)
        update_probe = step.update_probe
        n0, n1 = self.shape
        corners = store.corners
        masked = store.masked
        scales = store.scales
        sums = store.sums
        npix = float(n0 * n1)
        root = np.sqrt(npix)
        # unnormalised transforms: amplitudes and eps scale by sqrt(npix), dpsi by 1/npix
        eps_all = absolute_eps(store, indices, step.eps) * np.float32(root)
        code_step = (scales * np.float32(root)).astype(np.float32)
        a, m, r_buf = self._a, self._m, self._r
        o_conj, p_conj, valid = self._o_conj, self._p_conj, self._valid
        a_flat, m_flat, r_flat = a.reshape(-1), m.reshape(-1), r_buf.reshape(-1)
        fft = self._fft
        psi = fft.psi
        num = 0.0
        for k, j in enumerate(indices.tolist()):
            codes = store.codes(j)
            np.copyto(a, codes, casting="unsafe")
            a *= code_step[j]
            r, c = corners[j]
            patch = obj[r : r + n0, c : c + n1]
            np.multiply(probe, patch, out=psi)
            spectrum = fft.forward()
            np.abs(spectrum, out=m)
            if masked[j]:
                np.not_equal(codes, BAD_CODE, out=valid)
                np.subtract(m, a, out=r_buf)
                r_buf *= valid
                num += float(np.dot(r_flat, r_flat)) / npix
            else:
                # sum((m - a)^2) = m.m - 2 m.a + a.a, with a.a the stored counts
                mm_ma = float(np.dot(m_flat, m_flat) - 2.0 * np.dot(m_flat, a_flat))
                num += mm_ma / npix + sums[j]
            np.abs(probe, out=r_buf)
            p_max = float(r_buf.max()) ** 2 + _TINY
            # modulus factor sqrt(I)/(|Psi| + eps) - 1, scaled by alpha / max|P|^2
            m += eps_all[k]
            np.divide(a, m, out=m)
            m -= np.float32(1.0)
            if masked[j]:
                m *= valid
            m *= np.float32(alpha / (p_max * npix))
            spectrum *= m
            dpsi = fft.backward()
            if update_probe:
                np.conjugate(patch, out=o_conj)  # O before its update
                np.abs(o_conj, out=r_buf)
                o_max = float(r_buf.max()) ** 2 + _TINY
            np.conjugate(probe, out=p_conj)
            p_conj *= dpsi
            if rpie:  # conj(P) dpsi / ((1 - g)|P|^2 + g max|P|^2), dpsi scaled by alpha/max|P|^2
                np.abs(probe, out=r_buf)
                np.multiply(r_buf, r_buf, out=r_buf)
                r_buf *= np.float32((1.0 - gamma) / p_max)
                r_buf += gamma
                p_conj /= r_buf
            patch += p_conj
            if update_probe:
                o_conj *= dpsi
                o_conj *= np.float32(beta * p_max / (alpha * o_max))
                probe += o_conj
        den = float(np.sum(sums[indices]))
        return KernelResult(obj, probe, num, den)


class UnnormalisedFFT:
    """Forward and backward unnormalised 2-D FFTs between fixed complex64 buffers.

    ``forward()`` transforms :attr:`psi` into :attr:`spectrum`; ``backward()`` transforms
    :attr:`spectrum` into :attr:`dpsi`. pyFFTW (FFTW) plans are made once per kernel; without
    pyFFTW, SciPy's pocketfft does the same.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        try:
            import pyfftw
        except ImportError:  # pragma: no cover - pyFFTW is a dependency, but optional at run time
            pyfftw = None
        self.library = "pyfftw" if pyfftw is not None else "scipy"
        if pyfftw is not None:
            threads = 1  # two FFTW threads collapse when the other core is busy
            self.psi = pyfftw.empty_aligned(shape, dtype="complex64")
            self.spectrum = pyfftw.empty_aligned(shape, dtype="complex64")
            self.dpsi = pyfftw.empty_aligned(shape, dtype="complex64")
            flags = ("FFTW_MEASURE", "FFTW_DESTROY_INPUT")
            self._fwd = pyfftw.FFTW(
                self.psi, self.spectrum, axes=(0, 1), flags=flags, threads=threads
            )
            self._bwd = pyfftw.FFTW(
                self.spectrum,
                self.dpsi,
                axes=(0, 1),
                direction="FFTW_BACKWARD",
                flags=flags,
                threads=threads,
            )
        else:
            self.psi = np.empty(shape, np.complex64)
            self.spectrum = np.empty(shape, np.complex64)
            self.dpsi = np.empty(shape, np.complex64)
            self._fwd = self._bwd = None

    def forward(self) -> np.ndarray:
        if self._fwd is not None:
            self._fwd.execute()
        else:
            self.spectrum[...] = scipy.fft.fft2(self.psi, norm="backward", overwrite_x=True)
        return self.spectrum

    def backward(self) -> np.ndarray:
        if self._bwd is not None:
            self._bwd.execute()
        else:
            self.dpsi[...] = scipy.fft.ifft2(self.spectrum, norm="forward", overwrite_x=True)
        return self.dpsi
