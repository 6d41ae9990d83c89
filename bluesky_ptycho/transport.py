"""Documents across processes: bluesky's 0MQ ``Publisher`` -> proxy -> ``RemoteDispatcher``.

The RunEngine side is one line, ``publish(RE, "127.0.0.1:5577")``; the consumer side is a
:class:`DocumentFeed`, a ``RemoteDispatcher`` running on a background thread that hands each
``(name, doc)`` to a callback (for instance a ``PtychoCallback``). In between runs the standard
``bluesky-0MQ-proxy``; :class:`ProxyProcess` starts one bound to loopback (tests, demos, a
single-host beamline).

Documents are encoded with msgpack (:func:`serialize` / :func:`deserialize`), never pickle:
unpickling bytes read from a network socket runs whatever code they name. NumPy arrays and
scalars travel as a msgpack extension type holding the dtype, the shape and the raw bytes;
object dtypes are never decoded (``msgpack_numpy``'s decoder unpickles them, so it is not used).
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import msgpack
import numpy as np
import zmq
from bluesky.callbacks.zmq import Publisher, RemoteDispatcher

__all__ = [
    "DocumentFeed",
    "ProxyProcess",
    "Publication",
    "deserialize",
    "free_port",
    "make_publisher",
    "publish",
    "serialize",
]

logger = logging.getLogger(__name__)

#: msgpack extension codes: an ndarray, and a NumPy scalar (same payload, returned as scalar).
_EXT_NDARRAY = 1
_EXT_NPSCALAR = 2
#: Payload layout: uint32 header length (little endian), msgpack header [dtype, shape], raw bytes.
_HEADER_LEN = struct.Struct("<I")


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


def deserialize(data: bytes) -> dict:
    """Decode bytes made by :func:`serialize` back into a document.

    Never executes code from the message: no pickle, and object dtypes are refused.

    Parameters
    ----------
    data : bytes
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


def make_publisher(address: str, prefix: bytes = b"", *, linger: float = 2.0) -> Publisher:
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

    Returns
    -------
    bluesky.callbacks.zmq.Publisher
        Call it as ``publisher(name, doc)``; ``publisher.close()`` releases its socket.
    """
    publisher = Publisher(address, prefix=prefix, serializer=serialize)
    # bluesky gives no way to set socket options; its PUB socket is the private ``_socket``
    sock = getattr(publisher, "_socket", None)
    if isinstance(sock, zmq.Socket):
        sock.setsockopt(zmq.LINGER, max(0, round(1000 * linger)))
    else:  # pragma: no cover - bluesky changed its internals
        logger.warning(
            "cannot bound the Publisher's linger; close() may block if the proxy is gone"
        )
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


def publish(RE: Any, address: str = "127.0.0.1:5577", *, prefix: bytes = b"") -> Publication:
    """Publish a RunEngine's documents to a 0MQ proxy, msgpack-encoded: the one-line RE side.

    Parameters
    ----------
    RE : bluesky.RunEngine
        The RunEngine whose documents are published.
    address : str, optional
        The proxy's *in* address, ``"host:port"``.
    prefix : bytes, optional
        Tag distinguishing this publisher's messages; may not contain ``b" "``.

    Returns
    -------
    Publication
        ``.token`` is the RunEngine subscription; ``.close()`` stops publishing.

    Notes
    -----
    0MQ drops what a PUB socket sends before its subscribers have joined (the "slow joiner"):
    documents emitted in the first few milliseconds after this call may be lost.
    """
    publisher = make_publisher(address, prefix=prefix)
    return Publication(RE=RE, token=RE.subscribe(publisher), publisher=publisher)


# --------------------------------------------------------------------------------------------
# Receiving side
# --------------------------------------------------------------------------------------------


class _DecodeFailure:
    """Stands in for a document whose bytes could not be decoded; the feed skips it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task of ``loop``; must run on the loop's own thread."""
    for task in asyncio.all_tasks(loop):
        task.cancel()


