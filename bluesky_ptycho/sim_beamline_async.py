"""A simulated ptychography beamline with ophyd-async devices.

Built from ophyd-async's own building blocks, so the documents are the real thing:

- :class:`JitteryAsyncAxis`: a soft motor (``StandardReadable`` + ``StandardMovable``, like
  :class:`ophyd_async.sim.SimMotor` with instant moves) whose readback is the setpoint plus
  seeded Gaussian jitter, drawn once per move; the readback's data key is the device name.
- :class:`PtychoAsyncDetector`: a ``StandardDetector`` with trigger, acquire and data logics
  (the pattern of :class:`ophyd_async.sim.SimBlobDetector`). Each exposure computes the frame
  at the motors' current readbacks (:meth:`SimulatedSpecimen.raw_frame_at
  <bluesky_ptycho.sim_beamline.SimulatedSpecimen.raw_frame_at>`) and appends it to the HDF5
  dataset ``/entry/data/data`` (float32, chunks ``(1, H, W)``, SWMR mode); ophyd-async's
  ``StreamResourceDataProvider`` emits one ``stream_resource`` (mimetype
  ``"application/x-hdf5"``, ``uri`` ``"file://localhost/<abs path>"``, parameters
  ``{"dataset": "/entry/data/data", "chunk_shape": (1, H, W)}``) and a ``stream_datum`` per
  event (``indices {"start", "stop"}``; the RunEngine fills ``seq_nums`` and ``descriptor``
  and emits it before the event with that ``seq_num``).

Readers open the file at ``uri`` (``h5py.File(path, "r", swmr=True)`` from another process,
refreshing the dataset for new frames) and read ``dataset[indices.start:indices.stop]``.

:func:`make_async_beamline` builds and connects the devices (in the bluesky event loop: create
the ``RunEngine`` first) and returns a :class:`~bluesky_ptycho.sim_beamline.SimBeamline`.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    MovableLogic,
    PathProvider,
    StandardDetector,
    StandardMovable,
    StandardReadable,
    StaticPathProvider,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TimeoutCalculator,
    TriggerInfo,
    UUIDFilenameProvider,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

from bluesky_ptycho.io.hdf5 import compression_options
from bluesky_ptycho.sim_beamline import (
    DATA_PATH,
    MICROMETRE,
    DetectorLayout,
    SimBeamline,
    SimulatedSpecimen,
)
from bluesky_ptycho.simulate import SimulationPreset

__all__ = [
    "DATA_PATH",
    "JitteryAsyncAxis",
    "PtychoAsyncDetector",
    "make_async_beamline",
]

_FRAME_DTYPE = np.dtype(np.float32)


# --------------------------------------------------------------------------------------------
# motor
# --------------------------------------------------------------------------------------------


@dataclass
class _JitteryMoveLogic(MovableLogic[float]):
    """Instant move: setpoint, then readback = setpoint + jitter."""

    readback_set: Callable[[float], None]
    jittered: Callable[[float], float]

    async def move(self, new_position: float, timeout: TimeoutCalculator) -> None:
        await self.setpoint.set(new_position)
        self.readback_set(self.jittered(new_position))


class JitteryAsyncAxis(StandardReadable, StandardMovable[float]):
    """An ophyd-async soft motor whose readback is the setpoint plus Gaussian jitter.

    Moves are instant; each sets the readback to ``setpoint + N(0, jitter)``, which then stays
    put until the next move. ``read()`` gives the readback under the device name.

    Parameters
    ----------
    name : str, optional
        Device name (``init_devices`` names it after the variable otherwise).
    jitter : float, optional
        Rms of the readback error in motor units (default 0.002, i.e. 2 nm in micrometres).
    seed : int, SeedSequence or None, optional
        Seed of the jitter sequence.
    initial_value : float, optional
        Initial setpoint (default 0); the readback starts jittered around it, as
        :class:`~bluesky_ptycho.sim_beamline.JitteryAxis` does, so both kinds of axis give the
        same readbacks for the same seed and moves.
    units : str, optional
        Engineering units (default ``"um"``).
    """

    def __init__(
        self,
        name: str = "",
        *,
        jitter: float = 0.002,
        seed: int | np.random.SeedSequence | None = None,
        initial_value: float = 0.0,
        units: str = "um",
    ) -> None:
        value = float(jitter)
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"jitter must be finite and >= 0, got {jitter!r}")
        self.jitter = value
        self._rng = np.random.default_rng(seed)
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.user_readback, self._set_readback = soft_signal_r_and_setter(
                float, self._jittered(float(initial_value)), units=units, precision=5
            )
        self.user_setpoint = soft_signal_rw(float, float(initial_value), units=units, precision=5)
        super().__init__(name=name)

    def _jittered(self, setpoint: float) -> float:
        if self.jitter == 0.0:
            return float(setpoint)
        return float(setpoint) + float(self._rng.normal(0.0, self.jitter))

    @cached_property
    def movable_logic(self) -> _JitteryMoveLogic:
        """Instant, jittered moves."""
        return _JitteryMoveLogic(
            setpoint=self.user_setpoint,
            readback=self.user_readback,
            readback_set=self._set_readback,
            jittered=self._jittered,
        )


# --------------------------------------------------------------------------------------------
# detector
# --------------------------------------------------------------------------------------------


async def _readback(motor: Any) -> float:
    """Current readback of an ophyd-async movable (``locate``) or an ophyd v1 positioner."""
    locate = getattr(motor, "locate", None)
    if locate is not None and inspect.iscoroutinefunction(locate):
        return float((await locate())["readback"])
    return float(motor.position)


class _FrameSource:
    """The simulated detector head and its file: computes frames, appends them to HDF5.

    Holds the motors outside the device tree (so the detector does not adopt them).
    """

    def __init__(
        self,
        specimen: SimulatedSpecimen,
        y_motor: Any,
        x_motor: Any,
        position_scale_m: float,
        compression: str | None = None,
    ) -> None:
        self.specimen = specimen
        self.compression = compression
        self.y_motor = y_motor
        self.x_motor = x_motor
        self.position_scale_m = float(position_scale_m)
        self.path: Path | None = None
        self.positions_m: list[tuple[float, float]] = []
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self.frames_written, self._set_frames_written = soft_signal_r_and_setter(int, 0)

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self, path: Path) -> None:
        self.close()
        h, w = self.specimen.raw_shape
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w", libver="latest")
        try:
            dataset = f.create_dataset(
                DATA_PATH,
                shape=(0, h, w),
                maxshape=(None, h, w),
                chunks=(1, h, w),
                dtype=_FRAME_DTYPE,
                **compression_options(self.compression),
            )
            f.swmr_mode = True  # readers in other processes may open it with swmr=True
        except Exception:
            f.close()
            raise
        self._file, self._dataset, self.path = f, dataset, path
        self.positions_m = []
        self._set_frames_written(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._dataset = None

    async def acquire(self, n_frames: int) -> None:
        for _ in range(int(n_frames)):
            if self._dataset is None:
                raise RuntimeError("the detector's HDF5 file is not open")
            y, x = await asyncio.gather(_readback(self.y_motor), _readback(self.x_motor))
            position = (y * self.position_scale_m, x * self.position_scale_m)
            frame = self.specimen.raw_frame_at(position)
            i = int(self._dataset.shape[0])
            self._dataset.resize(i + 1, axis=0)
            self._dataset[i] = frame
            self._dataset.flush()
            self.positions_m.append(position)
            self._set_frames_written(i + 1)


class _PtychoTriggerLogic(DetectorTriggerLogic):
    def __init__(self) -> None:
        self.exposures = 1

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.exposures = int(num)

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _PtychoAcquireLogic(DetectorAcquireLogic):
    """Acquisition computes the frames at once (errors reach the trigger status)."""

    def __init__(self, source: _FrameSource, trigger_logic: _PtychoTriggerLogic) -> None:
        self.source = source
        self.trigger_logic = trigger_logic

    async def start_acquiring(self) -> None:
        await self.source.acquire(self.trigger_logic.exposures)

    async def wait_for_idle(self) -> None:
        return None

    async def ensure_stopped(self) -> None:
        return None


class _PtychoDataLogic(DetectorDataLogic):
    def __init__(self, path_provider: PathProvider, source: _FrameSource) -> None:
        self.path_provider = path_provider
        self.source = source

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        info = self.path_provider(datakey_name)
        filename = f"{info.filename}.h5"
        self.source.open(Path(info.directory_path) / filename)
        shape = tuple(int(v) for v in self.source.specimen.raw_shape)
        resource = StreamResourceInfo(
            data_key=datakey_name,
            shape=shape,
            chunk_shape=(1, *shape),
            dtype_numpy=_FRAME_DTYPE.str,
            parameters={"dataset": DATA_PATH},
        )
        return StreamResourceDataProvider(
            uri=f"{info.directory_uri}{filename}",
            resources=[resource],
            mimetype="application/x-hdf5",
            collections_written_signal=self.source.frames_written,
        )

    async def stop(self) -> None:
        self.source.close()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


class PtychoAsyncDetector(StandardDetector):
    """An ophyd-async HDF5 detector that sees the simulated specimen.

    The frames' data key is the device name; its descriptor entry has ``shape [1, H, W]``,
    ``dtype_numpy "<f4"`` and ``external "STREAM:"``. A file ``<uuid>.h5`` is opened on the
    first ``prepare`` (or implicit prepare at the first ``trigger``) after ``stage`` and closed
    on ``unstage``.

    Parameters
    ----------
    specimen : SimulatedSpecimen
        The ground truth.
    y_motor, x_motor : movable
        Row-axis and column-axis motors: ophyd-async movables (their ``locate()`` readback) or
        ophyd v1 positioners (``position``).
    path_provider : PathProvider
        Where files go, e.g. ``StaticPathProvider(UUIDFilenameProvider(), directory)``.
    position_scale_m : float, optional
        Motor units to metres (default 1e-6).
    compression : str, optional
        Compress the frames with one of
        :data:`~bluesky_ptycho.io.hdf5.COMPRESSION_FILTERS` (``"bitshuffle-lz4"``, ``"lz4"``,
        ``"blosc"``, ``"blosc2"``, ``"zstd"``); default None (uncompressed).
    name : str, optional
        Device name.
    """

    def __init__(
        self,
        specimen: SimulatedSpecimen,
        y_motor: Any,
        x_motor: Any,
        path_provider: PathProvider,
        *,
        position_scale_m: float = MICROMETRE,
        compression: str | None = None,
        name: str = "",
    ) -> None:
        compression_options(compression)  # an unknown name fails here, not at prepare
        if not (math.isfinite(position_scale_m) and position_scale_m > 0.0):
            raise ValueError(f"position_scale_m must be positive, got {position_scale_m!r}")
        self.source = _FrameSource(specimen, y_motor, x_motor, position_scale_m, compression)
        trigger_logic = _PtychoTriggerLogic()
        self.add_detector_logics(
            trigger_logic,
            _PtychoAcquireLogic(self.source, trigger_logic),
            _PtychoDataLogic(path_provider, self.source),
        )
        super().__init__(name=name)

    @property
    def specimen(self) -> SimulatedSpecimen:
        """The ground truth the detector sees."""
        return self.source.specimen

    @property
    def path(self) -> Path | None:
        """The current (or last) HDF5 file."""
        return self.source.path

    @property
    def is_open(self) -> bool:
        """Whether the HDF5 file is open."""
        return self.source.is_open


def make_async_beamline(
    preset: SimulationPreset | None = None,
    *,
    directory: str | Path,
    jitter_um: float = 0.002,
    seed: int = 0,
    noise: bool = True,
    layout: DetectorLayout | None = None,
    detector_name: str = "eiger",
    motor_names: tuple[str, str] = ("sy", "sx"),
    connect: bool = True,
    compression: str | None = None,
) -> SimBeamline:
    """A simulated ophyd-async ptychography beamline (HDF5 frames, stream documents).

    Parameters
    ----------
    preset : SimulationPreset, optional
        Default :func:`~bluesky_ptycho.simulate.small_preset`.
    directory : str or Path
        Where the HDF5 files go.
    jitter_um : float, optional
        Rms encoder jitter of both motors in micrometres (default 0.002).
    seed : int, optional
        Seed of object, noise and jitter (same streams as
        :func:`~bluesky_ptycho.sim_beamline.make_beamline`).
    noise : bool, optional
        Poisson noise on the frames (default True).
    layout : DetectorLayout, optional
        Raw detector frame layout.
    detector_name : str, optional
        Detector name, also the frames' data key (default ``"eiger"``).
    motor_names : (str, str), optional
        Row-axis and column-axis motor names (default ``("sy", "sx")``).
    connect : bool, optional
        Connect the devices in the bluesky event loop (default True; needs a ``RunEngine``
        to exist). With False, connect them yourself (``init_devices``, ``ensure_connected``).
    compression : str, optional
        HDF5 compression of the frames (see :class:`PtychoAsyncDetector`); default None.

    Returns
    -------
    SimBeamline
        ``detector_key`` is the detector name.

    Raises
    ------
    RuntimeError
        With ``connect=True`` when no RunEngine event loop is running.
    """
    specimen = SimulatedSpecimen.from_preset(preset, seed=seed, noise=noise, layout=layout)
    y_seed, x_seed = specimen.jitter_seeds(2)
    y_motor = JitteryAsyncAxis(motor_names[0], jitter=jitter_um, seed=y_seed)
    x_motor = JitteryAsyncAxis(motor_names[1], jitter=jitter_um, seed=x_seed)
    path_provider = StaticPathProvider(UUIDFilenameProvider(), Path(directory).resolve())
    detector = PtychoAsyncDetector(
        specimen,
        y_motor,
        x_motor,
        path_provider,
        position_scale_m=MICROMETRE,
        compression=compression,
        name=detector_name,
    )
    if connect:

        async def _connect() -> None:
            await asyncio.gather(y_motor.connect(), x_motor.connect(), detector.connect())

        try:
            call_in_bluesky_event_loop(_connect())
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot connect the ophyd-async devices ({exc}): create the RunEngine "
                "first, or pass connect=False and connect them yourself"
            ) from exc
    return SimBeamline(
        specimen=specimen,
        y_motor=y_motor,
        x_motor=x_motor,
        detector=detector,
        detector_key=detector_name,
        position_scale_m=MICROMETRE,
    )
