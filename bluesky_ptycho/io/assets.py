"""Frames stored outside events: resource/datum (ophyd v1) and stream_resource/stream_datum
(ophyd-async), resolved to arrays.

Documents are kept as plain dicts; nothing here imports bluesky or event-model. Reading happens
only in :meth:`AssetRegistry.read`, which callers run on a background thread: the document
handlers themselves (``add_*``, ``locate_*``) only store and look up small dicts.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from bluesky_ptycho.io.hdf5 import (
    FrameReadError,
    ReadCause,
    get_dataset,
    load_filter_plugins,
    opened,
    read_frame,
)

__all__ = [
    "AssetError",
    "AssetRegistry",
    "DatumLocator",
    "FrameReadError",
    "StreamLocator",
    "default_handlers",
]


_FLUSH_RETRIES = 20
_FLUSH_WAIT_S = 0.05


class AssetError(ValueError):
    """A frame stored outside the event cannot be found or read; the message says why.

    Parameters
    ----------
    message : str
        What is wrong, and where.
    cause : str, optional
        A short key shared by errors of the same kind (``"NO_STREAM_DATUM"``, ...), so that
        callers can count them instead of repeating the message.
    """

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def default_handlers() -> dict[str, Callable[..., Any]]:
    """Handlers for the specs area detectors write (from ``area-detector-handlers``)."""
    handlers: dict[str, Callable[..., Any]] = {}
    try:
        from area_detector_handlers.handlers import AreaDetectorHDF5Handler
    except ImportError:  # pragma: no cover - part of the bluesky extra
        return handlers
    handlers["AD_HDF5"] = AreaDetectorHDF5Handler
    try:
        from area_detector_handlers.handlers import AreaDetectorHDF5SWMRHandler

        handlers["AD_HDF5_SWMR"] = AreaDetectorHDF5SWMRHandler
    except ImportError:  # pragma: no cover
        pass
    return handlers


@dataclass(frozen=True)
class DatumLocator:
    """Where an ophyd v1 datum's frame lives: handler spec, file, and the datum's kwargs."""

    datum_id: str
    spec: str
    path: str
    resource_kwargs: Mapping[str, Any]
    datum_kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class StreamLocator:
    """Where an ophyd-async stream frame lives: an HDF5 file, dataset and index."""

    path: str
    dataset: str
    index: int
    mimetype: str


class AssetRegistry:
    """Resources, datums, stream resources and stream datums of the runs being received.

    Parameters
    ----------
    handlers : mapping of spec to handler class, optional
        Handler classes in the databroker/event-model convention:
        ``handler = cls(path, **resource_kwargs); frame = handler(**datum_kwargs)``.
        Defaults to :func:`default_handlers`; extend it for other detectors.
    root_map : mapping, optional
        Replace a resource's ``root`` (e.g. a beamline mount seen elsewhere).
    """

    def __init__(
        self,
        handlers: Mapping[str, Callable[..., Any]] | None = None,
        root_map: Mapping[str, str] | None = None,
    ) -> None:
        self.handlers: dict[str, Callable[..., Any]] = dict(
            default_handlers() if handlers is None else handlers
        )
        self.root_map = dict(root_map or {})
        self._resources: dict[str, Mapping[str, Any]] = {}
        self._datums: dict[str, Mapping[str, Any]] = {}
        self._stream_resources: dict[str, Mapping[str, Any]] = {}
        # (descriptor uid, data key) -> list of (seq_start, seq_stop, resource uid, index_start)
        self._stream_index: dict[tuple[str, str], list[tuple[int, int, str, int]]] = {}
        self._stalled: set[str] = set()  # files that stopped growing with frames missing

    def clear(self) -> None:
        """Forget everything (a new run starts)."""
        self._stalled.clear()
        self._resources.clear()
        self._datums.clear()
        self._stream_resources.clear()
        self._stream_index.clear()

    # ----------------------------------------------------------------- documents in
    def add_resource(self, doc: Mapping[str, Any]) -> None:
        for key in ("uid", "spec", "resource_path"):
            if key not in doc:
                raise AssetError(f"resource document lacks {key!r}")
        self._resources[doc["uid"]] = doc

    def add_datum(self, doc: Mapping[str, Any]) -> None:
        for key in ("datum_id", "resource"):
            if key not in doc:
                raise AssetError(f"datum document lacks {key!r}")
        if doc["resource"] not in self._resources:
            raise AssetError(
                f"datum {doc['datum_id']!r} refers to unknown resource {doc['resource']!r}"
            )
        self._datums[doc["datum_id"]] = doc

    def add_stream_resource(self, doc: Mapping[str, Any]) -> None:
        for key in ("uid", "uri", "data_key"):
            if key not in doc:
                raise AssetError(f"stream_resource document lacks {key!r}")
        self._stream_resources[doc["uid"]] = doc

    def add_stream_datum(self, doc: Mapping[str, Any]) -> None:
        for name in ("stream_resource", "descriptor", "indices", "seq_nums"):
            if name not in doc:
                raise AssetError(f"stream_datum document lacks {name!r}")
        resource = self._stream_resources.get(doc["stream_resource"])
        if resource is None:
            raise AssetError(
                f"stream_datum {doc.get('uid')!r} refers to unknown stream_resource "
                f"{doc['stream_resource']!r}"
            )
        seq, idx = doc["seq_nums"], doc["indices"]
        entry = (int(seq["start"]), int(seq["stop"]), resource["uid"], int(idx["start"]))
        key = (doc["descriptor"], resource["data_key"])
        self._stream_index.setdefault(key, []).append(entry)

    # ----------------------------------------------------------------- look-ups (cheap)
    def locate_datum(self, datum_id: str) -> DatumLocator:
        """Where a datum's frame lives; :class:`AssetError` if the datum or spec is unknown."""
        datum = self._datums.get(datum_id)
        if datum is None:
            raise AssetError(
                f"unknown datum {datum_id!r} (no datum document received)", cause="UNKNOWN_DATUM"
            )
        resource = self._resources[datum["resource"]]
        spec = resource["spec"]
        if spec not in self.handlers and spec not in _AREA_DETECTOR_SPECS:
            raise AssetError(
                f"no handler for spec {spec!r} (resource {resource['uid']!r}); "
                f"known specs: {sorted({*self.handlers, *_AREA_DETECTOR_SPECS})}",
                cause="NO_HANDLER",
            )
        root = resource.get("root", "") or ""
        root = self.root_map.get(root, root)
        path = os.path.join(root, resource["resource_path"])
        return DatumLocator(
            datum_id=datum_id,
            spec=spec,
            path=path,
            resource_kwargs=dict(resource.get("resource_kwargs", {})),
            datum_kwargs=dict(datum.get("datum_kwargs", {})),
        )

    def locate_stream(self, descriptor: str, data_key: str, seq_num: int) -> StreamLocator:
        """Where the frame of event ``seq_num`` lives; needs its stream_datum first."""
        for seq_start, seq_stop, res_uid, index_start in self._stream_index.get(
            (descriptor, data_key), ()
        ):
            if seq_start <= seq_num < seq_stop:
                resource = self._stream_resources[res_uid]
                params = resource.get("parameters", {}) or {}
                return StreamLocator(
                    path=_path_from_uri(resource["uri"]),
                    dataset=str(params.get("dataset", "/entry/data/data")),
                    index=index_start + (seq_num - seq_start),
                    mimetype=str(resource.get("mimetype", "application/x-hdf5")),
                )
        raise AssetError(
            f"no stream_datum covers seq_num {seq_num} of {data_key!r} (descriptor {descriptor!r})",
            cause="NO_STREAM_DATUM",
        )

    # ----------------------------------------------------------------- reading (background)
    def read(self, locator: DatumLocator | StreamLocator) -> np.ndarray:
        """Read the frame a locator names.

        HDF5 files are opened with the compression filter plugins registered
        (:mod:`bluesky_ptycho.io.hdf5`). Area-detector files (specs ``AD_HDF5`` and
        ``AD_HDF5_SWMR`` with the default handlers) are read directly; other specs go through
        their handler.

        Raises
        ------
        FrameReadError
            An HDF5 file or frame cannot be read; its ``cause`` names the problem and the fix.
        AssetError
            Anything else (an unsupported mimetype, a handler's own error).
        """
        if isinstance(locator, StreamLocator):
            path = locator.path
            read = functools.partial(_read_stream, locator)
        elif self._native(locator.spec):
            path = locator.path
            read = functools.partial(_read_area_detector, locator)
        else:
            return self._read_with_handler(locator)
        # A file that stopped growing while frames were still missing (a half-written file,
        # a writer that stopped early) is not waited for again on every later frame.
        attempts = 1 if path in self._stalled else _FLUSH_RETRIES
        try:
            frame = _retrying(read, attempts)
        except FrameReadError as exc:
            if exc.cause is ReadCause.BEING_WRITTEN:
                self._stalled.add(path)
            raise
        self._stalled.discard(path)
        return frame

    def _native(self, spec: str) -> bool:
        """Whether frames of ``spec`` are read here rather than by a handler class."""
        if spec not in _AREA_DETECTOR_SPECS:
            return False
        handler = self.handlers.get(spec)
        return handler is None or getattr(handler, "__module__", "").startswith(
            "area_detector_handlers"
        )

    def _read_with_handler(self, locator: DatumLocator) -> np.ndarray:
        handler_cls = self.handlers[locator.spec]
        load_filter_plugins()  # handlers open HDF5 files themselves
        if not os.path.exists(locator.path):
            raise FrameReadError(
                ReadCause.FILE_MISSING,
                locator.path,
                f"file {locator.path!r} of datum {locator.datum_id!r} not found",
            )
        for attempt in range(_FLUSH_RETRIES):
            # a file still being written (or resized on unstage) can fail a read for a moment
            try:
                handler = handler_cls(locator.path, **locator.resource_kwargs)
                try:  # handlers may return lazy (dask) arrays: read before closing
                    return np.asarray(handler(**locator.datum_kwargs))
                finally:
                    close = getattr(handler, "close", None)
                    if callable(close):
                        close()
            except Exception as exc:
                if attempt == _FLUSH_RETRIES - 1:
                    raise AssetError(
                        f"reading datum {locator.datum_id!r} from {locator.path!r} with the "
                        f"{locator.spec!r} handler failed: {exc}"
                    ) from exc
                time.sleep(_FLUSH_WAIT_S)
        raise AssertionError("unreachable")  # pragma: no cover


