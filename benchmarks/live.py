"""Live reconstruction cost to the RunEngine, callback ingest rate, and snapshot latency.

Runs the same simulated 256 px scan twice in one process, without and with ``PtychoCallback``
subscribed, and prints:

- the RunEngine wall-time ratio (with / without; target at most 1.05),
- frames ingested per second by the callback alone, from pre-made documents: the document
  handler's own rate (what the RunEngine waits for) and the end-to-end rate until every frame
  is preprocessed and held by the reconstruction (target at least 1,000),
- the latency from an event's emission to the first published snapshot that includes its
  frame (p50, p95; target p95 at most 1 s).

    python benchmarks/live.py [--side 45] [--size 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time

import event_model
import numpy as np
from bluesky import RunEngine
from bluesky_ptycho.plans import spirangle_ptycho

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.live import LiveOptions, PacingPolicy
from bluesky_ptycho.sim_beamline import make_beamline
from bluesky_ptycho.simulate import study_offline_preset


def _preset(side: int, size: int):
    base = study_offline_preset()
    return dataclasses.replace(base, pattern="spirangle", n_rows=side, n_cols=side, shape=size)


def _scan(RE, beamline, side: int, subscriber=None) -> float:
    preset = beamline.specimen.preset
    plan = spirangle_ptycho(
        [beamline.detector],
        beamline.x_motor,
        beamline.y_motor,
        setup=beamline.setup(),
        n_side=side,
        step=preset.step_m / beamline.position_scale_m,
    )
    token = RE.subscribe(subscriber) if subscriber is not None else None
    t0 = time.perf_counter()
    try:
        RE(plan)
    finally:
        if token is not None:
            RE.unsubscribe(token)
    return time.perf_counter() - t0


class _Latency:
    """Emission time of each frame event and publication time of each snapshot."""

    def __init__(self, cb: PtychoCallback) -> None:
        self.cb = cb
        self.emitted: list[float] = []
        self.snapshots: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def __call__(self, name, doc):
        if name == "event" and "eiger_image" in doc.get("data", {}):
            self.emitted.append(time.monotonic())
        return self.cb(name, doc)

    def observe(self, snapshot) -> None:
        with self._lock:
            self.snapshots.append((time.monotonic(), snapshot.patterns_in_use))

    def latencies(self) -> np.ndarray:
        times = np.array([t for t, _ in self.snapshots])
        in_use = np.array([n for _, n in self.snapshots])
        out = []
        for k, t_emit in enumerate(self.emitted):
            later = np.flatnonzero((in_use > k) & (times >= t_emit))
            if later.size:
                out.append(times[later[0]] - t_emit)
        return np.asarray(out)


def ingest_rate(beamline, n: int) -> tuple[float, float]:
    """Document-handler and end-to-end ingest rates, frames per second."""
    spec = beamline.specimen
    setup = beamline.setup()
    frames = [
        spec.pattern_at(spec.nominal_positions_m[k % len(spec.nominal_positions_m)])
        for k in range(min(n, 64))
    ]
    run = event_model.compose_run(metadata={"ptycho": setup.to_start_doc()})
    key = beamline.detector_key
    ky, kx = setup.position_keys
    size = frames[0].shape
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            key: {"source": "sim", "dtype": "array", "shape": list(size)},
            ky: {"source": "sim", "dtype": "number", "shape": []},
            kx: {"source": "sim", "dtype": "number", "shape": []},
        },
    )
    pos = spec.nominal_positions_m / setup.position_scale_m
    events = [
        desc.compose_event(
            data={key: frames[k % len(frames)], ky: pos[k % len(pos), 0], kx: pos[k % len(pos), 1]},
            timestamps={key: 0.0, ky: 0.0, kx: 0.0},
            seq_num=k + 1,
        )
        for k in range(n)
    ]
    options = LiveOptions(final_passes=0)
    options = dataclasses.replace(
        options, pacing=dataclasses.replace(options.pacing, max_updates_per_pattern=1)
    )
    cb = PtychoCallback(options=options)
    cb("start", run.start_doc)
    cb("descriptor", desc.descriptor_doc)
    t0 = time.perf_counter()
    for ev in events:
        cb("event", ev)
    handler = n / (time.perf_counter() - t0)
    while cb.status.frames_used + cb.status.rejected < n:
        time.sleep(0.001)
    end_to_end = n / (time.perf_counter() - t0)
    cb("stop", run.compose_stop())
    cb.result(timeout=600)
    return handler, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=45, help="spirangle side (45: 2,025 frames)")
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels")
    parser.add_argument("--final-passes", type=int, default=5)
    parser.add_argument(
        "--no-iterations-during-scan",
        action="store_true",
        help="pacing that waits for the stop: measures document handling and ingest alone",
    )
    args = parser.parse_args()
    preset = _preset(args.side, args.size)
    n = args.side**2
    RE = RunEngine({})
    print(f"{n} frames of {args.size} px, spirangle {args.side} x {args.side}")

    baseline = make_beamline(preset, mode="inline", seed=0)
    t_plain = _scan(RE, baseline, args.side)
    print(f"RunEngine alone:            {t_plain:8.2f} s")

    beamline = make_beamline(preset, mode="inline", seed=0)
    options = LiveOptions(final_passes=args.final_passes)
    if args.no_iterations_during_scan:
        options = dataclasses.replace(
            options, pacing=PacingPolicy(mode="batch", passes_per_batch=0.0)
        )
    cb = PtychoCallback(options=options)
    lat = _Latency(cb)
    cb.add_observer(lat.observe)
    t_live = _scan(RE, beamline, args.side, subscriber=lat)
    print(f"RunEngine + PtychoCallback: {t_live:8.2f} s")
    state = cb.result(timeout=1800)
    print(f"wall-time ratio (target <= 1.05): {t_live / t_plain:.3f}")
    print(
        f"reconstruction: {state.n_patterns} patterns, {state.pattern_updates} updates, "
        f"{state.iteration} passes, rejected {cb.status.rejected}"
    )
    latency = lat.latencies()
    if latency.size:
        p50, p95 = np.percentile(latency, [50, 95])
        print(
            f"event -> snapshot latency over {latency.size} frames: p50 {p50:.3f} s, "
            f"p95 {p95:.3f} s (target p95 <= 1 s)"
        )

    handler, end_to_end = ingest_rate(beamline, n)
    print(
        f"callback ingest: document handler {handler:,.0f} frames/s, "
        f"end to end (preprocessed, held) {end_to_end:,.0f} frames/s (target >= 1,000)"
    )


if __name__ == "__main__":
    main()
