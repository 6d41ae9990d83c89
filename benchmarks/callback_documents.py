"""What ``PtychoCallback``'s document handlers cost the thread that calls them (the RunEngine's).

Composes one run of ``--frames`` events with ``--size`` px float32 frames inline (event_model,
no RunEngine), then times ``cb(name, doc)`` per event on this thread, against a baseline
callback that only copies the frame (the least any live consumer must do, since detectors
reuse their buffers). Each stream is also sent with every event duplicated, and with the events
before their descriptor, to show that duplicate and orphan handling stay cheap. The
reconstruction runs on the callback's own threads meanwhile, as it would during a scan.

    python benchmarks/callback_documents.py [--frames 2000] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import event_model
import numpy as np

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.live import LiveOptions
from bluesky_ptycho.setup import ScanSetup


def _setup(n_side: int, size: int) -> ScanSetup:
    step = 2e-7
    grid = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij"), -1)
    nominal = (grid.reshape(-1, 2) - (n_side - 1) / 2) * step
    return ScanSetup(
        energy_eV=10_000.0,
        detector_distance_m=2.0,
        detector_pixel_m=75e-6,
        crop=size,
        detector_key="det",
        position_keys=("sy", "sx"),
        position_scale_m=1e-6,
        nominal_positions_m=nominal,
        pattern="raster",
    )


def _stream(setup: ScanSetup, frames: int, size: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(0)
    frame = rng.poisson(5.0, (size, size)).astype(np.float32)
    run = event_model.compose_run(metadata={"ptycho": setup.to_start_doc()})
    keys = {
        "det": {"source": "s", "dtype": "array", "shape": [size, size]},
        "sy": {"source": "s", "dtype": "number", "shape": []},
        "sx": {"source": "s", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    positions = setup.nominal_positions_m / 1e-6
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    for k in range(frames):
        y, x = positions[k % len(positions)]
        data = {"det": frame, "sy": float(y), "sx": float(x)}
        docs.append(
            (
                "event",
                desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=k + 1),
            )
        )
    docs.append(("stop", run.compose_stop()))
    return docs


def _time(callback, docs) -> float:
    """Seconds per event spent in ``callback`` on this thread."""
    spent = 0.0
    events = 0
    for name, doc in docs:
        t0 = time.perf_counter()
        callback(name, doc)
        spent += time.perf_counter() - t0
        events += name == "event"
    return spent / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup = _setup(20, args.size)
    options = LiveOptions(final_passes=0)
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        clean = _stream(setup, args.frames, args.size)
        twice = [d for pair in clean for d in ([pair, pair] if pair[0] == "event" else [pair])]
        events = [d for d in clean if d[0] == "event"]
        early = [clean[0], *events[:200], clean[1], *events[200:], clean[-1]]

        def baseline(name, doc):
            if name == "event":
                np.array(doc["data"]["det"], copy=True)

        results.setdefault("baseline (copy the frame)", []).append(_time(baseline, clean))
        for label, docs in (("clean", clean), ("every event twice", twice), ("200 early", early)):
            cb = PtychoCallback(options=options, orphan_wait=30)
            results.setdefault(f"PtychoCallback, {label}", []).append(_time(cb, docs))
            cb.result(timeout=600)
            status = cb.status
            assert status.frames_used == args.frames, (label, status.message)
            cb.close()
    base = statistics.median(results["baseline (copy the frame)"])
    print(f"{args.frames} events of {args.size} px float32, median of {args.repeats}")
    print(f"{'stream':36s} {'us/event':>10s} {'x baseline':>11s}")
    for label, values in results.items():
        med = statistics.median(values)
        print(f"{label:36s} {med * 1e6:10.1f} {med / base:11.2f}")


if __name__ == "__main__":
    main()
