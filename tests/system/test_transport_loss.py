"""Loss on the 0MQ path is seen and reported, and a run always ends (issue 10, item 2).

Real processes throughout: a 0MQ proxy subprocess (:class:`ProxyProcess`, killed with SIGKILL
and restarted on the same ports), bluesky ``Publisher`` s and a :class:`DocumentFeed` feeding a
real :class:`PtychoCallback`. The documents are a recorded ptychography scan (start with
``ptycho`` metadata, descriptor, one uint32 frame per event, stop) built with event-model.

The truth each test checks against is counted on the sending side: frames sent minus frames
the callback used is the real loss; ``status.lost`` must equal it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import event_model
import numpy as np
import pytest
import zmq

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.live import LiveOptions, PacingPolicy
from bluesky_ptycho.setup import ScanSetup
from bluesky_ptycho.transport import (
    DEFAULT_HWM,
    HARD_LIMIT_MARGIN,
    DocumentFeed,
    ProxyProcess,
    make_publisher,
    serialize,
)

WAIT = 30.0  # bound of every wait on a loaded 2-core machine
IDLE = 4.0  # the callback's idle timeout in these tests, s

Docs = list[tuple[str, dict[str, Any]]]


def wait_for(condition: Callable[[], bool], timeout: float = WAIT, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def frame_pool(side: int, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Far-field uint32 patterns of a Gaussian probe on random phase patches (1e6 photons)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] - side / 2
    probe = np.exp(-(yy**2 + xx**2) / (2 * (side / 16) ** 2))
    frames = []
    for _ in range(count):
        phase = np.kron(rng.normal(0.0, 1.0, (side // 8, side // 8)), np.ones((8, 8)))
        far = np.abs(np.fft.fftshift(np.fft.fft2(probe * np.exp(0.5j * phase)))) ** 2
        frames.append(rng.poisson(far * (1e6 / far.sum())).astype(np.uint32))
    return frames


def scan(n: int, side: int) -> Docs:
    """A recorded scan of ``n`` frames of ``side`` px: start, descriptor, events, stop."""
    k = np.arange(n, dtype=float)
    radius = 50e-9 / np.sqrt(np.pi) * np.sqrt(k)
    angle = k * np.pi * (3.0 - np.sqrt(5.0))
    positions = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    setup = ScanSetup(
        energy_eV=13_500.0,
        detector_distance_m=3.2 * side / 256,  # the study's 15.3 nm object pixel at any side
        detector_pixel_m=75e-6,
        crop=side,
        detector_key="det",
        position_keys=("sy", "sx"),
        position_scale_m=1e-6,
        nominal_positions_m=positions,
        num_points=n,
    )
    frames = frame_pool(side)
    run = event_model.compose_run(metadata={"plan_name": "loss", "ptycho": setup.to_start_doc()})
    keys = {
        "det": {"source": "sim", "dtype": "array", "shape": [side, side]},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    docs: Docs = [("start", dict(run.start_doc)), ("descriptor", dict(desc.descriptor_doc))]
    for i in range(n):
        y_um, x_um = positions[i] * 1e6
        event = desc.compose_event(
            data={"det": frames[i % len(frames)], "sy": float(y_um), "sx": float(x_um)},
            timestamps={"det": 0.0, "sy": 0.0, "sx": 0.0},
            seq_num=i + 1,
        )
        docs.append(("event", dict(event)))
    docs.append(("stop", dict(run.compose_stop())))
    return docs


def make_callback() -> PtychoCallback:
    # no iterations while frames arrive and one final pass: the tests are about the documents
    options = LiveOptions(pacing=PacingPolicy(passes_per_batch=0), final_passes=1)
    return PtychoCallback(options=options, idle_timeout=IDLE)


class Link:
    """A proxy process, a feed into ``callback`` and a publisher, all torn down by pid/thread."""

    def __init__(self, callback: Callable[[str, dict], Any], hwm: int = DEFAULT_HWM) -> None:
        self.proxy = ProxyProcess(hwm=hwm).start(timeout=WAIT)
        self.feed = DocumentFeed(self.proxy.out_address, callback, hwm=hwm)
        self.feed.start(timeout=WAIT)
        self.publisher = make_publisher(self.proxy.in_address, hwm=hwm, linger=0.2)

    def join(self) -> None:
        """Beat the slow joiner with start documents of runs without ptycho metadata."""
        before = self.feed.status.documents
        deadline = time.monotonic() + WAIT
        while self.feed.status.documents == before and time.monotonic() < deadline:
            self.publisher("start", dict(event_model.compose_run().start_doc))
            time.sleep(0.05)
        assert self.feed.status.documents > before, "no document crossed the proxy"

    def close(self) -> None:
        self.publisher.close()
        self.feed.stop(timeout=WAIT)
        self.proxy.stop()
        assert not self.proxy.running


@pytest.fixture
def links() -> Iterator[Callable[..., Link]]:
    made: list[Link] = []

    def make(callback: Callable[[str, dict], Any], hwm: int = DEFAULT_HWM) -> Link:
        link = Link(callback, hwm)
        made.append(link)
        return link

    yield make
    for link in made:
        link.close()


@pytest.fixture
def callbacks() -> Iterator[Callable[[], PtychoCallback]]:
    made: list[PtychoCallback] = []

    def make() -> PtychoCallback:
        cb = make_callback()
        made.append(cb)
        return cb

    yield make
    for cb in made:
        cb.close()


def paced(items: Docs, rate: float | None) -> Iterator[tuple[str, dict[str, Any]]]:
    t0 = time.perf_counter()
    for k, item in enumerate(items):
        if rate is not None:
            while time.perf_counter() < t0 + k / rate:
                time.sleep(0.0005)
        yield item


def run_ended(cb: PtychoCallback, uid: str) -> None:
    """The run ends: by its stop, or by the idle timeout when the stop was lost."""
    cb.result(timeout=WAIT + IDLE, run_uid=uid)


# --------------------------------------------------------------------------------------------
# the feed alone
# --------------------------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.docs: Docs = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        with self.lock:
            self.docs.append((name, doc))


def test_feed_status_follows_the_proxy_through_sigkill_and_restart(
    links: Callable[..., Link],
) -> None:
    sink = Counter()
    link = links(sink)
    assert link.feed.wait_connected(WAIT), "the feed never connected to a running proxy"
    link.join()
    status = link.feed.status
    assert status.connected and status.errors == 0 and status.oversized == 0
    assert status.last_document_age is not None and status.last_document_age < WAIT
    assert status.connections == 1

    pid = link.proxy.pid
    link.proxy.kill()
    assert not link.proxy.running
    t_kill = time.monotonic()
    assert wait_for(lambda: not link.feed.status.connected, timeout=10.0), (
        "the feed still says connected 10 s after the proxy died"
    )
    print(f"disconnection seen {time.monotonic() - t_kill:.2f} s after SIGKILL")
    time.sleep(1.0)
    assert not link.feed.status.connected
    age = link.feed.status.last_document_age
    assert age is not None and age >= 1.0  # nothing arrives while the proxy is away

    link.proxy.restart(timeout=WAIT)
    assert link.proxy.pid != pid
    assert wait_for(lambda: link.feed.status.connected), "no reconnection after the restart"
    link.join()  # documents flow again: the SUB and the PUB reconnected by themselves
    assert link.feed.status.errors == 0
    assert link.feed.status.connections == 2  # lost once, back once


def test_oversized_documents_are_dropped_before_decoding(
    links: Callable[..., Link],
) -> None:
    sink = Counter()
    link = links(sink)
    link.feed.stop()
    limit = 64 * 1024
    feed = DocumentFeed(link.proxy.out_address, sink, max_document_bytes=limit)
    feed.start(timeout=WAIT)
    try:
        link.feed = feed
        link.join()
        # a hostile start document: 1 MB of payload where 64 KiB are allowed
        link.publisher("start", {"uid": "huge", "blob": b"\x00" * (1 << 20)})
        link.publisher("start", {"uid": "small"})
        assert wait_for(lambda: any(d.get("uid") == "small" for _, d in sink.docs))
        assert feed.status.oversized == 1
        assert not any(d.get("uid") == "huge" for _, d in sink.docs)
        assert feed.status.errors == 0
        # just under the limit still passes
        link.publisher("start", {"uid": "fits", "blob": b"\x00" * (limit - 1024)})
        assert wait_for(lambda: any(d.get("uid") == "fits" for _, d in sink.docs))
        assert feed.status.oversized == 1
        # above the hard limit 0MQ refuses the message and drops the link; it comes back
        link.publisher("start", {"uid": "absurd", "blob": b"\x00" * (limit + HARD_LIMIT_MARGIN)})
        link.join()
        assert not any(d.get("uid") == "absurd" for _, d in sink.docs)
        assert feed.status.connected
    finally:
        feed.stop(timeout=WAIT)


def test_feed_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_document_bytes"):
        DocumentFeed("127.0.0.1:1", print, max_document_bytes=0)
    with pytest.raises(ValueError, match="hwm"):
        DocumentFeed("127.0.0.1:1", print, hwm=0)
    with pytest.raises(ValueError, match="hwm"):
        ProxyProcess(hwm=-1)


# --------------------------------------------------------------------------------------------
# a reconstruction behind the feed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hwm", [DEFAULT_HWM, 50], ids=["default-hwm", "hwm50"])
def test_proxy_killed_and_restarted_mid_scan(
    links: Callable[..., Link], callbacks: Callable[[], PtychoCallback], hwm: int
) -> None:
    """SIGKILL of the proxy at frame 200 of 600 (100 Hz), back after the feed saw it gone.

    The publisher's queue keeps what it sends while the proxy is away, up to its high-water
    mark: with the default (4000) a 2 s outage at 100 Hz can lose only what was inside the
    killed proxy; with 50 it must lose about 150 frames. Either way the reported loss is
    the real one and the run ends with its stop.
    """
    cb = callbacks()
    link = links(cb, hwm=hwm)
    link.join()
    docs = scan(600, 64)
    uid = docs[0][1]["uid"]
    sent = sum(name == "event" for name, _ in docs)
    seen_down = seen_up_again = False
    killed_at = restarted_at = None
    for k, (name, doc) in enumerate(paced(docs, 100.0)):
        link.publisher(name, doc)
        if k == 200:
            link.proxy.kill()  # SIGKILL mid-scan; the publisher keeps publishing
            killed_at = time.monotonic()
        if killed_at is not None and restarted_at is None:
            seen_down = seen_down or not link.feed.status.connected
            if seen_down and time.monotonic() - killed_at > 2.0:
                link.proxy.restart(timeout=WAIT)
                restarted_at = time.monotonic()
        if restarted_at is not None and link.feed.status.connected:
            seen_up_again = True
    assert seen_down, "the feed never reported the dead proxy"
    assert killed_at is not None and restarted_at is not None
    assert seen_up_again or wait_for(lambda: link.feed.status.connected)
    run_ended(cb, uid)
    status = cb.status
    real = sent - status.frames_used
    print(
        f"proxy outage {restarted_at - killed_at:.1f} s at 100 Hz: sent {sent}, used "
        f"{status.frames_used}, lost {status.lost} reported, missing stops "
        f"{status.missing_stops}"
    )
    assert status.run_uid == uid
    assert status.lost == real
    if hwm < 200:  # the outage outlasted the publisher's queue
        assert real > 0, "a 2 s outage at 100 Hz lost nothing: the test did not test loss"
    assert status.missing_stops == 0  # the stop was sent after the restart


def test_stop_lost_with_the_proxy_the_run_ends_by_idle_timeout(
    links: Callable[..., Link], callbacks: Callable[[], PtychoCallback]
) -> None:
    cb = callbacks()
    link = links(cb)
    link.join()
    docs = scan(100, 64)
    uid = docs[0][1]["uid"]
    for name, doc in paced(docs[:-1], 200.0):
        link.publisher(name, doc)
    assert wait_for(lambda: cb.status.frames_received == 100)
    link.proxy.kill()
    assert wait_for(lambda: not link.feed.status.connected, timeout=10.0)
    link.publisher(*docs[-1])  # the stop goes nowhere
    run_ended(cb, uid)
    status = cb.status
    assert status.missing_stops == 1  # ended by the idle timeout, not by a stop
    assert status.lost == 0 == 100 - status.frames_used


@pytest.mark.parametrize(
    ("rate", "hwm"),
    [(2000.0, DEFAULT_HWM), (None, 100)],
    ids=["2kHz-default-hwm", "unpaced-hwm100"],
)
def test_burst_reported_loss_is_the_real_loss(
    links: Callable[..., Link],
    callbacks: Callable[[], PtychoCallback],
    rate: float | None,
    hwm: int,
) -> None:
    """2,025 frames of 256 px: at the highest rate measured loss-free (benchmarks/soak.py),
    and unpaced through queues of 100 messages, where the consumer cannot keep up."""
    cb = callbacks()
    link = links(cb, hwm=hwm)
    link.join()
    docs = scan(2025, 256)
    uid = docs[0][1]["uid"]
    messages = [b" ".join([b"", name.encode(), serialize(doc)]) for name, doc in docs]
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    try:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{link.proxy.in_address}")
        # the raw socket's own slow joiner: until its probe shows up
        token = uuid.uuid4().hex
        before = link.feed.status.documents
        while link.feed.status.documents == before:
            sock.send(b" ".join([b"", b"start", serialize({"uid": token})]))
            time.sleep(0.05)
        t0 = time.perf_counter()
        for message in paced([(str(k), {"m": m}) for k, m in enumerate(messages[:-1])], rate):
            sock.send(message[1]["m"])
        elapsed = time.perf_counter() - t0
        time.sleep(1.0)  # the detector is done; the stop follows after the last readout
        sock.send(messages[-1])
        run_ended(cb, uid)
    finally:
        sock.close(linger=0)
        context.term()
    status = cb.status
    sent = len(messages) - 3
    real = sent - status.frames_used
    print(
        f"burst {sent / elapsed:.0f} Hz, hwm {hwm}: sent {sent}, used {status.frames_used}, "
        f"lost {status.lost} reported, {real} real; missing stops {status.missing_stops}"
    )
    assert status.run_uid == uid
    assert status.lost == real
    # the joiner's start documents are rejected (no ptycho metadata); nothing of the scan is
    assert not [r for r in status.rejections if r.run_uid == uid], status.reasons
