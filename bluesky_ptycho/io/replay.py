"""Replay recorded scans as bluesky documents, through the same pipeline as live data.

A replay *is* a stream of documents: a scan file (CXI, NeXus/Eiger master and data files, a
scan directory) becomes a valid run (start with the ``start["ptycho"]`` contract, one
descriptor, events or event pages with the frames inline and the positions as encoder
readbacks, stop), and a run saved in databroker/tiled is read back document by document.
Either way the documents go to any ``callback(name, doc)``, typically a
:class:`~bluesky_ptycho.callback.PtychoCallback`, which cannot tell a replay from a live scan.
With ``rate_hz`` the frames arrive at that rate, so a recorded experiment can be watched as
it happened.

- :func:`scan_documents`: a :class:`~bluesky_ptycho.io.cxi.ScanFile` as documents;
- :func:`paced`: documents at a chosen frame rate;
- :func:`replay_file`: read a scan file (any layout :func:`~bluesky_ptycho.io.scan.read_scan`
  knows) and send its documents;
- :func:`replay_run`: send a saved run's documents from a databroker (v2) / tiled catalog;
- :func:`replay`: any of these, chosen by the source (path, uid or ``http(s)://`` URI).

databroker is optional (the ``databroker`` extra); it is imported only by :func:`replay_run`
when it has to open a catalog from a URI or name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import event_model
import numpy as np

from bluesky_ptycho.io.cxi import ScanFile
from bluesky_ptycho.io.scan import read_scan
from bluesky_ptycho.setup import START_KEY, ScanSetup
from bluesky_ptycho.validation import check_finite_scalar, check_positive_int, check_positive_scalar

__all__ = [
    "DocumentCallback",
    "paced",
    "replay",
    "replay_file",
    "replay_run",
    "scan_documents",
    "scan_setup",
]

DocumentCallback = Callable[[str, dict[str, Any]], Any]
"""Anything called as ``callback(name, doc)``: a ``PtychoCallback``, a ``RunRouter``, ..."""

_STREAM = "primary"
_SOURCE = "replay"
_UNITS = {1.0: "m", 1e-3: "mm", 1e-6: "um", 1e-9: "nm"}
_DATABROKER_HINT = (
    "replaying a saved run needs databroker: pip install 'bluesky-ptycho[databroker]' "
    "(the databroker extra: databroker[server,client,back-compat])"
)


# --------------------------------------------------------------------------------------------
# a scan as documents
# --------------------------------------------------------------------------------------------


def scan_documents(
    scan: ScanFile,
    *,
    detector_key: str = "detector_image",
    position_keys: Sequence[str] = ("sample_y", "sample_x"),
    position_scale_m: float = 1.0,
    crop: int | None = None,
    pattern: str | None = None,
    chunk: int = 64,
    md: Mapping[str, Any] | None = None,
    as_pages: bool = True,
    setup_options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents of one run that replays ``scan``.

    Everything is checked when this function is called; the documents are then generated
    lazily, reading one chunk of frames at a time.

    Parameters
    ----------
    scan : ScanFile
        Frames, positions and geometry (e.g. from :func:`~bluesky_ptycho.io.cxi.read_cxi`).
    detector_key : str, optional
        Data key of the frames.
    position_keys : (str, str), optional
        Data keys of the row-axis (y) and column-axis (x) readbacks.
    position_scale_m : float, optional
        Readback units in metres: the events carry ``positions_m / position_scale_m``
        (1e-6 for micrometres).
    crop : int, optional
        Side ``N`` of the frames the reconstruction uses, a power of two; default the frame
        size (square frames only).
    pattern : str, optional
        Scan pattern name, informational (``start["ptycho"]["scan"]["pattern"]``).
    chunk : int, optional
        Events per ``event_page`` (and frames read from the file at a time).
    md : mapping, optional
        Extra start-document metadata (plain JSON). It may override ``plan_name`` and the
        other defaults, but not ``"ptycho"``.
    as_pages : bool, optional
        Emit ``event_page`` documents of up to ``chunk`` events (default), or single
        ``event`` documents.
    setup_options : mapping, optional
        Further :class:`~bluesky_ptycho.setup.ScanSetup` fields (``margin_px``, ``binning``,
        ``transpose``, ``nominal_positions_m``, ...); they override the values taken from the
        file.

    Returns
    -------
    iterator of (str, dict)
        ``("start", ...)``, ``("descriptor", ...)``, events or event pages, ``("stop", ...)``.
        The start document carries ``start["ptycho"] = ScanSetup(...).to_start_doc()`` with
        the file's positions as the nominal scan.

    Raises
    ------
    TypeError
        If ``scan`` is not a :class:`~bluesky_ptycho.io.cxi.ScanFile`.
    ValueError
        If ``crop`` is not a power of two (or the frames are not square and no crop is
        given), the keys are invalid, ``chunk`` or ``position_scale_m`` is not positive, or
        ``md`` holds ``"ptycho"``.
    """
    if not isinstance(scan, ScanFile):
        raise TypeError(f"scan must be a ScanFile, got {type(scan).__name__}")
    chunk = _positive_int("chunk", chunk)
    check_positive_scalar("position_scale_m", position_scale_m)
    keys = tuple(position_keys)
    if len(keys) != 2 or not all(isinstance(k, str) and k for k in keys) or keys[0] == keys[1]:
        raise ValueError(f"position_keys must be two distinct data keys (row, col), got {keys!r}")
    if not isinstance(detector_key, str) or not detector_key or detector_key in keys:
        raise ValueError(
            f"detector_key must be a non-empty data key other than the position keys, "
            f"got {detector_key!r}"
        )
    h, w = scan.frame_shape
    if crop is None:
        if h != w:
            raise ValueError(f"frames are {h} x {w}, not square: pass crop (a power of two)")
        crop = h
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or not _power_of_two(crop):
        raise ValueError(
            f"crop must be a power of two, got {crop!r} (frames are {h} x {w}); "
            "pass crop=N to cut N x N around the beam centre"
        )
    metadata = dict(md or {})
    if START_KEY in metadata:
        raise ValueError(
            f'md must not contain "{START_KEY}": the replay writes start["{START_KEY}"] itself '
            "(pass setup_options to change the setup)"
        )

    fields: dict[str, Any] = {
        "energy_eV": float(scan.energy_eV),
        "detector_distance_m": float(scan.detector_distance_m),
        "detector_pixel_m": float(scan.detector_pixel_m),
        "crop": int(crop),
        "beam_center_px": scan.beam_center_px,
        "detector_key": detector_key,
        "position_keys": keys,
        "position_scale_m": float(position_scale_m),
        "pattern": pattern,
        "nominal_positions_m": scan.positions_m,
        "num_points": scan.n_frames,
        "mask": _bad_pixels(scan.mask),
    }
    fields.update(setup_options or {})
    try:
        setup = ScanSetup(**fields)
    except TypeError as exc:  # an unknown field in setup_options
        raise ValueError(f"setup_options: {exc}") from None

    start_md: dict[str, Any] = {
        "plan_name": "ptycho_replay",
        "detectors": [detector_key],
        "motors": list(keys),
        "num_points": scan.n_frames,
        "replay_source": dict(scan.metadata),
    }
    start_md.update(metadata)
    start_md[START_KEY] = setup.to_start_doc()
    return _documents(scan, setup, start_md, chunk=chunk, as_pages=as_pages)


