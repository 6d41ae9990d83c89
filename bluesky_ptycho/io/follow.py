"""Follow a scan directory while a detector writes it, through the same pipeline as live data.

Beamlines whose detector is not driven by Bluesky write a scan to files: an Eiger-style master
file ``*_master.h5`` whose ``/entry/data/data_NNNNNN`` entries are external links to data files
``*_data_NNNNNN.h5`` that appear one by one (each with ``/entry/data/data`` of shape
``(n, H, W)``), or a series of chunk files (``chunk_00000.h5``, ... with a ``data`` or
``/entry/data/data`` dataset), plus an encoder-position file that grows: ``positions.h5`` (an
``(n, 2)`` dataset ``positions``, ``(row, col)``) or ``positions.txt`` (lines ``row col``).

:class:`Follower` turns such a directory into the documents of one run (start with the
``start["ptycho"]`` contract, a descriptor, event pages with the frames inline and the positions
as readbacks, stop), exactly like a replay (:mod:`bluesky_ptycho.io.replay`), so a
:class:`~bluesky_ptycho.callback.PtychoCallback` preprocesses and reconstructs them as it does a
Bluesky scan. Frame ``k`` of the scan (counted over the data files in order, or placed by the
Eiger ``image_nr_low`` attribute) is paired with row ``k`` of the position file, and is read as
soon as both exist. :func:`follow` is the one-call form.

The follow ends when the scan's last frame has been read (``num_points`` of the setup, or the
number of nominal positions), when a stop marker file (``scan.done``) appears, or when no new
data arrived for ``timeout_s``. Bad input is reported, never fatal: a data file that stays
unreadable (truncated, half-written) or missing while later files exist or the scan has ended,
or whose frames have another shape than the detector's, is skipped with one message naming it;
frames without a position and positions without a frame are counted at the end. Every good frame
is used.

Geometry and the nominal scan come from a small JSON or YAML file in the directory
(``setup.json``, ``setup.yaml``, ``ptycho.json``, ... with the fields of ``start["ptycho"]``),
from a :class:`~bluesky_ptycho.setup.ScanSetup` given by the caller, and, where present, from the
master file's NeXus metadata (energy, distance, pixel size, beam centre), which the setup file's
own values override.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.io.hdf5 import register_filters  # Eiger files: bitshuffle/LZ4
from bluesky_ptycho.io.replay import DocumentCallback
from bluesky_ptycho.io.result import write_result
from bluesky_ptycho.io.units import HC_EV_M, LENGTH_UNITS
from bluesky_ptycho.live import LiveOptions, Snapshot
from bluesky_ptycho.setup import START_KEY, ScanSetup

__all__ = [
    "SETUP_FILE_NAMES",
    "FollowOptions",
    "FollowReport",
    "FollowResult",
    "Follower",
    "FrameBatch",
    "ScanDirectory",
    "follow",
    "read_setup_file",
]

logger = logging.getLogger(__name__)

SETUP_FILE_NAMES = (
    "setup.json",
    "setup.yaml",
    "setup.yml",
    "ptycho.json",
    "ptycho.yaml",
    "ptycho.yml",
)
"""Names under which the setup file is looked for in the scan directory, in this order."""

_POSITION_FILE_NAMES = ("positions.h5", "positions.txt")
_DATASETS = ("/entry/data/data", "data")
_STREAM = "primary"
_LENGTH_UNITS = LENGTH_UNITS
_TRAILING_NUMBER = re.compile(r"(\d+)$")

REASONS = ("complete", "stop marker", "timeout", "cancelled")


# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FollowOptions:
    """How a scan directory is followed.

    Attributes
    ----------
    timeout_s : float
        End when no new data (files, frames, positions) arrived for this long.
    poll_s : float
        Seconds between looks at the directory.
    stop_marker : str or None
        A file whose appearance in the directory ends the scan (what exists is read first);
        None: no marker.
    settle_s : float
        A data file that cannot be read, or a linked data file that does not exist, is waited
        for while it keeps changing; once it has been unchanged this long while a later data
        file exists (the writer has moved on), it is reported and skipped. At the end of the
        scan (marker or timeout) it is skipped at once.
    data_glob : str
        Chunk files, when the directory has no Eiger-style master or ``*_data_*`` files.
    dataset : str or None
        Frames dataset inside a data file; None: ``/entry/data/data``, else ``data``.
    positions_file : str or None
        Encoder-position file name in the directory; None: ``positions.h5``, else
        ``positions.txt``.
    positions_dataset : str
        The ``(n, 2)`` dataset of an HDF5 position file.
    setup_file : str or None
        Setup file (JSON or YAML with the fields of ``start["ptycho"]``); a relative path is
        taken inside the directory. None: the first of :data:`SETUP_FILE_NAMES` present.
    frames_per_read : int
        At most this many frames are read (and sent as one event page) at a time.
    """

    timeout_s: float = 60.0
    poll_s: float = 0.1
    stop_marker: str | None = "scan.done"
    settle_s: float = 2.0
    data_glob: str = "chunk_*.h5"
    dataset: str | None = None
    positions_file: str | None = None
    positions_dataset: str = "positions"
    setup_file: str | None = None
    frames_per_read: int = 64

    def __post_init__(self) -> None:
        for name in ("timeout_s", "poll_s", "settle_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"FollowOptions.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"FollowOptions.{name} must be finite and >= 0, got {value!r}")
        if self.poll_s <= 0:
            raise ValueError(f"FollowOptions.poll_s must be positive, got {self.poll_s!r}")
        if int(self.frames_per_read) < 1:
            raise ValueError(
                f"FollowOptions.frames_per_read must be >= 1, got {self.frames_per_read}"
            )
        if self.stop_marker is not None and not str(self.stop_marker):
            raise ValueError("FollowOptions.stop_marker must be a file name or None")


@dataclass(frozen=True)
class FrameBatch:
    """Frames read together, each paired with its position.

    Attributes
    ----------
    indices : ndarray of int, shape (n,)
        Scan indices (0-based) of the frames.
    frames : ndarray, shape (n, H, W)
        Raw detector frames as stored.
    readbacks : ndarray of float64, shape (n, 2)
        ``(row, col)`` encoder positions in the setup's readback units.
    source : str
        The data file they came from.
    appeared : float
        ``time.time()`` at which the follower first saw that data file.
    """

    indices: np.ndarray
    frames: np.ndarray
    readbacks: np.ndarray
    source: str
    appeared: float

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class FollowReport:
    """How a follow went.

    Attributes
    ----------
    directory : str
    reason : str
        Why it ended: ``"complete"`` (the scan's last frame was read), ``"stop marker"``,
        ``"timeout"`` or ``"cancelled"``.
    frames_sent : int
        Frames handed on with their positions.
    frames_found : int
        Frames seen in readable data files.
    positions_found : int
        Rows of the position file.
    expected : int or None
        Frames the scan should have (setup ``num_points`` or the nominal positions).
    files_read : int
        Data files read to the end.
    problems : tuple of str
        Everything that was wrong, one message per problem, naming the file.
    uid : str or None
        The run's start uid (None when no frame could be sent).
    message : str
        A one-line summary.
    """

    directory: str
    reason: str
    frames_sent: int
    frames_found: int
    positions_found: int
    expected: int | None
    files_read: int
    problems: tuple[str, ...]
    uid: str | None
    message: str


@dataclass(frozen=True)
class FollowResult:
    """What :func:`follow` returns.

    Attributes
    ----------
    state : ReconstructionState
        The final reconstruction (after the final passes).
    report : FollowReport
    result_path : Path or None
        The result file written, when an output was asked for.
    rejected : int
        Items the reconstruction pipeline rejected (bad frames, positions outside the object),
        including the follower's own problems.
    """

    state: ReconstructionState
    report: FollowReport
    result_path: Path | None
    rejected: int


# --------------------------------------------------------------------------------------------
# the directory
# --------------------------------------------------------------------------------------------


def _number(path: Path) -> int:
    m = _TRAILING_NUMBER.search(path.stem)
    return int(m.group(1)) if m else -1


@dataclass(frozen=True)
class ScanDirectory:
    """Where the parts of a scan live in its directory (looked up afresh on every call).

    Attributes
    ----------
    path : Path
        The directory.
    options : FollowOptions
        File names and patterns.
    """

    path: Path
    options: FollowOptions = field(default_factory=FollowOptions)

    def master(self) -> Path | None:
        """The Eiger-style master file, if one exists."""
        found = sorted(self.path.glob("*_master.h5"))
        return found[0] if found else None

    def data_files(self) -> list[Path]:
        """Data files known so far, in scan order (by their trailing number).

        Eiger layout: the targets of the master's external links plus existing
        ``*_data_NNNNNN.h5`` files (a linked file may not exist yet). Otherwise files
        matching ``options.data_glob``.
        """
        master = self.master()
        files: dict[Path, None] = {}
        if master is not None:
            prefix = master.name[: -len("_master.h5")]
            for target in _linked_files(master):
                files[target] = None
            for p in self.path.glob(f"{glob_escape(prefix)}_data_*.h5"):
                files[p] = None
        else:
            eiger = list(self.path.glob("*_data_[0-9]*.h5"))
            for p in eiger or self.path.glob(self.options.data_glob):
                files[p] = None
        skip = {self.positions_file()}
        return sorted((p for p in files if p not in skip), key=lambda p: (_number(p), p.name))

    def positions_file(self) -> Path | None:
        """The encoder-position file, if it exists (or the configured name)."""
        if self.options.positions_file is not None:
            return self.path / self.options.positions_file
        for name in _POSITION_FILE_NAMES:
            if (self.path / name).exists():
                return self.path / name
        return None

    def setup_file(self) -> Path | None:
        """The setup file, if one exists (or the configured one)."""
        if self.options.setup_file is not None:
            p = Path(self.options.setup_file)
            return p if p.is_absolute() else self.path / p
        for name in SETUP_FILE_NAMES:
            if (self.path / name).is_file():
                return self.path / name
        return None

    def stop_marker(self) -> Path | None:
        """The stop marker's path (None when no marker is configured)."""
        marker = self.options.stop_marker
        return None if marker is None else self.path / marker


def _with_gaps(paths: list[Path]) -> list[Path]:
    """``paths`` plus the names missing from their numbering (``chunk_00002.h5`` between
    ``chunk_00001.h5`` and ``chunk_00003.h5``): a file the writer skipped or lost still holds
    its place in the scan, so later files keep their frame indices."""
    out = list(paths)
    for a, b in itertools.pairwise(paths):
        ma, mb = _TRAILING_NUMBER.search(a.stem), _TRAILING_NUMBER.search(b.stem)
        if ma is None or mb is None or a.stem[: ma.start()] != b.stem[: mb.start()]:
            continue
        width = len(ma.group(1))
        head = a.stem[: ma.start()]
        for n in range(int(ma.group(1)) + 1, int(mb.group(1))):
            out.append(a.with_name(f"{head}{n:0{width}d}{a.suffix}"))
    return out


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped (for a file-name prefix)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _linked_files(master: Path) -> list[Path]:
    """Targets of the external links in ``/entry/data`` of a master file (may be half-written)."""
    try:
        with _open_h5(master) as f:
            group = f.get("/entry/data")
            if not isinstance(group, h5py.Group):
                return []
            out = []
            for name in group:
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    target = Path(link.filename)
                    out.append(target if target.is_absolute() else master.parent / target)
            return out
    except (OSError, KeyError, ValueError):
        return []


def _open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file another process may still be writing (SWMR if it uses it)."""
    try:
        return h5py.File(path, "r", swmr=True)
    except (OSError, ValueError):
        return h5py.File(path, "r")


# --------------------------------------------------------------------------------------------
# the setup
# --------------------------------------------------------------------------------------------


def read_setup_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a setup file: JSON, or YAML (``.yaml``/``.yml``), holding ``start["ptycho"]`` fields.

    Raises
    ------
    ValueError
        If the file cannot be parsed or does not hold a mapping (the message names the file).
    FileNotFoundError
        If it does not exist.
    """
    p = Path(path)
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(text)
        else:
            value = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"setup file {p}: cannot parse it: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"setup file {p}: must hold a mapping of start['ptycho'] fields")
    return dict(value)


def _length_m(ds: Any) -> float:
    units = ds.attrs.get("units", b"m")
    units = units.decode() if isinstance(units, bytes) else str(units)
    scale = _LENGTH_UNITS.get(units.strip().lower())
    if scale is None:
        raise ValueError(f"unknown length unit {units!r} of {ds.name}")
    return float(np.asarray(ds[()]).reshape(-1)[0]) * scale


def master_metadata(master: Path) -> dict[str, Any]:
    """``start["ptycho"]`` fields found in an Eiger/NXmx master file (those present).

    Energy from ``/entry/instrument/beam/incident_wavelength``, distance from
    ``.../detector/detector_distance``, pixel from ``.../detector/x_pixel_size``, beam centre
    ``(row, col)`` from ``beam_center_y``/``beam_center_x`` (pixels).
    """
    out: dict[str, Any] = {}
    with _open_h5(master) as f:
        det = "/entry/instrument/detector/"
        wl = f.get("/entry/instrument/beam/incident_wavelength")
        if isinstance(wl, h5py.Dataset):
            units = wl.attrs.get("units", b"angstrom")
            if isinstance(units, bytes):
                units = units.decode()
            if str(units).lower() in _LENGTH_UNITS:
                wavelength_m = _length_m(wl) if "units" in wl.attrs else float(wl[()]) * 1e-10
                out["energy_eV"] = HC_EV_M / wavelength_m
        for key, name in (
            ("detector_distance_m", "detector_distance"),
            ("detector_pixel_m", "x_pixel_size"),
        ):
            ds = f.get(det + name)
            if isinstance(ds, h5py.Dataset):
                out[key] = _length_m(ds)
        bx, by = f.get(det + "beam_center_x"), f.get(det + "beam_center_y")
        if isinstance(bx, h5py.Dataset) and isinstance(by, h5py.Dataset):
            out["beam_center_px"] = [float(by[()]), float(bx[()])]
    return out


# --------------------------------------------------------------------------------------------
# the follower
# --------------------------------------------------------------------------------------------


@dataclass
class _DataFile:
    """What the follower knows of one data file."""

    path: Path
    seen: float  # time.time() of first sight
    start: int | None = None  # scan index of its first frame
    count: int | None = None  # frames it holds, once known to be final
    read: int = 0  # frames consumed (sent or skipped)
    length: int = 0  # frames seen at the last look
    done: bool = False
    bad: bool = False
    failing_since: float | None = None  # monotonic time of the first failed look in a row
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last failed look
    error: str = ""


class Follower:
    """Reads a scan directory as a detector writes it and hands the scan on as documents.

    Parameters
    ----------
    directory : str or path-like
        The scan directory (it may not exist yet; it is waited for like its files).
    setup : ScanSetup or mapping, optional
        Geometry and nominal scan; a mapping holds ``start["ptycho"]`` fields and is merged
        over the master file's metadata. Default: the setup file in the directory.
    options : FollowOptions, optional

    Notes
    -----
    Use :meth:`run` (blocking) or :meth:`poll` (one look; for custom loops). Frames are sent in
    scan order, one data file after the other; a data file is read as far as positions exist.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        setup: ScanSetup | Mapping[str, Any] | None = None,
        options: FollowOptions | None = None,
    ) -> None:
        opts = options if options is not None else FollowOptions()
        if not isinstance(opts, FollowOptions):
            raise TypeError(f"options must be a FollowOptions, got {type(opts).__name__}")
        if setup is not None and not isinstance(setup, (ScanSetup, Mapping)):
            raise TypeError(f"setup must be a ScanSetup or a mapping, got {type(setup).__name__}")
        register_filters()
        self.options = opts
        self.directory = ScanDirectory(Path(directory), opts)
        self._given_setup = setup
        self._setup: ScanSetup | None = setup if isinstance(setup, ScanSetup) else None
        self._files: dict[Path, _DataFile] = {}
        self._order: list[Path] = []
        self._positions = np.zeros((0, 2), dtype=np.float64)
        self._positions_offset = 0  # bytes of a text file consumed
        self._positions_line = 0
        self._frame_shape: tuple[int, int] | None = None
        self._frame_dtype: np.dtype | None = None
        self._next_index = 0  # scan index of the next frame to send
        self._sent = 0
        self._found = 0
        self._problems: list[str] = []
        self._reported = 0  # problems already passed to on_problem
        self._setup_failing_since: float | None = None
        self._report: FollowReport | None = None

    # ------------------------------------------------------------------ public
    @property
    def setup(self) -> ScanSetup | None:
        """The scan setup, once known."""
        return self._setup

    @property
    def problems(self) -> tuple[str, ...]:
        """Problems found so far."""
        return tuple(self._problems)

    @property
    def frames_sent(self) -> int:
        """Frames returned by :meth:`poll` so far."""
        return self._sent

    @property
    def data_files(self) -> tuple[Path, ...]:
        """Data files seen so far, in scan order."""
        return tuple(self._order)

    @property
    def expected(self) -> int | None:
        """Frames the scan should have, once the setup is known."""
        return None if self._setup is None else self._setup.expected_points

    def complete(self) -> bool:
        """True once every frame of the scan has been read (sent or reported bad)."""
        n = self.expected
        return n is not None and self._next_index >= n

    def poll(self, *, final: bool = False) -> list[FrameBatch]:
        """One look at the directory: the frames that can now be paired with positions.

        Parameters
        ----------
        final : bool
            The scan has ended (stop marker, timeout): data files that cannot be read are
            skipped at once instead of waited for.

        Returns
        -------
        list of FrameBatch
            Possibly empty; in scan order.

        Raises
        ------
        ValueError
            If the setup file is invalid, or the setup lacks required fields the master file
            does not provide (once the master is there or the scan has ended).
        """
        if not self.directory.path.is_dir():
            return []
        if self._setup is None:
            self._resolve_setup(final)
            if self._setup is None:
                return []
        self._read_positions()
        self._discover()
        batches: list[FrameBatch] = []
        now = time.monotonic()
        for i, path in enumerate(self._order):
            entry = self._files[path]
            if entry.done:
                continue
            later_exists = any(p.exists() for p in self._order[i + 1 :])
            if not self._ensure_start(i, entry):
                break
            self._read_file(entry, batches, final=final, later=later_exists, now=now)
            if not entry.done:
                break  # files are read in order: a later one starts where this one ends
        return batches

    def documents(
        self,
        cancel: threading.Event | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The run's documents, generated as the files are written (blocks between polls).

        The last item sent is always a stop document (if a start was sent); afterwards
        :attr:`report` describes the follow.
        """
        opts = self.options
        marker = self.directory.stop_marker()
        run: dict[str, Any] = {}  # the run's compose bundle and descriptor, once started
        self._report = None
        last_progress = time.monotonic()
        reason = "timeout"

        def send(batches: list[FrameBatch]) -> Iterator[tuple[str, dict[str, Any]]]:
            if batches and not run:
                run["bundle"] = self._compose_start()
                yield "start", run["bundle"].start_doc
                run["descriptor"] = self._compose_descriptor(run["bundle"], batches[0])
                yield "descriptor", run["descriptor"].descriptor_doc
            if run:
                self._flush_problems(on_problem)
            for batch in batches:
                yield "event_page", self._compose_page(run["descriptor"], batch)

        while True:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            marker_now = marker is not None and marker.exists()  # before the look
            before = self._progress_signature()
            yield from send(self.poll())
            if self._progress_signature() != before:
                last_progress = time.monotonic()
            if self.complete():
                reason = "complete"
                break
            ended = marker_now or time.monotonic() - last_progress > opts.timeout_s
            if ended:
                # the writer is done (or gone): read what exists, skip what cannot be read
                reason = "stop marker" if marker_now else "timeout"
                yield from send(self.poll(final=True))
                break
            time.sleep(opts.poll_s)
        bundle = run.get("bundle")
        self._finish_accounting(reason)
        if bundle is not None:
            self._flush_problems(on_problem)
            status = "success" if reason in ("complete", "stop marker") else "abort"
            text = self._summary(reason)
            yield (
                "stop",
                bundle.compose_stop(exit_status=status, reason="" if status == "success" else text),
            )
        self._report = self._make_report(
            reason, None if bundle is None else bundle.start_doc["uid"]
        )

    def run(
        self,
        callback: DocumentCallback,
        *,
        cancel: threading.Event | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> FollowReport:
        """Follow the directory, sending every document to ``callback(name, doc)``; blocks.

        Parameters
        ----------
        callback : callable
            Typically a :class:`~bluesky_ptycho.callback.PtychoCallback`.
        cancel : threading.Event, optional
            Set it to end the follow early (reason ``"cancelled"``; a stop is still sent).
        on_problem : callable, optional
            Called with each problem message once the run has started (e.g. to count it as a
            rejection of the reconstruction); problems are also logged and in the report.

        Returns
        -------
        FollowReport
        """
        for name, doc in self.documents(cancel, on_problem):
            callback(name, doc)
        assert self._report is not None
        return self._report

    @property
    def report(self) -> FollowReport | None:
        """The report of the last :meth:`run` / :meth:`documents` (None while it runs)."""
        return self._report

    # ------------------------------------------------------------------ setup
    def _resolve_setup(self, final: bool) -> None:
        given = self._given_setup
        setup_path = self.directory.setup_file()
        master = self.directory.master()
        fields: dict[str, Any] = {}
        if master is not None:
            try:
                fields.update(master_metadata(master))
            except (OSError, KeyError, ValueError) as exc:
                if not final:
                    return  # the master may still be being written
                self._problem_once(f"master file {master.name}: metadata not readable: {exc}")
        where = "setup"
        if isinstance(given, Mapping):
            fields.update(given)
        elif setup_path is not None and setup_path.is_file():
            where = f"setup file {setup_path}"
            try:
                fields.update(read_setup_file(setup_path))
            except ValueError:
                if self._setup_failing_since is None:
                    self._setup_failing_since = time.monotonic()
                waited = time.monotonic() - self._setup_failing_since
                if final or waited >= self.options.settle_s:
                    raise
                return  # perhaps still being written
        else:
            if final:
                missing = f"setup file {setup_path} not found" if setup_path else "no setup"
                raise ValueError(
                    f"{missing} for {self.directory.path}: give one (--setup FILE.json|yaml) "
                    f"or put one of {', '.join(SETUP_FILE_NAMES)} into the directory"
                )
            return
        try:
            self._setup = ScanSetup.from_start_doc(fields)
        except ValueError as exc:
            if master is None and not final:
                return  # the master file may still bring the geometry
            raise ValueError(f"{where} (with the master file's metadata): {exc}") from None

    # ------------------------------------------------------------------ positions
    def _read_positions(self) -> None:
        path = self.directory.positions_file()
        if path is None or not path.exists():
            return
        if path.suffix.lower() in (".h5", ".hdf5", ".nxs"):
            self._read_positions_h5(path)
        else:
            self._read_positions_text(path)

    def _read_positions_h5(self, path: Path) -> None:
        name = self.options.positions_dataset
        try:
            with _open_h5(path) as f:
                ds = f.get(name)
                if not isinstance(ds, h5py.Dataset):
                    return  # not written yet
                if ds.ndim != 2 or ds.shape[1] != 2:
                    self._problem_once(
                        f"positions file {path.name}: dataset {name!r} has shape {ds.shape}, "
                        "expected (n, 2) (row, col)"
                    )
                    return
                n0 = self._positions.shape[0]
                if ds.shape[0] <= n0:
                    return
                new = np.asarray(ds[n0:], dtype=np.float64)
                scale = self._position_unit_scale(ds)
        except (OSError, KeyError, ValueError, RuntimeError):
            return  # being written: next poll
        self._positions = np.concatenate([self._positions, new * scale])

    def _position_unit_scale(self, ds: Any) -> float:
        units = ds.attrs.get("units")
        if units is None:
            return 1.0
        units = units.decode() if isinstance(units, bytes) else str(units)
        metres = _LENGTH_UNITS.get(units.strip().lower())
        if metres is None:
            self._problem_once(f"positions: unknown unit {units!r}; taken as readback units")
            return 1.0
        assert self._setup is not None
        return metres / float(self._setup.position_scale_m)

    def _read_positions_text(self, path: Path) -> None:
        try:
            with open(path, "rb") as fh:
                fh.seek(self._positions_offset)
                chunk = fh.read()
        except OSError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        self._positions_offset += end + 1
        rows: list[list[float]] = []
        for raw in chunk[: end + 1].decode(errors="replace").splitlines():
            self._positions_line += 1
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            try:
                values = [float(v) for v in parts]
            except ValueError:
                values = []
            if len(values) != 2 or not all(math.isfinite(v) for v in values):
                self._problem(
                    f"positions file {path.name} line {self._positions_line}: {raw.strip()!r} is "
                    f"not two numbers (row col); frame {len(self._positions) + len(rows)} skipped"
                )
                values = [math.nan, math.nan]
            rows.append(values)
        if rows:
            self._positions = np.concatenate([self._positions, np.asarray(rows, np.float64)])

    # ------------------------------------------------------------------ data files
    def _discover(self) -> None:
        for path in _with_gaps(self.directory.data_files()):
            if path not in self._files:
                self._files[path] = _DataFile(path=path, seen=time.time())
                self._order.append(path)
        self._order.sort(key=lambda p: (_number(p), p.name))

    def _ensure_start(self, i: int, entry: _DataFile) -> bool:
        """Give ``entry`` its scan index; False if its predecessor is not finished yet."""
        if entry.start is not None:
            return True
        if i == 0:
            entry.start = 0
            return True
        prev = self._files[self._order[i - 1]]
        if not prev.done or prev.start is None:
            return False
        count = prev.count if prev.count is not None else prev.read
        entry.start = prev.start + count
        return True

    def _dataset(self, f: h5py.File) -> h5py.Dataset:
        names = (self.options.dataset,) if self.options.dataset else _DATASETS
        for name in names:
            ds = f.get(name)
            if isinstance(ds, h5py.Dataset):
                return ds
        raise KeyError(f"no dataset {' or '.join(names)}")

    def _read_file(
        self,
        entry: _DataFile,
        batches: list[FrameBatch],
        *,
        final: bool,
        later: bool,
        now: float,
    ) -> bool:
        """Read what can be paired from one data file; returns True if it made progress."""
        path = entry.path
        try:
            if not path.exists():
                raise FileNotFoundError("file not found (linked from the master, not written)")
            with _open_h5(path) as f:
                ds = self._dataset(f)
                first_nr = ds.attrs.get("image_nr_low")
                last_nr = ds.attrs.get("image_nr_high")
                shape = tuple(int(s) for s in ds.shape)
                if len(shape) == 2:
                    shape = (1, *shape)
                    frames_of = lambda a, b: np.asarray(ds[()])[None][a:b]  # noqa: E731
                elif len(shape) == 3:
                    frames_of = lambda a, b: np.asarray(ds[a:b])  # noqa: E731
                else:
                    self._skip(entry, f"dataset {ds.name} has shape {shape}, expected (n, H, W)")
                    return True
                frame_shape = (shape[1], shape[2])
                if self._frame_shape is None:
                    self._frame_shape = frame_shape
                    self._frame_dtype = ds.dtype
                if frame_shape != self._frame_shape:
                    self._skip(
                        entry,
                        f"frames of shape {frame_shape} differ from the detector's "
                        f"{self._frame_shape} (set by the first data file)",
                        count=shape[0],
                    )
                    return True
                if first_nr is not None and int(first_nr) >= 1:
                    entry.start = int(first_nr) - 1
                if first_nr is not None and last_nr is not None:
                    entry.count = int(last_nr) - int(first_nr) + 1
                new_length = shape[0]
                if new_length > entry.length:
                    self._found += new_length - entry.length
                entry.length = new_length
                entry.failing_since = None
                progressed = False
                assert entry.start is not None
                while True:
                    paired = self._positions.shape[0] - (entry.start + entry.read)
                    stop = min(
                        entry.length, entry.read + max(0, paired), entry.read + self._max_read()
                    )
                    if stop <= entry.read:
                        break
                    try:
                        block = frames_of(entry.read, stop)
                    except (OSError, ValueError, RuntimeError) as exc:
                        raise OSError(f"reading frames {entry.read}..{stop - 1}: {exc}") from exc
                    self._emit(entry, block, batches)
                    progressed = True
                complete = entry.count is not None and entry.read >= entry.count
                expected = self.expected
                if expected is not None and entry.start + entry.length >= expected:
                    later = True  # the scan's last frame is in this file: nothing follows
                # the writer has moved on (a later file exists) or the scan ended: this file
                # is final once everything it holds has been read
                if complete or ((later or final) and entry.read >= entry.length):
                    if entry.count is None:
                        entry.count = entry.length
                    elif entry.read < entry.count and (later or final):
                        self._problem(
                            f"data file {path.name}: holds {entry.length} of its "
                            f"{entry.count} frames (image_nr_low..image_nr_high); the rest "
                            "are missing"
                        )
                        entry.read = entry.count
                        self._advance(entry)
                    entry.done = True
                    entry.failing_since = None
                return progressed
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            return self._failed(entry, exc, final=final, later=later, now=now)

    def _failed(
        self, entry: _DataFile, exc: BaseException, *, final: bool, later: bool, now: float
    ) -> bool:
        """A look at a data file failed: wait while it changes, skip it once it settled."""
        path = entry.path
        try:
            st = path.stat()
            signature: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
        except OSError:
            signature = None
        if signature != entry.signature or entry.failing_since is None:
            entry.signature = signature
            entry.failing_since = now
        entry.error = str(exc) or type(exc).__name__
        settled = now - entry.failing_since >= self.options.settle_s
        if final or (later and settled):
            what = "missing" if signature is None else "unreadable (truncated or half-written?)"
            self._skip(entry, f"{what}: {entry.error}")
            return True
        return False

    def _skip(self, entry: _DataFile, why: str, count: int | None = None) -> None:
        """Report a data file as bad and account for its frames without using them."""
        if count is None:
            count = entry.count
        if count is None:
            count = self._typical_count()
        unread = max(0, count - entry.read)
        kept = f"; {entry.read} of its frames were used" if entry.read else ""
        self._problem(
            f"data file {entry.path.name}: {why}; its {unread} frame(s) skipped{kept} "
            f"(the good frames of the other files are used)"
        )
        entry.bad = True
        entry.done = True
        entry.count = max(count, entry.read)
        entry.read = entry.count
        self._advance(entry)

    def _typical_count(self) -> int:
        """Frames per file, from the files already finished (to keep later files' indices)."""
        counts = [e.count for e in self._files.values() if e.done and not e.bad and e.count]
        return max(counts) if counts else 0

    def _advance(self, entry: _DataFile) -> None:
        assert entry.start is not None
        self._next_index = max(self._next_index, entry.start + entry.read)

    def _max_read(self) -> int:
        return int(self.options.frames_per_read)

    def _emit(self, entry: _DataFile, block: np.ndarray, batches: list[FrameBatch]) -> None:
        assert entry.start is not None
        first = entry.start + entry.read
        n = int(block.shape[0])
        indices = np.arange(first, first + n)
        readbacks = self._positions[first : first + n]
        entry.read += n
        self._advance(entry)
        good = np.all(np.isfinite(readbacks), axis=1)
        if not good.all():  # bad position lines were reported when read
            indices, block, readbacks = indices[good], block[good], readbacks[good]
        if indices.size:
            batches.append(
                FrameBatch(
                    indices=indices,
                    frames=block,
                    readbacks=readbacks.copy(),
                    source=str(entry.path),
                    appeared=entry.seen,
                )
            )
            self._sent += int(indices.size)

    # ------------------------------------------------------------------ the end
    def _finish_accounting(self, reason: str) -> None:
        for path in self._order:
            entry = self._files[path]
            if not entry.done and not path.exists():
                self._problem(f"data file {path.name}: never appeared; its frames are missing")
            elif not entry.done and entry.error:
                self._problem(f"data file {path.name}: unreadable at the end: {entry.error}")
        n_pos = int(self._positions.shape[0])
        total_frames = sum(
            (e.count if e.bad and e.count is not None else e.length) for e in self._files.values()
        )
        mismatch = total_frames != n_pos and (reason != "timeout" or total_frames > 0)
        if total_frames > n_pos:
            self._problem(
                f"{total_frames} frames but {n_pos} positions: the last "
                f"{total_frames - n_pos} frame(s) have no position and were not used"
            )
        elif mismatch:
            self._problem(
                f"{n_pos} positions but {total_frames} frames: the last "
                f"{n_pos - total_frames} position(s) have no frame"
            )
        expected = self.expected
        explained = mismatch and self._next_index >= min(total_frames, n_pos)
        if (
            expected is not None
            and self._next_index < expected
            and reason != "cancelled"
            and not explained
        ):
            self._problem(
                f"scan incomplete: {self._next_index} of {expected} frames read when the follow "
                f"ended ({reason})"
            )

    def _make_report(self, reason: str, uid: str | None) -> FollowReport:
        files_read = sum(1 for e in self._files.values() if e.done and not e.bad)
        return FollowReport(
            directory=str(self.directory.path),
            reason=reason,
            frames_sent=self._sent,
            frames_found=self._found,
            positions_found=int(self._positions.shape[0]),
            expected=self.expected,
            files_read=files_read,
            problems=tuple(self._problems),
            uid=uid,
            message=self._summary(reason),
        )

    def _summary(self, reason: str) -> str:
        expected = self.expected
        of = f" of {expected}" if expected is not None else ""
        why = {
            "complete": "the scan's last frame was read",
            "stop marker": f"stop marker {self.options.stop_marker!r} found",
            "timeout": f"no new data for {self.options.timeout_s:g} s",
            "cancelled": "cancelled",
        }[reason]
        problems = f"; {len(self._problems)} problem(s)" if self._problems else ""
        return f"{self.directory.path}: {self._sent}{of} frames used; ended: {why}{problems}"

    # ------------------------------------------------------------------ documents
    def _compose_start(self) -> Any:
        setup = self._setup
        assert setup is not None
        md: dict[str, Any] = {
            "plan_name": "follow",
            "follow_directory": str(self.directory.path.resolve()),
            START_KEY: setup.to_start_doc(),
        }
        if setup.expected_points is not None:
            md["num_points"] = setup.expected_points
        return event_model.compose_run(metadata=md)

    def _compose_descriptor(self, bundle: Any, batch: FrameBatch) -> Any:
        setup = self._setup
        assert setup is not None
        h, w = batch.frames.shape[1:]
        source = f"file:{self.directory.path}"
        frame_key: dict[str, Any] = {"source": source, "dtype": "array", "shape": [h, w]}
        dt = np.dtype(batch.frames.dtype).str
        if dt[0] in "<>|" and dt[1] in "biuf":
            frame_key["dtype_numpy"] = dt
        ky, kx = setup.position_keys
        pos_key = {"source": source, "dtype": "number", "shape": []}
        return bundle.compose_descriptor(
            name=_STREAM,
            data_keys={setup.detector_key: frame_key, ky: dict(pos_key), kx: dict(pos_key)},
            object_keys={setup.detector_key: [setup.detector_key], ky: [ky], kx: [kx]},
        )

    def _compose_page(self, descriptor: Any, batch: FrameBatch) -> dict[str, Any]:
        setup = self._setup
        assert setup is not None
        ky, kx = setup.position_keys
        key = setup.detector_key
        k = len(batch)
        now = time.time()
        return descriptor.compose_event_page(
            data={
                key: batch.frames,
                ky: batch.readbacks[:, 0].tolist(),
                kx: batch.readbacks[:, 1].tolist(),
            },
            timestamps={key: [now] * k, ky: [now] * k, kx: [now] * k},
            seq_num=(batch.indices + 1).tolist(),
            time=[now] * k,
        )

    # ------------------------------------------------------------------ helpers
    def _progress_signature(self) -> tuple[int, ...]:
        return (
            len(self._order),
            int(self._positions.shape[0]),
            self._sent,
            self._next_index,
            sum(e.length for e in self._files.values()),
            int(self._setup is not None),
        )

    def _problem(self, text: str) -> None:
        logger.warning("follow: %s", text)
        self._problems.append(text)

    def _problem_once(self, text: str) -> None:
        if text not in self._problems:
            self._problem(text)

    def _flush_problems(self, on_problem: Callable[[str], None] | None) -> None:
        while self._reported < len(self._problems):
            text = self._problems[self._reported]
            self._reported += 1
            if on_problem is not None:
                try:
                    on_problem(text)
                except Exception:  # a reporting hook must not end the follow
                    logger.exception("follow: on_problem failed")


# --------------------------------------------------------------------------------------------
# one call
# --------------------------------------------------------------------------------------------


def follow(
    directory: str | os.PathLike[str],
    *,
    setup: ScanSetup | Mapping[str, Any] | None = None,
    options: FollowOptions | None = None,
    live_options: LiveOptions | None = None,
    callback: PtychoCallback | None = None,
    observers: tuple[Callable[[Snapshot], None], ...] = (),
    output: str | os.PathLike[str] | None = None,
    cancel: threading.Event | None = None,
    result_timeout_s: float | None = 600.0,
) -> FollowResult:
    """Reconstruct a scan live from its directory while a detector writes it; blocks.

    Parameters
    ----------
    directory : str or path-like
        The scan directory (see the module docstring for the layouts).
    setup : ScanSetup or mapping, optional
        Geometry and nominal scan; default: the setup file in the directory (and the master
        file's metadata).
    options : FollowOptions, optional
        Timeout, polling, stop marker, file names.
    live_options : LiveOptions, optional
        Reconstruction options (pacing, final passes, ...), when ``callback`` is not given.
    callback : PtychoCallback, optional
        The pipeline to feed; default a new one with ``live_options`` and ``observers``.
    observers : tuple of callables, optional
        Receive every published snapshot (when ``callback`` is not given).
    output : str or path-like, optional
        Write the result (HDF5, :func:`~bluesky_ptycho.io.result.write_result`) to this file.
    cancel : threading.Event, optional
        Set it to end the follow early.
    result_timeout_s : float or None
        How long to wait for the final passes after the last frame.

    Returns
    -------
    FollowResult

    Raises
    ------
    TimeoutError
        If no frame at all could be read before the follow ended (the message says what was
        found: setup, data files, positions, problems).
    ValueError
        If the setup is invalid or missing.
    """
    own = callback is None
    cb = callback or PtychoCallback(options=live_options, observers=list(observers))
    follower = Follower(directory, setup=setup, options=options)

    def note(text: str) -> None:
        live = cb.live
        if live is not None:
            live.record_rejection(f"follow: {text}")

    try:
        report = follower.run(cb, cancel=cancel, on_problem=note)
        if report.uid is None:
            found = (
                f"setup {'found' if follower.setup is not None else 'not found'}, "
                f"{len(follower.data_files)} data file(s), {report.positions_found} position(s)"
            )
            problems = f"; problems: {' | '.join(report.problems)}" if report.problems else ""
            raise TimeoutError(
                f"follow {report.directory}: no frame could be read ({report.reason}; "
                f"{found}){problems}"
            )
        state = cb.result(timeout=result_timeout_s)
        status = cb.status
    finally:
        if own:
            cb.close()
    path = None
    if output is not None:
        assert follower.setup is not None
        path = write_result(
            output,
            state,
            geometry=follower.setup.geometry(),
            metadata={
                "follow_directory": report.directory,
                "run_uid": report.uid,
                "ended": report.reason,
                "frames_used": status.frames_used,
                "problems": list(report.problems),
                "message": report.message,
                START_KEY: follower.setup.to_start_doc(),
            },
            overwrite=True,
        )
    rejected = status.live.rejected if status.live is not None else status.rejected
    return FollowResult(state=state, report=report, result_path=path, rejected=rejected)
