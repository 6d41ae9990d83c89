"""Crash-recovery checkpoints of open runs: plain files, no Tango, no Bluesky.

A checkpoint of one open run lives in its own directory, ``DIRECTORY/<run uid>/``:

``run.json``
    The start document, the descriptors seen so far (in order) and the frame count when it
    was written; replaced atomically (temporary file, ``fsync``, :func:`os.replace`) when a
    descriptor or the stop document arrives.
``patterns.bin``
    Append-only store of the (already preprocessed) patterns: one record per pattern, written
    and flushed as it arrives (cost O(frame) per frame). Each record carries its length and a
    CRC-32, so a record torn by a crash (a ``kill -9`` while writing) is recognised and
    dropped; every complete record before it is kept.
``state.npz``
    The latest object, probe and iteration, and the number of records it had seen; replaced
    atomically every ``period`` seconds (see :class:`CheckpointWriter`).

A process killed at any instant leaves either the old or the new ``run.json`` / ``state.npz``
(a left-over ``*.tmp`` is ignored) and a pattern store whose complete records are all good.
:func:`read_checkpoints` reads back every open run; :meth:`CheckpointWriter.remove` deletes a
run's checkpoint once the run is finished and saved.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bluesky_ptycho.live.record import PatternRecord

__all__ = [
    "FAILED_SUFFIX",
    "Checkpoint",
    "CheckpointWriter",
    "PatternLike",
    "SavedPattern",
    "read_checkpoint",
    "read_checkpoints",
]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
PATTERN_FILE = "patterns.bin"
STATE_FILE = "state.npz"
FORMAT = 1
FAILED_SUFFIX = ".failed"
"""A run directory renamed with this suffix could not be resumed; readers skip it."""

_MAGIC = b"PTRC"
# magic, CRC-32 of the payload, payload length
_RECORD_HEAD = struct.Struct("<4sIQ")
# descriptor index, seq_num (-1: none), submit index, row, col, rows, cols, has mask
_PAYLOAD_HEAD = struct.Struct("<iqqddIIB")
_MAX_RECORD = 1 << 31  # a length beyond this is a torn or foreign record, not a frame


PatternLike = PatternRecord
"""What :meth:`CheckpointWriter.append` takes: the callback's ``on_pattern`` record."""

SavedPattern = PatternRecord
"""A pattern read back from a checkpoint: the record that was appended."""


@dataclass(frozen=True)
class Checkpoint:
    """Everything a checkpoint holds about one open run.

    Attributes
    ----------
    run_uid : str
        The run's start uid.
    directory : Path
        The run's checkpoint directory.
    start : dict
        The start document.
    descriptors : tuple of dict
        Its descriptors, in the order they arrived.
    patterns : tuple of SavedPattern
        Every complete pattern record, in the order written.
    object : ndarray or None
        The object of the latest state written (None before the first).
    probe : ndarray or None
        The probe of the latest state written.
    iteration : int
        Completed passes of that state.
    state_patterns : int
        Patterns the store held when that state was written (a lower bound of
        ``len(patterns)``, unless the pattern store itself was damaged).
    stop : dict or None
        The stop document, when it had arrived (the run stopped but was not saved yet).
    torn_bytes : int
        Bytes at the end of the pattern store that did not form a complete, intact record
        (a write interrupted by the crash); dropped.
    """

    run_uid: str
    directory: Path
    start: dict[str, Any]
    descriptors: tuple[dict[str, Any], ...]
    patterns: tuple[SavedPattern, ...]
    object: np.ndarray | None
    probe: np.ndarray | None
    iteration: int
    state_patterns: int
    stop: dict[str, Any] | None
    torn_bytes: int

    def summary(self) -> str:
        """One line: run, patterns restored, state, torn tail."""
        state = (
            f"object and probe of iteration {self.iteration}"
            if self.object is not None
            else "no object/probe yet"
        )
        torn = f", {self.torn_bytes} torn byte(s) dropped" if self.torn_bytes else ""
        stopped = ", stop document received" if self.stop is not None else ""
        return (
            f"checkpoint of run {self.run_uid}: {len(self.patterns)} pattern(s), {state}"
            f"{torn}{stopped}"
        )


