"""A simulated ptychography beamline with ophyd (v1) devices.

The ground truth is a :class:`SimulatedSpecimen`: object, probe and geometry of a
:class:`~bluesky_ptycho.simulate.SimulationPreset`, from which a diffraction pattern is computed
for any beam position (:meth:`SimulatedSpecimen.pattern_at`) with the forward model of
:mod:`bluesky_ptycho.engine.forward` and seeded Poisson noise. A :class:`DetectorLayout`
optionally places the pattern on a larger raw detector frame, off centre and re-oriented, so
that the crop and orientation handling downstream is exercised.

Devices (ophyd v1, usable with a bluesky ``RunEngine``):

- :class:`JitteryAxis`: a soft motor like :class:`ophyd.sim.SynAxis` whose readback (the
  "encoder") is the setpoint plus seeded Gaussian jitter, drawn once per move; micrometres.
- :class:`PtychoDetector`: on trigger, computes the frame at the current *readbacks* of two
  motors and puts it inline into the event (data key ``f"{name}_image"``).
- :class:`PtychoHDF5Detector`: the same frames written to an HDF5 file as an ophyd v1 area
  detector does: ``resource`` (spec ``"AD_HDF5"``) and ``datum`` documents, readable with
  ``event_model.Filler`` and ``area_detector_handlers.handlers.AreaDetectorHDF5Handler``.

:func:`make_beamline` builds specimen, motors and detector, and :class:`SimBeamline` writes the
matching ``start["ptycho"]`` contract (:class:`~bluesky_ptycho.setup.ScanSetup`). The
ophyd-async counterpart lives in :mod:`bluesky_ptycho.sim_beamline_async`.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from event_model import compose_resource
from numpy.typing import ArrayLike, NDArray
from ophyd import Component, Device, Signal
from ophyd.sim import SynAxis
from ophyd.status import DeviceStatus, StatusBase

from bluesky_ptycho.engine.forward import far_field_intensities
from bluesky_ptycho.geometry import Geometry, ObjectFrame
from bluesky_ptycho.io.hdf5 import compression_options
from bluesky_ptycho.setup import ScanSetup
from bluesky_ptycho.simulate import (
    SimulationPreset,
    _illuminated_box,
    focused_probe,
    nominal_positions,
    preset_geometry,
    resolution_chart,
    small_preset,
)

__all__ = [
    "DATA_PATH",
    "MICROMETRE",
    "DetectorLayout",
    "JitteryAxis",
    "PtychoDetector",
    "PtychoHDF5Detector",
    "SimBeamline",
    "SimulatedSpecimen",
    "make_beamline",
]

#: Dataset of the frames in the HDF5 files, as written by areaDetector's HDF5 plugin.
DATA_PATH = "/entry/data/data"

#: Micrometres to metres: the readback units of the simulated motors.
MICROMETRE = 1e-6

_FRAME_DTYPE = np.dtype(np.float32)


# --------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorLayout:
    """How a pattern sits on the raw detector frame.

    The raw frame is ``raw_shape``; the pattern's zero frequency (its pixel ``(N//2, N//2)``)
    lands on raw pixel ``beam_center_px``; the raw frame is oriented so that applying
    ``transpose``, then ``flip_rows``, then ``flip_cols`` to it (then cropping ``N x N`` around
    the beam centre, as :func:`bluesky_ptycho.preprocess.preprocess` does) gives the pattern
    back. Pixels outside the pattern are 0.

    Attributes
    ----------
    raw_shape : (int, int) or None
        Raw frame ``(rows, cols)``; ``None``: the pattern's ``(N, N)``.
    beam_center_px : (int, int) or None
        Zero frequency ``(row, col)`` on the raw frame; ``None``: ``(H//2, W//2)``.
    transpose, flip_rows, flip_cols : bool
        The orientation a reader applies to the raw frame (``start["ptycho"]["orientation"]``).
    """

    raw_shape: tuple[int, int] | None = None
    beam_center_px: tuple[int, int] | None = None
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def __post_init__(self) -> None:
        if self.raw_shape is not None:
            shape = tuple(int(v) for v in self.raw_shape)
            if len(shape) != 2 or min(shape) <= 0:
                raise ValueError(f"raw_shape must be two positive integers, got {self.raw_shape}")
            object.__setattr__(self, "raw_shape", shape)
        if self.beam_center_px is not None:
            bc = tuple(int(v) for v in self.beam_center_px)
            if len(bc) != 2 or any(v != w for v, w in zip(bc, self.beam_center_px, strict=True)):
                raise ValueError(
                    f"beam_center_px must be two whole pixel indices, got {self.beam_center_px}"
                )
            object.__setattr__(self, "beam_center_px", bc)
        for name in ("transpose", "flip_rows", "flip_cols"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"DetectorLayout.{name} must be a boolean")

    def resolved(self, n: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Raw shape and beam centre for ``n x n`` patterns, defaults filled in.

        Raises
        ------
        ValueError
            If the pattern does not fit on the raw frame around the beam centre.
        """
        raw = self.raw_shape if self.raw_shape is not None else (n, n)
        bc = self.beam_center_px if self.beam_center_px is not None else (raw[0] // 2, raw[1] // 2)
        r0, c0 = self._pattern_corner(n, raw, bc)
        oriented = (raw[1], raw[0]) if self.transpose else raw
        if r0 < 0 or c0 < 0 or r0 + n > oriented[0] or c0 + n > oriented[1]:
            raise ValueError(
                f"a {n} x {n} pattern centred on raw pixel {bc} does not fit on the raw frame "
                f"{raw} (orientation {self.orientation()})"
            )
        return raw, bc

    def orientation(self) -> dict[str, bool]:
        """The ``start["ptycho"]["orientation"]`` dict."""
        return {
            "transpose": bool(self.transpose),
            "flip_rows": bool(self.flip_rows),
            "flip_cols": bool(self.flip_cols),
        }

    def _pattern_corner(self, n: int, raw: tuple[int, int], bc: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of the pattern on the *oriented* raw frame."""
        r, c = bc
        h, w = raw
        if self.transpose:
            r, c, h, w = c, r, w, h
        if self.flip_rows:
            r = h - 1 - r
        if self.flip_cols:
            c = w - 1 - c
        return r - n // 2, c - n // 2

    def to_raw(self, pattern: NDArray[Any]) -> NDArray[Any]:
        """Place an ``N x N`` pattern (zero frequency at ``(N//2, N//2)``) on the raw frame.

        Parameters
        ----------
        pattern : ndarray, shape (N, N)

        Returns
        -------
        ndarray, shape ``raw_shape``, dtype of ``pattern``
            A new C-contiguous array.
        """
        a = np.asarray(pattern)
        n = int(a.shape[0])
        if a.ndim != 2 or a.shape[1] != n:
            raise ValueError(f"pattern must be square (N, N), got shape {a.shape}")
        raw, bc = self.resolved(n)
        oriented_shape = (raw[1], raw[0]) if self.transpose else raw
        r0, c0 = self._pattern_corner(n, raw, bc)
        out = np.zeros(oriented_shape, dtype=a.dtype)
        out[r0 : r0 + n, c0 : c0 + n] = a
        # undo the reader's orientation (each step is an involution: reverse order)
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1, :]
        if self.transpose:
            out = out.T
        return np.ascontiguousarray(out)


class SimulatedSpecimen:
    """Ground truth of a simulated ptychography experiment, and its detector.

    Parameters
    ----------
    obj : ndarray, complex, shape (H, W)
        Complex transmission on the object frame (kept as :attr:`object`).
    probe : ndarray, complex, shape (N, N)
        Illumination, scaled so that ``sum |P|**2`` is the photons per pattern.
    geometry : Geometry
        Diffraction geometry of the ``N x N`` patterns.
    frame : ObjectFrame
        Maps beam positions (metres) to probe-patch corners in ``object``.
    nominal_positions_m : array_like, shape (n, 2)
        The nominal scan ``(row, col)`` in metres the object frame was fixed from.
    pattern : str, optional
        Name of the nominal scan pattern.
    layout : DetectorLayout, optional
        Where patterns land on the raw detector frame (default: raw frame = pattern).
    noise : bool, optional
        Poisson noise on the patterns (default True); may be switched at any time.
    seed : int, optional
        Seed of the noise sequence.
    margin_px : int, optional
        Margin the object frame was made with (written into :meth:`setup`).
    preset : SimulationPreset, optional
        The preset the specimen came from, for reference.

    Notes
    -----
    Every noisy pattern draws the next values from one seeded generator, so a specimen with the
    same seed asked for the same positions in the same order gives the same frames
    (:meth:`reset_noise` restarts the sequence).
    """

    def __init__(
        self,
        obj: ArrayLike,
        probe: ArrayLike,
        geometry: Geometry,
        frame: ObjectFrame,
        *,
        nominal_positions_m: ArrayLike,
        pattern: str | None = None,
        layout: DetectorLayout | None = None,
        noise: bool = True,
        seed: int = 0,
        margin_px: int = 8,
        preset: SimulationPreset | None = None,
    ) -> None:
        obj = np.asarray(obj, dtype=np.complex64)
        prb = np.asarray(probe, dtype=np.complex64)
        if prb.ndim != 2 or prb.shape[0] != prb.shape[1]:
            raise ValueError(f"probe must be square (N, N), got shape {prb.shape}")
        if tuple(prb.shape) != tuple(frame.probe_shape) or tuple(prb.shape) != tuple(
            geometry.frame_shape
        ):
            raise ValueError(
                f"probe shape {prb.shape} differs from the frame's probe shape "
                f"{frame.probe_shape} or the geometry's frame shape {geometry.frame_shape}"
            )
        if tuple(obj.shape) != tuple(frame.object_shape):
            raise ValueError(
                f"object shape {obj.shape} differs from the frame's {frame.object_shape}"
            )
        self.object: NDArray[np.complex64] = obj
        self.probe: NDArray[np.complex64] = prb
        self.geometry = geometry
        self.frame = frame
        self.nominal_positions_m: NDArray[np.float64] = np.asarray(
            nominal_positions_m, dtype=np.float64
        ).reshape(-1, 2)
        self.pattern = pattern
        self.layout = layout if layout is not None else DetectorLayout()
        self.layout.resolved(self.n)  # fail early if the pattern does not fit the raw frame
        self.noise = bool(noise)
        self.seed = int(seed)
        self.margin_px = int(margin_px)
        self.preset = preset
        self._noise_rng = np.random.default_rng(self._noise_seed())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls,
        preset: SimulationPreset | None = None,
        *,
        seed: int | None = None,
        noise: bool = True,
        layout: DetectorLayout | None = None,
    ) -> SimulatedSpecimen:
        """The specimen of a preset: the same object and probe as ``simulate_dataset``.

        Parameters
        ----------
        preset : SimulationPreset, optional
            Default :func:`~bluesky_ptycho.simulate.small_preset`.
        seed : int, optional
            Overrides ``preset.seed``; object and noise seeds follow
            :func:`~bluesky_ptycho.simulate.simulate_dataset`, so the object and probe equal
            ``simulate_dataset(preset, seed=seed).object`` / ``.probe``.
        noise : bool, optional
            Poisson noise on the patterns (default True).
        layout : DetectorLayout, optional
            Raw detector frame layout.

        Returns
        -------
        SimulatedSpecimen
        """
        preset = preset if preset is not None else small_preset()
        seed = int(preset.seed if seed is None else seed)
        object_seed = np.random.SeedSequence(seed).spawn(3)[0]
        geometry = preset_geometry(preset)
        nominal = nominal_positions(preset)
        frame = geometry.object_frame(nominal, margin_px=preset.margin_px)
        probe = focused_probe(
            preset.shape,
            geometry.pixel_size_m[0],
            geometry.wavelength_m,
            focus_fwhm_m=preset.focus_fwhm_m,
            defocus_m=preset.defocus_m,
            total_counts=preset.photons_per_pattern,
            edge_taper=preset.pupil_edge_taper,
        )
        box = _illuminated_box(probe, frame.to_pixels(nominal), frame.object_shape)
        obj = resolution_chart(
            frame.object_shape,
            phase_max=preset.phase_max,
            amplitude_min=preset.amplitude_min,
            seed=int(object_seed.generate_state(1)[0]),
            box=box,
        )
        return cls(
            obj,
            probe,
            geometry,
            frame,
            nominal_positions_m=nominal,
            pattern=preset.pattern,
            layout=layout,
            noise=noise,
            seed=seed,
            margin_px=preset.margin_px,
            preset=preset,
        )

    def _noise_seed(self) -> np.random.SeedSequence:
        # the third stream of the preset seed, as simulate_dataset draws its noise
        return np.random.SeedSequence(self.seed).spawn(3)[2]

    def jitter_seeds(self, n: int) -> list[np.random.SeedSequence]:
        """``n`` independent seeds for encoder jitter, derived from the specimen's seed."""
        return np.random.SeedSequence(self.seed).spawn(3)[1].spawn(int(n))

    def reset_noise(self) -> None:
        """Restart the noise sequence from the seed."""
        self._noise_rng = np.random.default_rng(self._noise_seed())

    # ------------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        """Side ``N`` of the patterns (and of the probe)."""
        return int(self.probe.shape[0])

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Shape of the raw detector frames."""
        return self.layout.resolved(self.n)[0]

    @property
    def beam_center_px(self) -> tuple[int, int]:
        """Zero frequency ``(row, col)`` on the raw detector frame."""
        return self.layout.resolved(self.n)[1]

    # ------------------------------------------------------------------ patterns
    def expected_at(self, position_m: ArrayLike) -> NDArray[np.float32]:
        """Noise-free pattern at one beam position, ``(N, N)`` float32.

        Parameters
        ----------
        position_m : array_like, shape (2,)
            Beam position ``(row, col)`` on the specimen, metres.

        Raises
        ------
        ValueError
            If the probe patch at that position leaves the object frame.
        """
        pos = np.asarray(position_m, dtype=np.float64).reshape(1, 2)
        px = self.frame.to_pixels(pos)
        if not bool(self.frame.contains(px)[0]):
            raise ValueError(
                f"beam position {pos[0].tolist()} m (patch corner {px[0].round(2).tolist()} px) "
                f"leaves the simulated object of shape {self.frame.object_shape}"
            )
        out = far_field_intensities(self.object, self.probe, px, subpixel=True)[0]
        return np.asarray(out, dtype=np.float32)

    def pattern_at(
        self, position_m: ArrayLike, *, noise: bool | None = None
    ) -> NDArray[np.float32]:
        """The detected pattern at one beam position, ``(N, N)`` float32 counts.

        Zero frequency at ``(N//2, N//2)``. With noise, Poisson counts drawn from the
        specimen's seeded generator (each call advances it).

        Parameters
        ----------
        position_m : array_like, shape (2,)
            Beam position ``(row, col)`` on the specimen, metres.
        noise : bool, optional
            Overrides :attr:`noise` for this call (a noise-free call draws nothing).

        Returns
        -------
        ndarray of float32, shape (N, N)
        """
        expected = self.expected_at(position_m)
        if not (self.noise if noise is None else noise):
            return expected
        return self._noise_rng.poisson(expected.astype(np.float64)).astype(np.float32)

    def raw_frame_at(
        self, position_m: ArrayLike, *, noise: bool | None = None
    ) -> NDArray[np.float32]:
        """The raw detector frame at one beam position: :meth:`pattern_at` on the layout."""
        return self.layout.to_raw(self.pattern_at(position_m, noise=noise))

    # ------------------------------------------------------------------ contract
    def setup(
        self,
        detector_key: str = "eiger_image",
        position_keys: Sequence[str] = ("sy", "sx"),
        position_scale_m: float = MICROMETRE,
        nominal_positions_m: ArrayLike | None = None,
        pattern: str | None = None,
        **overrides: Any,
    ) -> ScanSetup:
        """The ``start["ptycho"]`` contract of a scan of this specimen.

        Energy, distance, pixel, ``crop = N``, beam centre and orientation come from the
        geometry and the layout; ``margin_px`` from the specimen, so that
        ``setup.object_frame()`` equals :attr:`frame` for the specimen's own nominal scan.

        Parameters
        ----------
        detector_key : str
            Data key of the frames.
        position_keys : (str, str)
            Data keys of the row-axis and column-axis readbacks.
        position_scale_m : float
            Readback units to metres (default 1e-6: micrometres).
        nominal_positions_m : array_like (n, 2), optional
            Nominal beam positions in metres; default the specimen's nominal scan.
        pattern : str, optional
            Scan pattern name; default the specimen's.
        **overrides
            Any other :class:`~bluesky_ptycho.setup.ScanSetup` field.

        Returns
        -------
        ScanSetup
        """
        nominal = self.nominal_positions_m if nominal_positions_m is None else nominal_positions_m
        bc = self.beam_center_px
        kwargs: dict[str, Any] = {
            "energy_eV": float(self.geometry.energy_eV),
            "detector_distance_m": float(self.geometry.detector_distance_m),
            "detector_pixel_m": float(self.geometry.detector_pixel_m),
            "crop": self.n,
            "beam_center_px": (float(bc[0]), float(bc[1])),
            **self.layout.orientation(),
            "detector_key": detector_key,
            "position_keys": tuple(position_keys),
            "position_scale_m": float(position_scale_m),
            "pattern": pattern if pattern is not None else self.pattern,
            "nominal_positions_m": np.asarray(nominal, dtype=np.float64),
            "margin_px": self.margin_px,
        }
        kwargs.update(overrides)
        return ScanSetup(**kwargs)


# --------------------------------------------------------------------------------------------
# motors
# --------------------------------------------------------------------------------------------


def _check_jitter(jitter: float) -> float:
    value = float(jitter)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"jitter must be finite and >= 0, got {jitter!r}")
    return value


class JitteryAxis(SynAxis):
    """A soft motor whose readback is the setpoint plus Gaussian jitter.

    Like :class:`ophyd.sim.SynAxis` (readback data key = the device name, setpoint data key
    ``f"{name}_setpoint"``), except that each move sets the readback to
    ``setpoint + N(0, jitter)``: the encoder differs a little from the setpoint and stays put
    until the next move.

    Parameters
    ----------
    name : str
        Device name, also the readback's data key.
    jitter : float, optional
        Rms of the readback error in motor units (default 0.002, i.e. 2 nm in micrometres).
    seed : int, SeedSequence or None, optional
        Seed of the jitter sequence.
    value : float, optional
        Initial setpoint (default 0).
    egu : str, optional
        Engineering units (default ``"um"``).
    precision : int, optional
        Display precision (default 5 digits).
    delay : float, optional
        Simulated move time in seconds (default 0).
    **kwargs
        Passed to :class:`ophyd.sim.SynAxis`.
    """

    def __init__(
        self,
        *,
        name: str,
        jitter: float = 0.002,
        seed: int | np.random.SeedSequence | None = None,
        value: float = 0.0,
        egu: str = "um",
        precision: int = 5,
        delay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.jitter = _check_jitter(jitter)
        self._rng = np.random.default_rng(seed)
        super().__init__(
            name=name,
            readback_func=self._jittered,
            value=value,
            delay=delay,
            precision=precision,
            egu=egu,
            **kwargs,
        )

    def _jittered(self, setpoint: float) -> float:
        if self.jitter == 0.0:
            return float(setpoint)
        return float(setpoint) + float(self._rng.normal(0.0, self.jitter))


# --------------------------------------------------------------------------------------------
# detectors
# --------------------------------------------------------------------------------------------


class _FrameSignal(Signal):
    """The detector's frame (inline) or datum id (external), described as an array."""

    def describe(self) -> dict[str, dict[str, Any]]:
        return {self.name: self.parent._frame_data_key()}


class PtychoDetector(Device):
    """A diffraction detector that sees the simulated specimen; frames inline in events.

    On :meth:`trigger` it reads the current readbacks of ``y_motor`` (row axis) and
    ``x_motor`` (column axis), converts them to metres with ``position_scale_m`` and computes
    the raw frame there (:meth:`SimulatedSpecimen.raw_frame_at`). :meth:`read` puts the frame
    (float32 ndarray, the raw frame shape) into the event under ``f"{name}_image"``.

    Parameters
    ----------
    name : str
        Device name.
    specimen : SimulatedSpecimen
        The ground truth.
    y_motor, x_motor : ophyd positioner
        Row-axis and column-axis motors (anything with a ``position`` readback).
    position_scale_m : float, optional
        Motor units to metres (default 1e-6).
    **kwargs
        Passed to :class:`ophyd.Device`.
    """

    image = Component(_FrameSignal, value=None, kind="normal")

    def __init__(
        self,
        name: str = "eiger",
        *,
        specimen: SimulatedSpecimen,
        y_motor: Any,
        x_motor: Any,
        position_scale_m: float = MICROMETRE,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if not (math.isfinite(position_scale_m) and position_scale_m > 0.0):
            raise ValueError(f"position_scale_m must be positive, got {position_scale_m!r}")
        self.specimen = specimen
        self.y_motor = y_motor
        self.x_motor = x_motor
        self.position_scale_m = float(position_scale_m)
        self.last_position_m: tuple[float, float] | None = None

    @property
    def data_key(self) -> str:
        """The event data key of the frames."""
        return self.image.name

    def _frame_data_key(self) -> dict[str, Any]:
        return {
            "source": f"SIM:{self.name}",
            "dtype": "array",
            "shape": list(self.specimen.raw_shape),
            "dtype_numpy": _FRAME_DTYPE.str,
        }

    def current_position_m(self) -> tuple[float, float]:
        """Beam position ``(row, col)`` in metres from the motors' current readbacks."""
        y = float(self.y_motor.position) * self.position_scale_m
        x = float(self.x_motor.position) * self.position_scale_m
        return y, x

    def _acquire(self) -> NDArray[np.float32]:
        position = self.current_position_m()
        frame = self.specimen.raw_frame_at(position)
        self.last_position_m = position
        return frame

    def trigger(self) -> StatusBase:
        """Compute the frame at the motors' readbacks; the returned status is done."""
        self.image.put(self._acquire())
        status = DeviceStatus(self)
        status.set_finished()
        return status


class PtychoHDF5Detector(PtychoDetector):
    """The simulated detector writing HDF5 as an ophyd v1 area detector does.

    :meth:`stage` creates ``<directory>/<uuid>.h5`` with the float32 dataset
    ``/entry/data/data`` and caches a ``resource`` document (spec ``"AD_HDF5"``, ``root`` the
    directory, ``resource_path`` the file name, ``resource_kwargs {"frame_per_point": 1}``).
    Each :meth:`trigger` writes frame ``i`` (the point number, from 0) to ``data[i]``, flushes,
    and caches a ``datum`` (``datum_id = f"{resource_uid}/{i}"``, ``datum_kwargs
    {"point_number": i}``); :meth:`read` returns the datum id and :meth:`describe` marks the key
    ``external: "FILESTORE:"`` with shape ``[1, H, W]`` (frames per point first, as ophyd's
    area detectors describe it, and as ``AreaDetectorHDF5Handler`` returns it).
    :meth:`collect_asset_docs` hands the cached documents to the RunEngine. :meth:`unstage`
    trims the dataset to the frames written and closes the file.

    The file is written in SWMR mode, so other processes can read it during the scan with
    ``h5py.File(path, "r", swmr=True)``; readers in the same process need no flag. The dataset
    is created ``capacity`` frames long (unwritten chunks take no space and read as 0) and only
    grows beyond that, because ``AreaDetectorHDF5Handler`` fixes the dataset length the first
    time it reads: a handler cached by a live ``Filler`` then still reaches later frames.

    Parameters
    ----------
    name : str
        Device name.
    specimen, y_motor, x_motor, position_scale_m
        As for :class:`PtychoDetector`.
    directory : str or Path
        Where files are written (created if missing).
    capacity : int, optional
        Initial dataset length in frames (default 4096).
    compression : str, optional
        Compress the frames with one of
        :data:`~bluesky_ptycho.io.hdf5.COMPRESSION_FILTERS` (``"bitshuffle-lz4"``, the Eiger
        default, ``"lz4"``, ``"blosc"``, ``"blosc2"``, ``"zstd"``); default None (uncompressed).
    **kwargs
        Passed to :class:`ophyd.Device`.
    """

    def __init__(
        self,
        name: str = "eiger",
        *,
        specimen: SimulatedSpecimen,
        y_motor: Any,
        x_motor: Any,
        directory: str | Path,
        position_scale_m: float = MICROMETRE,
        capacity: int = 4096,
        compression: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name,
            specimen=specimen,
            y_motor=y_motor,
            x_motor=x_motor,
            position_scale_m=position_scale_m,
            **kwargs,
        )
        if int(capacity) < 1:
            raise ValueError(f"capacity must be positive, got {capacity!r}")
        self.directory = Path(directory).resolve()
        self.capacity = int(capacity)
        compression_options(compression)  # an unknown name fails here, not at stage
        self.compression = compression
        self.path: Path | None = None
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._resource: Any = None
        self._point = 0
        self._asset_docs_cache: deque[tuple[str, dict[str, Any]]] = deque()

    def _frame_data_key(self) -> dict[str, Any]:
        key = super()._frame_data_key()
        key["shape"] = [1, *self.specimen.raw_shape]
        key["external"] = "FILESTORE:"
        if self.path is not None:
            key["source"] = f"SIM:{self.name}:{self.path}"
        return key

    @property
    def is_open(self) -> bool:
        """Whether the HDF5 file is open (between stage and unstage)."""
        return self._file is not None

    def stage(self) -> list[Any]:
        """Open a new HDF5 file and cache its ``resource`` document."""
        if self._file is not None:
            raise RuntimeError(f"{self.name} is already staged (file {self.path} open)")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{uuid.uuid4()}.h5"
        h, w = self.specimen.raw_shape
        f = h5py.File(path, "w", libver="latest")
        try:
            dataset = f.create_dataset(
                DATA_PATH,
                shape=(self.capacity, h, w),
                maxshape=(None, h, w),
                chunks=(1, h, w),
                dtype=_FRAME_DTYPE,
                fillvalue=0,
                **compression_options(self.compression),
            )
            f.swmr_mode = True
        except Exception:
            f.close()
            raise
        self._file, self._dataset, self.path = f, dataset, path
        self._point = 0
        self._resource = compose_resource(
            spec="AD_HDF5",
            root=str(self.directory),
            resource_path=path.name,
            resource_kwargs={"frame_per_point": 1},
            path_semantics="posix",
        )
        self._asset_docs_cache.clear()
        self._asset_docs_cache.append(("resource", self._resource.resource_doc))
        try:
            return super().stage()
        except Exception:
            self._close()
            raise

    def trigger(self) -> StatusBase:
        """Compute the frame, write it to the file, flush, and cache its ``datum``."""
        if self._dataset is None or self._resource is None:
            raise RuntimeError(f"{self.name} must be staged before it is triggered")
        frame = self._acquire()
        i = self._point
        if i >= self._dataset.shape[0]:
            self._dataset.resize(max(2 * self._dataset.shape[0], i + 1), axis=0)
        self._dataset[i] = frame
        self._dataset.flush()
        self._point = i + 1
        datum = self._resource.compose_datum(datum_kwargs={"point_number": i})
        self._asset_docs_cache.append(("datum", datum))
        self.image.put(datum["datum_id"], timestamp=time.time())
        status = DeviceStatus(self)
        status.set_finished()
        return status

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (and forget) the cached ``resource`` and ``datum`` documents."""
        items = list(self._asset_docs_cache)
        self._asset_docs_cache.clear()
        yield from items

    def _close(self) -> None:
        if self._file is not None:
            try:
                if self._dataset is not None and self._dataset.shape[0] != self._point:
                    self._dataset.resize(self._point, axis=0)
            finally:
                self._file.close()
        self._file = None
        self._dataset = None
        self._resource = None
        self._asset_docs_cache.clear()

    def unstage(self) -> list[Any]:
        """Trim the dataset to the frames written and close the file."""
        try:
            self._close()
        finally:
            result = super().unstage()
        return result


# --------------------------------------------------------------------------------------------
# the beamline
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SimBeamline:
    """Specimen, motors and detector of a simulated beamline, and its scan contract.

    Attributes
    ----------
    specimen : SimulatedSpecimen
    y_motor, x_motor : device
        Row-axis and column-axis motors; their readbacks' data keys are their names.
    detector : device
        The ptychography detector.
    detector_key : str
        Data key of the frames in the event descriptor.
    position_scale_m : float
        Motor units to metres (1e-6: micrometres).
    """

    specimen: SimulatedSpecimen
    y_motor: Any
    x_motor: Any
    detector: Any
    detector_key: str
    position_scale_m: float = MICROMETRE

    @property
    def position_keys(self) -> tuple[str, str]:
        """Data keys of the row-axis and column-axis readbacks (the motor names)."""
        return (self.y_motor.name, self.x_motor.name)

    @property
    def devices(self) -> tuple[Any, Any, Any]:
        """``(y_motor, x_motor, detector)``."""
        return (self.y_motor, self.x_motor, self.detector)

    def setpoints(self, nominal_positions_m: ArrayLike | None = None) -> NDArray[np.float64]:
        """Nominal positions ``(n, 2)`` in motor units (default the specimen's nominal scan)."""
        nominal = (
            self.specimen.nominal_positions_m
            if nominal_positions_m is None
            else nominal_positions_m
        )
        return np.asarray(nominal, dtype=np.float64).reshape(-1, 2) / self.position_scale_m

    def setup(
        self,
        pattern: str | None = None,
        nominal_positions_m: ArrayLike | None = None,
        **overrides: Any,
    ) -> ScanSetup:
        """The ``start["ptycho"]`` contract for a scan with this beamline.

        Parameters
        ----------
        pattern : str, optional
            Scan pattern name (default the specimen's).
        nominal_positions_m : array_like (n, 2), optional
            Nominal beam positions in metres (default the specimen's nominal scan).
        **overrides
            Any other :class:`~bluesky_ptycho.setup.ScanSetup` field, including
            ``detector_key``, ``position_keys`` and ``position_scale_m`` (which default to
            this beamline's).

        Returns
        -------
        ScanSetup
            With this beamline's ``detector_key``, ``position_keys`` and ``position_scale_m``
            unless overridden.
        """
        own: dict[str, Any] = {
            "detector_key": self.detector_key,
            "position_keys": self.position_keys,
            "position_scale_m": self.position_scale_m,
        }
        return self.specimen.setup(
            nominal_positions_m=nominal_positions_m,
            pattern=pattern,
            **{**own, **overrides},
        )


def make_beamline(
    preset: SimulationPreset | None = None,
    *,
    mode: Literal["inline", "hdf5"] = "inline",
    directory: str | Path | None = None,
    jitter_um: float = 0.002,
    seed: int = 0,
    noise: bool = True,
    layout: DetectorLayout | None = None,
    detector_name: str = "eiger",
    motor_names: tuple[str, str] = ("sy", "sx"),
    compression: str | None = None,
) -> SimBeamline:
    """A simulated ophyd (v1) ptychography beamline.

    Parameters
    ----------
    preset : SimulationPreset, optional
        Default :func:`~bluesky_ptycho.simulate.small_preset`.
    mode : {"inline", "hdf5"}
        Frames inline in events (:class:`PtychoDetector`) or in HDF5 files with resource/datum
        documents (:class:`PtychoHDF5Detector`).
    directory : str or Path, optional
        Where the HDF5 files go; required for ``mode="hdf5"``.
    jitter_um : float, optional
        Rms encoder jitter of both motors in micrometres (default 0.002).
    seed : int, optional
        Seed of object, noise and jitter.
    noise : bool, optional
        Poisson noise on the frames (default True).
    layout : DetectorLayout, optional
        Raw detector frame layout (default: raw frame = the N x N pattern).
    detector_name : str, optional
        Detector name (default ``"eiger"``: frames under ``"eiger_image"``).
    motor_names : (str, str), optional
        Row-axis and column-axis motor names (default ``("sy", "sx")``).
    compression : str, optional
        HDF5 compression of the frames for ``mode="hdf5"`` (see :class:`PtychoHDF5Detector`);
        default None.

    Returns
    -------
    SimBeamline
    """
    specimen = SimulatedSpecimen.from_preset(preset, seed=seed, noise=noise, layout=layout)
    y_seed, x_seed = specimen.jitter_seeds(2)
    y_motor = JitteryAxis(name=motor_names[0], jitter=jitter_um, seed=y_seed)
    x_motor = JitteryAxis(name=motor_names[1], jitter=jitter_um, seed=x_seed)
    detector: PtychoDetector
    if mode == "inline":
        if compression is not None:
            raise ValueError('compression applies to mode="hdf5" only; inline frames are arrays')
        detector = PtychoDetector(
            detector_name,
            specimen=specimen,
            y_motor=y_motor,
            x_motor=x_motor,
            position_scale_m=MICROMETRE,
        )
    elif mode == "hdf5":
        if directory is None:
            raise ValueError('mode="hdf5" needs a directory for the HDF5 files')
        detector = PtychoHDF5Detector(
            detector_name,
            specimen=specimen,
            y_motor=y_motor,
            x_motor=x_motor,
            directory=directory,
            position_scale_m=MICROMETRE,
            compression=compression,
        )
    else:
        raise ValueError(f'mode must be "inline" or "hdf5", got {mode!r}')
    return SimBeamline(
        specimen=specimen,
        y_motor=y_motor,
        x_motor=x_motor,
        detector=detector,
        detector_key=detector.data_key,
        position_scale_m=MICROMETRE,
    )
