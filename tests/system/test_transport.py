"""Documents over a real ``bluesky-0MQ-proxy`` subprocess: msgpack encoding, a real RunEngine
publishing, a :class:`DocumentFeed` receiving, and no pickle anywhere on the receiving side.

Everything binds 127.0.0.1 on ports picked at run time; every subprocess is stopped by pid in a
fixture finalizer and every wait is bounded.
"""

from __future__ import annotations

import os
import pickle
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bluesky.plans as bp
import msgpack
import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky.run_engine import DocumentNames
from ophyd.sim import SynAxis, SynSignal

from bluesky_ptycho.transport import (
    DocumentFeed,
    ProxyProcess,
    deserialize,
    free_port,
    make_publisher,
    publish,
    serialize,
)

WAIT = 15.0  # generous bound for anything that crosses the proxy on a loaded machine

Docs = list[tuple[str, dict[str, Any]]]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = WAIT, interval: float = 0.005) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Collector:
    """Thread-safe ``(name, doc)`` sink that sets probe documents aside."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.docs: Docs = []
        self.probes: list[str] = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            if "probe" in doc:
                self.probes.append(doc["probe"])
            else:
                self.docs.append((name, doc))

    def names(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.docs]

    def has_probe(self, token: str) -> bool:
        with self._lock:
            return token in self.probes


def join_link(send_probe: Callable[[dict[str, Any]], None], sink: Collector) -> None:
    """Beat the 0MQ slow joiner: send probe documents until one comes out of the feed."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        send_probe({"probe": token})
        if wait_for(lambda: sink.has_probe(token), timeout=0.1):
            return
    raise AssertionError("no probe document crossed the proxy in time")


def assert_same(sent: Any, received: Any, path: str = "doc") -> None:
    """Recursive equality; arrays must agree in dtype, shape and values, tuples may be lists."""
    if isinstance(sent, np.ndarray):
        assert isinstance(received, np.ndarray), path
        assert received.dtype == sent.dtype, path
        assert received.shape == sent.shape, path
        np.testing.assert_array_equal(received, sent, err_msg=path)
    elif isinstance(sent, np.generic):
        assert type(received) is type(sent), path
        assert received == sent or (np.isnan(sent) and np.isnan(received)), path
    elif isinstance(sent, dict):
        assert isinstance(received, dict), path
        assert sorted(received) == sorted(sent), path
        for key in sent:
            assert_same(sent[key], received[key], f"{path}[{key!r}]")
    elif isinstance(sent, (list, tuple)):
        assert isinstance(received, list), path
        assert len(received) == len(sent), path
        for i, (a, b) in enumerate(zip(sent, received, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert type(received) is type(sent), path
        assert received == sent, path


class Touch:
    """A pickle gadget: unpickling it creates ``path`` (a harmless stand-in for any code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy() -> Iterator[ProxyProcess]:
    proc = ProxyProcess()
    try:
        proc.start(timeout=WAIT)
        yield proc
    finally:
        proc.stop()
    assert not proc.running


@pytest.fixture
def prefix() -> bytes:
    """A prefix of its own per test, so tests sharing the proxy never see each other's traffic."""
    return uuid.uuid4().hex[:12].encode()


@pytest.fixture
def feeds() -> Iterator[Callable[..., DocumentFeed]]:
    made: list[DocumentFeed] = []

    def make(address: str, callback: Callable[[str, dict], Any], **kwargs: Any) -> DocumentFeed:
        feed = DocumentFeed(address, callback, **kwargs)
        made.append(feed)
        feed.start(timeout=WAIT)
        return feed

    yield make
    for feed in made:
        feed.stop(timeout=WAIT)
        assert not feed.running


@pytest.fixture
def publishers() -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(address: str, **kwargs: Any) -> Publisher:
        pub = make_publisher(address, **kwargs)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()  # bounded: make_publisher sets a finite linger


@pytest.fixture
def raw_pub() -> Iterator[Callable[[str], zmq.Socket]]:
    """Plain 0MQ PUB sockets for sending hand-made messages to the proxy."""
    ctx = zmq.Context()
    made: list[zmq.Socket] = []

    def make(address: str) -> zmq.Socket:
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{address}")
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)
    ctx.term()


# --------------------------------------------------------------------------------------------
# serialize / deserialize
# --------------------------------------------------------------------------------------------


def _event_doc() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "uid": "e1",
        "seq_num": 1,
        "time": 1.5e9,
        "data": {
            "img": rng.random((256, 256), dtype=np.float32),
            "counts": np.arange(12, dtype=np.uint16).reshape(3, 4),
            "mask": rng.random((8, 8)) > 0.5,
            "x": np.float64(1.25),
            "n": np.int32(-7),
            "ok": np.bool_(True),
        },
        "timestamps": {"img": 1.5e9, "counts": 1.5e9},
        "filled": {"img": True},
        "nothing": None,
        "flags": [True, False, None, 3, -2, 2.5, "s"],
        "nested": {"a": {"b": [np.array([1.0, 2.0]), {"c": np.zeros((0, 3), dtype=np.int8)}]}},
        "blob": b"\x00\x01 raw",
    }


