"""Memory a hostile start document costs the receiver: RSS before and after, with Limits.

The issue's case: a 1.9 KB start document asking for crop 2048 and a huge object made the
server grow by 2.35 GB. This script sends such documents to a real :class:`PtychoCallback` and
to :meth:`ScanSetup.from_start_doc` and prints the resident set size before and after each, and
what the document would have cost without limits (the object alone, complex64).

Usage::

    .venv/bin/python benchmarks/start_doc_rss.py
"""

from __future__ import annotations

import gc
import json
import math
import resource
from typing import Any

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.setup import Limits, ScanSetup


def rss_mb() -> float:
    """Current resident set size in MB (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_mb() -> float:
    """Peak resident set size so far in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hostile_docs() -> dict[str, dict[str, Any]]:
    """Small start documents that ask for large allocations."""
    base: dict[str, Any] = {
        "energy_eV": 13_500.0,
        "detector_distance_m": 3.2,
        "detector_pixel_m": 75e-6,
        "detector_key": "eiger_image",
        "position_keys": ["sy", "sx"],
        "mask": [[i, i + 1] for i in range(150)],  # padding to the 1.9 KB
    }
    extent = [[0.0, 1e-4], [0.0, 1e-4]]
    return {
        "crop 2048, 100 um scan": {
            **base,
            "crop": 2048,
            "scan": {"pattern": "raster", "num_points": 100, "extent_m": extent},
        },
        "crop 256, mm readbacks of um motors": {
            **base,
            "crop": 256,
            "position_scale_m": 1e-3,
            "scan": {"pattern": "raster", "num_points": 2500, "extent_m": [[0, 4.9e-4]] * 2},
        },
        "crop 256, 1e9 frames expected": {
            **base,
            "crop": 256,
            "scan": {"pattern": "raster", "num_points": 10**9, "extent_m": extent},
        },
    }


def unbounded_gb(ptycho: dict[str, Any]) -> float:
    """GB this document asks for with no limits: the complex64 object, the complex64 probe and
    the expected patterns at 2 bytes per pixel (the engine's uint16 amplitudes)."""
    huge = Limits(max_crop=2**20, max_object_pixels=2**62, max_frames=2**62)
    setup = ScanSetup.from_start_doc(ptycho, limits=huge)
    rows, cols = setup.object_frame().object_shape
    n = setup.frame_size
    return (rows * cols * 8 + n * n * 8 + (setup.expected_points or 0) * n * n * 2) / 1e9


def main() -> None:
    cb = PtychoCallback()
    gc.collect()
    print(
        f"{'document':40s} {'bytes':>6s} {'RSS before':>11s} {'after':>9s} {'delta':>8s}"
        f" {'unbounded ask':>15s}  outcome"
    )
    for k, (name, ptycho) in enumerate(hostile_docs().items()):
        doc = {"uid": f"hostile-{k}", "time": 0.0, "plan_name": "hostile", "ptycho": ptycho}
        size = len(json.dumps(doc).encode())
        would = unbounded_gb(ptycho)
        gc.collect()
        before = rss_mb()
        cb("start", doc)
        try:
            ScanSetup.from_start_doc(ptycho)
            outcome = "ACCEPTED"
        except ValueError as exc:
            outcome = str(exc)[:90] + "..."
        gc.collect()
        after = rss_mb()
        print(
            f"{name:40s} {size:6d} {before:9.1f}MB {after:7.1f}MB {after - before:+6.1f}MB"
            f" {would:12.2f} GB  {outcome}"
        )
    status = cb.status
    print(
        f"callback: runs ignored with reasons: {len(status.reasons)}; peak RSS {peak_mb():.1f} MB"
    )
    for reason in status.reasons:
        print("  -", reason[:150])
    assert math.isfinite(peak_mb())


if __name__ == "__main__":
    main()
