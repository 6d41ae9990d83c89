"""Documents across processes: bluesky's 0MQ ``Publisher`` -> proxy -> :class:`DocumentFeed`.

The RunEngine side is one line, ``publish(RE, "127.0.0.1:5577")``; the consumer side is a
:class:`DocumentFeed`, a 0MQ SUB socket read on a background thread that hands each
``(name, doc)`` to a callback (for instance a ``PtychoCallback``). In between runs a proxy;
:class:`ProxyProcess` starts one bound to loopback (tests, demos, a single-host beamline). The
wire format is bluesky's (``prefix b" " name b" " payload``), so bluesky's own
``bluesky-0MQ-proxy`` and ``RemoteDispatcher`` interoperate with these pieces.

Documents are encoded with msgpack (:func:`serialize` / :func:`deserialize`), never pickle:
unpickling bytes read from a network socket runs whatever code they name. NumPy arrays and
scalars travel as a msgpack extension type holding the dtype, the shape and the raw bytes;
object dtypes are never decoded (``msgpack_numpy``'s decoder unpickles them, so it is not used).

Flow control (see ``docs/explanation/transport.md`` for the measurements): 0MQ PUB sockets
never block; when a subscriber's queue reaches the high-water mark they drop messages
silently. Every socket on the path (the publisher's PUB, the proxy's SUB and PUB, the feed's
SUB) therefore has its high-water mark set here on purpose, :data:`DEFAULT_HWM` messages, which
bounds each queue to ``hwm x message size`` (about 0.5 GB per queue for 256 x 256 uint32
frames at the default). Loss that still happens (a proxy restart, a consumer slower than the
detector for longer than the queues last) cannot be seen by 0MQ; it shows as gaps in the
events' ``seq_num``, which ``PtychoCallback`` counts. The feed reports what it can see itself
(:class:`FeedStatus`): whether the link to the proxy is up (socket monitor plus 0MQ heartbeats),
how many documents it handled, dropped as oversized or could not decode.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import msgpack
import numpy as np
import zmq
import zmq.utils.monitor
from bluesky.callbacks.zmq import Publisher

__all__ = [
    "DEFAULT_HWM",
    "HARD_LIMIT_MARGIN",
    "DocumentFeed",
    "FeedStatus",
    "ProxyProcess",
    "Publication",
    "deserialize",
    "free_port",
    "make_publisher",
    "publish",
    "run_proxy",
    "serialize",
]

logger = logging.getLogger(__name__)

#: msgpack extension codes: an ndarray, and a NumPy scalar (same payload, returned as scalar).
_EXT_NDARRAY = 1
_EXT_NPSCALAR = 2
#: Payload layout: uint32 header length (little endian), msgpack header [dtype, shape], raw bytes.
_HEADER_LEN = struct.Struct("<I")

#: High-water mark, in messages, of every socket on the path (publisher PUB, proxy SUB and PUB,
#: feed SUB). 0MQ's default is 1000. 4000 queued messages hold about 2 s of a 2 kHz detector
#: per queue; for 256 x 256 uint32 frames (262 KB per event document) that is at most about
#: 1.05 GB per queue, reached only while a consumer is behind.
DEFAULT_HWM = 4000
#: 0MQ heartbeats: a PING every second; a peer silent for 3 s is dropped (and reconnected).
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
#: Reconnection to a vanished proxy, (first retry, longest back-off) in ms. The feed retries
#: every 100 ms, publishers back off to 2 s: after a proxy restart the feed has usually
#: re-subscribed before a publisher delivers what it queued meanwhile (a proxy forwards nothing
#: to subscribers that have not joined yet). Measured: a 15.6 s outage at 100 Hz lost 194
#: frames with (100 ms, 1 s) for both, 1 with these.
FEED_RECONNECT_MS = (100, 100)
PUBLISHER_RECONNECT_MS = (500, 2000)
#: A feed disconnected this long makes a fresh SUB socket (see ``DocumentFeed``).
RESET_AFTER_S = 5.0
#: Above ``max_document_bytes`` plus this, 0MQ itself refuses a message (ZMQ_MAXMSGSIZE) and
#: drops the connection (then reconnects): the most a single hostile message can make the feed
#: allocate. Between the two limits the feed counts the message in ``oversized`` and goes on.
HARD_LIMIT_MARGIN = 64 * 2**20
#: The largest message the proxy forwards: a feed's default ``max_document_bytes`` plus margin.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20 + HARD_LIMIT_MARGIN
#: The document names bluesky defines (``bluesky.run_engine.DocumentNames``).
_DOCUMENT_NAMES = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "stop",
        "bulk_events",
        "datum",
        "resource",
        "bulk_datum",
        "event_page",
        "datum_page",
        "stream_resource",
        "stream_datum",
    }
)


def _configure(
    sock: zmq.Socket, *, hwm: int, linger_ms: int, reconnect_ms: tuple[int, int] = (100, 1000)
) -> None:
    """High-water marks, linger, heartbeats and reconnection of one socket (before bind/connect)."""
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, reconnect_ms[0])
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_ms[1])


def _check_hwm(hwm: int) -> int:
    if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 1:
        raise ValueError(f"hwm must be a positive number of messages, got {hwm!r}")
    return hwm


def _tcp(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------


def _dtype_to_wire(dtype: np.dtype) -> str | list[Any]:
    """A dtype as msgpack-able data: ``dtype.str`` or, for structured dtypes, ``dtype.descr``."""
    if dtype.names is not None:
        return [list(field) for field in dtype.descr]
    return dtype.str


def _dtype_from_wire(spec: Any) -> np.dtype:
    """Inverse of :func:`_dtype_to_wire`; refuses object dtypes (they cannot come from bytes)."""
    if isinstance(spec, str):
        dtype = np.dtype(spec)
    elif isinstance(spec, list):
        fields = []
        for field in spec:
            if not isinstance(field, list) or len(field) not in (2, 3):
                raise ValueError(f"bad structured dtype field {field!r}")
            name, sub = field[0], field[1]
            entry: tuple[Any, ...] = (name, _dtype_from_wire(sub))
            if len(field) == 3:
                entry += (tuple(field[2]),)
            fields.append(entry)
        dtype = np.dtype(fields)
    else:
        raise ValueError(f"bad dtype specification {spec!r}")
    if dtype.hasobject:
        raise ValueError("object dtypes are not accepted from the wire")
    return dtype


def _pack_array(arr: np.ndarray) -> bytes:
    header = msgpack.packb([_dtype_to_wire(arr.dtype), list(arr.shape)], use_bin_type=True)
    return _HEADER_LEN.pack(len(header)) + header + np.ascontiguousarray(arr).tobytes()


def _unpack_array(payload: bytes) -> np.ndarray:
    if len(payload) < _HEADER_LEN.size:
        raise ValueError("truncated array payload")
    (n,) = _HEADER_LEN.unpack_from(payload)
    start = _HEADER_LEN.size
    if start + n > len(payload):
        raise ValueError("truncated array header")
    spec, shape = msgpack.unpackb(payload[start : start + n], raw=False)
    dtype = _dtype_from_wire(spec)
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"bad array shape {shape!r}")
    data = memoryview(payload)[start + n :]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"array payload holds {len(data)} bytes, dtype and shape need {expected}")
    # copy: the result owns its (writable) memory instead of viewing the message buffer
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _default(obj: Any) -> Any:
    """msgpack ``default`` hook (packing with ``strict_types``, so subclasses land here too).

    NumPy arrays and scalars (``np.float64`` included, though it subclasses ``float``), Python
    complex numbers; tuples and other sequences become lists, mappings become dicts.
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            # values that are not plain memory cannot travel as bytes: send them as lists
            return obj.tolist()
        return msgpack.ExtType(_EXT_NDARRAY, _pack_array(obj))
    if isinstance(obj, np.generic):
        if obj.dtype.hasobject:
            return obj.item()
        return msgpack.ExtType(_EXT_NPSCALAR, _pack_array(np.asarray(obj)))
    if isinstance(obj, complex):
        return msgpack.ExtType(_EXT_NPSCALAR, _pack_array(np.asarray(obj, dtype=np.complex128)))
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    for base in (bool, int, float, str, bytes):  # e.g. IntEnum, str subclasses
        if isinstance(obj, base):
            convert: Callable[[Any], Any] = base
            return convert(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"cannot serialize object of type {type(obj).__name__}: {obj!r:.200}")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _unpack_array(payload)
    if code == _EXT_NPSCALAR:
        arr = _unpack_array(payload)
        if arr.shape != ():
            raise ValueError(f"scalar payload with shape {arr.shape}")
        return arr[()]
    raise ValueError(f"unknown msgpack extension type {code}")


