"""HDF5 result and checkpoint files of a reconstruction, laid out as NeXus ``NXcxi_ptycho``.

The file follows the ``NXcxi_ptycho`` application definition (NeXus, CXI 1.6 compatible) for
the experiment (source, beam, detector, frames, positions, sample) and adds the
reconstruction in CXI/NeXus groups that generic viewers understand; plain ``h5py`` reads all
of it. SI units throughout (energies in J as CXI demands, lengths in m)::

    /cxi_version                          160
    /                                     attrs: file_format, format_version, creator, default
    /entry_1                              NXentry; attrs: kind, metadata_json, default=image_1
        definition                        "NXcxi_ptycho"
        title, start_time, end_time, entry_identifier (the bluesky run uid, when known)
        instrument_1                      NXinstrument; attrs: geometry_json (engine frames)
            source_1                      NXsource: name, energy (photon energy, J), probe, type
            beam_1                        NXbeam: energy, incident_beam_energy (J),
                                          incident_energy_spread (J; NaN when unknown)
            detector_1                    NXdetector: data (n, H, W) (link to the scan's frames,
                                          a virtual dataset over several data files, or
                                          embedded), data_1 (link to data), translation (n, 3)
                                          sample translation (x, y, z) m, x_pixel_size,
                                          y_pixel_size, distance, corner_position, mask,
                                          transformations/vector (detector at z = distance)
        data                              NXdata: data, x, y (links), x_indices, y_indices
        data_1                            NXcollection: data, translation (links);
                                          positions_px (n, 2) probe-patch corners in the object
        sample_1                          NXsample: name, transformations/{x, y} (m),
                                          geometry_1/translation (link)
        image_1                           NXdata: data (object, complex), y, x axes (m)
        probe                             NXdata: data (probe, complex, zero frequency at N//2)
        process_1                         NXprocess: program, version, date, iteration,
                                          pattern_updates, fourier_error, updates_per_pattern,
                                          error_trace, validation_error, validation_baseline,
                                          validation_ratio (the "did it work" signal),
                                          parameters (NXcollection: engine options)
        metadata                          NXcollection; attrs: the top-level scalar metadata

See ``docs/reference/result-file.md`` for which required fields are filled from what, and
:func:`validate_nxcxi_ptycho` for the check. Files are written atomically: to a hidden
temporary file in the destination directory, then moved into place, so a reader never sees a
half-written file. A checkpoint has the same layout (``kind="checkpoint"``); a reconstruction
resumes from one with ``engine.load_state(read_checkpoint(path).state)``. Format version 1
files (before the NXcxi_ptycho layout) are still read.
"""

from __future__ import annotations

import dataclasses
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
from bluesky_ptycho.io.cxi import CXI_VERSION, ELEMENTARY_CHARGE_C, H5Frames, ScanFile
from bluesky_ptycho.io.eiger import LinkedFrames

__all__ = [
    "FILE_FORMAT",
    "FORMAT_VERSION",
    "NXCXI_PTYCHO_REQUIRED",
    "ResultFile",
    "read_checkpoint",
    "read_result",
    "validate_nxcxi_ptycho",
    "write_checkpoint",
    "write_result",
]

FILE_FORMAT = "bluesky-ptycho-result"
"""Value of the root attribute ``file_format`` that marks a bluesky-ptycho result file."""

FORMAT_VERSION = 2
"""Layout version written into the root attribute ``format_version``."""

_SOFTWARE = "bluesky-ptycho"
_ENTRY = "entry_1"
_KINDS = ("result", "checkpoint")
_DEFINITION = "NXcxi_ptycho"
_DET = "instrument_1/detector_1"

