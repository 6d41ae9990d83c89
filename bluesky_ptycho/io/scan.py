"""Any recorded scan on disk as a :class:`~bluesky_ptycho.io.cxi.ScanFile`, whatever its layout.

:func:`read_scan` looks at what ``path`` is and picks the reader:

- a CXI file (``/entry_1`` with frames): :func:`~bluesky_ptycho.io.cxi.read_cxi`;
- a NeXus/Eiger master (``/entry/data/data_NNNNNN``): :func:`~bluesky_ptycho.io.eiger.read_master`;
- a bluesky-ptycho result file that carries its frames (it is laid out as CXI).

A scan directory (Eiger master + data files or chunk files + positions file) is not a single
file: :func:`~bluesky_ptycho.io.replay.replay` reads it with
:class:`~bluesky_ptycho.io.follow.Follower`, as documents.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
from numpy.typing import ArrayLike

from bluesky_ptycho.io.cxi import ScanFile, read_cxi
from bluesky_ptycho.io.eiger import is_master_file, read_master

__all__ = ["read_scan", "scan_format"]


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
        From the readers; ``ValueError`` also if the layout is not recognised, or ``path`` is
        a scan directory.
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
    raise ValueError(
        f"{os.fspath(path)!r} is a scan directory, not a file: replay it (bluesky-ptycho replay "
        "DIRECTORY, or bluesky_ptycho.io.replay.replay), which follows its files; or pass its "
        "master file"
    )