def serialize(doc: dict) -> bytes:
    """Encode a document as msgpack bytes, NumPy arrays and scalars included.

    Parameters
    ----------
    doc : dict
        A bluesky document (or any mapping of msgpack-able values, NumPy arrays of any
        non-object dtype, NumPy scalars, complex numbers, nested dicts/lists/tuples).

    Returns
    -------
    bytes
        The encoded document. Arrays keep dtype (byte order included), shape and values;
        tuples come back as lists; object arrays are sent as nested lists.

    Raises
    ------
    TypeError
        If the document holds a value msgpack cannot encode (e.g. an arbitrary object).
    """
    return msgpack.packb(doc, default=_default, use_bin_type=True, strict_types=True)


def deserialize(data: bytes | memoryview) -> dict:
    """Decode bytes made by :func:`serialize` back into a document.

    Never executes code from the message: no pickle, and object dtypes are refused.

    Parameters
    ----------
    data : bytes or memoryview
        The encoded document.

    Returns
    -------
    dict
        The document; arrays are ordinary, writable ``numpy.ndarray`` objects.

    Raises
    ------
    ValueError
        If ``data`` is not a msgpack-encoded mapping, or an array payload is malformed.
    """
    try:
        doc = msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True
        )
    except Exception as exc:  # msgpack raises assorted types for garbage input
        raise ValueError(f"not a msgpack document: {exc!r}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"expected a msgpack map, got {type(doc).__name__}")
    return doc


# --------------------------------------------------------------------------------------------
# Publishing side
# --------------------------------------------------------------------------------------------


def make_publisher(
    address: str,
    prefix: bytes = b"",
    *,
    linger: float = 2.0,
    hwm: int = DEFAULT_HWM,
    connect_timeout: float = 5.0,
) -> Publisher:
    """A bluesky ``Publisher`` that encodes with :func:`serialize` (msgpack, not pickle).

    Parameters
    ----------
    address : str
        The proxy's *in* address, ``"host:port"`` (or ``"tcp://host:port"``).
    prefix : bytes, optional
        Tag distinguishing this publisher's messages; may not contain ``b" "``.
    linger : float, optional
        Seconds that closing (or garbage-collecting) the publisher may wait to deliver queued
        messages. 0MQ's default is forever: with the proxy gone, ``close()`` would hang.
    hwm : int, optional
        Messages queued for the proxy before the publisher drops (it never blocks the
        RunEngine): the RunEngine process holds at most ``hwm`` x document size for it.
    connect_timeout : float, optional
        Seconds to wait, here and once, for the proxy to subscribe. A 0MQ publisher drops
        what it sends before its peer's subscription arrives, so without this wait the first
        documents of a fresh publisher (the start document) were lost now and then. When the
        proxy is not up within the time, a warning says so and the publisher goes on.

    Returns
    -------
    bluesky.callbacks.zmq.Publisher
        Call it as ``publisher(name, doc)``; ``publisher.close()`` releases its socket.
    """
    _check_hwm(hwm)
    publisher = Publisher(address, prefix=prefix, serializer=serialize)
    # bluesky sets no socket options and connects at once; 0MQ applies high-water marks only
    # to later connections, so its PUB socket (the private ``_socket``) is replaced by one
    # configured before it connects.
    old = getattr(publisher, "_socket", None)
    context = getattr(publisher, "_context", None)
    if isinstance(old, zmq.Socket) and isinstance(context, zmq.Context):
        old.close(linger=0)
        # XPUB: a PUB that also hands over the subscriptions it receives, so that we can wait
        # for the proxy's before the first document goes out
        sock = context.socket(zmq.XPUB)
        _configure(
            sock,
            hwm=hwm,
            linger_ms=max(0, round(1000 * linger)),
            reconnect_ms=PUBLISHER_RECONNECT_MS,
        )
        sock.connect(publisher.address)
        if sock.poll(max(0, round(1000 * connect_timeout)), zmq.POLLIN):
            sock.recv()  # the proxy's subscription: from now on nothing is dropped for it
        else:
            logger.warning(
                "the 0MQ proxy at %s did not subscribe within %g s: documents published "
                "before it does are lost",
                publisher.address,
                connect_timeout,
            )
        publisher._socket = sock
    else:  # pragma: no cover - bluesky changed its internals
        logger.warning("cannot configure the Publisher's socket; 0MQ defaults apply")
    return publisher


@dataclass
class Publication:
    """A RunEngine publishing to a proxy: ``close()`` (or ``with``) unsubscribes and closes.

    Close it explicitly: a bluesky ``Publisher`` left to the garbage collector terminates its
    0MQ context from whatever thread collects it, which can block that thread.
    """

    RE: Any
    token: int
    publisher: Publisher

    def close(self) -> None:
        """Stop publishing and release the socket (bounded by the publisher's linger)."""
        with contextlib.suppress(Exception):
            self.RE.unsubscribe(self.token)
        self.publisher.close()

    def __enter__(self) -> Publication:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(
    RE: Any, address: str = "127.0.0.1:5577", *, prefix: bytes = b"", hwm: int = DEFAULT_HWM
) -> Publication:
    """Publish a RunEngine's documents to a 0MQ proxy, msgpack-encoded: the one-line RE side.

    Parameters
    ----------
    RE : bluesky.RunEngine
        The RunEngine whose documents are published.
    address : str, optional
        The proxy's *in* address, ``"host:port"``.
    prefix : bytes, optional
        Tag distinguishing this publisher's messages; may not contain ``b" "``.
    hwm : int, optional
        The publisher's high-water mark (see :func:`make_publisher`).

    Returns
    -------
    Publication
        ``.token`` is the RunEngine subscription; ``.close()`` stops publishing.

    Notes
    -----
    0MQ drops what a PUB socket sends before its subscribers have joined (the "slow joiner"):
    documents emitted in the first few milliseconds after this call may be lost.
    """
    publisher = make_publisher(address, prefix=prefix, hwm=hwm)
    return Publication(RE=RE, token=RE.subscribe(publisher), publisher=publisher)


# --------------------------------------------------------------------------------------------
# Receiving side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedStatus:
    """What a :class:`DocumentFeed` can see of its link; cheap to take at any time.

    Attributes
    ----------
    connected : bool
        Whether the SUB socket has a live connection to the proxy (0MQ handshake done, no
        disconnection since; a silent proxy is dropped after the heartbeat timeout, 3 s).
    documents : int
        Documents decoded and handed to the callback (including those it raised on).
    errors : int
        Messages that could not be split or decoded, unknown document names, callback
        exceptions.
    oversized : int
        Messages larger than ``max_document_bytes``, dropped before decoding.
    last_document_age : float or None
        Seconds since the last document was handed to the callback; None before the first.
    connections : int
        Times the link came up (0: never connected yet; more than 1: it was lost and came
        back).
    """

    connected: bool
    documents: int
    errors: int
    oversized: int
    last_document_age: float | None
    connections: int = 0


def _worth_logging(count: int) -> bool:
    """1, 10, 100, ...: a repeating problem is logged a few times, not once per message."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1


class DocumentFeed:
    """A 0MQ SUB socket read on a background thread, feeding ``(name, doc)`` to a callback.

    Parameters
    ----------
    address : str
        The proxy's *out* address, ``"host:port"``.
    callback : callable
        Called as ``callback(name, doc)`` on the feed's thread for every document. Exceptions it
        raises are logged and counted in :attr:`errors`; they never stop the feed. It should
        return quickly (queue the work): while it runs, messages wait in the socket's queue.
    prefix : bytes, optional
        Only messages published with this prefix are delivered (``b""``: all of them).
    name : str, optional
        Name of the background thread.
    max_document_bytes : int, optional
        Larger messages are dropped before decoding and counted in ``status.oversized``.
        Messages more than :data:`HARD_LIMIT_MARGIN` (64 MiB) larger are refused by 0MQ
        itself, which drops the connection and reconnects (what was queued for the feed in
        the proxy is lost, and shows as ``seq_num`` gaps): a hostile sender cannot make the
        feed allocate more than ``max_document_bytes + 64 MiB`` for one message. (0MQ does
        not reconnect after refusing a message; the feed replaces a SUB socket that has been
        disconnected for :data:`RESET_AFTER_S` seconds, which covers that case too.)
    hwm : int, optional
        Receive high-water mark, in messages (:data:`DEFAULT_HWM`).

    Notes
    -----
    The SUB socket reconnects by itself when the proxy comes back on the same address; what
    was published meanwhile is lost (0MQ cannot know it), which shows as ``seq_num`` gaps.
    Messages that cannot be split into prefix, name and payload, or name no bluesky document,
    or do not decode (pickle, garbage), are counted in ``errors`` and skipped.

    Examples
    --------
    >>> feed = DocumentFeed("127.0.0.1:5578", ptycho_callback)  # doctest: +SKIP
    >>> feed.start()  # doctest: +SKIP
    >>> feed.status.connected  # doctest: +SKIP
    >>> feed.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        address: str,
        callback: Callable[[str, dict], Any],
        *,
        prefix: bytes = b"",
        name: str = "document-feed",
        max_document_bytes: int = 256 * 2**20,
        hwm: int = DEFAULT_HWM,
    ) -> None:
        if not isinstance(prefix, bytes):
            raise TypeError("prefix must be bytes")
        if b" " in prefix:
            raise ValueError(f"prefix {prefix!r} may not contain b' '")
        if (
            isinstance(max_document_bytes, bool)
            or not isinstance(max_document_bytes, int)
            or max_document_bytes < 1
        ):
            raise ValueError(
                f"max_document_bytes must be a positive int, got {max_document_bytes!r}"
            )
        self._address = address
        self._callback = callback
        self._prefix = prefix
        self._name = name
        self._max_document_bytes = max_document_bytes
        self._hwm = _check_hwm(hwm)
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._ready = threading.Event()
        self._connected = threading.Event()
        self._connections = 0
        self._thread: threading.Thread | None = None
        self._documents_received = 0
        self._errors = 0
        self._oversized = 0
        self._last_document: float | None = None
        self._last_error: str | None = None
        self._fatal: str | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._address!r}, running={self.running}, "
            f"documents_received={self.documents_received}, errors={self.errors})"
        )

    # -- public state ------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The proxy *out* address the feed subscribes to."""
        return self._address

    @property
    def running(self) -> bool:
        """True while the feed's thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def connected(self) -> bool:
        """Whether the link to the proxy is up (see :class:`FeedStatus`)."""
        return self._connected.is_set()

    @property
    def documents_received(self) -> int:
        """Documents decoded and handed to the callback (including those it raised on)."""
        with self._lock:
            return self._documents_received

    @property
    def errors(self) -> int:
        """Undecodable messages, callback exceptions and socket failures so far."""
        with self._lock:
            return self._errors

    @property
    def last_error(self) -> str | None:
        """A description of the most recent error, or None."""
        with self._lock:
            return self._last_error

    @property
    def status(self) -> FeedStatus:
        """Connection, counters and the age of the last document (:class:`FeedStatus`)."""
        with self._lock:
            last = self._last_document
            return FeedStatus(
                connected=self._connected.is_set(),
                documents=self._documents_received,
                errors=self._errors,
                oversized=self._oversized,
                last_document_age=None if last is None else time.monotonic() - last,
                connections=self._connections,
            )

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the link to the proxy is up; return whether it is."""
        return self._connected.wait(timeout)

    # -- control -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and subscribe; return once the SUB socket is set up.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the socket.

        Raises
        ------
        RuntimeError
            If the feed was started (or stopped) before, or the socket could not be set up
            (for instance a malformed address).
        TimeoutError
            If the socket was not set up within ``timeout``.

        Notes
        -----
        The connection to the proxy completes asynchronously (and is retried while the proxy
        is away): see :attr:`connected` and :meth:`wait_connected`. Messages published before
        the subscription reaches the proxy are missed (0MQ's slow joiner).
        """
        if self._thread is not None:
            raise RuntimeError("a DocumentFeed can be started only once; make a new one")
        if self._stop_requested.is_set():
            raise RuntimeError("this DocumentFeed was stopped before it started; make a new one")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"document feed failed to start: {self._fatal}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"document feed not set up for {self._address} in {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the feed and join its thread; safe from any thread, idempotent.

        Called from the feed's own thread (inside the callback) it only requests the stop.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the thread to end.

        Raises
        ------
        TimeoutError
            If the thread is still alive after ``timeout`` (e.g. the callback is blocked).
        """
        self._stop_requested.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"document feed thread {self._name!r} still alive after {timeout} s")

    # -- internals ---------------------------------------------------------------------------

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors += 1
            count = self._errors
            self._last_error = message
        if _worth_logging(count):
            logger.warning("%s: %s (%d errors so far)", self._name, message, count)

    def _handle(self, frame: zmq.Frame) -> None:
        """Split, size-check, decode and dispatch one message; never raises."""
        buf = frame.buffer
        head = bytes(buf[: min(len(buf), 1024)])
        first = head.find(b" ")
        second = head.find(b" ", first + 1) if first >= 0 else -1
        if second < 0:
            self._record_error(f"message of {len(buf)} bytes is not 'prefix name payload'")
            return
        try:
            name = head[first + 1 : second].decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if name not in _DOCUMENT_NAMES:
            self._record_error(f"unknown document name {head[first + 1 : second]!r:.80}")
            return
        size = len(buf) - second - 1
        if size > self._max_document_bytes:
            with self._lock:
                self._oversized += 1
                count = self._oversized
            if _worth_logging(count):
                logger.warning(
                    "%s: dropped a %s document of %d bytes (max_document_bytes %d; %d so far)",
                    self._name,
                    name,
                    size,
                    self._max_document_bytes,
                    count,
                )
            return
        try:
            doc = deserialize(buf[second + 1 :])
        except Exception as exc:
            self._record_error(f"undecodable {name} message ({size} bytes): {exc}")
            return
        with self._lock:
            self._documents_received += 1
            self._last_document = time.monotonic()
        try:
            self._callback(name, doc)
        except Exception as exc:
            self._record_error(f"callback raised on {name!r} document: {exc!r}")
            logger.exception("%s: callback raised on a %r document", self._name, name)

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if not self._connected.is_set():
                    logger.info("%s: connected to %s", self._name, self._address)
                    with self._lock:
                        self._connections += 1
                self._connected.set()
            elif kind == zmq.EVENT_DISCONNECTED:
                if self._connected.is_set():
                    logger.warning("%s: lost the proxy at %s", self._name, self._address)
                self._connected.clear()

    def _open(self, context: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
        """A configured SUB socket connecting to the proxy, and its monitor socket."""
        sock = context.socket(zmq.SUB)
        try:
            _configure(sock, hwm=self._hwm, linger_ms=0, reconnect_ms=FEED_RECONNECT_MS)
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_document_bytes + HARD_LIMIT_MARGIN)
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            )
        except Exception:
            sock.close(linger=0)
            raise
        try:
            sock.setsockopt(zmq.SUBSCRIBE, self._prefix + b" " if self._prefix else b"")
            sock.connect(_tcp(self._address))
        except Exception:
            _close(sock, monitor)
            raise
        return sock, monitor

    def _run(self) -> None:
        context = zmq.Context()
        try:
            sock, monitor = self._open(context)
        except Exception as exc:
            self._fatal = repr(exc)
            self._record_error(f"feed failed to start: {exc!r}")
            context.term()
            return
        self._ready.set()
        down_since: float | None = time.monotonic()
        try:
            while not self._stop_requested.is_set():
                self._serve(sock, monitor)
                if self._connected.is_set():
                    down_since = None
                    continue
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                elif now - down_since > RESET_AFTER_S:
                    # 0MQ does not reconnect after a protocol error (a message above
                    # ZMQ_MAXMSGSIZE): a fresh socket does, and costs nothing when the proxy
                    # is simply away.
                    _close(sock, monitor)
                    sock, monitor = self._open(context)
                    down_since = now
        except Exception as exc:  # pragma: no cover - a 0MQ failure of the socket itself
            self._fatal = repr(exc)
            self._record_error(f"feed socket failed: {exc!r}")
            logger.exception("%s: the SUB socket failed", self._name)
        finally:
            self._connected.clear()
            _close(sock, monitor)
            context.term()

    def _serve(self, sock: zmq.Socket, monitor: zmq.Socket, timeout_ms: int = 100) -> None:
        """One poll: monitor events, then a batch of up to 256 messages."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if monitor in ready:
            self._on_monitor(monitor)
        if sock not in ready:
            return
        for _ in range(256):
            if self._stop_requested.is_set():
                return
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frame)


def _close(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)


# --------------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (the OS picks it).

    Parameters
    ----------
    host : str, optional
        Interface to probe.

    Returns
    -------
    int
        The port number. Another process may take it before you bind it; retry if so.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_proxy(
    in_address: str,
    out_address: str,
    *,
    hwm: int = DEFAULT_HWM,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """Forward every message from ``in_address`` (SUB, bound) to ``out_address`` (PUB, bound).

    The same forwarding as ``bluesky-0MQ-proxy``, with the high-water marks and heartbeats set
    on purpose: its SUB queues at most ``hwm`` messages from the publishers, its PUB at most
    ``hwm`` messages per subscriber (then drops for that subscriber only, which sees the loss as
    ``seq_num`` gaps); a subscriber silent for 3 s is dropped with its queue. A proxy with ``s``
    subscribers thus holds at most ``(1 + s) x hwm`` messages. A publisher that sends a
    message larger than ``max_message_bytes`` is disconnected by 0MQ (and reconnects); the
    message goes no further. Runs until the process ends.

    Parameters
    ----------
    in_address, out_address : str
        ``"host:port"`` or ``"tcp://host:port"`` to bind.
    hwm : int, optional
        High-water mark of both sockets, in messages.
    max_message_bytes : int, optional
        The largest message forwarded (ZMQ_MAXMSGSIZE of the SUB socket).
    """
    _check_hwm(hwm)
    context = zmq.Context()
    frontend = context.socket(zmq.SUB)
    backend = context.socket(zmq.PUB)
    try:
        _configure(frontend, hwm=hwm, linger_ms=0)
        _configure(backend, hwm=hwm, linger_ms=0)
        frontend.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        frontend.setsockopt(zmq.SUBSCRIBE, b"")
        # subscribers first: what publishers queued during an outage finds them already there
        backend.bind(_tcp(out_address))
        frontend.bind(_tcp(in_address))
        print(f"Receiving on {_tcp(in_address)}; publishing to {_tcp(out_address)}", flush=True)
        zmq.proxy(frontend, backend)
    finally:
        frontend.close(linger=0)
        backend.close(linger=0)
        context.term()


class ProxyProcess:
    """A 0MQ proxy (:func:`run_proxy`) as a subprocess, bound to ``host`` (loopback by default).

    Runs ``python -m bluesky_ptycho.transport --in-address tcp://HOST:IN --out-address
    tcp://HOST:OUT --hwm HWM`` with the current interpreter: bluesky's ``bluesky-0MQ-proxy``
    forwarding (same wire format), with high-water marks and heartbeats set on purpose.

    Parameters
    ----------
    in_port : int or None, optional
        Port publishers send to; None picks a free one.
    out_port : int or None, optional
        Port feeds subscribe to; None picks a free one.
    host : str, optional
        Interface to bind.
    hwm : int, optional
        High-water mark of the proxy's sockets, in messages (:func:`run_proxy`).

    Examples
    --------
    >>> with ProxyProcess() as proxy:  # doctest: +SKIP
    ...     publish(RE, proxy.in_address)
    ...     feed = DocumentFeed(proxy.out_address, print)
    """

    def __init__(
        self,
        in_port: int | None = None,
        out_port: int | None = None,
        host: str = "127.0.0.1",
        *,
        hwm: int = DEFAULT_HWM,
    ) -> None:
        self._hwm = _check_hwm(hwm)
        self._host = host
        self._fixed_in = in_port
        self._fixed_out = out_port
        self._in_port = in_port
        self._out_port = out_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(in={self._in_port}, out={self._out_port}, "
            f"host={self._host!r}, pid={self.pid})"
        )

    @property
    def in_address(self) -> str:
        """Where publishers send, ``"host:port"``."""
        if self._in_port is None:
            raise RuntimeError("proxy not started and no in_port given")
        return f"{self._host}:{self._in_port}"

    @property
    def out_address(self) -> str:
        """Where feeds subscribe, ``"host:port"``."""
        if self._out_port is None:
            raise RuntimeError("proxy not started and no out_port given")
        return f"{self._host}:{self._out_port}"

    @property
    def pid(self) -> int | None:
        """The subprocess id, or None before :meth:`start`."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> ProxyProcess:
        """Start the proxy; return once both ports accept connections.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the ports.

        Returns
        -------
        ProxyProcess
            ``self``.

        Raises
        ------
        RuntimeError
            If already started, or the proxy exited (its output is in the message).
        TimeoutError
            If the ports did not open within ``timeout``.
        """
        if self._proc is not None:
            raise RuntimeError("proxy already started")
        # free ports are only free until someone binds them: retry if we chose them and lost
        attempts = 1 if (self._fixed_in is not None and self._fixed_out is not None) else 3
        deadline = time.monotonic() + timeout
        for attempt in range(attempts):
            self._in_port = self._fixed_in if self._fixed_in is not None else free_port(self._host)
            self._out_port = self._fixed_out
            while self._out_port is None or self._out_port == self._in_port:
                self._out_port = free_port(self._host)
            self._spawn()
            try:
                self._wait_ready(deadline)
                return self
            except RuntimeError:
                output = self._discard()
                if attempt == attempts - 1:
                    raise RuntimeError(f"0MQ proxy exited: {output}") from None
            except TimeoutError:
                self.stop()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "bluesky_ptycho.transport",
            "--in-address",
            f"tcp://{self._host}:{self._in_port}",
            "--out-address",
            f"tcp://{self._host}:{self._out_port}",
            "--hwm",
            str(self._hwm),
        ]
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        logger.debug("started 0MQ proxy pid %d: %s", self._proc.pid, " ".join(cmd))

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self._in_port is not None and self._out_port is not None
        pending = [self._in_port, self._out_port]
        while pending:
            if self._proc.poll() is not None:
                raise RuntimeError("proxy exited")
            pending = [p for p in pending if not _accepts_connections(self._host, p)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"0MQ proxy (pid {self._proc.pid}) ports {pending} not open in time"
                )
            time.sleep(0.05)

    def _discard(self) -> str:
        """Reap an exited proxy and return its output."""
        output = ""
        if self._proc is not None:
            self._proc.wait(timeout=5)
            self._proc = None
        if self._log is not None:
            self._log.seek(0)
            output = self._log.read().decode(errors="replace").strip()
            self._log.close()
            self._log = None
        return output

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the proxy by pid (SIGTERM, then SIGKILL after ``timeout``); idempotent.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait after SIGTERM, and again after SIGKILL.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("0MQ proxy pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self, timeout: float = 5.0) -> None:
        """Kill the proxy by pid with SIGKILL (as a crash would) and reap it; idempotent.

        The ports stay assigned: :meth:`restart` brings a proxy back on the same ones.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 10.0) -> ProxyProcess:
        """Start a new proxy process on the same ports after :meth:`stop` or :meth:`kill`.

        Raises
        ------
        RuntimeError
            If the proxy is still running, or never had ports.
        """
        if self.running:
            raise RuntimeError("the proxy is still running; stop() or kill() it first")
        if self._in_port is None or self._out_port is None:
            raise RuntimeError("the proxy never started: nothing to restart")
        self._proc = None
        self._fixed_in, self._fixed_out = self._in_port, self._out_port
        return self.start(timeout)

    def __enter__(self) -> ProxyProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bluesky_ptycho.transport --in-address A --out-address B [--hwm N]``."""
    parser = argparse.ArgumentParser(description="0MQ proxy for bluesky documents (loopback).")
    parser.add_argument("--in-address", required=True, help="where publishers send (bind)")
    parser.add_argument("--out-address", required=True, help="where subscribers connect (bind)")
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="high-water mark, messages")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest message forwarded",
    )
    args = parser.parse_args(argv)
    try:
        run_proxy(
            args.in_address,
            args.out_address,
            hwm=args.hwm,
            max_message_bytes=args.max_message_bytes,
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
