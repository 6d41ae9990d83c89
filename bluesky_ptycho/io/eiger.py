"""NeXus/Eiger master files: a scan whose frames live in data files linked from a master.

A Dectris Eiger (and any NXmx-style) file writer produces one *master* file and several *data*
files. The master holds the geometry and, under ``/entry/data``, one link per data file
(``data_000001``, ``data_000002``, ...; usually HDF5 external links), each to an
``(n_i, H, W)`` stack; the scan is their concatenation in name order::

    /entry/data/data_000001 -> data_000001.h5:/entry/data/data       (n_1, H, W)
    /entry/data/data_000002 -> ...
    /entry/instrument/beam/incident_wavelength    Angstrom (or units attribute)
    /entry/instrument/detector/detector_distance  m (or "distance")
    /entry/instrument/detector/x_pixel_size       m  (and y_pixel_size)
    /entry/instrument/detector/beam_center_x      pixels (column); beam_center_y: row
    /entry/instrument/detector/detectorSpecific/photon_energy   eV (preferred when present)
    /entry/instrument/detector/detectorSpecific/pixel_mask      nonzero = bad pixel

Detectors do not know where the sample was, so the positions come from elsewhere: an array,
a ``.npy`` or text file, or a dataset in an HDF5 file (the master itself or a separate file),
``(n, 2)`` beam positions ``(row, col)`` in metres (a ``units`` attribute of ``m``, ``mm``,
``um`` or ``nm`` is honoured). Without an explicit source, :func:`read_master` looks in the
master for ``/entry/sample/positions_m`` or NeXus ``/entry/sample/transformations/{y,x}``.

Frames are read lazily (:class:`LinkedFrames`), one data file at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray

from bluesky_ptycho.io.cxi import ScanFile
from bluesky_ptycho.io.units import ENERGY_UNITS, HC_EV_M, LENGTH_UNITS

__all__ = ["FramePart", "LinkedFrames", "is_master_file", "read_master", "read_positions"]

_DATA = "data"
_DET = "instrument/detector"
_HC_EV_M = HC_EV_M
_LENGTH_UNITS = LENGTH_UNITS
_ENERGY_UNITS = ENERGY_UNITS
_MASTER_POSITIONS = ("sample/positions_m",)


@dataclass(frozen=True)
class FramePart:
    """One data file's stack: ``file`` holds ``dataset`` of shape ``(n, H, W)``."""

    file: Path
    dataset: str
    n: int