# ------------------------------------------------------------------------------ helpers
def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _atomic_write(path: Path, write: Any) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync it, then replace ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _safe_name(run_uid: str) -> str:
    """A directory name for a run uid (uids are not trusted to be file names)."""
    text = str(run_uid)
    if text and all(c.isalnum() or c in "-_" for c in text) and len(text) <= 128:
        return text
    return "uid-" + format(zlib.crc32(text.encode("utf-8", "replace")), "08x")


def _checksum(parts: Sequence[Any]) -> int:
    """CRC-32 over the parts in order: recognises a torn or damaged record."""
    value = 0
    for part in parts:
        value = zlib.crc32(part, value)
    return value


def _encode(desc_index: int, record: PatternLike) -> list[Any]:
    """The record's buffers in file order (head first); no copy of the frame is made."""
    frame = np.ascontiguousarray(record.intensities, dtype=np.float32)
    if frame.ndim != 2:
        raise ValueError(f"pattern has shape {frame.shape}, expected (N, N)")
    mask = record.mask
    has_mask = mask is not None
    pos = np.asarray(record.positions_px, dtype=np.float64).reshape(-1)
    if pos.size != 2:
        raise ValueError(f"positions_px has {pos.size} values, expected 2")
    seq = record.seq_num
    head = _PAYLOAD_HEAD.pack(
        int(desc_index),
        -1 if seq is None else int(seq),
        int(record.index),
        float(pos[0]),
        float(pos[1]),
        frame.shape[0],
        frame.shape[1],
        1 if has_mask else 0,
    )
    parts: list[Any] = [head, frame.data.cast("B")]
    if has_mask:
        m = np.asarray(mask, dtype=bool)
        if m.shape != frame.shape:
            raise ValueError(f"mask has shape {m.shape}, the pattern {frame.shape}")
        parts.append(np.packbits(m, axis=None).tobytes())
    length = sum(len(part) for part in parts)
    return [_RECORD_HEAD.pack(_MAGIC, _checksum(parts), length), *parts]


