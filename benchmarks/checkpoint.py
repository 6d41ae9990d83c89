"""Cost of the crash-recovery checkpoint (``bluesky_ptycho.checkpoint``), in one run.

Per frame: appending one preprocessed pattern (with a mask) to the append-only store and
flushing it, against one ePIE update of the same pattern size (what the reconstruction spends on
it at least once), measured here in the same run. Per period: replacing the state file (object
and probe, fsync, os.replace) for several object sizes. At start-up: reading every pattern back.

    python benchmarks/checkpoint.py [--size 256] [--frames 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bluesky_ptycho.checkpoint import CheckpointWriter, read_checkpoint
from bluesky_ptycho.engine import EPIE, EPIEOptions


@dataclass(frozen=True)
class Record:
    run_uid: str
    descriptor: str
    seq_num: int | None
    index: int
    intensities: np.ndarray
    mask: np.ndarray | None
    positions_px: np.ndarray


def epie_update_s(n: int, repeats: int = 200) -> float:
    """Seconds per single-pattern ePIE update at ``n`` px (the engine's own cost)."""
    rng = np.random.default_rng(0)
    size = 3 * n
    engine = EPIE((size, size), options=EPIEOptions(seed=0), probe_shape=(n, n))
    frames = rng.poisson(10.0, (8, n, n)).astype(np.float32)
    pos = rng.uniform(0, size - n - 1, (8, 2))
    engine.add(frames, pos)
    engine.step(8)  # warm up (probe made, buffers allocated)
    before = engine.pattern_updates
    t = time.perf_counter()
    while engine.pattern_updates - before < repeats:
        engine.step(8)
    return (time.perf_counter() - t) / (engine.pattern_updates - before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=500)
    args = p.parse_args()
    n, count = args.size, args.frames
    rng = np.random.default_rng(1)
    frame = rng.poisson(100.0, (n, n)).astype(np.float32)
    mask = rng.random((n, n)) < 0.01
    with tempfile.TemporaryDirectory() as tmp:
        writer = CheckpointWriter(tmp, "bench", {"uid": "bench"}, [{"uid": "d"}])
        t = time.perf_counter()
        for i in range(count):
            writer.append(Record("bench", "d", i + 1, i, frame, mask, np.array([i, i], float)))
        append_s = (time.perf_counter() - t) / count
        update_s = epie_update_s(n)
        print(
            f"append {n} px pattern + mask, flushed: {1e6 * append_s:.0f} us/frame "
            f"({writer.bytes_written / count / 1024:.0f} KiB); one ePIE update "
            f"{1e6 * update_s:.0f} us; ratio append/update {append_s / update_s:.2f}; "
            f"{100 * append_s * 2000:.0f} % of one core at 2 kHz"
        )
        for side in (512, 1024, 2048):
            obj = np.ones((side, side), np.complex64)
            probe = np.ones((n, n), np.complex64)
            t = time.perf_counter()
            for it in range(3):
                writer.write_state(obj, probe, it)
            state_s = (time.perf_counter() - t) / 3
            print(
                f"state file, object {side} x {side}: {1e3 * state_s:.1f} ms per write "
                f"({obj.nbytes / 2**20:.0f} MiB), i.e. {100 * state_s / 10:.2f} % of a 10 s "
                "CheckpointPeriod"
            )
        writer.close()
        t = time.perf_counter()
        cp = read_checkpoint(Path(tmp) / "bench")
        read_s = time.perf_counter() - t
        assert len(cp.patterns) == count
        print(f"read back {count} patterns at start-up: {read_s:.2f} s")


if __name__ == "__main__":
    main()
