"""The incremental ePIE (Maiden & Rodenburg 2009), written against the Python array API.

One update for pattern ``j`` at patch ``O_j`` of the object, with probe ``P``::

    psi   = P * O_j
    Psi   = F[psi]                                  (unitary 2-D FFT)
    Psi'  = sqrt(I_j) * Psi / (|Psi| + eps)         (modulus constraint, masked pixels kept)
    dpsi  = F^-1[Psi'] - psi = F^-1[Psi * (sqrt(I_j) / (|Psi| + eps) - 1)]
    O_j  += alpha * conj(P)   / max|P|^2   * dpsi
    P    += beta  * conj(O_j) / max|O_j|^2 * dpsi   (with O_j before its update)

Patterns can be added before, between and after passes. The same code runs on NumPy, CuPy and
array-api-strict; NumPy additionally gets an in-place kernel (:mod:`._numpy_kernel`) that does the
same arithmetic with preallocated buffers, and the tests check that both agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bluesky_ptycho import validation
from bluesky_ptycho.backend import Backend, backend_for, get_backend, to_numpy
from bluesky_ptycho.engine import constraints
from bluesky_ptycho.engine.forward import integer_positions
from bluesky_ptycho.engine.kernels import Kernel, UpdateStep, select_kernel
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.engine.store import PatternStore
from bluesky_ptycho.probes import ProbeInit, make_start_probe

ALGORITHMS = ("epie", "rpie", "mpie")
_MAX_TRACE = 512
VALIDATION_COVERAGE = 0.9
_AUTO_RETRY_UNTIL = 256  # patterns; the estimate uses at most 256

__all__ = [
    "ALGORITHMS",
    "EPIE",
    "EPIEOptions",
    "default_probe",
    "positive_pair",
    "scale_probe",
]


@dataclass(frozen=True)
class EPIEOptions:
    """Options of the ePIE reconstructor.

    Attributes
    ----------
    alpha, beta : float
        Object and probe update strengths; 1 as in the study. ``beta=0`` keeps the probe fixed.
    seed : int or None
        Seed of the per-pass shuffling; the only source of randomness.
    probe_update_start : int
        Passes to complete before the probe is updated (0: from the first update).
    eps : float
        Regulariser of the modulus constraint, relative to the mean measured amplitude.
    subpixel : bool
        Honour fractional positions by shifting the probe with a Fourier phase ramp (two more
        FFTs per update). Otherwise positions are rounded to the nearest pixel.
    probe_fwhm_fraction : float
        FWHM of the Gaussian starting probe as a fraction of the frame size.
    algorithm : {"epie", "rpie", "mpie"}
        The update step. ``"epie"`` is the study's (Maiden & Rodenburg 2009). ``"rpie"``
        regularises the object update, ``conj(P) dpsi / ((1 - a)|P|^2 + a max|P|^2)`` with
        ``a = rpie_alpha`` (Maiden, Johnson & Li 2017), so dimly lit object pixels take larger
        steps. ``"mpie"`` is rPIE plus momentum: every ``mpie_interval`` updates object and
        probe move on by ``mpie_eta`` times their accumulated velocity.
    rpie_alpha : float
        The rPIE regulariser ``a`` in (0, 1]; 1 is ePIE's object step.
    mpie_eta, mpie_interval : float, int
        Momentum friction and the number of updates between momentum steps (mPIE).
    probe_power : bool
        Hold ``sum(|P|**2)`` to the measured mean counts after every chunk of updates, scaling
        the object inversely (the global factor the data cannot fix).
    probe_centre : bool
        Keep the probe's intensity centroid at the array centre, moving the object with it
        (whole pixels, no wrap); see :func:`~bluesky_ptycho.engine.constraints.centre_probe`.
    probe_support : float or None
        Radius of a disc, as a fraction of the frame size, outside which the probe is zeroed
        after every chunk of updates (None: no support).
    object_amplitude_max : float or None
        Bound of the object's amplitude (None: unbounded); default 2. Meaningful with the probe
        power held to the counts, which makes an empty beam's transmission about 1 (a specimen
        whose mean intensity transmission is below a quarter would need a larger bound).
        Measured on the Siemens star: plain ePIE blows up (Fourier error 1e7) after 100 to 200
        passes over half the scan; with the bound it stays at 0.019 for 300 passes.
    validation_every : int
        Hold every ``k``-th pattern out of the updates (pattern ``j`` with ``j % k == k // 2``)
        and report the Fourier error the model predicts for them
        (:meth:`EPIE.validation_error`): a cross-validated "did it work" signal. 0: none held.
    """

    alpha: float = 1.0
    beta: float = 1.0
    seed: int | None = 0
    probe_update_start: int = 0
    eps: float = 1e-4
    subpixel: bool = False
    probe_fwhm_fraction: float = 0.125
    algorithm: str = "epie"
    rpie_alpha: float = 0.1
    mpie_eta: float = 0.7
    mpie_interval: int = 50
    probe_power: bool = True
    probe_centre: bool = True
    probe_support: float | None = None
    object_amplitude_max: float | None = 2.0
    validation_every: int = 0

    @classmethod
    def study(cls, **changes: Any) -> EPIEOptions:
        """The study's plain ePIE: alpha = beta = 1 and no convergence aid."""
        base: dict[str, Any] = {
            "probe_power": False,
            "probe_centre": False,
            "object_amplitude_max": None,
        }
        base.update(changes)
        return cls(**base)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha <= 2.0):
            raise ValueError(f"alpha must be in (0, 2], got {self.alpha!r}")
        if not (math.isfinite(self.beta) and 0.0 <= self.beta <= 2.0):
            raise ValueError(f"beta must be in [0, 2], got {self.beta!r}")
        if self.probe_update_start < 0:
            raise ValueError(f"probe_update_start must be >= 0, got {self.probe_update_start!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be positive, got {self.eps!r}")
        if not 0.0 < self.probe_fwhm_fraction <= 1.0:
            raise ValueError(
                f"probe_fwhm_fraction must be in (0, 1], got {self.probe_fwhm_fraction!r}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if not (math.isfinite(self.rpie_alpha) and 0.0 < self.rpie_alpha <= 1.0):
            raise ValueError(f"rpie_alpha must be in (0, 1], got {self.rpie_alpha!r}")
        if not (math.isfinite(self.mpie_eta) and 0.0 <= self.mpie_eta < 1.0):
            raise ValueError(f"mpie_eta must be in [0, 1), got {self.mpie_eta!r}")
        if int(self.mpie_interval) < 1:
            raise ValueError(f"mpie_interval must be >= 1, got {self.mpie_interval!r}")
        if self.probe_support is not None and not (
            math.isfinite(self.probe_support) and 0.0 < self.probe_support <= 1.0
        ):
            raise ValueError(f"probe_support must be in (0, 1], got {self.probe_support!r}")
        if self.object_amplitude_max is not None and not (
            math.isfinite(self.object_amplitude_max) and self.object_amplitude_max > 0
        ):
            raise ValueError(
                f"object_amplitude_max must be positive, got {self.object_amplitude_max!r}"
            )
        if int(self.validation_every) < 0 or int(self.validation_every) == 1:
            raise ValueError(
                f"validation_every must be 0 (off) or >= 2, got {self.validation_every!r}"
            )


def default_probe(shape: tuple[int, int], fwhm_px: float, total_counts: float) -> np.ndarray:
    """The study's starting probe: a Gaussian with flat phase centred at ``(N//2, N//2)``.

    Scaled so that ``sum(|P|**2) == total_counts`` (the counts of one pattern through empty
    space under the unitary FFT).
    """
    rows = np.arange(shape[0]) - shape[0] // 2
    cols = np.arange(shape[1]) - shape[1] // 2
    sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    # FWHM refers to the intensity |P|^2, so the amplitude has sqrt(2) times that sigma.
    amp = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (4.0 * sigma**2))
    amp *= math.sqrt(total_counts / float(np.sum(amp**2)))
    return amp.astype(np.complex64)


