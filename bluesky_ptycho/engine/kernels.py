"""The ePIE update loop, as array-API code and as an in-place NumPy specialisation.

:class:`ArrayAPIKernel` is the reference: only array-API standard operations, so it runs on CuPy
and on array-api-strict unchanged. :class:`NumpyKernel` performs the same arithmetic with
preallocated buffers, ``out=`` arguments, BLAS dot products for the error and SciPy's FFT; the
tests check that it agrees with the reference to float32 rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.fft

from bluesky_ptycho.engine.forward import shift_probe
from bluesky_ptycho.engine.store import BAD_CODE

if TYPE_CHECKING:
    from bluesky_ptycho.engine.epie import EPIE

__all__ = ["ArrayAPIKernel", "NumpyKernel", "select_kernel"]

_TINY = 1e-30


def select_kernel(engine: EPIE) -> ArrayAPIKernel | NumpyKernel:
    """The fastest kernel that implements the engine's options on its backend."""
    if engine.backend.is_numpy and not engine.options.subpixel:
        return NumpyKernel(engine)
    return ArrayAPIKernel(engine)


class _Kernel:
    def __init__(self, engine: EPIE) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.shape = engine.probe_shape
        self.subpixel = engine.options.subpixel

    def matches(self, engine: EPIE) -> bool:
        return (
            engine is self.engine
            and engine.backend is self.backend
            and engine.probe_shape == self.shape
            and engine.options.subpixel == self.subpixel
        )

    def _eps(self, indices: np.ndarray) -> np.ndarray:
        """Absolute regularisers: eps times each pattern's mean measured amplitude."""
        store = self.engine._store
        assert store is not None and self.shape is not None
        npix = self.shape[0] * self.shape[1]
        mean_amp = np.sqrt(np.maximum(store.sums[indices], 1.0) / npix)
        return (self.engine.options.eps * mean_amp + 1e-12).astype(np.float32)


class ArrayAPIKernel(_Kernel):
    """Reference ePIE loop in array-API standard operations (NumPy, CuPy, array-api-strict)."""

    def run(self, indices: np.ndarray, update_probe: bool) -> tuple[float, float]:
        eng = self.engine
        store = eng._store
        assert store is not None and self.shape is not None
        xp = self.backend.xp
        fft2, ifft2 = self.backend.fft2, self.backend.ifft2
        opts = eng.options
        n0, n1 = self.shape
        obj = eng._object
        probe = eng._probe
        corners = store.corners
        frac = store.positions - corners if self.subpixel else None
        scales = store.scales
        eps_all = self._eps(indices)
        rpie = opts.algorithm in ("rpie", "mpie")
        gamma = float(opts.rpie_alpha)
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
                d_obj = opts.alpha * p_conj * dpsi / denom
            else:
                d_obj = (opts.alpha / p_max) * p_conj * dpsi
            if update_probe:
                o_conj = xp.conj(patch)
                o_max = xp.max(xp.real(patch * o_conj)) + _TINY
                d_probe = (opts.beta / o_max) * o_conj * dpsi
                if frac is not None:
                    d_probe = shift_probe(d_probe, (-float(frac[j, 0]), -float(frac[j, 1])))
                probe = probe + d_probe
            obj[r : r + n0, c : c + n1] = patch + d_obj
        eng._probe = probe
        num = float(xp.sum(xp.stack(errors))) if errors else 0.0
        den = float(np.sum(store.sums[indices]))
        return num, den


class NumpyKernel(_Kernel):
    """The same update in place on NumPy arrays: no allocation per update.

    Transforms are unnormalised (FFTW through pyFFTW when installed, else SciPy); the unitary
    scaling is folded into the measured amplitudes and the modulus factor.
    """

    def __init__(self, engine: EPIE) -> None:
        super().__init__(engine)
        assert self.shape is not None
        shape = self.shape
        self._fft = UnnormalisedFFT(shape)
        self._a = np.empty(shape, np.float32)
        self._m = np.empty(shape, np.float32)
        self._valid = np.empty(shape, bool)
        self._o_conj = np.empty(shape, np.complex64)
        self._p_conj = np.empty(shape, np.complex64)
        self._r = np.empty(shape, np.float32)

    def run(self, indices: np.ndarray, update_probe: bool) -> tuple[float, float]:
        eng = self.engine
        store = eng._store
        assert store is not None and self.shape is not None
        opts = eng.options
        alpha, beta = float(opts.alpha), float(opts.beta)
        rpie = opts.algorithm in ("rpie", "mpie")
        gamma = np.float32(opts.rpie_alpha)
        n0, n1 = self.shape
        obj = eng._object
        probe = eng._probe
        corners = store.corners
        masked = store.masked
        scales = store.scales
        sums = store.sums
        npix = float(n0 * n1)
        root = np.sqrt(npix)
        # unnormalised transforms: amplitudes and eps scale by sqrt(npix), dpsi by 1/npix
        eps_all = self._eps(indices) * np.float32(root)
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
        return num, den


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
