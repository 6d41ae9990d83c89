"""Tango device: read latency of a 256 x 256 ObjectPhase and the change-event rate during a scan.

Starts a 0MQ proxy and a ``bluesky-ptycho serve`` device server as subprocesses on loopback, runs
a simulated spirangle scan (64 px frames, 45 x 45 points: a 256 x 256 object) in this process,
publishing to the proxy, and prints:

- ObjectPhase read latency (p50, p95) during the scan and after it, against a scalar attribute
  (``Iteration``) read the same way in the same run (the baseline);
- the rate of ObjectPhase change events a subscribed client receives during the scan.

    python benchmarks/tango.py [--side 45] [--reads 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time

# This file is called tango.py, as the issue asks: keep its folder off sys.path so that
# ``import tango`` finds PyTango, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np
import tango
from bluesky import RunEngine
from bluesky_ptycho.plans import spirangle_ptycho

from bluesky_ptycho.serve import ServerProcess
from bluesky_ptycho.sim_beamline import make_beamline
from bluesky_ptycho.simulate import small_preset
from bluesky_ptycho.transport import ProxyProcess, publish

DEVICE = "bench/ptycho/1"


def _latencies(dev, attr: str, n: int) -> np.ndarray:
    out = np.empty(n)
    for k in range(n):
        t0 = time.perf_counter()
        dev.read_attribute(attr)
        out[k] = time.perf_counter() - t0
    return out


def _fmt(lat: np.ndarray) -> str:
    p50, p95 = np.percentile(lat, [50, 95]) * 1e3
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=45)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="ptycho-bench-")
    proxy = ProxyProcess().start()
    server = ServerProcess(
        DEVICE, ["--zmq", proxy.out_address, "--output-dir", out, "--final-passes", "5"]
    )
    try:
        address = server.address
        dev = server.proxy()
        dev.Start()
        events: list[float] = []
        eid = dev.subscribe_event(
            "ObjectPhase",
            tango.EventType.CHANGE_EVENT,
            lambda ev: None if ev.err else events.append(time.monotonic()),
        )
        reader = tango.DeviceProxy(address)
        during: dict[str, np.ndarray] = {}
        scanning = threading.Event()

        def read_during_scan() -> None:
            scanning.wait()
            while dev.PatternsReceived < 10:
                time.sleep(0.05)
            during["ObjectPhase"] = _latencies(reader, "ObjectPhase", args.reads)
            during["Iteration"] = _latencies(reader, "Iteration", args.reads)

        thread = threading.Thread(target=read_during_scan, daemon=True)
        thread.start()
        RE = RunEngine({})
        preset = dataclasses.replace(
            small_preset(), pattern="spirangle", n_rows=args.side, n_cols=args.side
        )
        beamline = make_beamline(preset, mode="inline", seed=0)
        preset = beamline.specimen.preset
        with publish(RE, proxy.in_address):
            time.sleep(0.5)
            scanning.set()
            t0 = time.monotonic()
            RE(
                spirangle_ptycho(
                    [beamline.detector],
                    beamline.x_motor,
                    beamline.y_motor,
                    setup=beamline.setup(),
                    n_side=args.side,
                    step=preset.step_m / beamline.position_scale_m,
                )
            )
            t1 = time.monotonic()
        thread.join(120)
        while dev.RunPhase not in ("finished", "stopped", "fault"):
            time.sleep(0.2)
        shape = dev.read_attribute("ObjectPhase").value.shape
        in_scan = [t for t in events if t0 <= t <= t1]
        dev.unsubscribe_event(eid)
        after_img = _latencies(reader, "ObjectPhase", args.reads)
        after_scalar = _latencies(reader, "Iteration", args.reads)
        n = args.side**2
        print(f"scan: {n} frames of {preset.shape} px in {t1 - t0:.1f} s; ObjectPhase {shape}")
        if during:
            img, scal = during["ObjectPhase"], during["Iteration"]
            print(
                f"read during scan   ObjectPhase {_fmt(img)} | Iteration {_fmt(scal)} | "
                f"ratio p50 {np.median(img) / np.median(scal):.2f}"
            )
        print(
            f"read after scan    ObjectPhase {_fmt(after_img)} | Iteration "
            f"{_fmt(after_scalar)} | ratio p50 "
            f"{np.median(after_img) / np.median(after_scalar):.2f}"
        )
        rate = len(in_scan) / max(t1 - t0, 1e-9)
        print(
            f"ObjectPhase change events during the scan: {len(in_scan)} "
            f"({rate:.2f} per s; publish period {dev.PublishPeriod:.2f} s)"
        )
    finally:
        server.stop()
        proxy.stop()


if __name__ == "__main__":
    main()