def scale_probe(probe: Any, intensities: Any, mask: Any = None) -> np.ndarray:
    """Scale a probe so that ``sum(|P|**2)`` equals the mean counts per pattern.

    Use it for a probe from another code or another normalisation (e.g. the measured
    Siemens-star data's probe needs a factor of about 94).
    """
    p = to_numpy(probe).astype(np.complex64)
    i = np.asarray(intensities, dtype=np.float64)
    if mask is not None:
        i = np.where(np.asarray(mask, dtype=bool), 0.0, i)
    counts = float(np.mean(np.sum(np.clip(i, 0, None), axis=(-2, -1))))
    power = float(np.sum(np.abs(p) ** 2))
    if not (counts > 0 and power > 0):
        raise ValueError("cannot scale a probe to empty patterns or an empty probe")
    return (p * np.float32(math.sqrt(counts / power))).astype(np.complex64)


class EPIE:
    """Incremental ePIE reconstructor.

    Parameters
    ----------
    object_shape : (int, int)
        Shape of the object array, fixed for the reconstruction's life (see
        :meth:`bluesky_ptycho.geometry.Geometry.object_frame`).
    probe : array, ProbeInit, str or dict, optional
        Initial probe ``(N, N)``, or how to make one from the data
        (:class:`~bluesky_ptycho.probes.ProbeInit`, its kind name or a dict of its
        fields). Default ``"auto"``: made from the patterns held at the first update (the
        bright-field pupil with the defocus the shadow images show, or the Gaussian when the
        data show neither) and scaled to their mean counts; see :attr:`probe_origin`.
    options : EPIEOptions, optional
    probe_shape : (int, int), optional
        Frame shape, when no probe is given; otherwise taken from the first frames added.
    object : array, optional
        Initial object; default ones.
    backend : str or Backend, optional
        ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``. Default: the namespace of ``probe``,
        or NumPy.

    Notes
    -----
    Not thread-safe: one thread owns an engine (see :class:`bluesky_ptycho.live`).
    """

    def __init__(
        self,
        object_shape: tuple[int, int],
        probe: Any = None,
        options: EPIEOptions | None = None,
        *,
        probe_shape: tuple[int, int] | None = None,
        object: Any = None,
        backend: str | Backend | None = None,
    ) -> None:
        self._options = options if options is not None else EPIEOptions()
        self._probe_init: ProbeInit | None = None
        if probe is None or isinstance(probe, (ProbeInit, str, dict)):
            self._probe_init = ProbeInit.parse(probe)
            probe = None
            if self._probe_init.kind == "array":
                probe = self._probe_init.array
                self._probe_init = None
        if isinstance(backend, Backend):
            self._be = backend
        elif backend is not None:
            self._be = get_backend(backend)
        elif probe is not None and not isinstance(probe, np.ndarray):
            self._be = backend_for(probe)
        else:
            self._be = get_backend("numpy")
        xp = self._be.xp
        shape = positive_pair(object_shape, "object_shape")
        self._object_shape = shape
        if object is None:
            self._object = xp.ones(shape, dtype=xp.complex64)
        else:
            o = self._asarray(object, xp.complex64)
            if tuple(o.shape) != shape:
                raise ValueError(f"object has shape {tuple(o.shape)}, expected {shape}")
            self._object = o
        self._probe: Any = None
        self._probe_shape: tuple[int, int] | None = None
        self._probe_origin = "none yet"
        if probe is not None:
            self._probe_origin = "given"
            p = self._asarray(probe, xp.complex64)
            if p.ndim != 2:
                raise ValueError(f"probe must be 2-D, got shape {tuple(p.shape)}")
            self._set_probe_shape(tuple(p.shape))
            self._probe = p
        elif probe_shape is not None:
            self._set_probe_shape(positive_pair(probe_shape, "probe_shape"))
        self._store: PatternStore | None = None
        if self._probe_shape is not None:
            self._store = PatternStore(self._be, self._probe_shape)
        self._rng = np.random.default_rng(self._options.seed)
        self._iteration = 0
        self._pattern_updates = 0
        self._history: list[float] = []
        self._trace: list[tuple[float, float]] = []
        self._auto_tried_at = 0
        self._frozen_validation = float("nan")
        self._frozen_baseline = float("nan")
        self._lit_cache: tuple[int, np.ndarray] | None = None
        self._frame_sum: np.ndarray = np.zeros((1, 1))
        self._frame_count = 0
        self._pass_order = np.zeros(0, dtype=np.int64)
        self._pass_next = 0
        self._pass_num = 0.0
        self._pass_den = 0.0
        self._kernel: Kernel | None = None
        self._support: Any = None
        self._momentum: dict[str, Any] | None = None
        self._since_momentum = 0
        self._excluded = np.zeros(0, dtype=bool)
        self._last_error = float("nan")

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> Backend:
        """The array backend the engine computes with."""
        return self._be

    @property
    def options(self) -> EPIEOptions:
        """The current options; assign new ones to steer a running reconstruction."""
        return self._options

    @options.setter
    def options(self, options: EPIEOptions) -> None:
        if not isinstance(options, EPIEOptions):
            raise TypeError("options must be an EPIEOptions")
        if options.seed != self._options.seed:
            self._rng = np.random.default_rng(options.seed)
        self._options = options

    @property
    def object_shape(self) -> tuple[int, int]:
        return self._object_shape

    @property
    def probe_shape(self) -> tuple[int, int] | None:
        return self._probe_shape

    @property
    def n_patterns(self) -> int:
        """Number of patterns held."""
        return 0 if self._store is None else len(self._store)

    @property
    def iteration(self) -> int:
        """Completed passes."""
        return self._iteration

    @property
    def pattern_updates(self) -> int:
        """Single-pattern updates done so far."""
        return self._pattern_updates

    @property
    def probe_origin(self) -> str:
        """How the starting probe was made (``"given"``, or the description of a ProbeInit)."""
        return self._probe_origin

    @property
    def held_out(self) -> np.ndarray:
        """Boolean per pattern: True for those held out of the updates (validation)."""
        k = int(self._options.validation_every)
        idx = np.arange(self.n_patterns)
        if k < 2:
            return np.zeros(idx.size, dtype=bool)
        return idx % k == k // 2

    @property
    def last_error(self) -> float:
        """Fourier error of the last chunk of updates (``step``/``update``); NaN if none."""
        return self._last_error

    @property
    def excluded(self) -> np.ndarray:
        """Boolean per pattern: True for those removed from the reconstruction (:meth:`exclude`)."""
        n = self.n_patterns
        out = np.zeros(n, dtype=bool)
        k = min(n, self._excluded.size)
        out[:k] = self._excluded[:k]
        return out

    def _unused(self) -> np.ndarray:
        """Boolean per pattern: held out (validation) or excluded; such patterns take no update."""
        return self.held_out | self.excluded

    def exclude(self, indices: Any) -> np.ndarray:
        """Remove patterns from the reconstruction (e.g. one whose data poisoned an update).

        An excluded pattern keeps its index (later indices do not move) but takes no further
        update, counts neither in the probe-power constraint nor in the mean pattern, and is
        never held out for validation. The current pass goes on without it. Not undone by
        :meth:`load_state`.

        Parameters
        ----------
        indices : int or sequence of int
            Pattern indices in ``[0, n_patterns)``.

        Returns
        -------
        ndarray of int
            The indices newly excluded (those already excluded are left out).

        Raises
        ------
        ValueError
            For an index out of range (nothing is excluded).
        """
        idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
        n = self.n_patterns
        if idx.size and (idx[0] < 0 or idx[-1] >= n):
            raise ValueError(f"pattern indices must be in [0, {n}), got {idx.tolist()[:10]}")
        current = self.excluded
        new = idx[~current[idx]]
        if new.size == 0:
            return new
        assert self._store is not None
        for j in new.tolist():  # the mean pattern (validation baseline) forgets them
            amp = self._store.amplitude(int(j)).astype(np.float64)
            counts = np.fft.fftshift(np.where(amp > 0, amp * amp, 0.0))
            if self._frame_sum.shape == counts.shape:
                self._frame_sum = np.maximum(self._frame_sum - counts, 0.0)
                self._frame_count = max(self._frame_count - 1, 0)
        current[new] = True
        self._excluded = current
        if self._pass_next < self._pass_order.size:
            rest = self._pass_order[self._pass_next :]
            self._pass_order = np.concatenate(
                [self._pass_order[: self._pass_next], rest[~current[rest]]]
            )
        self._lit_cache = None
        return new

    def restart(self) -> None:
        """Start over from an object of ones and a fresh starting probe; patterns stay.

        For a state spoilt by data that was since excluded (e.g. the probe scaled to mean counts
        that included a poisoned pattern). A probe made from the data (``"auto"`` or another
        :class:`~bluesky_ptycho.probes.ProbeInit`) is made again at the next update from the
        patterns in use; a given probe is kept in shape and scaled to their mean counts.
        Counters and error history continue; the updates per pattern restart from 0.
        """
        xp = self._be.xp
        self._object = self._asarray(xp.ones(self._object_shape), xp.complex64)
        if self._probe is not None:
            if self._probe_init is not None:
                self._probe = None
                self._auto_tried_at = 0
            elif self._store is not None and len(self._store):
                used = self._store.sums[: len(self._store)][~self.excluded]
                counts = float(np.mean(used)) if used.size else 0.0
                power = float(to_numpy(xp.sum(xp.abs(self._probe) ** 2)))
                if counts > 0 and power > 0:
                    self._probe = self._probe * np.float32(math.sqrt(counts / power))
        if self._store is not None:
            self._store.updates[:] = 0
        self._momentum = None
        self._since_momentum = 0
        self._pass_order = np.zeros(0, dtype=np.int64)
        self._pass_next = 0
        self._kernel = None
        self._last_error = float("nan")

    def pattern_residuals(self, indices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How far the current model is from each given pattern (one FFT per pattern).

        Parameters
        ----------
        indices : sequence of int
            Pattern indices in ``[0, n_patterns)``.

        Returns
        -------
        residual : ndarray of float64
            ``sum((|F(P O_j)| - sqrt(I_j))**2)`` over the good pixels of each pattern.
        counts : ndarray of float64
            ``sum(I_j)`` over the good pixels (the per-pattern Fourier error is their ratio).
        model : ndarray of float64
            ``sum(|F(P O_j)|**2)`` over the same pixels: the counts the model predicts.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.n_patterns
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"pattern indices must be in [0, {n}), got {idx.tolist()[:10]}")
        res = np.zeros(idx.size, dtype=np.float64)
        power = np.zeros(idx.size, dtype=np.float64)
        if idx.size == 0 or self._store is None or self._probe is None:
            return res, np.zeros(idx.size, dtype=np.float64), power
        assert self._probe_shape is not None
        n0, n1 = self._probe_shape
        xp = self._be.xp
        for k, j in enumerate(idx.tolist()):
            r, c = (int(v) for v in self._store.corners[j])
            spectrum = self._be.fft2(self._probe * self._object[r : r + n0, c : c + n1])
            model = to_numpy(xp.abs(spectrum)).astype(np.float64)
            amp = self._store.amplitude(j).astype(np.float64)
            good = amp >= 0
            diff = np.where(good, model - amp, 0.0)
            res[k] = float(np.sum(diff * diff))
            power[k] = float(np.sum(np.where(good, model * model, 0.0)))
        return res, self._store.sums[idx].astype(np.float64), power

    @property
    def nbytes_per_pattern(self) -> float:
        """Bytes the engine holds per stored pattern (measured data and bookkeeping)."""
        if self._store is None or len(self._store) == 0:
            return 0.0
        return self._store.nbytes / len(self._store)

    # ------------------------------------------------------------------ data in
    def add(self, intensities: Any, positions_px: Any, mask: Any = None) -> np.ndarray:
        """Add patterns; allowed before, between and after passes.

        Parameters
        ----------
        intensities : array, shape (n, N, N) or (N, N)
            Measured counts, zero spatial frequency at ``(N//2, N//2)``. Negative values are
            clipped to zero.
        positions_px : array, shape (n, 2) or (2,)
            ``(row, col)`` of the probe patch's top-left corner in the object array; may be
            fractional.
        mask : bool array, shape (N, N) or (n, N, N), optional
            True where a pixel is bad: it is left out of the modulus constraint.

        Returns
        -------
        ndarray of int
            The indices the new patterns got.

        Raises
        ------
        ValueError
            On a shape mismatch, a non-finite value, or a patch outside the object. The engine
            is left unchanged.
        """
        raw = to_numpy(intensities) if not isinstance(intensities, np.ndarray) else intensities
        frames = validation.check_frames("intensities", raw, self._probe_shape)
        n = frames.shape[0]
        frame_shape = (int(frames.shape[1]), int(frames.shape[2]))
        pos = validation.check_positions(
            "positions_px",
            to_numpy(positions_px) if not isinstance(positions_px, np.ndarray) else positions_px,
            n,
            single_ok=True,
        )
        corners = integer_positions(pos)
        limit = np.array(self._object_shape) - np.array(frame_shape)
        outside = np.any((corners < 0) | (corners > limit), axis=1)
        if np.any(outside):
            k = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"{int(outside.sum())} position(s) put the probe patch outside the object "
                f"{self._object_shape}: e.g. pattern {k} at {pos[k].tolist()} "
                f"(valid corners: 0..{limit.tolist()})"
            )
        m = None
        if mask is not None:
            m = validation.check_mask(
                "mask",
                to_numpy(mask) if not isinstance(mask, np.ndarray) else mask,
                frame_shape,
                n,
            )
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        # All checks passed: from here on nothing raises for bad input.
        counts = np.clip(frames, 0, None).astype(np.float64)
        if m is not None:
            counts = np.where(m, 0.0, counts)
        if self._frame_sum.shape != frame_shape:
            self._frame_sum = np.zeros(frame_shape)
        self._frame_sum += counts.sum(axis=0)
        self._frame_count += n
        if self._probe_shape is None:
            self._set_probe_shape(frame_shape)
            self._store = PatternStore(self._be, frame_shape)
        assert self._store is not None
        return self._store.append(frames, pos, m)

    # ------------------------------------------------------------------ iterations
    def iterate(
        self, passes: int = 1, *, callback: Callable[[int, float], None] | None = None
    ) -> np.ndarray:
        """Run ``passes`` passes; each visits every pattern held once, freshly shuffled.

        A pass left unfinished by :meth:`step` is completed first and counts as a pass.

        Parameters
        ----------
        passes : int
        callback : callable(iteration, fourier_error), optional
            Called after each pass.

        Returns
        -------
        ndarray
            The normalised Fourier error of each pass run.
        """
        if passes < 0:
            raise ValueError(f"passes must be >= 0, got {passes}")
        errors = []
        for _ in range(passes):
            if self.n_patterns == 0:
                break
            before = self._iteration
            while self._iteration == before:
                self.step(max(1, self.n_patterns))
            errors.append(self._history[-1])
            if callback is not None:
                callback(self._iteration, self._history[-1])
        return np.asarray(errors, dtype=np.float64)

    def step(self, max_updates: int) -> int:
        """Run up to ``max_updates`` single-pattern updates, continuing the current pass.

        Stops at the end of a pass, so callers can publish after every pass.

        Returns
        -------
        int
            Updates done (0 when no pattern is held).
        """
        if self.n_patterns == 0 or max_updates <= 0:
            return 0
        if self._pass_next >= self._pass_order.size:
            order = self._rng.permutation(self.n_patterns)
            held = self._unused()
            if held.any():
                order = order[~held[order]]
                if order.size == 0:
                    return 0
            self._pass_order = order
            self._pass_next = 0
            self._pass_num = 0.0
            self._pass_den = 0.0
        stop = min(self._pass_order.size, self._pass_next + int(max_updates))
        indices = self._pass_order[self._pass_next : stop]
        num, den = self._run(indices)
        self._pass_num += num
        self._pass_den += den
        self._pass_next = stop
        if self._pass_next >= self._pass_order.size:
            err = self._pass_num / self._pass_den if self._pass_den > 0 else float("nan")
            self._history.append(err)
            self._iteration += 1
        return int(indices.size)

    def update(self, indices: Any) -> float:
        """Run one update for each of the given patterns, in the given order.

        Not counted as a pass (``iteration`` and the per-pass error history are unchanged);
        used by pacing policies that must choose which patterns to visit, e.g. to cap the
        updates per pattern during a live scan.

        Returns
        -------
        float
            The normalised Fourier error over the patterns visited (NaN when none).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_patterns):
            raise ValueError(f"pattern indices must be in [0, {self.n_patterns}), got {idx}")
        held = self._unused()
        if idx.size and held.any():
            idx = idx[~held[idx]]
        if idx.size == 0:
            return float("nan")
        num, den = self._run(idx)
        return num / den if den > 0 else float("nan")

    def prepare(self) -> None:
        """Make the starting probe from the patterns held now, if none was given.

        The first update does this anyway; call it to start several engines (the subsets of
        the averaging scheme) from the same probe. No effect when a probe exists or no
        pattern is held.
        """
        if self._probe is None and self._store is not None and len(self._store):
            self._ensure_probe()

    def reserve(self, n_patterns: int) -> None:
        """Preallocate storage for ``n_patterns`` more patterns (e.g. the nominal scan's).

        Needs the frame shape (a probe or ``probe_shape`` given at construction).
        """
        if self._store is None:
            raise ValueError("reserve needs the frame shape: give probe or probe_shape first")
        self._store.reserve(int(n_patterns))

    def _run(self, indices: np.ndarray) -> tuple[float, float]:
        assert self._store is not None
        self._ensure_probe()
        opts = self._options
        update_probe = opts.beta > 0 and self._iteration >= opts.probe_update_start
        if opts.algorithm == "mpie":
            num = den = 0.0
            interval = int(opts.mpie_interval)
            start = 0
            while start < indices.size:
                take = min(indices.size - start, interval - self._since_momentum)
                n_, d_ = self._visit(indices[start : start + take], update_probe)
                num, den = num + n_, den + d_
                start += take
                self._since_momentum += take
                if self._since_momentum >= interval:
                    self._momentum_step(update_probe)
                    self._since_momentum = 0
        else:
            num, den = self._visit(indices, update_probe)
        self._pattern_updates += int(indices.size)
        self._store.count_updates(indices)
        self._constrain()
        self._last_error = num / den if den > 0 else float("nan")
        if den > 0:
            self._record(num / den)
        return num, den

    def _record(self, err: float) -> None:
        """Append to the error trace, thinning it to every other row when it grows long."""
        self._trace.append((float(self._pattern_updates), float(err)))
        if len(self._trace) > _MAX_TRACE:
            self._trace = self._trace[-1::-2][::-1]

    def _ensure_probe(self) -> None:
        """Make the starting probe from the patterns held, if none was given.

        An ``"auto"`` start that fell back to the Gaussian (too few patterns for a shadow-image
        estimate) is retried whenever the patterns held have doubled, up to 256 patterns;
        when the retry succeeds the reconstruction restarts from the new probe and an object
        of ones (a Gaussian start on such data is usually on a plateau: little is lost).
        """
        assert self._store is not None
        n = len(self._store)
        if self._probe is not None:
            if (
                self._probe_init is not None
                and self._probe_init.kind == "auto"
                and self._probe_origin.startswith("gaussian")
                and n >= 2 * self._auto_tried_at
                and self._auto_tried_at < _AUTO_RETRY_UNTIL
            ):
                self._retry_auto_probe()
            return
        assert self._probe_init is not None
        self._auto_tried_at = n
        self._make_probe()

    def _retry_auto_probe(self) -> None:
        self._auto_tried_at = len(self._store) if self._store is not None else 0
        old = (self._probe, self._probe_origin)
        self._make_probe()
        if self._probe_origin.startswith("gaussian"):
            self._probe, self._probe_origin = old
            return
        self._object = self._asarray(self._be.xp.ones(self._object_shape), self._be.xp.complex64)
        self._probe_origin += f" (restarted at {self._auto_tried_at} patterns)"
        self._momentum = None

    def _make_probe(self) -> None:
        assert self._store is not None and self._probe_init is not None
        n = len(self._store)
        usable = np.flatnonzero(~self.excluded)
        if usable.size == 0:
            usable = np.arange(n)
        pick = (
            np.arange(usable.size)
            if usable.size <= 256
            else np.linspace(0, usable.size - 1, 256).astype(np.int64)
        )
        take = usable[pick]
        frames = np.stack([self._store.amplitude(int(j)) for j in take])
        frames = np.fft.fftshift(np.where(frames < 0, 0.0, frames) ** 2, axes=(-2, -1))
        probe, origin = make_start_probe(
            self._probe_init,
            frames,
            self._store.positions[take],
            fwhm_fraction=self._options.probe_fwhm_fraction,
        )
        self._probe = self._asarray(probe, self._be.xp.complex64)
        self._probe_origin = origin

    def _momentum_step(self, update_probe: bool) -> None:
        """mPIE: move object and probe on by ``eta`` times their accumulated velocity."""
        eta = float(self._options.mpie_eta)
        m = self._momentum
        if m is None:
            self._momentum = {"o": self._object, "p": self._probe, "vo": None, "vp": None}
            self._object = self._copy(self._object)
            self._probe = self._copy(self._probe)
            return
        vo = self._object - m["o"] if m["vo"] is None else eta * m["vo"] + (self._object - m["o"])
        obj = self._object + eta * vo
        m.update(o=self._copy(obj), vo=vo)
        self._object = obj
        if update_probe:
            vp = self._probe - m["p"] if m["vp"] is None else eta * m["vp"] + (self._probe - m["p"])
            probe = self._probe + eta * vp
            m.update(p=self._copy(probe), vp=vp)
            self._probe = probe

    def _copy(self, a: Any) -> Any:
        return np.array(a, copy=True) if self._be.is_numpy else self._be.xp.asarray(a, copy=True)

    def _constrain(self) -> None:
        """The convergence aids of the options, after a chunk of updates."""
        opts = self._options
        xp = self._be.xp
        assert self._store is not None and self._probe_shape is not None
        probe, obj = self._probe, self._object
        changed = False
        if opts.probe_support is not None:
            if self._support is None or self._support[0] != opts.probe_support:
                radius = opts.probe_support * min(self._probe_shape) / 2.0
                mask = xp.asarray(constraints.support_mask(self._probe_shape, radius))
                self._support = (opts.probe_support, mask)
            probe = constraints.probe_support(xp, probe, self._support[1])
            changed = True
        if opts.probe_power:
            n = len(self._store)
            used = self._store.sums[:n][~self.excluded]
            counts = float(np.mean(used)) if used.size else 0.0
            obj, probe = constraints.hold_probe_power(xp, obj, probe, counts)
            changed = True
        if opts.probe_centre:
            obj, probe, dr, dc = constraints.centre_probe(xp, obj, probe)
            if dr or dc:
                self._momentum = None
                self._since_momentum = 0
        if opts.object_amplitude_max is not None:
            obj = constraints.bound_object_amplitude(xp, obj, float(opts.object_amplitude_max))
        if changed or obj is not self._object or probe is not self._probe:
            self._probe = self._contiguous(probe)
            self._object = self._contiguous(obj)

    def _contiguous(self, a: Any) -> Any:
        if self._be.is_numpy:
            return np.ascontiguousarray(a, dtype=np.complex64)
        return a

    def release_held_out(self) -> None:
        """Put the held-out patterns back into the updates (e.g. for the final passes).

        The validation error measured just before stays what :meth:`validation_error` reports,
        and the states carry the baseline of that moment as ``validation_baseline``, so the
        last "did it work" value survives unchanged; the reconstruction then uses every
        pattern.
        """
        if int(self._options.validation_every) < 2:
            return
        self._frozen_validation, self._frozen_baseline = self.validation()
        self._options = replace(self._options, validation_every=0)
        self._pass_order = np.zeros(0, dtype=np.int64)
        self._pass_next = 0

    def validation_error(self) -> float:
        """Fourier error the current model predicts for the held-out patterns (NaN if none).

        See :meth:`validation`; this is its first value.
        """
        return self.validation()[0]

    def validation(self) -> tuple[float, float]:
        """The held-out error of the current model, and that of knowing nothing.

        Over the held-out patterns (``validation_every``) that lie inside the scanned area (at
        least :data:`VALIDATION_COVERAGE` of the central half of their patch covered by the
        central halves of patches in use; a pattern at the frontier of the scan would test
        coverage, not the model), with the per-pass normalisation
        ``sum((A - sqrt(I))**2) / sum(I)``:

        - the *validation error*: ``A = |F(P O)|``, the current object and probe;
        - the *baseline*: ``A = sqrt(mean I)``, the mean of all patterns held: the best guess
          of a model that knows nothing of the specimen.

        Their ratio (:attr:`ReconstructionState.validation_ratio`) is well below 1 when the
        reconstruction has found the specimen and about 1 or more when it predicts unseen
        patterns no better than the mean pattern does (a plateau, a wrong start, the
        raster-grid ambiguity). NaN when no held-out pattern is covered yet. After
        :meth:`release_held_out` the values measured then.
        """
        nan = float("nan")
        excluded = self.excluded
        held_mask = self.held_out & ~excluded
        held = np.flatnonzero(held_mask)
        if held.size == 0 or self._probe is None or self._store is None:
            return self._frozen_validation, self._frozen_baseline
        lit = self._lit_mask(held_mask | excluded)
        n0, n1 = self._probe_shape  # type: ignore[misc]
        q0, q1 = n0 // 4, n1 // 4
        tested = []
        for j in held.tolist():
            r, c = (int(v) for v in self._store.corners[j])
            core = lit[r + q0 : r + n0 - q0, c + q1 : c + n1 - q1]
            if core.size and float(np.mean(core)) >= VALIDATION_COVERAGE:
                tested.append(j)
        if not tested:
            return nan, nan
        return self._model_error(tested)

    def _lit_mask(self, held_mask: np.ndarray) -> np.ndarray:
        """Object pixels inside the central half of at least one patch in use (cached).

        ``held_mask`` marks the patterns not in use (held out or excluded).
        """
        key = int(held_mask.size)
        if self._lit_cache is not None and self._lit_cache[0] == key:
            return self._lit_cache[1]
        assert self._store is not None and self._probe_shape is not None
        n0, n1 = self._probe_shape
        q0, q1 = n0 // 4, n1 // 4
        lit = np.zeros(self._object_shape, dtype=bool)
        for r, c in self._store.corners[~held_mask].tolist():
            lit[r + q0 : r + n0 - q0, c + q1 : c + n1 - q1] = True
        self._lit_cache = (key, lit)
        return lit

    def _model_error(self, indices: list[int]) -> tuple[float, float]:
        """Fourier error of the current model and of the mean pattern for ``indices``."""
        assert self._store is not None and self._probe_shape is not None
        n0, n1 = self._probe_shape
        xp = self._be.xp
        mean_amp = np.sqrt(np.fft.ifftshift(self._frame_sum / max(self._frame_count, 1)))
        num = null = den = 0.0
        for j in indices:
            r, c = (int(v) for v in self._store.corners[j])
            spectrum = self._be.fft2(self._probe * self._object[r : r + n0, c : c + n1])
            model = to_numpy(xp.abs(spectrum)).astype(np.float64)
            amp = self._store.amplitude(j).astype(np.float64)
            good = amp >= 0
            diff = np.where(good, model - amp, 0.0)
            blind = np.where(good, mean_amp - amp, 0.0)
            num += float(np.sum(diff * diff))
            null += float(np.sum(blind * blind))
            den += float(self._store.sums[j])
        if not den > 0:
            return float("nan"), float("nan")
        return num / den, null / den

    def _get_kernel(self) -> Kernel:
        assert self._probe_shape is not None
        subpixel = self._options.subpixel
        if self._kernel is None or not self._kernel.matches(self._be, self._probe_shape, subpixel):
            self._kernel = select_kernel(self._be, self._probe_shape, subpixel)
        return self._kernel

    def _update_step(self, update_probe: bool) -> UpdateStep:
        opts = self._options
        rpie = opts.algorithm in ("rpie", "mpie")
        return UpdateStep(
            alpha=float(opts.alpha),
            beta=float(opts.beta),
            eps=float(opts.eps),
            rpie_alpha=float(opts.rpie_alpha) if rpie else None,
            update_probe=update_probe,
        )

    def _visit(self, indices: np.ndarray, update_probe: bool) -> tuple[float, float]:
        """One kernel call over ``indices``; object and probe take its result."""
        assert self._store is not None
        out = self._get_kernel().run(
            self._object, self._probe, self._store, indices, self._update_step(update_probe)
        )
        self._object, self._probe = out.object, out.probe
        return out.error_num, out.error_den

    # ------------------------------------------------------------------ state
    def state(self, *, validation: bool = True) -> ReconstructionState:
        """Host NumPy copies of object, probe, positions, counters and error history.

        Parameters
        ----------
        validation : bool
            Also evaluate the held-out patterns (:meth:`validation`: one FFT per held-out
            pattern); False leaves ``validation_error`` and ``validation_baseline`` NaN (the
            live worker checks every chunk that way and validates only what it publishes).
        """
        n = self.n_patterns
        nan = float("nan")
        signal = self.validation() if validation else (nan, nan)
        probe = (
            to_numpy(self._probe)
            if self._probe is not None
            else np.zeros(self._probe_shape or (0, 0), dtype=np.complex64)
        )
        return ReconstructionState(
            object=to_numpy(self._object).astype(np.complex64, copy=False),
            probe=probe.astype(np.complex64, copy=False),
            positions_px=(self._store.positions[:n].copy() if self._store else np.zeros((0, 2))),
            iteration=self._iteration,
            pattern_updates=self._pattern_updates,
            fourier_error=np.asarray(self._history, dtype=np.float64),
            updates_per_pattern=(
                self._store.updates[:n].copy() if self._store else np.zeros(0, np.int64)
            ),
            error_trace=np.asarray(self._trace, dtype=np.float64).reshape(-1, 2),
            validation_error=signal[0],
            validation_baseline=signal[1],
        )

    def load_state(self, state: ReconstructionState) -> None:
        """Resume from ``state``: object, probe, counters and error history.

        The patterns held stay; their positions are taken from the state when it describes the
        same number of patterns. Raises ``ValueError`` (engine unchanged) on a shape mismatch.
        """
        obj = np.asarray(state.object)
        if obj.shape != self._object_shape:
            raise ValueError(
                f"state object has shape {obj.shape}, the engine's is {self._object_shape}"
            )
        probe = np.asarray(state.probe)
        if probe.ndim != 2 or (self._probe_shape is not None and probe.shape != self._probe_shape):
            raise ValueError(
                f"state probe has shape {probe.shape}, the engine's is {self._probe_shape}"
            )
        for name, arr in (("object", obj), ("probe", probe)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"state {name} contains NaN or infinite values")
        n = self.n_patterns
        pos = np.asarray(state.positions_px, dtype=np.float64)
        adopt_positions = n > 0 and pos.shape == (n, 2)
        if adopt_positions:
            corners = integer_positions(pos)
            limit = np.array(self._object_shape) - np.array(probe.shape)
            if np.any((corners < 0) | (corners > limit)) or not np.all(np.isfinite(pos)):
                raise ValueError("state positions put probe patches outside the object")
        xp = self._be.xp
        self._object = self._asarray(obj, xp.complex64)
        if self._probe_shape is None:
            self._set_probe_shape(tuple(probe.shape))
            assert self._probe_shape is not None
            self._store = PatternStore(self._be, self._probe_shape)
        self._probe = self._asarray(probe, xp.complex64)
        self._iteration = int(state.iteration)
        self._pattern_updates = int(state.pattern_updates)
        self._history = [float(e) for e in np.asarray(state.fourier_error).ravel()]
        trace = np.asarray(getattr(state, "error_trace", np.zeros((0, 2)))).reshape(-1, 2)
        self._trace = [(float(a), float(b)) for a, b in trace]
        assert self._store is not None
        if adopt_positions:
            self._store.set_positions(pos)
        ups = np.asarray(state.updates_per_pattern, dtype=np.int64).ravel()
        k = min(ups.size, n)
        self._store.updates[:k] = ups[:k]
        self._pass_order = np.zeros(0, dtype=np.int64)
        self._pass_next = 0
        self._kernel = None
        self._last_error = float("nan")

    def set_probe(self, probe: Any) -> None:
        """Replace the probe (same shape), e.g. with a probe imported from another run."""
        p = np.asarray(to_numpy(probe))
        if p.ndim != 2 or (self._probe_shape is not None and p.shape != self._probe_shape):
            raise ValueError(f"probe has shape {p.shape}, expected {self._probe_shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("probe contains NaN or infinite values")
        if self._probe_shape is None:
            self._set_probe_shape(tuple(p.shape))
            assert self._probe_shape is not None
            self._store = PatternStore(self._be, self._probe_shape)
        self._probe = self._asarray(p, self._be.xp.complex64)
        self._kernel = None

    def set_object(self, obj: Any) -> None:
        """Replace the object (same shape)."""
        o = np.asarray(to_numpy(obj))
        if o.shape != self._object_shape:
            raise ValueError(f"object has shape {o.shape}, expected {self._object_shape}")
        if not np.all(np.isfinite(o)):
            raise ValueError("object contains NaN or infinite values")
        self._object = self._asarray(o, self._be.xp.complex64)
        self._kernel = None

    # ------------------------------------------------------------------ helpers
    def _set_probe_shape(self, shape: tuple[int, ...]) -> None:
        ps = positive_pair(shape, "probe shape")
        if ps[0] > self._object_shape[0] or ps[1] > self._object_shape[1]:
            raise ValueError(f"probe shape {ps} does not fit in the object {self._object_shape}")
        self._probe_shape = ps

    def _asarray(self, a: Any, dtype: Any) -> Any:
        xp = self._be.xp
        if isinstance(a, np.ndarray) and not self._be.is_numpy:
            a = a.astype(np.complex64) if np.iscomplexobj(a) or dtype == xp.complex64 else a
        arr = xp.asarray(a)
        if arr.dtype != dtype:
            arr = xp.astype(arr, dtype)
        if self._be.is_numpy:
            arr = np.array(arr, dtype=np.complex64, copy=True, order="C")
        else:
            arr = xp.asarray(arr, copy=True)
        return arr


def positive_pair(value: Any, name: str) -> tuple[int, int]:
    """``value`` as a pair of positive integers; ``ValueError`` naming ``name`` otherwise."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of integers, got {value!r}") from None
    if a <= 0 or b <= 0:
        raise ValueError(f"{name} must be positive, got {(a, b)}")
    return a, b