def scan_setup(scan: ScanFile, **kwargs: Any) -> ScanSetup:
    """The :class:`~bluesky_ptycho.setup.ScanSetup` a replay of ``scan`` announces.

    Parameters
    ----------
    scan : ScanFile
    **kwargs
        As for :func:`scan_documents` (``crop``, ``setup_options``, ...).

    Returns
    -------
    ScanSetup
        Exactly what ``start["ptycho"]`` of :func:`scan_documents` holds, so an offline
        reconstruction preprocesses and places the frames as the live pipeline does.
    """
    name, start = next(iter(scan_documents(scan, **kwargs)))
    assert name == "start"
    return ScanSetup.from_start_doc(start[START_KEY])


def _documents(
    scan: ScanFile,
    setup: ScanSetup,
    start_md: dict[str, Any],
    *,
    chunk: int,
    as_pages: bool,
) -> Iterator[tuple[str, dict[str, Any]]]:
    # the documents are event-model TypedDicts; this generator hands them on as plain dicts
    run = event_model.compose_run(metadata=start_md)
    yield "start", cast("dict[str, Any]", run.start_doc)
    key = setup.detector_key
    ky, kx = setup.position_keys
    source = f"{_SOURCE}:{scan.metadata.get('format', 'scan')}"
    h, w = scan.frame_shape
    frame_key: dict[str, Any] = {"source": source, "dtype": "array", "shape": [h, w]}
    dtype_str = np.dtype(scan.intensities.dtype).str
    if dtype_str[0] in "<>|" and dtype_str[1] in "biuf":
        frame_key["dtype_numpy"] = dtype_str
    position_key: dict[str, Any] = {"source": source, "dtype": "number", "shape": []}
    units = _UNITS.get(setup.position_scale_m)
    if units is not None:
        position_key["units"] = units
    bundle = run.compose_descriptor(
        name=_STREAM,
        data_keys={key: frame_key, ky: dict(position_key), kx: dict(position_key)},
        object_keys={key: [key], ky: [ky], kx: [kx]},
    )
    yield "descriptor", cast("dict[str, Any]", bundle.descriptor_doc)
    readbacks = scan.positions_m / setup.position_scale_m
    for start, frames in scan.iter_frames(chunk):
        stop = start + len(frames)
        now = time.time()
        if as_pages:
            k = stop - start
            # the frames go in as one array, not a list of frames
            page_data: dict[str, Any] = {
                key: frames,
                ky: readbacks[start:stop, 0].tolist(),
                kx: readbacks[start:stop, 1].tolist(),
            }
            page = bundle.compose_event_page(
                data=page_data,
                timestamps={key: [now] * k, ky: [now] * k, kx: [now] * k},
                seq_num=list(range(start + 1, stop + 1)),
                time=[now] * k,
            )
            yield "event_page", cast("dict[str, Any]", page)
        else:
            for i in range(start, stop):
                event = bundle.compose_event(
                    data={
                        key: frames[i - start],
                        ky: float(readbacks[i, 0]),
                        kx: float(readbacks[i, 1]),
                    },
                    timestamps={key: now, ky: now, kx: now},
                    seq_num=i + 1,
                    time=now,
                )
                yield "event", cast("dict[str, Any]", event)
    yield "stop", cast("dict[str, Any]", run.compose_stop(exit_status="success"))


