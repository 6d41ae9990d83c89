"""What ``PtychoCallback`` costs the RunEngine, with a detector that does what real ones do.

A real detector hands the RunEngine a finished frame after its exposure; it does not compute
the frame on the RunEngine's thread. ``benchmarks/live.py`` uses the simulated detector, which
computes an FFT and Poisson noise per trigger, so its wall-time ratio mostly measures the
simulator. Here every frame is computed once, before anything is timed (by recording a scan of
the simulated beamline), and a detector serves the recorded frames in order: its ``trigger``
returns a status that finishes after the exposure time, from a timer thread, as an ophyd area
detector's acquire status does.

For each frame rate the same scan runs twice per repeat, alternating, without and with a
``PtychoCallback`` (default live options: the reconstruction iterates during the scan), and the
script prints both wall times, the achieved frame rate and their ratio (target at most 1.05),
the median over the repeats.

    python benchmarks/overhead.py [--rates 10 100 500] [--seconds 10] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import threading
import time
from typing import Any

import numpy as np
from bluesky import RunEngine
from bluesky_ptycho.plans import spirangle_ptycho
from ophyd.status import DeviceStatus, StatusBase

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.live import LiveOptions, PacingPolicy
from bluesky_ptycho.sim_beamline import PtychoDetector, SimBeamline, make_beamline
from bluesky_ptycho.simulate import study_offline_preset


class RecordedDetector(PtychoDetector):
    """Serves pre-recorded frames in order; each trigger finishes after ``exposure`` seconds."""

    def __init__(self, frames: list[np.ndarray], exposure: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = frames
        self.exposure = float(exposure)
        self._next = 0

    def trigger(self) -> StatusBase:
        frame = self.frames[self._next % len(self.frames)]
        self._next += 1
        status = DeviceStatus(self)

        def done() -> None:
            self.image.put(frame)
            status.set_finished()

        timer = threading.Timer(self.exposure, done)
        timer.daemon = True
        timer.start()
        return status


def _plan(beamline: SimBeamline, detector: Any, side: int):
    preset = beamline.specimen.preset
    return spirangle_ptycho(
        [detector],
        beamline.x_motor,
        beamline.y_motor,
        setup=beamline.setup(),
        n_side=side,
        step=preset.step_m / beamline.position_scale_m,
    )


def record_frames(side: int, size: int) -> tuple[SimBeamline, list[np.ndarray]]:
    """Run the scan once with the computing detector; keep its frames in event order."""
    preset = dataclasses.replace(
        study_offline_preset(), pattern="spirangle", n_rows=side, n_cols=side, shape=size
    )
    beamline = make_beamline(preset, mode="inline", seed=0)
    frames: list[np.ndarray] = []
    key = beamline.detector_key

    def keep(name: str, doc: dict) -> None:
        if name == "event" and key in doc["data"]:
            frames.append(np.asarray(doc["data"][key]).copy())

    RE = RunEngine({})
    RE(_plan(beamline, beamline.detector, side), keep)
    return beamline, frames


def timed_scan(
    beamline: SimBeamline,
    frames: list[np.ndarray],
    side: int,
    rate: float,
    with_callback: bool,
    options: LiveOptions | None = None,
) -> tuple[float, int]:
    """Wall time of one scan at ``rate`` frames/s, and frames the callback used (or 0)."""
    detector = RecordedDetector(
        frames,
        exposure=1.0 / rate,
        name="eiger",
        specimen=beamline.specimen,
        y_motor=beamline.y_motor,
        x_motor=beamline.x_motor,
        position_scale_m=beamline.position_scale_m,
    )
    RE = RunEngine({})
    cb = PtychoCallback(options=options) if with_callback else None
    if cb is not None:
        RE.subscribe(cb)
    t0 = time.perf_counter()
    RE(_plan(beamline, detector, side))
    elapsed = time.perf_counter() - t0
    used = 0
    if cb is not None:
        cb.result(timeout=1800)
        used = cb.status.frames_used
        cb.close()
    return elapsed, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0, 500.0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="scan length at each rate (frames = rate x s)"
    )
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-frames", type=int, default=2025)
    parser.add_argument(
        "--no-iterations-during-scan",
        action="store_true",
        help="pacing that waits for the stop: the cost of document handling and ingest alone",
    )
    args = parser.parse_args()
    options = LiveOptions()
    if args.no_iterations_during_scan:
        options = dataclasses.replace(
            options, pacing=PacingPolicy(mode="batch", passes_per_batch=0.0)
        )

    sides = {
        rate: max(4, round(min(args.max_frames, rate * args.seconds) ** 0.5)) for rate in args.rates
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} before the runs")
    print(f"recording {max(sides.values()) ** 2} frames of {args.size} px (not timed)...")
    beamline, frames = record_frames(max(sides.values()), args.size)
    print(f"{'rate':>6} {'frames':>6} {'alone s':>8} {'with s':>8} {'Hz alone':>9} {'ratio':>6}")
    for rate in args.rates:
        side = sides[rate]
        n = side * side
        alone, withcb, used = [], [], 0
        for _ in range(args.repeats):
            alone.append(timed_scan(beamline, frames, side, rate, with_callback=False)[0])
            t, used = timed_scan(beamline, frames, side, rate, True, options)
            withcb.append(t)
        a, w = statistics.median(alone), statistics.median(withcb)
        print(
            f"{rate:6.0f} {n:6d} {a:8.2f} {w:8.2f} {n / a:9.1f} {w / a:6.3f}"
            f"   (callback used {used}/{n} frames; target ratio <= 1.05)"
        )


if __name__ == "__main__":
    main()
