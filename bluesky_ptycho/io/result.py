"""HDF5 result and checkpoint files of a reconstruction.

The layout loosely follows NeXus and CXI conventions, so that generic HDF5 and NeXus viewers
show something sensible, while the file stays simple enough to read with plain ``h5py``::

    /                               attrs: file_format, format_version, creator, default
    /entry_1                        NXentry; attrs: kind ("result" | "checkpoint"), metadata_json
        image_1/data                object, complex (H, W)                     NXdata
        probe/data                  probe, complex (N, N)                      NXdata
        data_1/positions_px         (n, 2) float64, (row, col) of each probe patch's top-left
                                    corner in the object array                 NXcollection
        process_1/                  NXprocess
            iteration, pattern_updates          scalar int64
            fourier_error                       (iteration,) float64, one value per pass
            updates_per_pattern                 (n,) int64
            error_trace                         (k, 2) float64: (updates, Fourier error) per chunk
            validation_error, validation_baseline, validation_ratio
                                                scalar float64: the "did it work" signal
            program, version, date              software name, version, UTC ISO-8601 time
        instrument_1                NXinstrument (only with a geometry); attrs: the geometry's
                                    ``to_dict()`` items flattened, ``geometry_json`` (exact) and
                                    ``object_pixel_size_m`` (row, col) when known
        metadata                    NXcollection; attrs: the top-level scalar metadata items

Files are written atomically: to a hidden temporary file in the destination directory, then
moved into place, so a reader never sees a half-written file.

A checkpoint has the same layout (``kind="checkpoint"``); a reconstruction resumes from one with
``engine.load_state(read_checkpoint(path).state)``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bluesky_ptycho.engine.state import ReconstructionState

__all__ = [
    "FILE_FORMAT",
    "FORMAT_VERSION",
    "ResultFile",
    "read_checkpoint",
    "read_result",
    "write_checkpoint",
    "write_result",
]

FILE_FORMAT = "bluesky-ptycho-result"
"""Value of the root attribute ``file_format`` that marks a bluesky-ptycho result file."""

FORMAT_VERSION = 1
"""Layout version written into the root attribute ``format_version``."""

_SOFTWARE = "bluesky-ptycho"
_ENTRY = "entry_1"
_KINDS = ("result", "checkpoint")


@dataclass(frozen=True)
class ResultFile:
    """The content of a result or checkpoint file.

    Attributes
    ----------
    state : ReconstructionState
        The reconstruction, exactly as written (dtypes and values).
    geometry : dict or None
        The geometry's ``to_dict()`` as written (JSON round trip: tuples become lists), or
        None when the file was written without one.
    metadata : dict
        The user metadata (JSON round trip), empty when none was given.
    software : str
        ``"bluesky-ptycho <version>"`` of the writer.
    created : str
        UTC time of writing, ISO 8601.
    kind : str
        ``"result"`` or ``"checkpoint"``.
    object_pixel_size_m : tuple of float or None
        ``(row, col)`` size of an object pixel in metres, when the geometry provided it.
    """

    state: ReconstructionState
    geometry: dict[str, Any] | None
    metadata: dict[str, Any]
    software: str
    created: str
    kind: str = "result"
    object_pixel_size_m: tuple[float, float] | None = None


def write_result(
    path: str | os.PathLike[str],
    state: ReconstructionState,
    *,
    geometry: Any = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a reconstruction to an HDF5 result file, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination file. Its directory must exist.
    state : ReconstructionState
        The reconstruction to save; arrays are stored with their own dtype, unchanged.
    geometry : object with ``to_dict()``, or mapping, optional
        The experiment geometry (e.g. :class:`bluesky_ptycho.geometry.Geometry`). Its items are
        stored as attributes of ``/entry_1/instrument_1``, together with the object pixel size
        when the geometry has a ``pixel_size_m`` attribute.
    metadata : mapping, optional
        Plain JSON-serialisable data (scan uid, sample name, ...). Stored as a JSON string, and
        its top-level scalar items also as individual attributes.
    overwrite : bool, default False
        Replace an existing file. Without it an existing file is never touched.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    TypeError
        If ``metadata`` or the geometry is not JSON-serialisable, or ``geometry`` has no
        ``to_dict()``.
    """
    return _write(
        path, state, geometry=geometry, metadata=metadata, overwrite=overwrite, kind="result"
    )


