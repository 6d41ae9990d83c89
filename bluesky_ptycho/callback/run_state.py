"""The callback's per-run state and document helpers (internal to :mod:`bluesky_ptycho.callback`).

:class:`Run` holds one run's setup, reconstruction, assets, seen-sets and counters; the rest are
small helpers the document handlers and the frame worker share. See
``docs/explanation/run-integrity.md``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluesky_ptycho.callback.runs import ShapeVote, StreamCount
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.geometry import ObjectFrame
from bluesky_ptycho.io.assets import AssetRegistry
from bluesky_ptycho.io.hdf5 import ReadCause
from bluesky_ptycho.live import LiveReconstruction
from bluesky_ptycho.preprocess import PreprocessConfig
from bluesky_ptycho.setup import ScanSetup

__all__ = [
    "BoundedSet",
    "DocumentRejected",
    "FrameRejected",
    "HeldEvent",
    "Run",
    "cause_key",
    "progress_note",
    "unpack_event_page",
    "where",
]


class FrameRejected(ValueError):
    """A frame fails one of the callback's own checks; ``cause`` groups such frames."""

    def __init__(self, cause: str | ReadCause, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class DocumentRejected(ValueError):
    """A document is refused by a handler; ``cause`` groups such documents."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def cause_key(exc: BaseException) -> str | None:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ReadCause):
        return cause.name
    return cause if isinstance(cause, str) and cause else None


class BoundedSet:
    """A set that forgets its oldest members beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, item: str) -> None:
        self._items[item] = None
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._items


@dataclass
class Run:
    """One run being reconstructed: its setup, reconstruction, assets and counters."""

    uid: str
    setup: ScanSetup
    live: LiveReconstruction
    start_doc: Mapping[str, Any]
    assets: AssetRegistry
    object_frame: ObjectFrame | None = None
    descriptors: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    streams: dict[str, StreamCount] = field(default_factory=dict)
    detector_shape: tuple[int, ...] | None = None
    shape_vote: ShapeVote = field(default_factory=ShapeVote)
    preprocess: PreprocessConfig | None = None
    event_uids: set[str] = field(default_factory=set)
    event_seqs: set[tuple[str, int]] = field(default_factory=set)
    doc_uids: set[str] = field(default_factory=set)  # descriptors, resources, datums...
    keys_seen: set[str] = field(default_factory=set)  # data keys of all its descriptors
    key_reported: bool = False
    frames_received: int = 0
    frames_used: int = 0
    frames_queued: int = 0
    frames_processed: int = 0
    rejected: int = 0
    recovered: int = 0
    duplicates: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    stopped: bool = False
    missing_stop: bool = False
    exit_status: str | None = None
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: ReconstructionState | None = None
    result_path: Path | None = None
    message: str = ""

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())

    @property
    def key_seen(self) -> bool:
        return self.setup.detector_key in self.keys_seen

    def key_note(self) -> str:
        return (
            f"detector_key {self.setup.detector_key!r} is in no descriptor of run "
            f"{self.uid[:8]}; data keys seen: {sorted(self.keys_seen)}"
        )


@dataclass
class HeldEvent:
    """An event that arrived before its descriptor."""

    since: float
    doc: Mapping[str, Any]


def unpack_event_page(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The events of an event_page; ``DocumentRejected`` if its columns do not line up."""
    try:
        uids = list(doc["uid"])
        seqs = list(doc["seq_num"])
        times = list(doc["time"])
        data = {k: list(v) for k, v in dict(doc["data"]).items()}
        stamps = {k: list(v) for k, v in dict(doc.get("timestamps") or {}).items()}
        filled = {k: list(v) for k, v in dict(doc.get("filled") or {}).items()}
        desc = doc["descriptor"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DocumentRejected(
            "BAD_EVENT_PAGE", f"malformed event_page ({type(exc).__name__}: {exc})"
        ) from None
    n = len(uids)
    columns = [seqs, times, *data.values(), *stamps.values(), *filled.values()]
    if any(len(c) != n for c in columns):
        raise DocumentRejected(
            "BAD_EVENT_PAGE", f"malformed event_page: its columns are not all {n} rows long"
        )
    for i in range(n):
        yield {
            "descriptor": desc,
            "uid": uids[i],
            "seq_num": seqs[i],
            "time": times[i],
            "data": {k: v[i] for k, v in data.items()},
            "timestamps": {k: v[i] for k, v in stamps.items()},
            "filled": {k: v[i] for k, v in filled.items()},
        }


def progress_note(run: Run, pending: int) -> str:
    """What is still going on for a run: frames in the queue, the final passes, or done."""
    if pending > 0:
        return f"; {pending} frame(s) still being processed"
    if run.done.is_set():
        return "; finished"
    if not run.closed:
        return ""  # the run is open: more frames are coming
    return "; final passes running"


def where(name: str, doc: Any) -> str:
    """Name, uid and seq_num of a document, for messages."""
    if not isinstance(doc, Mapping):
        return f"{name} (not a dict: {type(doc).__name__})"
    uid = doc.get("uid") or doc.get("datum_id") or "?"
    seq = doc.get("seq_num")
    return f"{name} {uid}" + (f" seq_num {seq}" if seq is not None else "")