def test_round_trip_event_with_image() -> None:
    doc = _event_doc()
    data = serialize(doc)
    assert isinstance(data, bytes)
    assert len(data) > 256 * 256 * 4  # the image travels as raw bytes, not text
    back = deserialize(data)
    assert_same(doc, back)
    img = back["data"]["img"]
    assert img.flags.writeable and img.flags.c_contiguous
    img[0, 0] = -1.0  # an ordinary array: writable, and not aliasing the message
    assert deserialize(data)["data"]["img"][0, 0] != -1.0


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.float16),
        np.arange(6, dtype=">f8").reshape(2, 3),  # big endian stays big endian
        np.arange(6, dtype=np.int64).reshape(3, 2).T,  # not C-contiguous
        (np.arange(4) + 1j * np.arange(4)).astype(np.complex64),
        np.array([np.iinfo(np.uint64).max, 0], dtype=np.uint64),
        np.array(["ab", "c"]),
        np.array([b"xy", b"z"]),
        np.array(["2024-01-01T00:00:00.5"], dtype="datetime64[ms]"),
        np.zeros(3, dtype=[("x", "<f8"), ("y", "<i2", (2,))]),
        np.array(3.5),  # 0-d
        np.array([np.nan, np.inf, -0.0]),
    ],
    ids=lambda a: f"{a.dtype}-{a.shape}",
)
def test_round_trip_dtypes(array: np.ndarray) -> None:
    back = deserialize(serialize({"a": array, "s": array.reshape(-1)[:1][0] if array.size else 0}))
    assert back["a"].dtype == array.dtype
    assert back["a"].shape == array.shape
    np.testing.assert_array_equal(back["a"], array)
    assert back["a"].flags.writeable


def test_scalars_and_tuples() -> None:
    doc = {"f": np.float32(0.1), "b": np.bool_(False), "c": 1 + 2j, "t": (1, (2, 3)), "u": "ü"}
    back = deserialize(serialize(doc))
    assert type(back["f"]) is np.float32 and back["f"] == np.float32(0.1)
    assert type(back["b"]) is np.bool_ and not back["b"]
    assert back["c"] == 1 + 2j
    assert back["t"] == [1, [2, 3]]
    assert back["u"] == "ü"


def test_serialize_refuses_arbitrary_objects() -> None:
    with pytest.raises(TypeError, match="cannot serialize"):
        serialize({"x": object()})


def _ext_array(dtype: str, shape: list[int], raw: bytes) -> bytes:
    header = msgpack.packb([dtype, shape])
    return len(header).to_bytes(4, "little") + header + raw


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all \xff\xfe",
        pickle.dumps({"uid": "x"}),
        msgpack.packb([1, 2, 3]),  # not a mapping
        serialize({"a": 1})[:-1],  # truncated
        serialize({"a": 1}) + b"\x00",  # trailing bytes
        msgpack.packb({"a": msgpack.ExtType(1, _ext_array("|O", [1], b"\x00" * 8))}),
        msgpack.packb({"a": msgpack.ExtType(1, _ext_array("<f4", [4], b"\x00" * 15))}),
        msgpack.packb({"a": msgpack.ExtType(1, _ext_array("<f4", [-1], b""))}),
        msgpack.packb({"a": msgpack.ExtType(1, b"\x01")}),
        msgpack.packb({"a": msgpack.ExtType(99, b"")}),
    ],
    ids=[
        "empty",
        "reserved-byte",
        "garbage",
        "pickle",
        "list",
        "truncated",
        "trailing",
        "object-dtype",
        "short-data",
        "negative-shape",
        "short-header",
        "unknown-ext",
    ],
)
def test_deserialize_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        deserialize(data)