def _decode(payload: bytes, run_uid: str, descriptors: Sequence[str]) -> SavedPattern | None:
    desc, seq, index, row, col, rows, cols, has_mask = _PAYLOAD_HEAD.unpack_from(payload)
    n = rows * cols
    need = _PAYLOAD_HEAD.size + 4 * n + ((n + 7) // 8 if has_mask else 0)
    if need != len(payload) or not 0 <= desc < len(descriptors):
        return None
    off = _PAYLOAD_HEAD.size
    frame = np.frombuffer(payload, dtype=np.float32, count=n, offset=off).reshape(rows, cols)
    mask = None
    if has_mask:
        packed = np.frombuffer(payload, dtype=np.uint8, offset=off + 4 * n)
        mask = np.unpackbits(packed, count=n).reshape(rows, cols).astype(bool)
    return SavedPattern(
        run_uid=run_uid,
        descriptor=descriptors[desc],
        seq_num=None if seq < 0 else int(seq),
        index=int(index),
        intensities=frame.copy(),
        mask=mask,
        positions_px=np.array([row, col], dtype=np.float64),
    )


def _payloads(f: BinaryIO) -> Iterator[bytes]:
    """The payloads of the complete, intact records from the start of a pattern store."""
    size = os.fstat(f.fileno()).st_size
    good = 0
    while True:
        head = f.read(_RECORD_HEAD.size)
        if len(head) < _RECORD_HEAD.size:
            return
        magic, crc, length = _RECORD_HEAD.unpack(head)
        if magic != _MAGIC or length > _MAX_RECORD or length > size - good - len(head):
            return
        payload = f.read(length)
        if len(payload) < length or _checksum([payload]) != crc:
            return
        good += _RECORD_HEAD.size + length
        yield payload


def _read_records(
    path: Path, run_uid: str, descriptors: Sequence[str]
) -> tuple[list[SavedPattern], int]:
    """Every complete, intact record of a pattern store, and the bytes after the last one."""
    patterns: list[SavedPattern] = []
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return patterns, 0
    with f:
        size = os.fstat(f.fileno()).st_size
        good = 0
        for payload in _payloads(f):
            pattern = _decode(payload, run_uid, descriptors)
            if pattern is None:
                break
            patterns.append(pattern)
            good += _RECORD_HEAD.size + len(payload)
    return patterns, size - good


def _intact(path: Path) -> tuple[int, int, set[tuple[int, int]]]:
    """Records and bytes of the intact head of a pattern store, and their (descriptor index,
    seq_num) keys ((0, 0, empty) when missing)."""
    keys: set[tuple[int, int]] = set()
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return 0, 0, keys
    with f:
        count = good = 0
        for payload in _payloads(f):
            count += 1
            good += _RECORD_HEAD.size + len(payload)
            desc, seq = struct.unpack_from("<iq", payload)
            if seq >= 0:
                keys.add((desc, seq))
    return count, good, keys


# ------------------------------------------------------------------------------ writing
class CheckpointWriter:
    """The checkpoint of one open run, written as the run goes on.

    Parameters
    ----------
    directory : str or Path
        The checkpoint directory (``CheckpointDirectory``); the run's files go into a
        sub-directory named after its uid.
    run_uid : str
        The run's start uid.
    start : mapping
        The start document.
    descriptors : sequence of mappings
        The descriptors known so far (more with :meth:`add_descriptor`).

    Notes
    -----
    Thread-safe: :meth:`append` is called on the callback's worker thread, :meth:`write_state`
    on a timer thread. Appending costs one record write and a flush (the record is then in the
    operating system's page cache and survives the death of the process); :meth:`write_state`
    also ``fsync``\\ s the pattern store, so a state file never counts records that a power cut
    could lose.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        run_uid: str,
        start: Mapping[str, Any],
        descriptors: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.run_uid = str(run_uid)
        self.directory = Path(directory) / _safe_name(self.run_uid)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._start = dict(start)
        self._descriptors: list[dict[str, Any]] = []
        self._desc_index: dict[str, int] = {}
        self._stop: dict[str, Any] | None = None
        self._count = 0
        self._bytes = 0
        self._keys: set[tuple[int, int]] = set()
        self._closed = False
        for doc in descriptors:
            self._add_descriptor_locked(doc)
        self._write_run_locked()
        store = self.directory / PATTERN_FILE
        # a resumed run appends after its intact records; a torn tail is cut off first
        self._count, self._bytes, self._keys = _intact(store)
        self._file: BinaryIO = store.open("ab")
        if self._file.tell() != self._bytes:
            self._file.truncate(self._bytes)
            self._file.seek(self._bytes)

    @property
    def patterns(self) -> int:
        """Patterns in the store (those of an earlier process included)."""
        return self._count

    @property
    def bytes_written(self) -> int:
        """Size of the pattern store."""
        return self._bytes

    def _add_descriptor_locked(self, doc: Mapping[str, Any]) -> bool:
        uid = str(doc.get("uid", ""))
        if uid in self._desc_index:
            return False
        self._desc_index[uid] = len(self._descriptors)
        self._descriptors.append(dict(doc))
        return True

    def _write_run_locked(self) -> None:
        content = {
            "format": FORMAT,
            "run_uid": self.run_uid,
            "start": self._start,
            "descriptors": self._descriptors,
            "stop": self._stop,
        }
        data = json.dumps(content, default=_json_default).encode()
        _atomic_write(self.directory / RUN_FILE, lambda f: f.write(data))

    def add_descriptor(self, doc: Mapping[str, Any]) -> None:
        """Record a descriptor of the run (``run.json`` is rewritten when it is new)."""
        with self._lock:
            if not self._closed and self._add_descriptor_locked(doc):
                self._write_run_locked()

    def mark_stopped(self, doc: Mapping[str, Any]) -> None:
        """Record the stop document: the run ended but is not saved yet."""
        with self._lock:
            if not self._closed:
                self._stop = dict(doc)
                self._write_run_locked()

    def append(self, record: PatternLike) -> bool:
        """Append one pattern to the store and flush it.

        Returns
        -------
        bool
            False when the store already holds a pattern of the same descriptor and
            ``seq_num`` (a restored pattern handed over again): it is not written twice.

        Raises
        ------
        ValueError
            If the pattern is not 2-D, its mask or position has the wrong shape.
        """
        with self._lock:
            if self._closed:
                return False
            desc = str(record.descriptor)
            if desc not in self._desc_index:  # a descriptor the device did not hand over
                self._add_descriptor_locked({"uid": desc, "run_start": self.run_uid})
                self._write_run_locked()
            index = self._desc_index[desc]
            key = None if record.seq_num is None else (index, int(record.seq_num))
            if key is not None and key in self._keys:
                return False
            parts = _encode(index, record)
            for part in parts:
                self._file.write(part)
            self._file.flush()
            self._count += 1
            self._bytes += sum(len(part) for part in parts)
            if key is not None:
                self._keys.add(key)
            return True

    def write_state(self, object_: Any, probe: Any, iteration: int = 0) -> None:
        """Replace the state file (object, probe, iteration, pattern count) atomically."""
        obj = np.asarray(object_, dtype=np.complex64)
        prb = np.asarray(probe, dtype=np.complex64)
        with self._lock:
            if self._closed:
                return
            os.fsync(self._file.fileno())
            count = self._count
            nbytes = self._bytes

        def write(f: BinaryIO) -> None:
            np.savez(
                f,
                object=obj,
                probe=prb,
                iteration=np.int64(iteration),
                patterns=np.int64(count),
                pattern_bytes=np.int64(nbytes),
            )

        _atomic_write(self.directory / STATE_FILE, write)

    def close(self) -> None:
        """Close the pattern store (the checkpoint stays on disk)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()

    def remove(self) -> None:
        """Close and delete the run's checkpoint (the run is finished and saved)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


# ------------------------------------------------------------------------------ reading
def read_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint:
    """Read one run's checkpoint directory.

    Parameters
    ----------
    directory : str or Path
        ``CHECKPOINT_DIRECTORY/<run uid>``.

    Returns
    -------
    Checkpoint
        Every complete pattern record (a torn tail is dropped and counted in ``torn_bytes``)
        and the latest complete state.

    Raises
    ------
    ValueError
        If ``run.json`` is missing or unreadable (no run can be resumed from it).
    """
    root = Path(directory)
    try:
        meta = json.loads((root / RUN_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root}: no readable {RUN_FILE} ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("start"), dict):
        raise ValueError(f"{root}: {RUN_FILE} has no start document")
    run_uid = str(meta.get("run_uid") or meta["start"].get("uid", ""))
    descriptors = tuple(d for d in meta.get("descriptors") or () if isinstance(d, dict))
    uids = [str(d.get("uid", "")) for d in descriptors]
    patterns, torn = _read_records(root / PATTERN_FILE, run_uid, uids)
    obj = probe = None
    iteration = 0
    state_patterns = 0
    try:
        with np.load(root / STATE_FILE, allow_pickle=False) as z:
            obj = np.array(z["object"])
            probe = np.array(z["probe"])
            iteration = int(z["iteration"])
            state_patterns = int(z["patterns"])
    except FileNotFoundError:
        pass
    except Exception as exc:  # os.replace makes this unlikely; never fail the recovery on it
        logger.warning("%s: state file unreadable, patterns only (%s)", root, exc)
        obj = probe = None
    if obj is None or probe is None or obj.ndim != 2 or probe.ndim != 2:
        obj = probe = None
    elif not (np.isfinite(obj).all() and np.isfinite(probe).all()):
        obj = probe = None
    if state_patterns > len(patterns):
        logger.warning(
            "%s: the state counted %d patterns, the store holds %d intact ones",
            root,
            state_patterns,
            len(patterns),
        )
    stop = meta.get("stop")
    return Checkpoint(
        run_uid=run_uid,
        directory=root,
        start=meta["start"],
        descriptors=descriptors,
        patterns=tuple(patterns),
        object=obj,
        probe=probe,
        iteration=max(0, iteration),
        state_patterns=state_patterns,
        stop=stop if isinstance(stop, dict) else None,
        torn_bytes=torn,
    )


def read_checkpoints(directory: str | os.PathLike[str]) -> tuple[list[Checkpoint], list[str]]:
    """Read every run checkpoint in ``directory``.

    Parameters
    ----------
    directory : str or Path
        The checkpoint directory (``CheckpointDirectory``); missing = none.

    Returns
    -------
    (list of Checkpoint, list of str)
        The readable checkpoints, oldest first, and one sentence per directory that could not
        be read (it is left alone).
    """
    root = Path(directory)
    if not root.is_dir():
        return [], []
    found: list[tuple[float, Checkpoint]] = []
    problems: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name.endswith(FAILED_SUFFIX):
            continue
        try:
            cp = read_checkpoint(sub)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        found.append(((sub / RUN_FILE).stat().st_mtime, cp))
    found.sort(key=lambda item: item[0])
    return [cp for _, cp in found], problems