# --------------------------------------------------------------------------------------------
# replays
# --------------------------------------------------------------------------------------------


def replay_file(
    path: str | os.PathLike[str],
    callback: DocumentCallback,
    *,
    as_pages: bool = True,
    rate_hz: float = 0.0,
    positions: Any = None,
    positions_dataset: str | None = None,
    **kwargs: Any,
) -> str:
    """Read a scan file and send the documents of its replay to ``callback``.

    Parameters
    ----------
    path : str or path-like
        A CXI file, a NeXus/Eiger master or a scan directory
        (:func:`~bluesky_ptycho.io.scan.read_scan`).
    callback : callable
        Called as ``callback(name, doc)`` for every document, in order.
    as_pages : bool, optional
        Send ``event_page`` documents (default) or single ``event`` documents.
    rate_hz : float, optional
        Frames per second (see :func:`paced`); 0 (default): as fast as possible.
    positions, positions_dataset : optional
        Beam positions of a master file (see :func:`~bluesky_ptycho.io.eiger.read_master`).
    **kwargs
        Passed to :func:`scan_documents` (``detector_key``, ``position_keys``,
        ``position_scale_m``, ``crop``, ``pattern``, ``chunk``, ``md``, ``setup_options``).

    Returns
    -------
    str
        The uid of the replayed run's start document.

    Raises
    ------
    FileNotFoundError, ValueError
        From the readers and :func:`scan_documents`, before any document is sent.
    """
    rate = _rate(rate_hz)
    scan = read_scan(path, positions=positions, positions_dataset=positions_dataset)
    docs = scan_documents(scan, as_pages=as_pages, **kwargs)
    return _send(paced(docs, rate), callback)


def replay_run(
    catalog_or_uri: Any, uid: str, callback: DocumentCallback, *, rate_hz: float = 0.0
) -> str:
    """Send the documents of a run saved in databroker to ``callback``.

    Arrays that come back from the catalog as nested lists (``event_page`` data of a
    databroker v2 catalog) are turned into NumPy arrays first, so the callback sees what a
    live RunEngine would have sent.

    Parameters
    ----------
    catalog_or_uri : catalog or str
        A databroker v2 catalog (anything with ``catalog[uid].documents()``), or a string: an
        ``http(s)://`` tiled server URI, or the name of a configured databroker catalog.
    uid : str
        The run's start uid (or anything the catalog accepts: a scan id, a uid prefix).
    callback : callable
        Called as ``callback(name, doc)`` for every document, in order.
    rate_hz : float, optional
        Frames per second (see :func:`paced`); 0 (default): as fast as possible.

    Returns
    -------
    str
        The uid of the replayed run's start document.

    Raises
    ------
    ImportError
        If a catalog has to be opened from a string and databroker is not installed (the
        ``databroker`` extra).
    ValueError
        If the catalog has no such run.
    """
    rate = _rate(rate_hz)
    catalog = _open_catalog(catalog_or_uri)
    try:
        run = catalog[uid]
    except KeyError:
        raise ValueError(f"no run {uid!r} in the catalog") from None
    return _send(paced(_restored(run.documents()), rate), callback)