class DocumentFeed:
    """A ``RemoteDispatcher`` on a background thread, feeding ``(name, doc)`` to a callback.

    Parameters
    ----------
    address : str
        The proxy's *out* address, ``"host:port"``.
    callback : callable
        Called as ``callback(name, doc)`` on the feed's thread for every document. Exceptions it
        raises are logged and counted in :attr:`errors`; they never stop the feed.
    prefix : bytes, optional
        Only messages published with this prefix are delivered (``b""``: all of them).
    name : str, optional
        Name of the background thread.

    Notes
    -----
    Messages whose payload is not a msgpack document (pickle, garbage) are counted in
    :attr:`errors` and skipped. A message with an unknown document name makes bluesky's
    ``RemoteDispatcher`` task fail; the feed counts that as an error and reconnects, losing
    whatever is published during the reconnection. Messages that cannot even be split into
    prefix, name and payload are dropped by ``RemoteDispatcher`` itself (it prints a line) and
    are not counted.

    Examples
    --------
    >>> feed = DocumentFeed("127.0.0.1:5578", ptycho_callback)  # doctest: +SKIP
    >>> feed.start()  # doctest: +SKIP
    >>> feed.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        address: str,
        callback: Callable[[str, dict], Any],
        *,
        prefix: bytes = b"",
        name: str = "document-feed",
    ) -> None:
        if not isinstance(prefix, bytes):
            raise TypeError("prefix must be bytes")
        if b" " in prefix:
            raise ValueError(f"prefix {prefix!r} may not contain b' '")
        self._address = address
        self._callback = callback
        self._prefix = prefix
        self._name = name
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._documents_received = 0
        self._errors = 0
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
    def documents_received(self) -> int:
        """Documents decoded and handed to the callback (including those it raised on)."""
        with self._lock:
            return self._documents_received

    @property
    def errors(self) -> int:
        """Undecodable messages, callback exceptions and dispatcher failures so far."""
        with self._lock:
            return self._errors

    @property
    def last_error(self) -> str | None:
        """A description of the most recent error, or None."""
        with self._lock:
            return self._last_error

    # -- control -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and subscribe; return once the SUB socket is connected.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the dispatcher to be up.

        Raises
        ------
        RuntimeError
            If the feed was started (or stopped) before, or the dispatcher failed to start.
        TimeoutError
            If the dispatcher was not up within ``timeout``.

        Notes
        -----
        "Connected" is 0MQ's notion: the connection and subscription complete asynchronously,
        so messages published in the next few milliseconds may still be missed (slow joiner).
        """
        if self._thread is not None:
            raise RuntimeError("a DocumentFeed can be started only once; make a new one")
        if self._stop_requested.is_set():
            raise RuntimeError("this DocumentFeed was stopped before it started; make a new one")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"document feed failed to start: {self._fatal}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"document feed not connected to {self._address} in {timeout} s")

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
        with self._lock:
            loop = self._loop
        if loop is not None:
            # RemoteDispatcher.stop() cannot be called from inside its running loop; cancelling
            # its task on the loop thread makes its start() return and clean up after itself.
            with contextlib.suppress(RuntimeError):  # loop already closed: nothing to cancel
                loop.call_soon_threadsafe(_cancel_all_tasks, loop)
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
            self._last_error = message

    def _decode(self, data: bytes) -> dict | _DecodeFailure:
        """Deserializer for the RemoteDispatcher: never raises, so it never prints or dies."""
        try:
            return deserialize(data)
        except Exception as exc:
            message = f"undecodable message ({len(data)} bytes): {exc}"
            self._record_error(message)
            logger.warning("%s: %s", self._name, message)
            return _DecodeFailure(message)

    def _dispatch(self, name: str, doc: dict | _DecodeFailure) -> None:
        if isinstance(doc, _DecodeFailure):
            return
        with self._lock:
            self._documents_received += 1
        try:
            self._callback(name, doc)
        except Exception as exc:
            self._record_error(f"callback raised on {name!r} document: {exc!r}")
            logger.exception("%s: callback raised on a %r document", self._name, name)

    def _mark_connected(self) -> None:
        self._connected.set()

    def _run(self) -> None:
        while not self._stop_requested.is_set():
            loop = asyncio.new_event_loop()
            with self._lock:
                if self._stop_requested.is_set():
                    loop.close()
                    break
                self._loop = loop
            was_connected = self._connected.is_set()
            try:
                dispatcher = RemoteDispatcher(
                    self._address, prefix=self._prefix, loop=loop, deserializer=self._decode
                )
                dispatcher.subscribe(self._dispatch)
                # runs once the loop runs, i.e. after the SUB socket has connected and subscribed
                loop.call_soon(self._mark_connected)
                dispatcher.start()
            except asyncio.CancelledError:
                pass  # stop() cancelled the dispatcher's task
            except Exception as exc:
                if self._stop_requested.is_set():
                    break
                if not was_connected and not self._connected.is_set():
                    self._fatal = repr(exc)
                    self._record_error(f"dispatcher failed to start: {exc!r}")
                    logger.error("%s: dispatcher failed to start: %r", self._name, exc)
                    break
                self._record_error(f"dispatcher failed, reconnecting: {exc!r}")
                logger.warning("%s: dispatcher failed (%r); reconnecting", self._name, exc)
                self._stop_requested.wait(0.05)
            finally:
                with self._lock:
                    self._loop = None
                if not loop.is_closed():
                    loop.close()


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


class ProxyProcess:
    """``bluesky-0MQ-proxy`` as a subprocess, bound to ``host`` (loopback by default).

    Runs ``python -m bluesky.commandline.zmq_proxy --in-address tcp://HOST:IN
    --out-address tcp://HOST:OUT`` with the current interpreter (the ``--in/out-address``
    form binds the given interface; bare positional ports would bind 0.0.0.0).

    Parameters
    ----------
    in_port : int or None, optional
        Port publishers send to; None picks a free one.
    out_port : int or None, optional
        Port feeds subscribe to; None picks a free one.
    host : str, optional
        Interface to bind.

    Examples
    --------
    >>> with ProxyProcess() as proxy:  # doctest: +SKIP
    ...     publish(RE, proxy.in_address)
    ...     feed = DocumentFeed(proxy.out_address, print)
    """

    def __init__(
        self, in_port: int | None = None, out_port: int | None = None, host: str = "127.0.0.1"
    ) -> None:
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
                    raise RuntimeError(f"bluesky 0MQ proxy exited: {output}") from None
            except TimeoutError:
                self.stop()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "bluesky.commandline.zmq_proxy",
            "--in-address",
            f"tcp://{self._host}:{self._in_port}",
            "--out-address",
            f"tcp://{self._host}:{self._out_port}",
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

    def __enter__(self) -> ProxyProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
