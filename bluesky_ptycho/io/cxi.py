"""CXI files (Coherent X-ray Imaging, HDF5): read a ptychographic scan, write one.

The layout follows the CXI 1.6 conventions (cxidb.org) for a single entry::

    /cxi_version                                    160
    /entry_1/data_1/data                            soft link to the detector data
    /entry_1/data_1/translation                     soft link to the sample translation
    /entry_1/instrument_1/source_1/energy           photon energy, J
    /entry_1/instrument_1/detector_1/data           (n, H, W) intensities
    /entry_1/instrument_1/detector_1/distance       sample-detector distance, m
    /entry_1/instrument_1/detector_1/x_pixel_size   m
    /entry_1/instrument_1/detector_1/y_pixel_size   m
    /entry_1/instrument_1/detector_1/corner_position (x, y, z) of the first pixel's corner, m
    /entry_1/instrument_1/detector_1/mask           (H, W) uint32, optional
    /entry_1/sample_1/geometry_1/translation        (n, 3) sample translation (x, y, z), m

Conventions chosen here
-----------------------
Positions
    CXI stores the *sample* translation in the laboratory frame (x, y, z). This package's
    positions are the *beam* position on the specimen, ``(row, col) = (y, x)`` in metres
    (:mod:`bluesky_ptycho.geometry`). Moving the sample by ``+t`` puts the fixed beam at ``-t``
    in sample coordinates, so by default::

        positions_m[:, 0] = -translation[:, 1]     # row = -y
        positions_m[:, 1] = -translation[:, 0]     # col = -x

    and :func:`write_cxi` writes ``translation = (-col, -row, 0)``. Negation is exact in
    floating point, so a write/read round trip preserves positions bit for bit. Files from
    codes that store the beam position itself in ``translation`` are read with
    ``negate_translation=False`` (and written likewise). The z component is ignored.
Detector rows and columns
    Frame rows follow the row axis (y) and columns the column axis (x) as stored; orientation
    flips (``transpose``, ``flip_rows``, ``flip_cols``) belong to the preprocessing and are not
    taken from CXI ``basis_vectors``.
Beam centre
    ``corner_position`` is the (x, y, z) position of the outer corner of pixel ``[0, 0]`` relative
    to the beam axis, with columns running along +x and rows along +y. The beam centre (zero
    frequency) in pixels is then ``(row, col) = (-y / y_pixel_size - 0.5,
    -x / x_pixel_size - 0.5)``; values within 1e-6 px of an integer are snapped to it. Without
    ``corner_position`` the beam centre is unknown (``None``: the frame centre is assumed).
Mask
    CXI masks are per-pixel bit fields where 0 is a good pixel. Any nonzero value is read as a
    *bad* pixel (``True`` in :attr:`ScanFile.mask`). :func:`write_cxi` writes bad pixels as
    ``1`` (``PIXEL_IS_INVALID``) in a uint32 array.
Energy
    Stored in joules (CXI); converted with the exact elementary charge
    ``1.602176634e-19 C``. A round trip preserves the energy to about 1e-16 relative.

Frames are read lazily: :func:`read_cxi` returns an :class:`H5Frames` that opens the file only
when frames are asked for, and :meth:`ScanFile.iter_frames` yields them chunk by chunk, so a
scan larger than memory can be replayed.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray

from bluesky_ptycho.io.hdf5 import check_filters, get_dataset, open_hdf5, read_frame
from bluesky_ptycho.io.units import ELEMENTARY_CHARGE_C
from bluesky_ptycho.validation import (
    check_mask,
    check_pair,
    check_positions,
    check_positive_int,
    check_positive_scalar,
)

__all__ = [
    "CXI_VERSION",
    "ELEMENTARY_CHARGE_C",
    "H5Frames",
    "ScanFile",
    "read_cxi",
    "write_cxi",
]

logger = logging.getLogger(__name__)

#: Version number written to ``/cxi_version`` (CXI 1.6).
CXI_VERSION = 160

_DET = "instrument_1/detector_1"
_SOURCE = "instrument_1/source_1"
_GEOM = "sample_1/geometry_1"
_SNAP_TOL_PX = 1e-6
_MASK_INVALID = 1  # CXI PIXEL_IS_INVALID bit


# --------------------------------------------------------------------------------------------
# lazy frames
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class H5Frames:
    """A stack of frames in an HDF5 dataset, read on demand.

    Holds no open file: every access opens the file read-only and closes it again, so the
    object can be kept, copied or pickled freely and the file is never held open between
    reads. :meth:`chunks` keeps the file open while it iterates.

    Attributes
    ----------
    path : Path
        The HDF5 file.
    dataset : str
        Absolute path of the ``(n, H, W)`` dataset inside the file (links are followed).
    shape : (int, int, int)
        Shape of the dataset.
    dtype : numpy.dtype
        Element type of the dataset.
    """

    path: Path
    dataset: str
    shape: tuple[int, int, int]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions (3)."""
        return len(self.shape)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index: Any) -> NDArray[Any]:
        f = open_hdf5(self.path, swmr_first=False)
        with f:
            return read_frame(get_dataset(f, self.dataset), index, retries=0)

    def __array__(self, dtype: Any = None, copy: Any = None) -> NDArray[Any]:
        out = self[()]
        return out if dtype is None else out.astype(dtype, copy=False)

    def chunks(self, size: int = 64) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(start, frames[start:start + size])`` over the whole stack.

        Parameters
        ----------
        size : int, optional
            Frames per chunk (default 64).

        Yields
        ------
        (int, ndarray)
            Index of the first frame of the chunk, and the chunk ``(k, H, W)``.
        """
        size = _positive_int("chunk size", size)
        f = open_hdf5(self.path, swmr_first=False)
        with f:
            ds = get_dataset(f, self.dataset)
            for start in range(0, len(self), size):
                yield start, read_frame(ds, slice(start, start + size), retries=0)


# --------------------------------------------------------------------------------------------
# the scan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScanFile:
    """A ptychographic scan read from a file: frames, positions and geometry, SI units.

    Attributes
    ----------
    intensities : ndarray or H5Frames, shape (n, H, W)
        Raw detector frames (counts), as stored. :func:`read_cxi` gives a lazy
        :class:`H5Frames`; use :meth:`iter_frames` to read them chunk by chunk.
    positions_m : ndarray of float64, shape (n, 2)
        Beam position on the specimen for each frame, ``(row, col) = (y, x)`` in metres (see
        the module docstring for the sign convention).
    energy_eV : float
        Photon energy.
    detector_distance_m : float
        Sample-detector distance.
    detector_pixel_m : float
        Detector pixel pitch (square pixels).
    mask : ndarray of bool, shape (H, W), or None
        ``True`` marks a bad pixel (any nonzero CXI mask value); None: no mask in the file.
    beam_center_px : (float, float) or None
        Zero frequency ``(row, col)`` on the raw frame; None: unknown (the frame centre).
    metadata : dict
        Plain-JSON facts about the file (path, entry, CXI version, conventions, title, ...).
    """

    intensities: NDArray[Any] | H5Frames
    positions_m: NDArray[np.float64]
    energy_eV: float
    detector_distance_m: float
    detector_pixel_m: float
    mask: NDArray[np.bool_] | None = None
    beam_center_px: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.intensities.shape)
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"intensities must have shape (n, H, W), got {shape}")
        pos = check_positions("positions_m", self.positions_m, n=shape[0])
        object.__setattr__(self, "positions_m", pos)
        for name in ("energy_eV", "detector_distance_m", "detector_pixel_m"):
            object.__setattr__(self, name, _positive_float(name, getattr(self, name)))
        if self.mask is not None:
            mask = check_mask("mask", np.asarray(self.mask) != 0, (shape[1], shape[2]))
            object.__setattr__(self, "mask", mask)
        if self.beam_center_px is not None:
            bc: tuple[float, float] = check_pair("beam_center_px", self.beam_center_px)
            object.__setattr__(self, "beam_center_px", bc)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.intensities.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(H, W)`` of a raw frame."""
        return int(self.intensities.shape[1]), int(self.intensities.shape[2])

    def iter_frames(self, chunk: int = 64) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(start, frames)`` chunks of at most ``chunk`` frames, in order.

        Parameters
        ----------
        chunk : int, optional
            Frames per chunk (default 64). For a file-backed scan only one chunk is in memory
            at a time.

        Yields
        ------
        (int, ndarray)
            Index of the chunk's first frame, and the frames ``(k, H, W)``.
        """
        chunk = _positive_int("chunk", chunk)
        if isinstance(self.intensities, H5Frames):
            yield from self.intensities.chunks(chunk)
            return
        for start in range(0, self.n_frames, chunk):
            yield start, np.asarray(self.intensities[start : start + chunk])

    def load(self) -> ScanFile:
        """A copy with all frames read into memory."""
        return ScanFile(
            intensities=np.asarray(self.intensities),
            positions_m=self.positions_m,
            energy_eV=self.energy_eV,
            detector_distance_m=self.detector_distance_m,
            detector_pixel_m=self.detector_pixel_m,
            mask=self.mask,
            beam_center_px=self.beam_center_px,
            metadata=dict(self.metadata),
        )


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_cxi(
    path: str | os.PathLike[str],
    *,
    entry: str = "entry_1",
    load: bool = False,
    negate_translation: bool = True,
) -> ScanFile:
    """Read a ptychographic scan from a CXI file.

    Parameters
    ----------
    path : str or path-like
        The CXI (HDF5) file.
    entry : str, optional
        The entry group (default ``"entry_1"``).
    load : bool, optional
        Read all frames into memory now. By default frames stay in the file
        (:class:`H5Frames`) and are read when iterated.
    negate_translation : bool, optional
        True (default): ``translation`` is the sample translation and the beam position is its
        negative (CXI convention). False: ``translation`` already is the beam position.

    Returns
    -------
    ScanFile

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not HDF5, or lacks a dataset the scan needs (the message names it), or
        the datasets disagree (frame count, pixel sizes). A file that cannot be opened or
        whose frames are compressed with a filter no installed plugin provides raises
        :class:`~bluesky_ptycho.io.hdf5.FrameReadError` (a ``ValueError``) naming the cause
        and the fix. Compressed frames (bitshuffle/LZ4, LZ4, Blosc, Blosc2, Zstd) are read
        with the filter plugins of ``hdf5plugin``, registered here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CXI file at {str(path)!r}")
    f = open_hdf5(path, swmr_first=False)  # FrameReadError (a ValueError) names the cause
    with f:
        return _read(f, path, entry, load=load, negate=negate_translation)