def write_checkpoint(
    path: str | os.PathLike[str],
    state: ReconstructionState,
    *,
    geometry: Any = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint a reconstruction can resume from; same layout as :func:`write_result`.

    Unlike :func:`write_result`, ``overwrite`` defaults to True, since a checkpoint is usually
    refreshed in place. The replacement is atomic: a crash mid-write leaves the previous
    checkpoint intact.

    Parameters
    ----------
    path, state, geometry, metadata, overwrite
        As for :func:`write_result`.

    Returns
    -------
    Path
        The path written.
    """
    return _write(
        path, state, geometry=geometry, metadata=metadata, overwrite=overwrite, kind="checkpoint"
    )


def read_result(path: str | os.PathLike[str]) -> ResultFile:
    """Read a result (or checkpoint) file written by :func:`write_result`.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    ResultFile
        State, geometry, metadata and provenance.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not HDF5, or not a bluesky-ptycho result (the message names the missing
        group, dataset or attribute).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no result file at {str(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} is not an HDF5 file: {exc}") from exc
    with f:
        return _read(f, path)


def read_checkpoint(path: str | os.PathLike[str]) -> ResultFile:
    """Read a checkpoint (or result) file; identical to :func:`read_result`.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    ResultFile
        Resume with ``engine.load_state(read_checkpoint(path).state)``.
    """
    return read_result(path)


# --------------------------------------------------------------------------------------------
# writing


def _write(
    path: str | os.PathLike[str],
    state: ReconstructionState,
    *,
    geometry: Any,
    metadata: Mapping[str, Any] | None,
    overwrite: bool,
    kind: str,
) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"result file {str(path)!r} exists; pass overwrite=True to replace")
    # Validate and serialise everything before creating any file.
    metadata_dict = dict(metadata) if metadata is not None else {}
    if not all(isinstance(k, str) for k in metadata_dict):
        raise TypeError("metadata keys must be strings")
    metadata_json = _dumps(metadata_dict, "metadata")
    geometry_dict = _geometry_dict(geometry)
    geometry_json = _dumps(geometry_dict, "geometry") if geometry_dict is not None else None
    pixel_size = _object_pixel_size(geometry)
    arrays = _state_arrays(state)

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with h5py.File(tmp, "x") as f:
            f.attrs["file_format"] = FILE_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["creator"] = _SOFTWARE
            f.attrs["default"] = _ENTRY
            entry = f.create_group(_ENTRY)
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "image_1"
            entry.attrs["kind"] = kind
            entry.attrs["metadata_json"] = metadata_json

            image = entry.create_group("image_1")
            image.attrs["NX_class"] = "NXdata"
            image.attrs["signal"] = "data"
            image.create_dataset("data", data=arrays["object"])
            image["data"].attrs["description"] = "complex transmission of the specimen"

            probe = entry.create_group("probe")
            probe.attrs["NX_class"] = "NXdata"
            probe.attrs["signal"] = "data"
            probe.create_dataset("data", data=arrays["probe"])
            probe["data"].attrs["description"] = "complex illumination, zero frequency at N//2"

            data = entry.create_group("data_1")
            data.attrs["NX_class"] = "NXcollection"
            pos = data.create_dataset("positions_px", data=arrays["positions_px"])
            pos.attrs["units"] = "pixel"
            pos.attrs["description"] = (
                "(row, col) of each probe patch's top-left corner in the object array"
            )

            process = entry.create_group("process_1")
            process.attrs["NX_class"] = "NXprocess"
            process.create_dataset("iteration", data=np.int64(state.iteration))
            process.create_dataset("pattern_updates", data=np.int64(state.pattern_updates))
            process.create_dataset("fourier_error", data=arrays["fourier_error"])
            process.create_dataset("updates_per_pattern", data=arrays["updates_per_pattern"])
            process.create_dataset(
                "error_trace", data=np.asarray(state.error_trace, np.float64).reshape(-1, 2)
            )
            for name in ("validation_error", "validation_baseline", "validation_ratio"):
                process.create_dataset(name, data=np.float64(getattr(state, name)))
            process["validation_ratio"].attrs["description"] = (
                "held-out Fourier error / error of the patterns in use: about 1 when the "
                "reconstruction found the specimen, above 2 on a plateau, NaN if unknown"
            )
            process.create_dataset("program", data=_SOFTWARE)
            process.create_dataset("version", data=_software_version())
            process.create_dataset("date", data=datetime.now(timezone.utc).isoformat())

            if geometry_dict is not None:
                instrument = entry.create_group("instrument_1")
                instrument.attrs["NX_class"] = "NXinstrument"
                instrument.attrs["geometry_json"] = geometry_json
                for key, value in geometry_dict.items():
                    if key not in ("NX_class", "geometry_json", "object_pixel_size_m"):
                        _set_attr(instrument, key, value)
                if pixel_size is not None:
                    instrument.attrs["object_pixel_size_m"] = np.asarray(pixel_size, np.float64)

            meta = entry.create_group("metadata")
            meta.attrs["NX_class"] = "NXcollection"
            for key, value in metadata_dict.items():
                if key != "NX_class" and _is_scalar(value):
                    _set_attr(meta, key, value)

        _fsync(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _publish_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists, without a check-then-act race."""
    try:
        os.link(tmp, path)  # atomic, fails if path exists
    except FileExistsError:
        raise FileExistsError(
            f"result file {str(path)!r} exists; pass overwrite=True to replace"
        ) from None
    except OSError:
        # Filesystem without hard links: fall back to check, then replace.
        if path.exists():
            raise FileExistsError(
                f"result file {str(path)!r} exists; pass overwrite=True to replace"
            ) from None
        os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_arrays(state: ReconstructionState) -> dict[str, np.ndarray]:
    arrays = {
        "object": np.asarray(state.object),
        "probe": np.asarray(state.probe),
        "positions_px": np.asarray(state.positions_px),
        "fourier_error": np.asarray(state.fourier_error),
        "updates_per_pattern": np.asarray(state.updates_per_pattern),
    }
    for name in ("object", "probe"):
        if arrays[name].ndim != 2:
            raise ValueError(f"state.{name} must be 2-D, got shape {arrays[name].shape}")
    if arrays["positions_px"].ndim != 2 or arrays["positions_px"].shape[1] != 2:
        raise ValueError(
            f"state.positions_px must have shape (n, 2), got {arrays['positions_px'].shape}"
        )
    return arrays


def _software_version() -> str:
    try:
        from bluesky_ptycho import __version__
    except Exception:
        return "unknown"
    return str(__version__)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from exc


def _geometry_dict(geometry: Any) -> dict[str, Any] | None:
    if geometry is None:
        return None
    if hasattr(geometry, "to_dict"):
        out = geometry.to_dict()
    elif isinstance(geometry, Mapping):
        out = geometry
    else:
        raise TypeError(
            f"geometry must have a to_dict() method or be a mapping, got {type(geometry).__name__}"
        )
    return dict(out)


def _object_pixel_size(geometry: Any) -> tuple[float, float] | None:
    if geometry is None:
        return None
    if isinstance(geometry, Mapping):
        value = geometry.get("pixel_size_m", geometry.get("object_pixel_size_m"))
    else:
        try:
            value = geometry.pixel_size_m
        except Exception:  # a property that cannot be computed: just omit it
            return None
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size == 1:
        return (float(arr[0]), float(arr[0]))
    if arr.size == 2:
        return (float(arr[0]), float(arr[1]))
    return None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float, np.generic))


def _set_attr(group: h5py.Group, key: str, value: Any) -> None:
    """Store one flat attribute if HDF5 can hold it; the JSON copy is authoritative."""
    try:
        if value is None:
            return
        if isinstance(value, (list, tuple, np.ndarray)):
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":
                return
            group.attrs[key] = arr
        elif _is_scalar(value):
            group.attrs[key] = value
    except (TypeError, ValueError):
        return


# --------------------------------------------------------------------------------------------
# reading


def _read(f: h5py.File, path: Path) -> ResultFile:
    where = str(path)
    fmt = f.attrs.get("file_format")
    if fmt is not None and _as_str(fmt) != FILE_FORMAT:
        raise ValueError(
            f"{where!r} is not a bluesky-ptycho result: file_format is {_as_str(fmt)!r}"
        )
    version = f.attrs.get("format_version")
    if version is not None and int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{where!r} has result format version {int(version)}; this bluesky-ptycho reads "
            f"up to {FORMAT_VERSION}"
        )

    def dataset(name: str) -> h5py.Dataset:
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            missing = "dataset" if obj is None else "dataset (found a group)"
            raise ValueError(f"{where!r} is not a bluesky-ptycho result: missing {missing} /{name}")
        return obj

    entry = f.get(_ENTRY)
    if not isinstance(entry, h5py.Group):
        raise ValueError(f"{where!r} is not a bluesky-ptycho result: missing group /{_ENTRY}")
    for group in ("image_1", "probe", "data_1", "process_1"):
        if not isinstance(entry.get(group), h5py.Group):
            raise ValueError(
                f"{where!r} is not a bluesky-ptycho result: missing group /{_ENTRY}/{group}"
            )

    p = f"{_ENTRY}/process_1"
    state = ReconstructionState(
        object=dataset(f"{_ENTRY}/image_1/data")[()],
        probe=dataset(f"{_ENTRY}/probe/data")[()],
        positions_px=dataset(f"{_ENTRY}/data_1/positions_px")[()],
        iteration=int(dataset(f"{p}/iteration")[()]),
        pattern_updates=int(dataset(f"{p}/pattern_updates")[()]),
        fourier_error=dataset(f"{p}/fourier_error")[()],
        updates_per_pattern=dataset(f"{p}/updates_per_pattern")[()],
    )
    process_group = f[p]
    if "error_trace" in process_group:  # older files have no signal
        state.error_trace = np.asarray(process_group["error_trace"][()], np.float64).reshape(-1, 2)
        state.validation_error = float(process_group["validation_error"][()])
        state.validation_baseline = float(process_group["validation_baseline"][()])

    program = _read_str(f, f"{p}/program", _SOFTWARE)
    version_str = _read_str(f, f"{p}/version", "unknown")
    created = _read_str(f, f"{p}/date", "")

    metadata_json = entry.attrs.get("metadata_json")
    metadata = json.loads(_as_str(metadata_json)) if metadata_json is not None else {}

    geometry: dict[str, Any] | None = None
    pixel_size: tuple[float, float] | None = None
    instrument = entry.get("instrument_1")
    if isinstance(instrument, h5py.Group):
        if "geometry_json" in instrument.attrs:
            geometry = json.loads(_as_str(instrument.attrs["geometry_json"]))
        else:
            geometry = {
                k: _attr_value(v)
                for k, v in instrument.attrs.items()
                if k not in ("NX_class", "object_pixel_size_m")
            }
        if "object_pixel_size_m" in instrument.attrs:
            ps = np.asarray(instrument.attrs["object_pixel_size_m"], dtype=np.float64).ravel()
            if ps.size == 2:
                pixel_size = (float(ps[0]), float(ps[1]))

    kind = _as_str(entry.attrs.get("kind", "result"))
    return ResultFile(
        state=state,
        geometry=geometry,
        metadata=metadata,
        software=f"{program} {version_str}",
        created=created,
        kind=kind if kind in _KINDS else "result",
        object_pixel_size_m=pixel_size,
    )


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value[()])
    return str(value)


def _read_str(f: h5py.File, name: str, default: str) -> str:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        return default
    return _as_str(obj[()])


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value