@dataclass(frozen=True)
class LinkedFrames:
    """The frames of several data files, concatenated in order and read on demand.

    Holds no open file; slicing opens only the data files it needs. Behaves like a read-only
    ``(n, H, W)`` array for ``len``, ``shape``, ``dtype``, slicing with a step of one, integer
    indexing and ``np.asarray``.

    Attributes
    ----------
    parts : tuple of FramePart
        The data files, in scan order.
    shape : (int, int, int)
        ``(sum of n, H, W)``.
    dtype : numpy.dtype
        Element type (that of the first part).
    """

    parts: tuple[FramePart, ...]
    shape: tuple[int, int, int]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions (3)."""
        return 3

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index: Any) -> NDArray[Any]:
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if int(index) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"frame {index} out of range for {len(self)} frames")
            return self._read(i, i + 1)[0]
        if index == () or index is Ellipsis:
            return self._read(0, len(self))
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("LinkedFrames supports slices with step 1 only")
            return self._read(start, max(start, stop))
        raise IndexError(f"LinkedFrames supports integers and slices, got {index!r}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> NDArray[Any]:
        out = self._read(0, len(self))
        return out if dtype is None else out.astype(dtype, copy=False)

    def chunks(self, size: int = 64) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(start, frames[start:start + size])`` over all frames."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"chunk size must be a positive integer, got {size!r}")
        for start in range(0, len(self), int(size)):
            yield start, self._read(start, min(start + int(size), len(self)))

    def _read(self, start: int, stop: int) -> NDArray[Any]:
        _register_filters()
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        offset = 0
        for part in self.parts:
            lo, hi = max(start, offset), min(stop, offset + part.n)
            if lo < hi:
                with h5py.File(part.file, "r") as f:
                    out[lo - start : hi - start] = f[part.dataset][lo - offset : hi - offset]
            offset += part.n
            if offset >= stop:
                break
        return out


def is_master_file(path: str | os.PathLike[str], *, entry: str = "entry") -> bool:
    """True if ``path`` is an HDF5 file with ``/<entry>/data/data_NNNNNN`` frame links."""
    try:
        with h5py.File(path, "r") as f:
            group = f.get(f"/{entry}/{_DATA}", getlink=False)
            return isinstance(group, h5py.Group) and bool(_data_names(group))
    except OSError:
        return False


def read_master(
    path: str | os.PathLike[str],
    *,
    positions: ArrayLike | str | os.PathLike[str] | None = None,
    positions_dataset: str | None = None,
    entry: str = "entry",
) -> ScanFile:
    """Read an Eiger/NeXus master file and its data files as a scan.

    Parameters
    ----------
    path : str or path-like
        The master file.
    positions : array (n, 2), str or path-like, optional
        Beam positions ``(row, col)`` in metres, or a file holding them: ``.npy``, a text file
        of two columns, or HDF5 (with ``positions_dataset``). Default: from the master (see
        the module docstring).
    positions_dataset : str, optional
        The dataset in an HDF5 positions file (default ``"positions_m"``).
    entry : str, optional
        The NXentry group of the master (default ``"entry"``).

    Returns
    -------
    ScanFile
        Frames as :class:`LinkedFrames`; ``metadata["format"] == "nexus-master"``.

    Raises
    ------
    FileNotFoundError
        If the master, a data file or the positions file does not exist.
    ValueError
        If a dataset the scan needs is missing or inconsistent (the message names it and the
        file), or the positions do not match the frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no master file at {str(path)!r}")
    _register_filters()
    where = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{where!r} is not an HDF5 file: {exc}") from exc
    with f:
        root = f"/{entry.strip('/')}"
        group = f.get(f"{root}/{_DATA}")
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where!r} is not a NeXus/Eiger master: missing group {root}/{_DATA}")
        names = _data_names(group)
        if not names:
            raise ValueError(
                f"{where!r} is not a NeXus/Eiger master: no data_NNNNNN links in {root}/{_DATA}"
            )
        parts = tuple(_part(path, group, name) for name in names)
        frame_shapes, dtypes = [], []
        for part in parts:
            with h5py.File(part.file, "r") as df:
                ds = df[part.dataset]
                frame_shapes.append(tuple(int(s) for s in ds.shape[1:]))
                dtypes.append(ds.dtype)
        if len(set(frame_shapes)) != 1 or len(frame_shapes[0]) != 2:
            raise ValueError(f"{where!r}: data files hold frames of shapes {frame_shapes}")
        n = sum(p.n for p in parts)
        frames = LinkedFrames(parts=parts, shape=(n, *frame_shapes[0]), dtype=dtypes[0])

        det = f"{root}/{_DET}"
        energy_eV = _energy_eV(f, root, where)
        distance = _length(f, where, f"{det}/detector_distance", f"{det}/distance")
        x_pixel = _length(f, where, f"{det}/x_pixel_size")
        y_pixel = _length(f, where, f"{det}/y_pixel_size", required=False) or x_pixel
        if not math.isclose(x_pixel, y_pixel, rel_tol=1e-9):
            raise ValueError(
                f"{where!r}: x_pixel_size {x_pixel} and y_pixel_size {y_pixel} differ; only "
                "square detector pixels are supported"
            )
        beam_center: tuple[float, float] | None = None
        bx, by = f.get(f"{det}/beam_center_x"), f.get(f"{det}/beam_center_y")
        if isinstance(bx, h5py.Dataset) and isinstance(by, h5py.Dataset):
            beam_center = (float(np.ravel(by[()])[0]), float(np.ravel(bx[()])[0]))
        mask = None
        mask_ds = f.get(f"{det}/detectorSpecific/pixel_mask")
        if isinstance(mask_ds, h5py.Dataset):
            raw_mask = np.asarray(mask_ds[()])
            if raw_mask.shape != frame_shapes[0]:
                raise ValueError(
                    f"{where!r}: pixel_mask has shape {raw_mask.shape}, frames are "
                    f"{frame_shapes[0]}"
                )
            mask = raw_mask != 0
        if positions is None:
            pos = _master_positions(f, root, where)
            positions_source = f"{where}:{root}/sample"
        else:
            pos = read_positions(positions, dataset=positions_dataset)
            positions_source = (
                "array" if not isinstance(positions, (str, os.PathLike)) else str(positions)
            )
    if pos.shape != (n, 2):
        raise ValueError(
            f"{where!r}: positions from {positions_source} have shape {pos.shape}; the data "
            f"files hold {n} frames, so (n, 2) = ({n}, 2) is needed"
        )
    metadata = {
        "format": "nexus-master",
        "path": str(path.resolve()),
        "entry": root,
        "data_files": [str(p.file) for p in parts],
        "positions_source": positions_source,
        "n_frames": n,
        "frame_shape": list(frame_shapes[0]),
        "dtype": str(dtypes[0]),
    }
    return ScanFile(
        intensities=frames,  # type: ignore[arg-type]  # array-like, read lazily
        positions_m=pos,
        energy_eV=energy_eV,
        detector_distance_m=distance,
        detector_pixel_m=x_pixel,
        mask=mask,
        beam_center_px=beam_center,
        metadata=metadata,
    )