def replay(
    source: str | os.PathLike[str],
    callback: DocumentCallback,
    *,
    catalog: Any = None,
    rate_hz: float = 0.0,
    **kwargs: Any,
) -> str:
    """Replay a scan file, a scan directory or a saved run, whichever ``source`` names.

    Parameters
    ----------
    source : str or path-like
        An existing file (replayed with :func:`replay_file`); a scan directory (read with
        :class:`~bluesky_ptycho.io.follow.Follower`, which ends at the scan's last frame, its
        stop marker or its timeout); an ``http(s)://``
        URI of a run in a tiled server; or otherwise a run uid looked up in ``catalog``
        (:func:`replay_run`).
    callback : callable
        Called as ``callback(name, doc)`` for every document.
    catalog : catalog or str, optional
        Where to look up a uid (see :func:`replay_run`).
    rate_hz : float, optional
        Frames per second (see :func:`paced`); 0 (default): as fast as possible.
    **kwargs
        Passed to :func:`replay_file` for a file; for a directory, ``setup`` and ``options``
        of :class:`~bluesky_ptycho.io.follow.Follower`.

    Returns
    -------
    str
        The uid of the replayed run's start document.

    Raises
    ------
    ValueError
        If ``source`` is neither an existing file or directory, nor a run URI, nor a run in
        ``catalog`` (or no catalog was given), or ``rate_hz`` is negative.
    """
    rate = _rate(rate_hz)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return _send(paced(_directory_documents(Path(source), **kwargs), rate), callback)
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        return replay_file(source, callback, rate_hz=rate, **kwargs)
    if not isinstance(source, str):
        raise ValueError(f"{os.fspath(source)!r} is not an existing file")
    if kwargs:
        raise ValueError(
            f"options {sorted(kwargs)} apply to file replays only; {source!r} is not a file"
        )
    if source.startswith(("http://", "https://")):
        return _send(paced(_restored(_run_at(source).documents()), rate), callback)
    if catalog is None:
        raise ValueError(
            f"{source!r} is not an existing file; to replay a saved run with this uid, pass "
            "catalog= (a databroker catalog or its URI)"
        )
    try:
        return replay_run(catalog, source, callback, rate_hz=rate)
    except ValueError as exc:
        raise ValueError(
            f"{source!r} is neither an existing file nor a run in the catalog ({exc})"
        ) from exc