#: Area-detector specs whose frames this module reads itself: the dataset, frames per point.
_AREA_DETECTOR_SPECS = {"AD_HDF5": "/entry/data/data", "AD_HDF5_SWMR": "/entry/data/data"}


def _path_from_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise AssetError(f"unsupported stream_resource uri scheme {parsed.scheme!r} in {uri!r}")
    return unquote(parsed.path) if parsed.scheme else uri


def _retrying(read: Callable[[], np.ndarray], attempts: int) -> np.ndarray:
    """Run ``read``; retry for a moment while the cause is transient (file being written)."""
    for attempt in range(attempts):
        try:
            return read()
        except FrameReadError as exc:
            if not exc.cause.transient or attempt == attempts - 1:
                raise
            time.sleep(_FLUSH_WAIT_S)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_area_detector(loc: DatumLocator) -> np.ndarray:
    """``dataset[point * fpp:(point + 1) * fpp]`` of an area-detector HDF5 file."""
    dataset = _AREA_DETECTOR_SPECS[loc.spec]
    try:
        fpp = int(loc.resource_kwargs.get("frame_per_point", 1))
        point = int(loc.datum_kwargs["point_number"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AssetError(
            f"datum {loc.datum_id!r}: {loc.spec} needs an integer datum_kwargs['point_number'] "
            f"and resource_kwargs['frame_per_point'] ({exc!r})"
        ) from None
    if fpp < 1 or point < 0:
        raise AssetError(
            f"datum {loc.datum_id!r}: point_number {point} and frame_per_point {fpp} must be "
            ">= 0 and >= 1"
        )

    with opened(loc.path) as f:
        ds = get_dataset(f, dataset)
        last = (point + 1) * fpp - 1
        if last >= ds.shape[0]:
            read_frame(ds, last, retries=0)  # raises BEING_WRITTEN, naming the frame
        return read_frame(ds, slice(point * fpp, (point + 1) * fpp))


def _read_stream(loc: StreamLocator) -> np.ndarray:
    if loc.mimetype not in ("application/x-hdf5", "application/x-hdf5; swmr"):
        raise AssetError(f"unsupported stream_resource mimetype {loc.mimetype!r}")

    with opened(loc.path) as f:
        return read_frame(get_dataset(f, loc.dataset), loc.index, retries=0)