def test_deserialize_never_unpickles(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Touch(control)))  # the gadget works: unpickling runs code
    assert control.exists()

    marker = tmp_path / "marker"
    with pytest.raises(ValueError):
        deserialize(pickle.dumps({"uid": "x", "evil": Touch(marker)}))
    # msgpack_numpy's wire format for object arrays carries a pickle: must not be honoured
    numpy_style = msgpack.packb(
        {
            "a": {
                b"nd": True,
                b"type": "|O",
                b"kind": b"O",
                b"shape": [1],
                b"data": pickle.dumps(Touch(marker)),
            }
        }
    )
    back = deserialize(numpy_style)
    assert isinstance(back["a"], dict)  # just data
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# over the proxy
# --------------------------------------------------------------------------------------------


def test_run_engine_documents_cross_the_proxy(
    proxy: ProxyProcess, prefix: bytes, feeds: Callable[..., DocumentFeed]
) -> None:
    rng = np.random.default_rng(1)
    det = SynSignal(func=lambda: rng.random((256, 256), dtype=np.float32), name="det")
    motor = SynAxis(name="motor")
    RE = RunEngine({})
    local = Collector()
    RE.subscribe(local)
    publication = publish(RE, proxy.in_address, prefix=prefix)
    assert isinstance(publication.token, int)

    remote = Collector()
    feed = feeds(proxy.out_address, remote, prefix=prefix)
    assert feed.running

    join_link(lambda doc: RE.emit_sync(DocumentNames.start, doc), remote)
    (uid,) = RE(bp.scan([det], motor, 0.0, 1.0, 5))

    assert wait_for(lambda: "stop" in remote.names()), remote.names()
    names = remote.names()
    assert names == local.names()
    assert names == ["start", "descriptor", "event", "event", "event", "event", "event", "stop"]
    assert remote.docs[0][1]["uid"] == uid
    assert [d["seq_num"] for n, d in remote.docs if n == "event"] == [1, 2, 3, 4, 5]
    for (_, sent), (_, received) in zip(local.docs, remote.docs, strict=True):
        assert_same(sent, received)
    frames = [d["data"]["det"] for n, d in remote.docs if n == "event"]
    assert all(f.dtype == np.float32 and f.shape == (256, 256) for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    assert feed.errors == 0, feed.last_error

    publication.close()
    received = len(remote.docs)
    RE(bp.count([det]))  # no longer published
    time.sleep(0.3)
    assert len(remote.docs) == received


def test_pickle_payload_is_only_an_error(
    proxy: ProxyProcess,
    prefix: bytes,
    feeds: Callable[..., DocumentFeed],
    publishers: Callable[..., Publisher],
    raw_pub: Callable[[str], zmq.Socket],
    tmp_path: Path,
) -> None:
    control = tmp_path / "control"
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Touch(control)))
    assert control.exists()  # the payload below would run code if anyone unpickled it
    # exactly what bluesky's default (pickle) Publisher would send
    evil = b" ".join([prefix, b"start", pickle.dumps({"uid": "evil", "gadget": Touch(marker)})])

    sink = Collector()
    feed = feeds(proxy.out_address, sink, prefix=prefix)
    good = publishers(proxy.in_address, prefix=prefix)
    bad = raw_pub(proxy.in_address)
    join_link(lambda doc: good("start", doc), sink)

    # send the pickle until the feed has seen it (the bad socket has its own slow joiner)
    deadline = time.monotonic() + WAIT
    while feed.errors == 0 and time.monotonic() < deadline:
        bad.send(evil)
        wait_for(lambda: feed.errors > 0, timeout=0.1)
    assert not marker.exists(), "the pickle payload was unpickled"
    assert feed.errors > 0
    assert "undecodable" in (feed.last_error or "")
    # only the good publisher's documents reached the callback
    assert feed.documents_received == len(sink.probes) + len(sink.docs)
    assert not sink.docs
    assert feed.running

    good("start", {"uid": "after"})  # still serving
    assert wait_for(lambda: ("start", {"uid": "after"}) in sink.docs)
    assert not marker.exists()