NXCXI_PTYCHO_REQUIRED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("entry_1", "NXentry", ()),
    ("entry_1/definition", "field", ()),
    ("entry_1/instrument_1", "NXinstrument", ()),
    ("entry_1/instrument_1/source_1", "NXsource", ()),
    ("entry_1/instrument_1/source_1/name", "field", ()),
    ("entry_1/instrument_1/source_1/energy", "field", ()),
    ("entry_1/instrument_1/source_1/probe", "field", ()),
    ("entry_1/instrument_1/source_1/type", "field", ()),
    ("entry_1/instrument_1/beam_1", "NXbeam", ()),
    ("entry_1/instrument_1/beam_1/energy", "field", ("units",)),
    ("entry_1/instrument_1/beam_1/incident_beam_energy", "field", ("units",)),
    ("entry_1/instrument_1/beam_1/incident_energy_spread", "field", ("units",)),
    ("entry_1/instrument_1/detector_1", "NXdetector", ()),
    ("entry_1/instrument_1/detector_1/transformations", "NXtransformations", ()),
    ("entry_1/instrument_1/detector_1/transformations/vector", "field", ()),
    (
        "entry_1/instrument_1/detector_1/translation",
        "field",
        ("units", "axes", "interpretation"),
    ),
    ("entry_1/instrument_1/detector_1/data", "field", ()),
    ("entry_1/instrument_1/detector_1/data_1", "field", ()),
    ("entry_1/instrument_1/detector_1/x_pixel_size", "field", ("units",)),
    ("entry_1/instrument_1/detector_1/y_pixel_size", "field", ("units",)),
    ("entry_1/instrument_1/detector_1/distance", "field", ("units",)),
    ("entry_1/data_1", "NXcollection", ()),
    ("entry_1/data_1/data", "field", ()),
    ("entry_1/data_1/translation", "field", ()),
    ("entry_1/sample_1", "NXsample", ()),
    ("entry_1/sample_1/transformations", "NXtransformations", ()),
    ("entry_1/sample_1/transformations/x", "field", ("units",)),
    ("entry_1/sample_1/transformations/y", "field", ("units",)),
    ("entry_1/sample_1/geometry_1", "NXcollection", ()),
    ("entry_1/sample_1/geometry_1/translation", "field", ()),
)
"""Required items of ``NXcxi_ptycho`` (path, NX_class or ``"field"``, required attributes).

Besides these, one ``NXdata`` group in ``entry_1`` must hold ``data``, ``x``, ``y``,
``x_indices`` and ``y_indices`` with ``signal`` and ``axes`` attributes (its name is free),
and ``definition`` must read ``NXcxi_ptycho``; :func:`validate_nxcxi_ptycho` checks those too.
"""


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
    options : dict or None
        The engine options written with the result (JSON round trip), or None.
    run_uid : str or None
        The bluesky run uid (``entry_1/entry_identifier``), when known.
    has_frames : bool
        True if the file holds or links the measured frames (``detector_1/data``) and they
        can be read.
    """

    state: ReconstructionState
    geometry: dict[str, Any] | None
    metadata: dict[str, Any]
    software: str
    created: str
    kind: str = "result"
    object_pixel_size_m: tuple[float, float] | None = None
    options: dict[str, Any] | None = None
    run_uid: str | None = None
    has_frames: bool = False


def write_result(
    path: str | os.PathLike[str],
    state: ReconstructionState,
    *,
    geometry: Any = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    scan: ScanFile | None = None,
    options: Any = None,
) -> Path:
    """Write a reconstruction to an HDF5 result file (``NXcxi_ptycho``), atomically.

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
    scan : ScanFile, optional
        The measured scan: its frames become ``detector_1/data`` (an external link to the
        file's dataset, a virtual dataset over several data files, or embedded when they are
        in memory), its positions the translations, its geometry the detector fields. Without
        it the file has no frames and the translations come from ``state.positions_px`` and
        the object pixel size (:func:`validate_nxcxi_ptycho` then reports the frames missing).
    options : dataclass or mapping, optional
        The engine options (e.g. :class:`~bluesky_ptycho.engine.EPIEOptions` or
        :class:`~bluesky_ptycho.live.LiveOptions`), stored in ``process_1/parameters``.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    TypeError
        If ``metadata``, ``options`` or the geometry is not JSON-serialisable, or ``geometry``
        has no ``to_dict()``, or ``scan`` is not a ScanFile.
    """
    return _write(
        path,
        state,
        geometry=geometry,
        metadata=metadata,
        overwrite=overwrite,
        kind="result",
        scan=scan,
        options=options,
    )


def write_checkpoint(
    path: str | os.PathLike[str],
    state: ReconstructionState,
    *,
    geometry: Any = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = True,
    scan: ScanFile | None = None,
    options: Any = None,
) -> Path:
    """Write a checkpoint a reconstruction can resume from; same layout as :func:`write_result`.

    Unlike :func:`write_result`, ``overwrite`` defaults to True, since a checkpoint is usually
    refreshed in place. The replacement is atomic: a crash mid-write leaves the previous
    checkpoint intact.

    Parameters
    ----------
    path, state, geometry, metadata, overwrite, scan, options
        As for :func:`write_result`.

    Returns
    -------
    Path
        The path written.
    """
    return _write(
        path,
        state,
        geometry=geometry,
        metadata=metadata,
        overwrite=overwrite,
        kind="checkpoint",
        scan=scan,
        options=options,
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
    scan: ScanFile | None = None,
    options: Any = None,
) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"result file {str(path)!r} exists; pass overwrite=True to replace")
    if scan is not None and not isinstance(scan, ScanFile):
        raise TypeError(f"scan must be a ScanFile, got {type(scan).__name__}")
    # Validate and serialise everything before creating any file.
    metadata_dict = dict(metadata) if metadata is not None else {}
    if not all(isinstance(k, str) for k in metadata_dict):
        raise TypeError("metadata keys must be strings")
    metadata_json = _dumps(metadata_dict, "metadata")
    geometry_dict = _geometry_dict(geometry)
    geometry_json = _dumps(geometry_dict, "geometry") if geometry_dict is not None else None
    options_dict = _options_dict(options)
    options_json = _dumps(options_dict, "options") if options_dict is not None else None
    pixel_size = _object_pixel_size(geometry)
    arrays = _state_arrays(state)
    experiment = _experiment(scan, geometry_dict, arrays, pixel_size)

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with h5py.File(tmp, "x") as f:
            f.attrs["file_format"] = FILE_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["creator"] = _SOFTWARE
            f.attrs["default"] = _ENTRY
            f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
            entry = f.create_group(_ENTRY)
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "image_1"
            entry.attrs["kind"] = kind
            entry.attrs["metadata_json"] = metadata_json
            entry.create_dataset("definition", data=_DEFINITION)
            now = datetime.now(timezone.utc).isoformat()
            entry.create_dataset(
                "title", data=str(metadata_dict.get("title") or f"bluesky-ptycho {kind}")
            )
            for name in ("start_time", "end_time"):
                value = metadata_dict.get(name)
                if isinstance(value, str) and value:
                    entry.create_dataset(name, data=value)
            run_uid = metadata_dict.get("run_uid")
            if isinstance(run_uid, str) and run_uid:
                entry.create_dataset("entry_identifier", data=run_uid)

            _write_reconstruction(entry, state, arrays, pixel_size)
            _write_process(entry, state, arrays, options_dict, options_json, now)
            _write_experiment(entry, experiment, metadata_dict, geometry_dict)
            instrument = entry["instrument_1"]
            if geometry_dict is not None:
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


@dataclass(frozen=True)
class _Experiment:
    """What the NXcxi_ptycho part of the file says about the measurement (SI units)."""

    energy_eV: float | None
    distance_m: float | None
    pixel_m: float | None
    translation_m: np.ndarray | None  # (n, 3) sample translation (x, y, z)
    frames: Any  # ndarray, H5Frames, LinkedFrames or None
    frame_shape: tuple[int, int] | None
    beam_center_px: tuple[float, float] | None
    mask: np.ndarray | None
    sample_name: str | None


def _experiment(
    scan: ScanFile | None,
    geometry: Mapping[str, Any] | None,
    arrays: Mapping[str, np.ndarray],
    pixel_size: tuple[float, float] | None,
) -> _Experiment:
    translation: np.ndarray | None
    if scan is not None:
        beam = scan.positions_m
        translation = np.stack([-beam[:, 1], -beam[:, 0], np.zeros(len(beam))], axis=1)
        h, w = scan.frame_shape
        return _Experiment(
            energy_eV=scan.energy_eV,
            distance_m=scan.detector_distance_m,
            pixel_m=scan.detector_pixel_m,
            translation_m=translation,
            frames=scan.intensities,
            frame_shape=(h, w),
            beam_center_px=scan.beam_center_px or (h // 2, w // 2),
            mask=scan.mask,
            sample_name=scan.metadata.get("sample_name"),
        )
    g = geometry or {}
    translation = None
    shape = g.get("shape")
    frame_shape = (int(shape[0]), int(shape[1])) if isinstance(shape, (list, tuple)) else None
    if pixel_size is not None:
        probe = arrays["probe"].shape
        centres = arrays["positions_px"] + np.array(probe, np.float64) / 2
        beam = centres * np.asarray(pixel_size, np.float64)
        translation = np.stack([-beam[:, 1], -beam[:, 0], np.zeros(len(beam))], axis=1)

    def number(key: str) -> float | None:
        value = g.get(key)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    return _Experiment(
        energy_eV=number("energy_eV"),
        distance_m=number("detector_distance_m"),
        pixel_m=number("detector_pixel_m"),
        translation_m=translation,
        frames=None,
        frame_shape=frame_shape,
        beam_center_px=(frame_shape[0] // 2, frame_shape[1] // 2) if frame_shape else None,
        mask=None,
        sample_name=None,
    )


def _field(group: h5py.Group, name: str, value: Any, units: str | None = None) -> h5py.Dataset:
    ds = group.create_dataset(name, data=value)
    if units is not None:
        ds.attrs["units"] = units
    return ds


def _nx_group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.require_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _write_reconstruction(
    entry: h5py.Group,
    state: ReconstructionState,
    arrays: Mapping[str, np.ndarray],
    pixel_size: tuple[float, float] | None,
) -> None:
    image = _nx_group(entry, "image_1", "NXdata")
    image.attrs["signal"] = "data"
    image.create_dataset("data", data=arrays["object"])
    image["data"].attrs["description"] = "complex transmission of the specimen"
    if pixel_size is not None:
        rows, cols = arrays["object"].shape
        _field(image, "y", np.arange(rows) * pixel_size[0], "m")
        _field(image, "x", np.arange(cols) * pixel_size[1], "m")
        image.attrs["axes"] = ["y", "x"]

    probe = _nx_group(entry, "probe", "NXdata")
    probe.attrs["signal"] = "data"
    probe.create_dataset("data", data=arrays["probe"])
    probe["data"].attrs["description"] = "complex illumination, zero frequency at N//2"

    data = _nx_group(entry, "data_1", "NXcollection")
    pos = data.create_dataset("positions_px", data=arrays["positions_px"])
    pos.attrs["units"] = "pixel"
    pos.attrs["description"] = (
        "(row, col) of each probe patch's top-left corner in the object array"
    )


def _write_process(
    entry: h5py.Group,
    state: ReconstructionState,
    arrays: Mapping[str, np.ndarray],
    options: Mapping[str, Any] | None,
    options_json: str | None,
    now: str,
) -> None:
    process = _nx_group(entry, "process_1", "NXprocess")
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
    process.create_dataset("date", data=now)
    if options is not None:
        params = _nx_group(process, "parameters", "NXcollection")
        params.attrs["options_json"] = options_json
        for key, value in _flatten(options):
            if _is_scalar(value) and value is not None:
                params.create_dataset(key, data=value)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, f"{name}."))
        else:
            out.append((name, value))
    return out


def _write_experiment(
    entry: h5py.Group,
    ex: _Experiment,
    metadata: Mapping[str, Any],
    geometry: Mapping[str, Any] | None,
) -> None:
    instrument = _nx_group(entry, "instrument_1", "NXinstrument")
    source = _nx_group(instrument, "source_1", "NXsource")
    source.create_dataset("name", data=str(metadata.get("source_name") or "unknown"))
    source.create_dataset("probe", data="x-ray")
    source.create_dataset("type", data=str(metadata.get("source_type") or "unknown"))
    beam = _nx_group(instrument, "beam_1", "NXbeam")
    if ex.energy_eV is not None:
        joules = ex.energy_eV * ELEMENTARY_CHARGE_C
        # CXI 1.6 reads source_1/energy as the photon energy, in J
        _field(source, "energy", joules, "J")
        _field(beam, "energy", joules, "J")
        _field(beam, "incident_beam_energy", joules, "J")
        spread = metadata.get("energy_spread_eV")
        spread_j = (
            float(spread) * ELEMENTARY_CHARGE_C
            if isinstance(spread, (int, float)) and not isinstance(spread, bool)
            else float("nan")
        )
        _field(beam, "incident_energy_spread", spread_j, "J")
        if not np.isfinite(spread_j):
            beam["incident_energy_spread"].attrs["description"] = "unknown"

    det = _nx_group(instrument, "detector_1", "NXdetector")
    det.attrs["signal"] = "data"
    if ex.pixel_m is not None:
        _field(det, "x_pixel_size", ex.pixel_m, "m")
        _field(det, "y_pixel_size", ex.pixel_m, "m")
    if ex.distance_m is not None:
        _field(det, "distance", ex.distance_m, "m")
        tr = _nx_group(det, "transformations", "NXtransformations")
        vec = _field(tr, "vector", ex.distance_m, "m")
        vec.attrs["transformation_type"] = "translation"
        vec.attrs["vector"] = np.array([0.0, 0.0, 1.0])
        vec.attrs["depends_on"] = "."
        det.create_dataset("depends_on", data="transformations/vector")
    if ex.pixel_m is not None and ex.beam_center_px is not None and ex.distance_m is not None:
        row, col = ex.beam_center_px
        corner = [-(col + 0.5) * ex.pixel_m, -(row + 0.5) * ex.pixel_m, ex.distance_m]
        _field(det, "corner_position", np.asarray(corner, np.float64), "m")
    if ex.mask is not None:
        det.create_dataset("mask", data=np.asarray(ex.mask, bool).astype(np.uint32))

    sample = _nx_group(entry, "sample_1", "NXsample")
    name = metadata.get("sample_name") or metadata.get("sample") or ex.sample_name
    if isinstance(name, str) and name:
        sample.create_dataset("name", data=name)
    data_1 = _nx_group(entry, "data_1", "NXcollection")
    if ex.translation_m is not None:
        t = _field(det, "translation", ex.translation_m, "m")
        t.attrs["axes"] = "translation:y:x"
        t.attrs["interpretation"] = "image"
        t.attrs["description"] = "sample translation (x, y, z) = (-col, -row, 0) of the beam"
        data_1["translation"] = h5py.SoftLink(t.name)
        transformations = _nx_group(sample, "transformations", "NXtransformations")
        for axis, column, vector in (("x", 0, (1.0, 0.0, 0.0)), ("y", 1, (0.0, 1.0, 0.0))):
            ds = _field(transformations, axis, ex.translation_m[:, column], "m")
            ds.attrs["transformation_type"] = "translation"
            ds.attrs["vector"] = np.array(vector)
            ds.attrs["depends_on"] = "."
        geometry_1 = _nx_group(sample, "geometry_1", "NXcollection")
        geometry_1["translation"] = h5py.SoftLink(t.name)

    if ex.frames is None:
        return
    _write_frames(det, ex.frames)
    frames_path = f"{det.name}/data"
    det["data_1"] = h5py.SoftLink(frames_path)
    data_1["data"] = h5py.SoftLink(frames_path)
    if ex.translation_m is not None:
        nxdata = _nx_group(entry, "data", "NXdata")
        nxdata.attrs["signal"] = "data"
        nxdata.attrs["axes"] = ["x", ".", "."]
        nxdata.attrs["x_indices"] = 0
        nxdata.attrs["y_indices"] = 0
        nxdata["data"] = h5py.SoftLink(frames_path)
        nxdata["x"] = h5py.SoftLink(f"{sample.name}/transformations/x")
        nxdata["y"] = h5py.SoftLink(f"{sample.name}/transformations/y")
        nxdata.create_dataset("x_indices", data="0")
        nxdata.create_dataset("y_indices", data="0")


def _write_frames(det: h5py.Group, frames: Any) -> None:
    """``det/data``: a link to the frames in their file(s), or the frames themselves."""
    if isinstance(frames, H5Frames):
        det["data"] = h5py.ExternalLink(str(Path(frames.path).resolve()), frames.dataset)
        return
    if isinstance(frames, LinkedFrames):
        layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
        offset = 0
        for part in frames.parts:
            source = h5py.VirtualSource(
                str(Path(part.file).resolve()),
                part.dataset,
                shape=(part.n, *frames.shape[1:]),
                dtype=frames.dtype,
            )
            layout[offset : offset + part.n] = source
            offset += part.n
        det.create_virtual_dataset("data", layout, fillvalue=None)
        return
    arr = np.asarray(frames)
    det.create_dataset(
        "data",
        data=arr,
        chunks=(1, *arr.shape[1:]) if arr.ndim == 3 and arr.shape[0] else None,
        compression="gzip",
        shuffle=True,
    )


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


def _options_dict(options: Any) -> dict[str, Any] | None:
    if options is None:
        return None
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return dataclasses.asdict(options)
    if isinstance(options, Mapping):
        return dict(options)
    raise TypeError(f"options must be a dataclass or a mapping, got {type(options).__name__}")


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
    file_version = int(version) if version is not None else 1
    if isinstance(instrument, h5py.Group):
        if "geometry_json" in instrument.attrs:
            geometry = json.loads(_as_str(instrument.attrs["geometry_json"]))
        elif file_version < 2:
            geometry = {
                k: _attr_value(v)
                for k, v in instrument.attrs.items()
                if k not in ("NX_class", "object_pixel_size_m")
            }
        if "object_pixel_size_m" in instrument.attrs:
            ps = np.asarray(instrument.attrs["object_pixel_size_m"], dtype=np.float64).ravel()
            if ps.size == 2:
                pixel_size = (float(ps[0]), float(ps[1]))

    options = None
    params = f.get(f"{p}/parameters")
    if isinstance(params, h5py.Group) and "options_json" in params.attrs:
        options = json.loads(_as_str(params.attrs["options_json"]))
    run_uid = _read_str(f, f"{_ENTRY}/entry_identifier", "") or None
    try:
        frames = f.get(f"{_ENTRY}/{_DET}/data")
        has_frames = isinstance(frames, h5py.Dataset) and frames.ndim == 3
    except (KeyError, OSError):
        has_frames = False

    kind = _as_str(entry.attrs.get("kind", "result"))
    return ResultFile(
        state=state,
        geometry=geometry,
        metadata=metadata,
        software=f"{program} {version_str}",
        created=created,
        kind=kind if kind in _KINDS else "result",
        object_pixel_size_m=pixel_size,
        options=options,
        run_uid=run_uid,
        has_frames=has_frames,
    )


# --------------------------------------------------------------------------------------------
# validation


def validate_nxcxi_ptycho(path: str | os.PathLike[str]) -> list[str]:
    """The ``NXcxi_ptycho`` requirements a file does not meet; empty when it meets them all.

    Checks every item of :data:`NXCXI_PTYCHO_REQUIRED` (present, of the right NX_class, with
    its required attributes; links must resolve), ``definition == "NXcxi_ptycho"``, and one
    ``NXdata`` group in ``entry_1`` with ``data``, ``x``, ``y``, ``x_indices``, ``y_indices``
    and the ``signal`` and ``axes`` attributes. Plain ``h5py``; no NeXus library needed.

    Parameters
    ----------
    path : str or path-like
        Any HDF5 file.

    Returns
    -------
    list of str
        One message per problem, each naming the HDF5 path (e.g.
        ``"/entry_1/instrument_1/detector_1/data: missing"``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not an HDF5 file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {str(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} is not an HDF5 file: {exc}") from exc
    problems: list[str] = []
    with f:
        for name, kind, attrs in NXCXI_PTYCHO_REQUIRED:
            obj = _resolve(f, name)
            if obj is None:
                problems.append(f"/{name}: missing")
                continue
            if kind == "field":
                if not isinstance(obj, h5py.Dataset):
                    problems.append(f"/{name}: is a group, expected a field")
                    continue
            elif not isinstance(obj, h5py.Group):
                problems.append(f"/{name}: is a field, expected an {kind} group")
                continue
            elif _as_str(obj.attrs.get("NX_class", "")) != kind:
                problems.append(
                    f"/{name}: NX_class is {_as_str(obj.attrs.get('NX_class', ''))!r}, "
                    f"expected {kind!r}"
                )
            problems.extend(f"/{name}: missing attribute @{a}" for a in attrs if a not in obj.attrs)
        definition = _resolve(f, f"{_ENTRY}/definition")
        if isinstance(definition, h5py.Dataset) and _as_str(definition[()]) != _DEFINITION:
            problems.append(
                f"/{_ENTRY}/definition: is {_as_str(definition[()])!r}, expected {_DEFINITION!r}"
            )
        entry = f.get(_ENTRY)
        if isinstance(entry, h5py.Group) and not _has_scan_nxdata(f, entry):
            problems.append(
                f"/{_ENTRY}: no NXdata group with data, x, y, x_indices, y_indices and the "
                "signal and axes attributes"
            )
    return problems


def _resolve(f: h5py.File, name: str) -> Any:
    """The object at ``name``, or None if it is missing or a link that does not resolve."""
    try:
        return f.get(name)
    except (KeyError, OSError, RuntimeError):
        return None


def _has_scan_nxdata(f: h5py.File, entry: h5py.Group) -> bool:
    for key in entry:
        group = _resolve(f, f"{entry.name}/{key}")
        if not isinstance(group, h5py.Group):
            continue
        if _as_str(group.attrs.get("NX_class", "")) != "NXdata":
            continue
        if not all(a in group.attrs for a in ("signal", "axes")):
            continue
        members = ("data", "x", "y", "x_indices", "y_indices")
        if all(isinstance(_resolve(f, f"{group.name}/{m}"), h5py.Dataset) for m in members):
            return True
    return False


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
