"""Opening HDF5 frame files with the compression filters registered, and saying why a read fails.

Detector file writers (Eiger, the areaDetector HDF5 plugin, ophyd-async) often compress frames
with the bitshuffle/LZ4 filter, or LZ4, Blosc, Blosc2 or Zstd. HDF5 itself ships none of
these: h5py reads such a dataset only after the filter plugins are registered in the reading
process. Every frame reader of this package registers the plugins of the ``hdf5plugin``
package through this module before it reads (:func:`open_hdf5` does it for the asset and CXI
readers), so no user has to remember ``import hdf5plugin``.

A read that fails raises :class:`FrameReadError`, whose :attr:`~FrameReadError.cause` (a
:class:`ReadCause`) names the problem and its fix. Callers count failures per cause instead of
printing one line per frame.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "COMPRESSION_FILTERS",
    "FrameReadError",
    "ReadCause",
    "check_filters",
    "compression_options",
    "filter_name",
    "get_dataset",
    "load_filter_plugins",
    "open_hdf5",
    "opened",
    "read_frame",
    "register_filters",
]

#: HDF5 filter ids of the compressions detector writers use, by the name used here.
COMPRESSION_FILTERS: Mapping[str, int] = MappingProxyType(
    {"bitshuffle-lz4": 32008, "lz4": 32004, "blosc": 32001, "blosc2": 32026, "zstd": 32015}
)

# Names of registered third-party filter ids (hdf5plugin's and a few more), for messages.
_FILTER_NAMES: Mapping[int, str] = MappingProxyType(
    {
        307: "bzip2",
        32001: "Blosc",
        32004: "LZ4",
        32008: "bitshuffle/LZ4",
        32013: "ZFP",
        32015: "Zstd",
        32017: "SZ",
        32018: "FCIDECOMP",
        32024: "SZ3",
        32026: "Blosc2",
        32028: "SPERR",
        32033: "HTJ2K",
    }
)


class ReadCause(enum.Enum):
    """Why frames could not be read from an HDF5 file: a summary and the fix.

    Attributes
    ----------
    summary : str
        What went wrong, in a few words.
    fix : str
        What the user should do about it.
    transient : bool
        Whether waiting may help (a file still being written); permanent causes are not
        retried.
    """

    FILTER_MISSING = (
        "HDF5 compression filter not available",
        "install the filter plugins into the reading environment (pip install hdf5plugin; "
        "bluesky-ptycho registers them itself) or set HDF5_PLUGIN_PATH to a directory that "
        "holds the filter's plugin",
        False,
    )
    FILE_MISSING = (
        "data file not found",
        "check that the file exists and is visible from this machine (mounts, root_map of "
        "the callback's AssetRegistry)",
        False,
    )
    NOT_HDF5 = (
        "not an HDF5 file",
        "point the resource at the detector's HDF5 file",
        False,
    )
    TRUNCATED = (
        "HDF5 file truncated or corrupt",
        "the file is shorter than its header says (writer crashed, disk full, or an "
        "incomplete copy): copy it again or re-acquire; frames of other files are still used",
        False,
    )
    BEING_WRITTEN = (
        "HDF5 file still being written",
        "the writer holds the file or has not flushed the frame yet: write with SWMR and "
        "flush every frame (areaDetector HDF5 plugin: SWMR mode on), or replay the file once "
        "it is closed",
        True,
    )
    DATASET_MISSING = (
        "dataset missing from the HDF5 file",
        "check the dataset path in the resource document (stream_resource parameters "
        "'dataset'; AD_HDF5 expects /entry/data/data)",
        False,
    )
    SHAPE_CHANGED = (
        "detector frame shape changed",
        "keep the detector's ROI and binning fixed during a scan; frames of the first shape "
        "are used",
        False,
    )
    UNREADABLE = (
        "HDF5 read failed",
        "check the file with h5dump or h5py; the message above gives HDF5's own error",
        False,
    )

    def __init__(self, summary: str, fix: str, transient: bool) -> None:
        self.summary = summary
        self.fix = fix
        self.transient = transient


class FrameReadError(ValueError):
    """Frames could not be read; :attr:`cause` says why and what to do.

    Parameters
    ----------
    cause : ReadCause
        The classified cause.
    path : str
        The file concerned.
    detail : str
        The specifics (dataset, index, HDF5's own message).
    """

    def __init__(self, cause: ReadCause, path: str | os.PathLike[str], detail: str) -> None:
        self.cause = cause
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{cause.summary}: {detail}. Fix: {cause.fix}")


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------


def register_filters() -> tuple[str, ...]:
    """Register the compression filter plugins of ``hdf5plugin`` in this process.

    Importing ``hdf5plugin`` registers its filters with the HDF5 library h5py uses; Python
    imports a module once, so calling this again costs little; readers that only need the
    registration call :func:`load_filter_plugins`, which skips the availability report.

    Returns
    -------
    tuple of str
        Names of the :data:`COMPRESSION_FILTERS` now available (registered here, built in, or
        found on ``HDF5_PLUGIN_PATH``).
    """
    load_filter_plugins()
    return tuple(name for name, fid in COMPRESSION_FILTERS.items() if h5py.h5z.filter_avail(fid))


def load_filter_plugins() -> None:
    """Import ``hdf5plugin``, which registers its filters; about a microsecond once imported.

    A missing ``hdf5plugin`` is not an error here: :func:`check_filters` reports it, with the
    fix, for the datasets that need a filter.
    """
    try:
        import hdf5plugin  # noqa: F401  (the import registers the filters)
    except ImportError:
        pass


def filter_name(filter_id: int) -> str:
    """A readable name of an HDF5 filter id (``"filter 12345"`` when unknown)."""
    return _FILTER_NAMES.get(int(filter_id), f"filter {int(filter_id)}")


def check_filters(dataset: h5py.Dataset) -> None:
    """Raise :class:`FrameReadError` (``FILTER_MISSING``) if a filter of ``dataset`` is absent.

    Parameters
    ----------
    dataset : h5py.Dataset
        The frames' dataset.
    """
    plist = dataset.id.get_create_plist()
    missing = []
    for k in range(plist.get_nfilters()):
        fid = int(plist.get_filter(k)[0])
        if not h5py.h5z.filter_avail(fid):
            missing.append(fid)
    if missing:
        names = ", ".join(f"{filter_name(f)} (HDF5 filter id {f})" for f in missing)
        try:
            import hdf5plugin
        except ImportError:
            why = "the hdf5plugin package is not importable in this process"
        else:
            provided = set(hdf5plugin.FILTERS.values())
            why = (
                "hdf5plugin is imported but does not provide it"
                if any(f not in provided for f in missing)
                else "hdf5plugin did not register it"
            )
        raise FrameReadError(
            ReadCause.FILTER_MISSING,
            dataset.file.filename,
            f"{dataset.file.filename}:{dataset.name} is compressed with {names}; {why}",
        )


def compression_options(name: str | None) -> dict[str, Any]:
    """Keyword arguments for ``h5py.Group.create_dataset`` that compress with ``name``.

    Parameters
    ----------
    name : str or None
        One of :data:`COMPRESSION_FILTERS` (``"bitshuffle-lz4"``, ``"lz4"``, ``"blosc"``,
        ``"blosc2"``, ``"zstd"``), or None for no compression.

    Returns
    -------
    dict
        Empty for None.

    Raises
    ------
    ValueError
        If ``name`` is not a supported compression.
    """
    if name is None:
        return {}
    if name not in COMPRESSION_FILTERS:
        raise ValueError(
            f"unknown compression {name!r}; choose one of {sorted(COMPRESSION_FILTERS)} or None"
        )
    register_filters()
    import hdf5plugin

    factory = {
        "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
        "lz4": hdf5plugin.LZ4,
        "blosc": hdf5plugin.Blosc,
        "blosc2": hdf5plugin.Blosc2,
        "zstd": hdf5plugin.Zstd,
    }[name]
    return dict(factory())


# --------------------------------------------------------------------------------------------
# opening and reading
# --------------------------------------------------------------------------------------------

_OPEN_MODES: tuple[dict[str, Any], ...] = (
    {"swmr": True},
    {},
    {"swmr": True, "locking": False},
    {"locking": False},
)


def open_hdf5(path: str | os.PathLike[str], *, swmr_first: bool = True) -> h5py.File:
    """Open an HDF5 frame file read-only, with the filter plugins registered.

    A writer may still hold the file (in this process or another): SWMR is tried first
    (ophyd-async and areaDetector writers use it); HDF5 refuses a second open of a file already
    open in this process with other flags, so plain and lock-free opens are tried next.

    Parameters
    ----------
    path : str or path-like
        The file.
    swmr_first : bool, optional
        Try a SWMR open first (default True); False starts with a plain open.

    Returns
    -------
    h5py.File
        Open for reading; the caller closes it.

    Raises
    ------
    FrameReadError
        With cause ``FILE_MISSING``, ``NOT_HDF5``, ``TRUNCATED``, ``BEING_WRITTEN`` or
        ``UNREADABLE``.
    """
    load_filter_plugins()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FrameReadError(ReadCause.FILE_MISSING, path, f"{path!r} does not exist")
    modes = _OPEN_MODES if swmr_first else (_OPEN_MODES[1], _OPEN_MODES[3], *_OPEN_MODES[::2])
    errors: list[str] = []
    for kwargs in modes:
        try:
            return h5py.File(path, "r", **kwargs)
        except (OSError, ValueError, TypeError) as exc:
            errors.append(str(exc))
    raise _classify_open(path, errors)


def _classify_open(path: str, errors: list[str]) -> FrameReadError:
    text = " | ".join(dict.fromkeys(errors))
    low = text.lower()
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        cause = ReadCause.BEING_WRITTEN  # created, header not written yet
        text = "the file is empty"
    elif "truncated file" in low:
        cause = ReadCause.TRUNCATED
    elif "file signature not found" in low or "not an hdf5 file" in low:
        cause = ReadCause.NOT_HDF5
    elif "lock" in low or "already open" in low:
        cause = ReadCause.BEING_WRITTEN
    else:
        cause = ReadCause.UNREADABLE
    return FrameReadError(cause, path, f"cannot open {path!r}: {text}")


@contextmanager
def opened(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """:func:`open_hdf5` as a context manager that closes the file."""
    f = open_hdf5(path)
    try:
        yield f
    finally:
        f.close()


def get_dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """The dataset ``name`` of an open file, checked for missing filters.

    Raises
    ------
    FrameReadError
        ``DATASET_MISSING`` if there is no dataset by that name, ``FILTER_MISSING`` if its
        compression filter is not available.
    """
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        what = "nothing" if obj is None else type(obj).__name__.lower()
        raise FrameReadError(
            ReadCause.DATASET_MISSING,
            f.filename,
            f"{f.filename}:{name} is {what}, not a dataset",
        )
    check_filters(obj)
    return obj


def read_frame(
    dataset: h5py.Dataset,
    index: Any,
    *,
    retries: int = 20,
    wait_s: float = 0.05,
) -> NDArray[Any]:
    """Read ``dataset[index]``, waiting briefly for a frame a writer has not flushed yet.

    Parameters
    ----------
    dataset : h5py.Dataset
        From :func:`get_dataset` (its filters are checked).
    index : int or slice or tuple
        The selection; an integer first index must lie in the dataset.
    retries, wait_s : optional
        How often and how long to wait for a frame beyond the current end of the dataset
        (refreshing it in SWMR mode). Default 20 x 50 ms.

    Returns
    -------
    ndarray

    Raises
    ------
    FrameReadError
        ``BEING_WRITTEN`` if the frame never appears, ``TRUNCATED`` if stored chunks cannot be
        read, ``FILTER_MISSING`` if a filter fails, ``UNREADABLE`` otherwise.
    """
    first = index[0] if isinstance(index, tuple) and index else index
    path = dataset.file.filename
    if isinstance(first, (int, np.integer)):
        for _ in range(max(0, int(retries))):
            if int(first) < dataset.shape[0]:
                break
            time.sleep(wait_s)
            if dataset.file.swmr_mode:
                dataset.refresh()
        if int(first) >= dataset.shape[0]:
            raise FrameReadError(
                ReadCause.BEING_WRITTEN,
                path,
                f"frame {int(first)} is not in {path}:{dataset.name}, which holds "
                f"{dataset.shape[0]} frame(s) (not yet flushed, or the writer stopped early)",
            )
    try:
        return np.asarray(dataset[index])
    except (OSError, ValueError, RuntimeError) as exc:
        check_filters(dataset)
        low = str(exc).lower()
        cause = (
            ReadCause.TRUNCATED
            if any(s in low for s in ("addr overflow", "truncated", "eof", "short read"))
            or _shorter_than_header(path)
            else ReadCause.UNREADABLE
        )
        raise FrameReadError(
            cause, path, f"reading {path}:{dataset.name}[{index}] failed: {exc}"
        ) from exc


def _shorter_than_header(path: str) -> bool:
    """Whether the file on disk ends before the end-of-file address its superblock records."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            stored = f.id.get_filesize()
        return Path(path).stat().st_size < stored
    except (OSError, ValueError):
        return True
