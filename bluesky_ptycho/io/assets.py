"""Frames stored outside events: resource/datum (ophyd v1) and stream_resource/stream_datum
(ophyd-async), resolved to arrays.

Documents are kept as plain dicts; nothing here imports bluesky or event-model. Reading happens
only in :meth:`AssetRegistry.read`, which callers run on a background thread: the document
handlers themselves (``add_*``, ``locate_*``) only store and look up small dicts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

__all__ = ["AssetError", "AssetRegistry", "DatumLocator", "StreamLocator", "default_handlers"]


_FLUSH_RETRIES = 20
_FLUSH_WAIT_S = 0.05


class AssetError(ValueError):
    """A frame stored outside the event cannot be found or read; the message says why."""


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

    def clear(self) -> None:
        """Forget everything (a new run starts)."""
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
        for key in ("stream_resource", "descriptor", "indices", "seq_nums"):
            if key not in doc:
                raise AssetError(f"stream_datum document lacks {key!r}")
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
            raise AssetError(f"unknown datum {datum_id!r} (no datum document received)")
        resource = self._resources[datum["resource"]]
        spec = resource["spec"]
        if spec not in self.handlers:
            raise AssetError(
                f"no handler for spec {spec!r} (resource {resource['uid']!r}); "
                f"known specs: {sorted(self.handlers)}"
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
            f"no stream_datum covers seq_num {seq_num} of {data_key!r} (descriptor {descriptor!r})"
        )

    # ----------------------------------------------------------------- reading (background)
    def read(self, locator: DatumLocator | StreamLocator) -> np.ndarray:
        """Read the frame a locator names; :class:`AssetError` says what failed."""
        if isinstance(locator, StreamLocator):
            return _read_stream(locator)
        handler_cls = self.handlers[locator.spec]
        if not os.path.exists(locator.path):
            raise AssetError(f"file {locator.path!r} of datum {locator.datum_id!r} not found")
        for attempt in range(_FLUSH_RETRIES):
            # a file still being written (or resized on unstage) can fail a read for a moment
            try:
                handler = handler_cls(locator.path, **locator.resource_kwargs)
                try:  # handlers may return lazy (dask) arrays: read before closing
                    frame = np.asarray(handler(**locator.datum_kwargs))
                finally:
                    close = getattr(handler, "close", None)
                    if callable(close):
                        close()
                break
            except Exception as exc:
                if attempt == _FLUSH_RETRIES - 1:
                    raise AssetError(
                        f"reading datum {locator.datum_id!r} from {locator.path!r} failed: {exc}"
                    ) from exc
                time.sleep(_FLUSH_WAIT_S)
        return np.asarray(frame)


def _path_from_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise AssetError(f"unsupported stream_resource uri scheme {parsed.scheme!r} in {uri!r}")
    return unquote(parsed.path) if parsed.scheme else uri


def _open_for_reading(h5py: Any, path: str) -> Any:
    """Open an HDF5 file that a writer may still hold open (in this process or another).

    SWMR first (ophyd-async writers use it); HDF5 refuses a second open of a file already open
    in this process with different locking flags, so plain and lock-free opens are tried next.
    """
    errors = []
    for kwargs in ({"swmr": True}, {}, {"swmr": True, "locking": False}, {"locking": False}):
        try:
            return h5py.File(path, "r", **kwargs)
        except (OSError, ValueError, TypeError) as exc:
            errors.append(str(exc))
    raise AssetError(f"cannot open {path!r}: {errors[-1]}")


def _read_stream(loc: StreamLocator) -> np.ndarray:
    if loc.mimetype not in ("application/x-hdf5", "application/x-hdf5; swmr"):
        raise AssetError(f"unsupported stream_resource mimetype {loc.mimetype!r}")
    if not os.path.exists(loc.path):
        raise AssetError(f"HDF5 file {loc.path!r} not found")
    import h5py

    try:
        f = _open_for_reading(h5py, loc.path)
        with f:
            if loc.dataset not in f:
                raise AssetError(f"dataset {loc.dataset!r} not in {loc.path!r}")
            ds = f[loc.dataset]
            for _ in range(_FLUSH_RETRIES):  # the writer may not have flushed the frame yet
                if loc.index < ds.shape[0]:
                    break
                time.sleep(_FLUSH_WAIT_S)
                if f.swmr_mode:
                    ds.refresh()
            if loc.index >= ds.shape[0]:
                raise AssetError(
                    f"frame {loc.index} not yet in {loc.path}:{loc.dataset} (it has {ds.shape[0]})"
                )
            return np.asarray(ds[loc.index])
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"reading {loc.path}:{loc.dataset}[{loc.index}] failed: {exc}") from exc