def paced(
    docs: Iterable[tuple[str, dict[str, Any]]],
    rate_hz: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents, with event ``k`` (counted from 0) let through at ``t0 + k / rate_hz``.

    With a rate, event pages are unpacked into single events, so frames arrive one at a time
    as they did during the scan; other documents pass at once. The schedule is absolute: a
    slow consumer does not make the replay drift further behind.

    Parameters
    ----------
    docs : iterable of (name, doc)
    rate_hz : float
        Frames (events) per second; 0: no pacing, documents pass unchanged.
    clock, sleep : callables, optional
        Time source and sleep function (for tests with a fake clock).

    Yields
    ------
    (str, dict)

    Raises
    ------
    ValueError
        If ``rate_hz`` is negative or not finite.
    """
    rate = _rate(rate_hz)
    if rate == 0:
        yield from docs
        return
    t0: float | None = None
    k = 0
    for name, doc in docs:
        if name == "event_page":
            events: Iterable[dict[str, Any]] = event_model.unpack_event_page(
                cast("event_model.EventPage", doc)
            )
        elif name == "event":
            events = (doc,)
        else:
            yield name, doc
            continue
        for event in events:
            if t0 is None:
                t0 = clock()
            wait = t0 + k / rate - clock()
            if wait > 0:
                sleep(wait)
            k += 1
            yield "event", event


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _send(docs: Iterator[tuple[str, dict[str, Any]]], callback: DocumentCallback) -> str:
    uid: str | None = None
    for name, doc in docs:
        if name == "start":
            uid = str(doc["uid"])
        callback(name, doc)
    if uid is None:
        raise ValueError("the replayed documents contain no start document")
    return uid


def _directory_documents(path: Path, **kwargs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    from bluesky_ptycho.io.follow import Follower

    unknown = sorted(set(kwargs) - {"setup", "options"})
    if unknown:
        raise ValueError(
            f"options {unknown} do not apply to a scan directory ({str(path)!r}); it takes "
            "setup= and options= (FollowOptions)"
        )
    return Follower(path, **kwargs).documents()


def _rate(rate_hz: Any) -> float:
    """Frames per second, ``>= 0`` (0: no pacing)."""
    rate = check_finite_scalar("rate_hz", rate_hz)
    if rate < 0:
        raise ValueError(f"rate_hz must be >= 0 frames per second (0: no pacing), got {rate_hz!r}")
    return rate


def _run_at(uri: str) -> Any:
    """The run a tiled URI points at (``http://host/api/v1/metadata/<catalog>/<uid>``)."""
    try:
        from tiled.client import from_uri
    except ImportError as exc:
        raise ImportError(_DATABROKER_HINT) from exc
    node = from_uri(uri)
    if not callable(getattr(node, "documents", None)):
        raise ValueError(
            f"{uri!r} is not a bluesky run (no documents()): give the URI of one run, or the "
            "catalog's URI with --catalog and the uid as the source"
        )
    return node


def _open_catalog(catalog_or_uri: Any) -> Any:
    if not isinstance(catalog_or_uri, (str, os.PathLike)):
        return catalog_or_uri
    uri = os.fspath(catalog_or_uri)
    try:
        import databroker  # noqa: F401
    except ImportError as exc:
        raise ImportError(_DATABROKER_HINT) from exc
    if uri.startswith(("http://", "https://")):
        from tiled.client import from_uri

        return from_uri(uri)
    from databroker import catalog as catalogs

    try:
        return catalogs[uri]
    except KeyError:
        raise ValueError(f"no databroker catalog named {uri!r}") from None


def _restored(docs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Documents from a catalog, with list-valued array data turned back into arrays.

    The element type comes from the descriptor's ``dtype_numpy`` when it names a plain
    numeric type (otherwise NumPy infers it: float64 for counts stored as floats).
    """
    dtypes: dict[str, dict[str, np.dtype]] = {}
    for name, doc in docs:
        if name == "descriptor":
            dtypes[str(doc.get("uid"))] = _array_dtypes(doc.get("data_keys") or {})
        yield name, _plain(name, doc, dtypes.get(str(doc.get("descriptor")), {}))


def _array_dtypes(data_keys: Mapping[str, Any]) -> dict[str, np.dtype]:
    out: dict[str, np.dtype] = {}
    for key, info in data_keys.items():
        if not isinstance(info, Mapping):
            continue
        spec = info.get("dtype_numpy")
        if info.get("dtype") != "array" or not isinstance(spec, str):
            continue
        try:
            dtype = np.dtype(spec)
        except TypeError:
            continue
        if dtype.kind in "biuf":
            out[key] = dtype
    return out


def _plain(name: str, doc: Mapping[str, Any], dtypes: Mapping[str, np.dtype]) -> dict[str, Any]:
    """A copy of an event (page) with list-valued data turned into arrays."""
    out = dict(doc)
    data = doc.get("data")
    if not isinstance(data, Mapping):
        return out
    if name == "event_page":
        out["data"] = {k: _array_column(v, dtypes.get(k)) for k, v in data.items()}
    elif name == "event":
        out["data"] = {
            k: (_array_value(v, dtypes.get(k)) if isinstance(v, (list, tuple)) else v)
            for k, v in data.items()
        }
    return out


def _array_column(values: Any, dtype: np.dtype | None) -> Any:
    """An event_page data column: one value per event; array values become ndarrays."""
    if not isinstance(values, (list, tuple)):
        return values
    if not any(isinstance(v, (list, tuple)) for v in values):
        return list(values)  # scalars or datum ids: as they are
    return [_array_value(v, dtype) if isinstance(v, (list, tuple)) else v for v in values]


def _array_value(value: Sequence[Any], dtype: np.dtype | None) -> Any:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):  # ragged, or not of the declared type
        return value
    return value if arr.dtype == object else arr


def _bad_pixels(mask: np.ndarray | None) -> list[list[int]] | None:
    if mask is None or not mask.any():
        return None
    return np.argwhere(mask).tolist()


def _power_of_two(n: int) -> bool:
    return int(n) > 0 and int(n) & (int(n) - 1) == 0


_positive_int = check_positive_int