def test_unknown_document_name_is_an_error_and_the_feed_goes_on(
    proxy: ProxyProcess,
    prefix: bytes,
    feeds: Callable[..., DocumentFeed],
    publishers: Callable[..., Publisher],
) -> None:
    sink = Collector()
    feed = feeds(proxy.out_address, sink, prefix=prefix)
    pub = publishers(proxy.in_address, prefix=prefix)
    join_link(lambda doc: pub("start", doc), sink)

    pub("no-such-document", {})  # bluesky's RemoteDispatcher task died on this
    pub("stop", {"uid": "s"})  # the very next document is still delivered
    assert wait_for(lambda: ("stop", {"uid": "s"}) in sink.docs)
    assert feed.errors == 1
    assert "unknown document name" in (feed.last_error or "")
    assert "no-such-document" in (feed.last_error or "")
    assert feed.running


def test_messages_without_envelope_are_counted(
    proxy: ProxyProcess,
    feeds: Callable[..., DocumentFeed],
    publishers: Callable[..., Publisher],
    raw_pub: Callable[[str], zmq.Socket],
) -> None:
    """bluesky's RemoteDispatcher printed and dropped these; the feed counts them as errors."""
    sink = Collector()
    feed = feeds(proxy.out_address, sink)  # no prefix: it sees every message
    good = publishers(proxy.in_address)
    bad = raw_pub(proxy.in_address)
    join_link(lambda doc: good("start", doc), sink)
    deadline = time.monotonic() + WAIT
    while feed.errors == 0 and time.monotonic() < deadline:
        bad.send(b"no-spaces-at-all")  # the raw socket has its own slow joiner
        wait_for(lambda: feed.errors > 0, timeout=0.1)
    assert feed.errors > 0
    assert "not 'prefix name payload'" in (feed.last_error or "")
    assert feed.status.errors == feed.errors
    assert feed.running