def _read(f: h5py.File, path: Path, entry: str, *, load: bool, negate: bool) -> ScanFile:
    where = str(path)
    root = f"/{entry.strip('/')}"

    def find(*names: str, what: str) -> h5py.Dataset:
        for name in names:
            obj = f.get(f"{root}/{name}")
            if isinstance(obj, h5py.Dataset):
                return obj
        tried = " or ".join(f"{root}/{n}" for n in names)
        raise ValueError(
            f"{where!r} is not a CXI ptychography file: missing dataset {tried} ({what})"
        )

    def optional(*names: str) -> h5py.Dataset | None:
        for name in names:
            obj = f.get(f"{root}/{name}")
            if isinstance(obj, h5py.Dataset):
                return obj
        return None

    if not isinstance(f.get(root), h5py.Group):
        raise ValueError(f"{where!r} is not a CXI file: missing group {root}")

    data = find("data_1/data", f"{_DET}/data", what="the diffraction frames")
    check_filters(data)  # a missing filter plugin is said now, not at the first frame
    if data.ndim != 3:
        raise ValueError(f"{where!r}: {data.name} has shape {data.shape}, expected (n, H, W)")
    n = int(data.shape[0])

    translation = np.asarray(
        find("data_1/translation", f"{_GEOM}/translation", what="the scan positions")[()],
        dtype=np.float64,
    )
    if translation.ndim != 2 or translation.shape[1] not in (2, 3):
        raise ValueError(
            f"{where!r}: translation has shape {translation.shape}, expected (n, 3) (x, y, z)"
        )
    problems: list[str] = []
    if translation.shape[0] != n:
        # frames and positions of different lengths: the pairs that exist are kept
        kept = min(n, int(translation.shape[0]))
        problem = (
            f"{where!r}: {translation.shape[0]} translations for {n} frames in {data.name}; "
            f"the first {kept} frames are used, the rest have no position (or no frame)"
        )
        if kept == 0:
            raise ValueError(problem)
        logger.warning("%s", problem)
        problems.append(problem)
        n = kept
        translation = translation[:kept]
    sign = -1.0 if negate else 1.0
    positions = np.stack([sign * translation[:, 1], sign * translation[:, 0]], axis=1)
    positions = check_positions(f"{where!r}: translation", positions)

    energy_j = _scalar(find(f"{_SOURCE}/energy", what="photon energy in J"), where)
    energy_eV = energy_j / ELEMENTARY_CHARGE_C

    corner_ds = optional(f"{_DET}/corner_position")
    corner = None if corner_ds is None else np.asarray(corner_ds[()], dtype=np.float64).ravel()
    distance_ds = optional(f"{_DET}/distance")
    if distance_ds is not None:
        distance = _scalar(distance_ds, where)
    elif corner is not None and corner.size == 3:
        distance = float(corner[2])
    else:
        raise ValueError(
            f"{where!r} is not a CXI ptychography file: missing dataset {root}/{_DET}/distance "
            f"(sample-detector distance in m)"
        )

    x_pixel = _scalar(find(f"{_DET}/x_pixel_size", what="detector pixel size in m"), where)
    y_ds = optional(f"{_DET}/y_pixel_size")
    y_pixel = _scalar(y_ds, where) if y_ds is not None else x_pixel
    if not math.isclose(x_pixel, y_pixel, rel_tol=1e-9):
        raise ValueError(
            f"{where!r}: x_pixel_size {x_pixel} and y_pixel_size {y_pixel} differ; only square "
            "detector pixels are supported"
        )

    beam_center: tuple[float, float] | None = None
    if corner is not None:
        if corner.size < 2:
            raise ValueError(f"{where!r}: corner_position must hold (x, y, z), got {corner}")
        beam_center = (
            _snap(-corner[1] / y_pixel - 0.5),
            _snap(-corner[0] / x_pixel - 0.5),
        )

    mask_ds = optional(f"{_DET}/mask", "data_1/mask")
    mask = None
    if mask_ds is not None:
        raw_mask = np.asarray(mask_ds[()])
        if raw_mask.ndim == 3 and raw_mask.shape[0] == 1:
            raw_mask = raw_mask[0]
        if raw_mask.shape != tuple(data.shape[1:]):
            raise ValueError(
                f"{where!r}: mask {mask_ds.name} has shape {raw_mask.shape}, frames are "
                f"{tuple(data.shape[1:])}"
            )
        mask = raw_mask != 0

    metadata: dict[str, Any] = {
        "format": "cxi",
        "path": str(path.resolve()),
        "entry": root,
        "frames_dataset": data.name,
        "translation_convention": "beam = -translation" if negate else "beam = translation",
        "n_frames": n,
        "frame_shape": [int(s) for s in data.shape[1:]],
        "dtype": str(data.dtype),
    }
    if problems:
        metadata["problems"] = problems
    version = f.get("cxi_version")
    if isinstance(version, h5py.Dataset):
        metadata["cxi_version"] = int(np.asarray(version[()]).ravel()[0])
    for key in ("title", "experiment_identifier", "start_time", "end_time"):
        obj = optional(key)
        if obj is not None:
            metadata[key] = _as_str(obj[()])
    sample_name = optional("sample_1/name")
    if sample_name is not None:
        metadata["sample_name"] = _as_str(sample_name[()])

    frames: NDArray[Any] | H5Frames
    if load:
        frames = np.asarray(data[:n])
    else:
        frames = H5Frames(
            path=path.resolve(),
            dataset=data.name,
            shape=(n, int(data.shape[1]), int(data.shape[2])),
            dtype=data.dtype,
        )
    return ScanFile(
        intensities=frames,
        positions_m=positions,
        energy_eV=energy_eV,
        detector_distance_m=distance,
        detector_pixel_m=x_pixel,
        mask=mask,
        beam_center_px=beam_center,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_cxi(
    path: str | os.PathLike[str],
    intensities: ArrayLike | H5Frames,
    positions_m: ArrayLike,
    *,
    energy_eV: float,
    detector_distance_m: float,
    detector_pixel_m: float,
    mask: ArrayLike | None = None,
    beam_center_px: tuple[float, float] | None = None,
    negate_translation: bool = True,
    title: str | None = None,
    compression: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ptychographic scan as a CXI 1.6 file.

    Parameters
    ----------
    path : str or path-like
        Destination. Written atomically (temporary file, then renamed).
    intensities : array_like or H5Frames, shape (n, H, W)
        Detector frames, stored with their own dtype; written in chunks, so an
        :class:`H5Frames` or an ``h5py.Dataset`` is never read whole.
    positions_m : array_like, shape (n, 2)
        Beam positions on the specimen ``(row, col) = (y, x)`` in metres; stored as the sample
        translation ``(-x, -y, 0)`` (see the module docstring).
    energy_eV : float
        Photon energy (stored in J).
    detector_distance_m, detector_pixel_m : float
        Sample-detector distance and (square) detector pixel pitch.
    mask : array_like of bool, shape (H, W), optional
        ``True`` (nonzero) marks a bad pixel; stored as uint32 with bad pixels ``1``.
    beam_center_px : (float, float), optional
        Zero frequency ``(row, col)`` on the frames; default ``(H // 2, W // 2)``. Stored as
        ``corner_position``.
    negate_translation : bool, optional
        Store ``-position`` (default, CXI's sample translation) or the position itself.
    title : str, optional
        Stored as ``/entry_1/title``.
    compression : str, optional
        HDF5 compression of the frames (e.g. ``"gzip"``); default none.
    overwrite : bool, optional
        Replace an existing file (default False: ``FileExistsError``).

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    ValueError
        If shapes disagree or a number is not positive and finite.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    frames = intensities if hasattr(intensities, "shape") else np.asarray(intensities)
    shape = tuple(int(s) for s in frames.shape)  # type: ignore[union-attr]
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"intensities must have shape (n, H, W), got {shape}")
    n, h, w = shape
    pos = check_positions("positions_m", positions_m, n=n)
    energy = _positive_float("energy_eV", energy_eV)
    distance = _positive_float("detector_distance_m", detector_distance_m)
    pixel = _positive_float("detector_pixel_m", detector_pixel_m)
    mask_arr = None
    if mask is not None:
        bad = check_mask("mask", np.asarray(mask) != 0, (h, w))
        mask_arr = np.where(bad != 0, _MASK_INVALID, 0).astype(np.uint32)
    if beam_center_px is None:
        centre = (float(h // 2), float(w // 2))
    else:
        centre = check_pair("beam_center_px", beam_center_px)
    sign = -1.0 if negate_translation else 1.0
    translation = np.zeros((n, 3), dtype=np.float64)
    translation[:, 0] = sign * pos[:, 1]
    translation[:, 1] = sign * pos[:, 0]
    corner = np.array(
        [-(centre[1] + 0.5) * pixel, -(centre[0] + 0.5) * pixel, distance], dtype=np.float64
    )
    dtype = np.dtype(getattr(frames, "dtype", np.float32))

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with h5py.File(tmp, "x") as f:
            f.attrs["creator"] = "bluesky-ptycho"
            f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
            f.create_dataset("number_of_entries", data=np.int64(1))
            entry = f.create_group("entry_1")
            if title is not None:
                entry.create_dataset("title", data=str(title))
            source = entry.create_group(_SOURCE)
            source.create_dataset("energy", data=np.float64(energy * ELEMENTARY_CHARGE_C))
            source["energy"].attrs["units"] = "J"
            det = entry.create_group(_DET)
            det.create_dataset("distance", data=np.float64(distance))
            det.create_dataset("x_pixel_size", data=np.float64(pixel))
            det.create_dataset("y_pixel_size", data=np.float64(pixel))
            det.create_dataset("corner_position", data=corner)
            for name in ("distance", "x_pixel_size", "y_pixel_size", "corner_position"):
                det[name].attrs["units"] = "m"
            ds = det.create_dataset(
                "data", shape=shape, dtype=dtype, chunks=(1, h, w), compression=compression
            )
            ds.attrs["axes"] = "translation:y:x"
            for start, block in _chunks(frames, 64):
                ds[start : start + len(block)] = block
            if mask_arr is not None:
                det.create_dataset("mask", data=mask_arr)
            geom = entry.create_group(_GEOM)
            tr = geom.create_dataset("translation", data=translation)
            tr.attrs["units"] = "m"
            tr.attrs["convention"] = (
                "sample translation (x, y, z); beam position on the sample = -translation"
                if negate_translation
                else "beam position on the sample (x, y, z)"
            )
            data_1 = entry.create_group("data_1")
            data_1["data"] = h5py.SoftLink(f"/entry_1/{_DET}/data")
            data_1["translation"] = h5py.SoftLink(f"/entry_1/{_GEOM}/translation")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _chunks(frames: Any, size: int) -> Iterator[tuple[int, NDArray[Any]]]:
    if isinstance(frames, H5Frames):
        yield from frames.chunks(size)
        return
    for start in range(0, int(frames.shape[0]), size):
        yield start, np.asarray(frames[start : start + size])


def _scalar(ds: h5py.Dataset, where: str) -> float:
    arr = np.asarray(ds[()], dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{where!r}: {ds.name} is empty")
    if arr.size > 1 and not np.all(arr == arr[0]):
        raise ValueError(f"{where!r}: {ds.name} varies along the scan; a constant is needed")
    return check_positive_scalar(f"{where!r}: {ds.name}", arr[0])


def _snap(value: float) -> float:
    nearest = round(value)
    return float(nearest) if abs(value - nearest) < _SNAP_TOL_PX else float(value)


_positive_float = check_positive_scalar
_positive_int = check_positive_int


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return _as_str(value.ravel()[0]) if value.size else ""
    return str(value)
