"""Any recorded scan on disk as a :class:`~bluesky_ptycho.io.cxi.ScanFile`, whatever its layout.

:func:`read_scan` looks at what ``path`` is and picks the reader:

- a CXI file (``/entry_1`` with frames): :func:`~bluesky_ptycho.io.cxi.read_cxi`;
- a NeXus/Eiger master (``/entry/data/data_NNNNNN``): :func:`~bluesky_ptycho.io.eiger.read_master`;
- a bluesky-ptycho result file that carries its frames (it is laid out as CXI);
- a scan directory (Eiger master + data files or chunk files + positions file), when
  :mod:`bluesky_ptycho.io.follow` provides a reader for it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import h5py
from numpy.typing import ArrayLike

from bluesky_ptycho.io.cxi import ScanFile, read_cxi
from bluesky_ptycho.io.eiger import is_master_file, read_master

__all__ = ["read_scan", "scan_format"]

_DIRECTORY_READERS = ("read_scan_directory", "read_directory", "read_scan")


def scan_format(path: str | os.PathLike[str]) -> str:
    """``"cxi"``, ``"nexus-master"`` or ``"directory"``: how :func:`read_scan` reads ``path``.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ValueError
        If ``path`` is a file but neither a CXI file nor a NeXus/Eiger master (the message
        says what was looked for).
    """
    path = Path(path)
    if path.is_dir():
        return "directory"
    if not path.is_file():
        raise FileNotFoundError(f"no scan file or directory at {str(path)!r}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{str(path)!r} is not an HDF5 file (CXI or NeXus/Eiger master)")
    if is_master_file(path):
        return "nexus-master"
    with h5py.File(path, "r") as f:
        if isinstance(f.get("entry_1"), h5py.Group):
            return "cxi"
    raise ValueError(
        f"{str(path)!r} is neither a CXI file (no /entry_1) nor a NeXus/Eiger master (no "
        "/entry/data/data_000001)"
    )


def read_scan(
    path: str | os.PathLike[str],
    *,
    positions: ArrayLike | str | os.PathLike[str] | None = None,
    positions_dataset: str | None = None,
    **kwargs: Any,
) -> ScanFile:
    """Read a recorded scan, choosing the reader from what ``path`` is (see the module doc).

    Parameters
    ----------
    path : str or path-like
        CXI file, NeXus/Eiger master, or scan directory.
    positions : array (n, 2), str or path-like, optional
        Beam positions for a master file (see :func:`~bluesky_ptycho.io.eiger.read_master`);
        a CXI file carries its own, so passing positions with one is an error.
    positions_dataset : str, optional
        Dataset of an HDF5 positions file.
    **kwargs
        Passed to the reader (``entry``, ``negate_translation`` for CXI, ...).

    Returns
    -------
    ScanFile

    Raises
    ------
    FileNotFoundError, ValueError
        From the readers; ``ValueError`` also if the layout is not recognised or a scan
        directory cannot be read yet (no directory reader installed).
    """
    kind = scan_format(path)
    if kind == "nexus-master":
        return read_master(path, positions=positions, positions_dataset=positions_dataset, **kwargs)
    if kind == "cxi":
        if positions is not None:
            raise ValueError(
                f"{os.fspath(path)!r} is a CXI file, which carries its own positions: do not "
                "pass positions"
            )
        return read_cxi(path, **kwargs)
    return _read_directory(Path(path), positions=positions, **kwargs)


def _read_directory(path: Path, **kwargs: Any) -> ScanFile:
    try:
        follow = importlib.import_module("bluesky_ptycho.io.follow")
    except ImportError:
        follow = None
    for name in _DIRECTORY_READERS:
        reader = getattr(follow, name, None) if follow is not None else None
        if callable(reader):
            options = {k: v for k, v in kwargs.items() if v is not None}
            scan = reader(path, **options)
            if not isinstance(scan, ScanFile):
                raise ValueError(
                    f"bluesky_ptycho.io.follow.{name} returned {type(scan).__name__}, "
                    "not a ScanFile"
                )
            return scan
    raise ValueError(
        f"{str(path)!r} is a directory; reading a scan directory needs a reader in "
        "bluesky_ptycho.io.follow (not available in this installation): pass the master or "
        "CXI file instead"
    )