def test_feed_survives_raising_callback(
    proxy: ProxyProcess,
    prefix: bytes,
    feeds: Callable[..., DocumentFeed],
    publishers: Callable[..., Publisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Collector()

    def fragile(name: str, doc: dict[str, Any]) -> None:
        if doc.get("boom"):
            raise RuntimeError(f"boom {doc['seq_num']}")
        sink(name, doc)

    feed = feeds(proxy.out_address, fragile, prefix=prefix)
    pub = publishers(proxy.in_address, prefix=prefix)
    join_link(lambda doc: pub("start", doc), sink)
    base = feed.documents_received

    for i in range(1, 11):
        pub("event", {"seq_num": i, "boom": i % 2 == 0})
    assert wait_for(lambda: feed.documents_received == base + 10)
    assert [d["seq_num"] for _, d in sink.docs] == [1, 3, 5, 7, 9]
    assert feed.errors == 5
    assert "boom 10" in (feed.last_error or "")
    assert feed.running
    assert any("callback raised" in r.getMessage() for r in caplog.records)


def test_stop_from_another_thread(
    proxy: ProxyProcess,
    prefix: bytes,
    publishers: Callable[..., Publisher],
) -> None:
    sink = Collector()
    feed = DocumentFeed(proxy.out_address, sink, prefix=prefix, name="feed-under-test")
    try:
        feed.start(timeout=WAIT)
        pub = publishers(proxy.in_address, prefix=prefix)
        join_link(lambda doc: pub("start", doc), sink)
        thread = next(t for t in threading.enumerate() if t.name == "feed-under-test")

        t0 = time.monotonic()
        stopper = threading.Thread(target=feed.stop, kwargs={"timeout": 5.0})
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert time.monotonic() - t0 < 5.0
        assert not thread.is_alive()
        assert not feed.running
        feed.stop()  # idempotent
        with pytest.raises(RuntimeError):
            feed.start()
    finally:
        feed.stop(timeout=WAIT)


def test_stop_from_inside_the_callback(
    proxy: ProxyProcess,
    prefix: bytes,
    publishers: Callable[..., Publisher],
) -> None:
    sink = Collector()
    holder: list[DocumentFeed] = []

    def stop_on_stop(name: str, doc: dict[str, Any]) -> None:
        sink(name, doc)
        if name == "stop":
            holder[0].stop()

    feed = DocumentFeed(proxy.out_address, stop_on_stop, prefix=prefix)
    holder.append(feed)
    try:
        feed.start(timeout=WAIT)
        pub = publishers(proxy.in_address, prefix=prefix)
        join_link(lambda doc: pub("start", doc), sink)
        pub("stop", {"uid": "s"})
        assert wait_for(lambda: not feed.running)
        assert feed.errors == 0, feed.last_error
    finally:
        feed.stop(timeout=WAIT)


def test_publisher_close_is_bounded_when_the_proxy_is_gone(
    feeds: Callable[..., DocumentFeed],
) -> None:
    proc = ProxyProcess()
    try:
        proc.start(timeout=WAIT)
        sink = Collector()
        feeds(proc.out_address, sink)
        pub = make_publisher(proc.in_address, linger=0.2)
        join_link(lambda doc: pub("start", doc), sink)
    finally:
        proc.stop()
    for i in range(20):  # queued for a proxy that will never come back
        pub("event", {"seq_num": i, "data": {"img": np.zeros((64, 64), np.float32)}})
    closer = threading.Thread(target=pub.close, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "Publisher.close() blocked on undeliverable messages"


def test_feed_start_fails_cleanly_on_bad_address() -> None:
    feed = DocumentFeed("127.0.0.1:not-a-port", lambda name, doc: None)
    with pytest.raises(RuntimeError, match="failed to start"):
        feed.start(timeout=WAIT)
    assert not feed.running
    assert feed.errors == 1
    feed.stop()


def test_latency_per_document(
    proxy: ProxyProcess,
    prefix: bytes,
    feeds: Callable[..., DocumentFeed],
    publishers: Callable[..., Publisher],
) -> None:
    arrivals: dict[int, float] = {}
    sink = Collector()

    def timed(name: str, doc: dict[str, Any]) -> None:
        if "probe" in doc:
            sink(name, doc)
        else:
            arrivals[doc["seq_num"]] = time.perf_counter()

    feeds(proxy.out_address, timed, prefix=prefix)
    pub = publishers(proxy.in_address, prefix=prefix)
    join_link(lambda doc: pub("start", doc), sink)
    img = np.random.default_rng(2).random((256, 256), dtype=np.float32)
    latencies = []
    for i in range(40):
        t0 = time.perf_counter()
        pub("event", {"seq_num": i, "data": {"img": img}})
        assert wait_for(lambda i=i: i in arrivals, interval=0.0002)
        latencies.append(arrivals[i] - t0)
    median = statistics.median(latencies)
    print(f"median latency per 256x256 float32 event document: {1e3 * median:.2f} ms")
    assert median < 0.25  # generous: ~2-3 ms on an idle machine


# --------------------------------------------------------------------------------------------
# the proxy process
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_proxy_process_lifecycle() -> None:
    proc = ProxyProcess()
    try:
        with proc as started:
            assert started is proc
            pid = proc.pid
            assert pid is not None and _pid_alive(pid)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert f"tcp://127.0.0.1:{proc.in_address.split(':')[1]}".encode() in cmdline
            assert f"tcp://127.0.0.1:{proc.out_address.split(':')[1]}".encode() in cmdline
            assert proc.in_address.startswith("127.0.0.1:") and proc.in_address != proc.out_address
        assert not proc.running
        assert not _pid_alive(pid)
        proc.stop()  # idempotent
    finally:
        proc.stop()


def test_proxy_on_busy_port_fails_without_leaking() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = ProxyProcess(in_port=port, out_port=free_port())
        try:
            with pytest.raises(RuntimeError, match="proxy exited"):
                proc.start(timeout=WAIT)
            assert not proc.running
            assert proc.pid is None
        finally:
            proc.stop()