def read_positions(
    source: ArrayLike | str | os.PathLike[str], *, dataset: str | None = None
) -> NDArray[np.float64]:
    """Beam positions ``(n, 2)`` ``(row, col)`` in metres from an array or a file.

    Parameters
    ----------
    source : array, str or path-like
        ``(n, 2)`` array in metres; or a ``.npy`` file, a text file of two columns, or an HDF5
        file (``.h5``, ``.hdf5``, ``.nxs``) with the positions in ``dataset``.
    dataset : str, optional
        HDF5 dataset (default ``"positions_m"``); a ``units`` attribute (m, mm, um, nm)
        scales it to metres.

    Returns
    -------
    ndarray of float64, shape (n, 2)

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the positions are not ``(n, 2)`` finite numbers, or the dataset is missing.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no positions file at {str(path)!r}")
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif h5py.is_hdf5(path):
            name = dataset or "positions_m"
            with h5py.File(path, "r") as f:
                ds = f.get(name)
                if not isinstance(ds, h5py.Dataset):
                    raise ValueError(f"{str(path)!r} has no positions dataset {name!r}")
                arr = np.asarray(ds[()], dtype=np.float64) * _length_scale(ds, str(path))
        else:
            try:
                arr = np.loadtxt(path, dtype=np.float64, delimiter=None, ndmin=2)
            except ValueError as exc:
                raise ValueError(f"{str(path)!r}: not two columns of numbers: {exc}") from None
        where = str(path)
    else:
        arr, where = source, "positions"
    try:
        pos = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: positions must be numbers") from None
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"{where}: positions must have shape (n, 2) (row, col), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"{where}: positions contain NaN or inf")
    return pos


# --------------------------------------------------------------------------------------------
# helpers


def _register_filters() -> None:
    """Register the HDF5 compression plugins (Eiger data files are usually bitshuffle/LZ4)."""
    try:
        from bluesky_ptycho.io.hdf5 import register_filters
    except ImportError:  # an installation without the hdf5 helpers: plain filters only
        return
    register_filters()


def _data_names(group: h5py.Group) -> list[str]:
    return sorted(name for name in group if name.startswith("data_") and name[5:].isdigit())


def _part(master: Path, group: h5py.Group, name: str) -> FramePart:
    where = f"{master}:{group.name}/{name}"
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        file = Path(link.filename)
        if not file.is_absolute():
            file = master.parent / file
        if not file.is_file():
            raise FileNotFoundError(f"{where} links to {str(file)!r}, which does not exist")
        dataset = link.path
        with h5py.File(file, "r") as df:
            ds = df.get(dataset)
            if not isinstance(ds, h5py.Dataset):
                raise ValueError(f"{where}: {str(file)!r} has no dataset {dataset}")
            shape = ds.shape
    else:
        ds = group.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise ValueError(f"{where} is not a dataset")
        file, dataset, shape = master, ds.name, ds.shape
    if len(shape) != 3:
        raise ValueError(f"{where} has shape {shape}, expected (n, H, W)")
    return FramePart(file=file.resolve(), dataset=dataset, n=int(shape[0]))


def _units(ds: h5py.Dataset) -> str | None:
    units = ds.attrs.get("units")
    if units is None:
        return None
    if isinstance(units, bytes):
        units = units.decode("utf-8", errors="replace")
    return str(np.ravel(units)[0] if isinstance(units, np.ndarray) else units).strip().lower()


def _length_scale(ds: h5py.Dataset, where: str, default: float = 1.0) -> float:
    units = _units(ds)
    if units is None:
        return default
    if units not in _LENGTH_UNITS:
        raise ValueError(f"{where!r}: {ds.name} has unknown length units {units!r}")
    return _LENGTH_UNITS[units]


def _value(ds: h5py.Dataset, where: str) -> float:
    arr = np.asarray(ds[()], dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{where!r}: {ds.name} is empty")
    value = float(arr[0])
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where!r}: {ds.name} must be positive and finite, got {value}")
    return value


def _length(f: h5py.File, where: str, *names: str, required: bool = True) -> float:
    for name in names:
        ds = f.get(name)
        if isinstance(ds, h5py.Dataset):
            return _value(ds, where) * _length_scale(ds, where)
    if not required:
        return 0.0
    raise ValueError(
        f"{where!r} is not a usable NeXus/Eiger master: missing dataset {' or '.join(names)}"
    )


def _energy_eV(f: h5py.File, root: str, where: str) -> float:
    for name in (
        f"{root}/{_DET}/detectorSpecific/photon_energy",
        f"{root}/instrument/beam/incident_energy",
        f"{root}/instrument/monochromator/energy",
    ):
        ds = f.get(name)
        if isinstance(ds, h5py.Dataset):
            units = _units(ds) or "ev"
            if units not in _ENERGY_UNITS:
                raise ValueError(f"{where!r}: {name} has unknown energy units {units!r}")
            return _value(ds, where) * _ENERGY_UNITS[units]
    for name in (
        f"{root}/instrument/beam/incident_wavelength",
        f"{root}/instrument/monochromator/wavelength",
    ):
        ds = f.get(name)
        if isinstance(ds, h5py.Dataset):
            metres = _value(ds, where) * _length_scale(ds, where, default=1e-10)  # Eiger: Å
            return _HC_EV_M / metres
    raise ValueError(
        f"{where!r} is not a usable NeXus/Eiger master: missing the photon energy "
        f"({root}/{_DET}/detectorSpecific/photon_energy or {root}/instrument/beam/"
        "incident_wavelength)"
    )


def _master_positions(f: h5py.File, root: str, where: str) -> NDArray[np.float64]:
    for name in _MASTER_POSITIONS:
        ds = f.get(f"{root}/{name}")
        if isinstance(ds, h5py.Dataset):
            return read_positions(np.asarray(ds[()], np.float64) * _length_scale(ds, where))
    tr = f.get(f"{root}/sample/transformations")
    if isinstance(tr, h5py.Group):
        y, x = tr.get("y"), tr.get("x")
        if isinstance(y, h5py.Dataset) and isinstance(x, h5py.Dataset):
            ys = np.ravel(y[()]).astype(np.float64) * _length_scale(y, where)
            xs = np.ravel(x[()]).astype(np.float64) * _length_scale(x, where)
            if ys.shape != xs.shape:
                raise ValueError(f"{where!r}: sample/transformations y and x differ in length")
            return read_positions(np.stack([ys, xs], axis=1))
    raise ValueError(
        f"{where!r} holds no scan positions ({root}/sample/positions_m or "
        f"{root}/sample/transformations/{{y,x}}): pass positions= (an array or a file)"
    )
