"""Soak: a live scan of 256 px frames through the 0MQ proxy into the Tango device server.

Starts a proxy (:class:`bluesky_ptycho.transport.ProxyProcess`) and a ``bluesky-ptycho serve``
device server as subprocesses on loopback, arms the device (``Start``), and publishes a recorded
document stream of a ptychography scan (start with ``ptycho`` metadata, descriptor, one event
per 256 x 256 uint32 frame, stop) at a fixed rate with bluesky's ``Publisher``
(:func:`~bluesky_ptycho.transport.make_publisher`). Prints frames sent, received and used by
the device, frames lost as the device reports them (``FramesLost``) and as they really are
(sent minus received), the server's peak RSS, the event latency (publish time to the growth
of the device's ``PatternsReceived``, polled every 5 ms) p50/p95, and, after a short rate
sweep, the highest rate with zero loss.

The sweep sends pre-encoded messages of the same documents on a PUB socket configured like
``make_publisher``'s (a Python ``Publisher`` deep-copies and encodes every document and cannot
reach 2 kHz on a 2-core machine); each sweep point is one run of ``--sweep-frames`` frames.

    python benchmarks/soak.py                          # the study's 11,245 frames at 100 Hz
    python benchmarks/soak.py --frames 2000 --rate 100 --sweep 500,1000,1500,2000,3000
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# keep this folder off sys.path: benchmarks/tango.py would shadow PyTango
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import event_model  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

from bluesky_ptycho import transport  # noqa: E402
from bluesky_ptycho.serve import ServerProcess  # noqa: E402
from bluesky_ptycho.setup import ScanSetup  # noqa: E402
from bluesky_ptycho.transport import ProxyProcess, make_publisher, serialize  # noqa: E402

#: the socket high-water mark of this version (0MQ's default, 1000, before it was set)
DEFAULT_HWM = int(getattr(transport, "DEFAULT_HWM", 1000))

DEVICE = "bench/soak/1"
SIDE = 256
END_PHASES = ("finished", "stopped", "fault")
EXTRA_ATTRIBUTES = ("FramesLost", "DuplicateDocuments", "FeedConnected")


# --------------------------------------------------------------------------------------------
# the recorded scan
# --------------------------------------------------------------------------------------------


def spiral_positions_m(n: int, step_m: float = 50e-9) -> np.ndarray:
    """``n`` points of a Fermat spiral, about ``step_m`` apart, ``(row, col)`` in metres."""
    k = np.arange(n, dtype=float)
    radius = step_m / math.sqrt(math.pi) * np.sqrt(k)
    angle = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)


def frame_pool(count: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Far-field uint32 patterns of a Gaussian probe on random phase patches, 1e7 photons."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[:SIDE, :SIDE].astype(np.float64) - SIDE / 2
    r2: np.ndarray = grid[0] ** 2 + grid[1] ** 2
    probe = np.exp(-r2 / (2 * 8.0**2) + 0.002j * r2)
    frames = []
    for _ in range(count):
        coarse = rng.normal(0.0, 1.0, (SIDE // 8, SIDE // 8))
        phase: np.ndarray = np.kron(coarse, np.ones((8, 8)))  # smooth-ish features
        far = np.fft.fftshift(np.fft.fft2(probe * np.exp(0.6j * phase)))
        intensity = np.abs(far) ** 2
        intensity *= 1e7 / intensity.sum()
        frames.append(rng.poisson(intensity).astype(np.uint32))
    return frames


def scan_documents(n: int, frames: list[np.ndarray]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents of one ``n``-frame scan: start, descriptor, ``n`` events, stop."""
    positions = spiral_positions_m(n)
    setup = ScanSetup(
        energy_eV=13_500.0,
        detector_distance_m=3.2,
        detector_pixel_m=75e-6,
        crop=SIDE,
        detector_key="det",
        position_keys=("sy", "sx"),
        position_scale_m=1e-6,
        nominal_positions_m=positions,
        num_points=n,
    )
    run = event_model.compose_run(metadata={"plan_name": "soak", "ptycho": setup.to_start_doc()})
    keys = {
        "det": {"source": "sim", "dtype": "array", "shape": [SIDE, SIDE], "dtype_numpy": "<u4"},
        "sy": {"source": "sim", "dtype": "number", "shape": []},
        "sx": {"source": "sim", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    yield "start", dict(run.start_doc)
    yield "descriptor", dict(desc.descriptor_doc)
    for k in range(n):
        now = time.time()
        y_um, x_um = positions[k] * 1e6
        event = desc.compose_event(
            data={"det": frames[k % len(frames)], "sy": float(y_um), "sx": float(x_um)},
            timestamps={"det": now, "sy": now, "sx": now},
            seq_num=k + 1,
        )
        yield "event", dict(event)
    yield "stop", dict(run.compose_stop())


def paced(items: list[Any] | Iterator[Any], rate: float) -> Iterator[tuple[int, Any]]:
    """Yield ``(k, item)`` no earlier than ``k / rate`` seconds after the first."""
    t0 = time.perf_counter()
    for k, item in enumerate(items):
        target = t0 + k / rate
        while True:
            left = target - time.perf_counter()
            if left <= 0:
                break
            if left > 0.0015:
                time.sleep(left - 0.001)
        yield k, item


# --------------------------------------------------------------------------------------------
# the device side
# --------------------------------------------------------------------------------------------


@dataclass
class Poller:
    """Reads the device's counters every ``period`` s on its own thread.

    ``samples`` holds ``(time, DocumentsReceived, PatternsReceived, ScanUid)``.
    """

    address: str
    period: float = 0.005
    samples: list[tuple[float, int, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import tango

        dev = tango.DeviceProxy(self.address)
        names = ["DocumentsReceived", "PatternsReceived", "ScanUid"]
        while not self._stop.is_set():
            try:
                docs, patterns, uid = (a.value for a in dev.read_attributes(names))
            except tango.DevFailed:
                continue
            self.samples.append((time.perf_counter(), int(docs), int(patterns), str(uid)))
            time.sleep(self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def latencies(sent_at: list[float], samples: list[tuple[float, int]], base: int) -> np.ndarray:
    """Per frame ``k``: the first sample with a count ``>= base + k + 1`` minus its send time."""
    out = []
    j = 0
    for k, t_sent in enumerate(sent_at):
        while j < len(samples) and samples[j][1] < base + k + 1:
            j += 1
        if j == len(samples):
            break
        out.append(samples[j][0] - t_sent)
    return np.asarray(out)


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of a live process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def read(dev: Any, names: tuple[str, ...], present: set[str]) -> dict[str, Any]:
    return {name: (dev.read_attribute(name).value if name in present else None) for name in names}


def wait_run_end(dev: Any, uid: str, timeout: float) -> str:
    """Wait until the device shows run ``uid`` ended (or the count stops growing); its phase."""
    deadline = time.monotonic() + timeout
    last, still = -1, 0
    while time.monotonic() < deadline:
        phase = str(dev.RunPhase)
        if str(dev.ScanUid) == uid and phase in END_PHASES:
            return phase
        count = int(dev.PatternsReceived)
        still = still + 1 if count == last else 0
        last = count
        time.sleep(0.25)
    return f"{dev.RunPhase} (no end within {timeout:.0f} s)"


def _percentiles(values: np.ndarray) -> str:
    if not values.size:
        return "n/a"
    p50, p95 = np.percentile(values, [50, 95]) * 1e3
    return f"p50 {p50:.1f} ms p95 {p95:.1f} ms"


@dataclass
class RunResult:
    rate: float
    sent: int
    received: int
    used: int
    reported_lost: int | None
    duplicates: int | None
    connected: bool | None
    phase: str
    achieved_rate: float
    latency: np.ndarray
    view_latency: np.ndarray

    @property
    def real_lost(self) -> int:
        return self.sent - self.received

    def line(self) -> str:
        rep = "n/a" if self.reported_lost is None else str(self.reported_lost)
        return (
            f"{self.rate:7.0f} Hz (achieved {self.achieved_rate:7.0f}): sent {self.sent} "
            f"received {self.received} used {self.used} lost real {self.real_lost} "
            f"reported {rep}; run {self.phase}; latency to the feed "
            f"{_percentiles(self.latency)}, to PatternsReceived {_percentiles(self.view_latency)}"
        )


class Outage(threading.Thread):
    """Kill the proxy (SIGKILL), watch ``FeedConnected`` and the state, restart it."""

    def __init__(self, proxy: ProxyProcess, address: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.address = address
        self.seconds = seconds
        self.down_after: float | None = None
        self.up_after: float | None = None
        self.states: set[str] = set()

    def run(self) -> None:
        import tango

        dev = tango.DeviceProxy(self.address)
        names = [a.name for a in dev.attribute_list_query()]
        watch = "FeedConnected" in names
        self.proxy.kill()
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.seconds:
            self.states.add(str(dev.state()))
            if watch and self.down_after is None and not dev.FeedConnected:
                self.down_after = time.monotonic() - t0
            time.sleep(0.1)
        self.proxy.restart()
        t1 = time.monotonic()
        while watch and time.monotonic() - t1 < 30:
            if dev.FeedConnected:
                self.up_after = time.monotonic() - t1
                break
            time.sleep(0.1)

    def report(self) -> str:
        def fmt(value: float | None) -> str:
            return "never" if value is None else f"after {value:.1f} s"

        return (
            f"proxy outage {self.seconds:g} s: FeedConnected False {fmt(self.down_after)}, "
            f"True again {fmt(self.up_after)} of the restart; device states during the "
            f"outage: {', '.join(sorted(self.states))}"
        )


class Bench:
    """Proxy + device server + a publisher, for one soak run and a sweep."""

    def __init__(self, final_passes: int, run_timeout: float) -> None:
        self.out = tempfile.mkdtemp(prefix="ptycho-soak-")
        self.proxy = ProxyProcess().start()
        self.server = ServerProcess.start(
            DEVICE,
            options=[
                *("--zmq", self.proxy.out_address, "--output-dir", self.out),
                *("--final-passes", str(final_passes)),
            ],
            log_file=os.path.join(self.out, "serve.log"),
        )
        self.dev = self.server.device_proxy(30_000)
        self.present = {a.name for a in self.dev.attribute_list_query()}
        self.missing = [a for a in EXTRA_ATTRIBUTES if a not in self.present]
        self.dev.Start()
        self.run_timeout = run_timeout
        self.publisher = make_publisher(self.proxy.in_address)
        self.context = zmq.Context()
        self.raw = self.context.socket(zmq.PUB)
        self.raw.setsockopt(zmq.SNDHWM, DEFAULT_HWM)
        self.raw.setsockopt(zmq.LINGER, 0)
        self.raw.connect(f"tcp://{self.proxy.in_address}")
        self._join()

    def _join(self) -> None:
        """Beat the slow joiner: empty runs (no ptycho metadata) until the device sees one."""
        deadline = time.monotonic() + 60
        while int(self.dev.DocumentsReceived) == 0 and time.monotonic() < deadline:
            run = event_model.compose_run(metadata={"plan_name": "join"})
            self.publisher("start", dict(run.start_doc))
            other = event_model.compose_run(metadata={"plan_name": "join"})
            self.raw.send(b" start " + serialize(dict(other.start_doc)))
            time.sleep(0.1)
        if int(self.dev.DocumentsReceived) == 0:
            raise RuntimeError("no document reached the device server in 60 s")
        time.sleep(0.5)

    def run(
        self,
        n: int,
        rate: float,
        frames: list[np.ndarray],
        *,
        raw: bool,
        outage: float = 0.0,
    ) -> RunResult:
        """One scan of ``n`` frames at ``rate``; with ``outage`` > 0 the proxy is SIGKILLed at
        the scan's middle and restarted on the same ports ``outage`` seconds later."""
        docs = list(scan_documents(n, frames))
        uid = docs[0][1]["uid"]
        messages = (
            [b" ".join([b"", name.encode(), serialize(doc)]) for name, doc in docs] if raw else []
        )
        cut = Outage(self.proxy, self.server.address, outage) if outage > 0 else None
        base = int(self.dev.DocumentsReceived) + 2  # the feed counts start and descriptor too
        poller = Poller(self.server.address)
        poller.start()
        sent_at: list[float] = []
        t0 = time.perf_counter()
        for k, (name, doc) in paced(docs, rate):
            if raw:
                self.raw.send(messages[k])
            else:
                self.publisher(name, doc)
            if name == "event":
                sent_at.append(time.perf_counter())
                if cut is not None and len(sent_at) == n // 2:
                    cut.start()
        elapsed = time.perf_counter() - t0
        if cut is not None:
            cut.join()
            print(f"  {cut.report()}")
        phase = wait_run_end(self.dev, uid, self.run_timeout)
        time.sleep(0.5)
        poller.stop()
        info = read(
            self.dev, ("PatternsReceived", "PatternsInUse", *EXTRA_ATTRIBUTES), self.present
        )
        return RunResult(
            rate=rate,
            sent=n,
            received=int(info["PatternsReceived"]),
            used=int(info["PatternsInUse"]),
            reported_lost=None if info["FramesLost"] is None else int(info["FramesLost"]),
            duplicates=None
            if info["DuplicateDocuments"] is None
            else int(info["DuplicateDocuments"]),
            connected=None if info["FeedConnected"] is None else bool(info["FeedConnected"]),
            phase=phase,
            achieved_rate=len(docs) / elapsed,
            latency=latencies(sent_at, [(t, d) for t, d, _, _ in poller.samples], base),
            view_latency=latencies(
                sent_at, [(t, p) for t, _, p, u in poller.samples if u == uid], 0
            ),
        )

    def close(self) -> None:
        self.publisher.close()
        self.raw.close(linger=0)
        self.context.term()
        self.server.stop()
        self.proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=11_245, help="frames of the soak run")
    parser.add_argument("--rate", type=float, default=100.0, help="event rate of the soak run, Hz")
    parser.add_argument(
        "--sweep", default="500,1000,1500,2000,3000", help="rates of the sweep, Hz ('' for none)"
    )
    parser.add_argument("--sweep-frames", type=int, default=2025, help="frames per sweep point")
    parser.add_argument("--final-passes", type=int, default=0, help="device passes after a run")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="wait for a run end, s")
    parser.add_argument(
        "--outage", type=float, default=0.0, help="SIGKILL the proxy mid-soak for this long, s"
    )
    args = parser.parse_args()
    frames = frame_pool()
    bench = Bench(args.final_passes, args.run_timeout)
    try:
        if bench.missing:
            print(f"device attributes not present: {', '.join(bench.missing)} (reported as n/a)")
        print(f"proxy and feed high-water mark {DEFAULT_HWM} messages per socket")
        result = bench.run(args.frames, args.rate, frames, raw=False, outage=args.outage)
        rss = peak_rss_mb(bench.server.pid)
        print(f"soak ({args.frames} frames of {SIDE} px uint32 at {args.rate:g} Hz, Publisher):")
        print(f"  {result.line()}")
        print(
            f"  duplicates {result.duplicates}; feed connected {result.connected}; "
            f"server peak RSS {rss:.0f} MB"
        )
        rates = [float(r) for r in args.sweep.split(",") if r.strip()]
        best = None
        if rates:
            print(f"sweep ({args.sweep_frames} frames per rate, pre-encoded messages):")
        for rate in rates:
            point = bench.run(args.sweep_frames, rate, frames, raw=True)
            print(f"  {point.line()}", flush=True)
            if point.real_lost == 0 and (best is None or rate > best):
                best = rate
        if rates:
            print(f"highest rate with zero loss: {best if best is not None else 'none'} Hz")
        print(f"server peak RSS over everything {peak_rss_mb(bench.server.pid):.0f} MB")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
