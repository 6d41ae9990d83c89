"""``follow`` while a simulated detector, in a process of its own, writes the scan file by file.

The writer (``python -m bluesky_ptycho.sim_filewriter``) writes an Eiger-style master, then
9 data files of 9 frames one by one (in place: a reader sees them half-written), appending
the encoder positions to a growing SWMR HDF5 file (or a text file) before each. ``follow`` runs
in this process at the same time and feeds PtychoCallback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.cli import main as cli_main
from bluesky_ptycho.engine import EPIE
from bluesky_ptycho.io.follow import FollowOptions, follow
from bluesky_ptycho.io.result import read_result
from bluesky_ptycho.live import LiveOptions, PacingPolicy
from bluesky_ptycho.metrics import illuminated_region, object_error

# Same bound as the CXI replay (tests/integration/test_replay.py): live runs of the small
# preset reach 0.027 to 0.034; an object of ones scores 0.267.
LIVE_OBJECT_ERROR = 0.06
# With no updates while the files arrive (pacing passes_per_batch=0), the live result and the
# offline ePIE over the same frames and positions differ only by float32 rounding where the
# live worker applies the probe/object constraints after every chunk of 64 updates instead of
# after every pass: measured max |difference| 2.5e-6 of an object of amplitude ~1.
OFFLINE_MATCH_ATOL = 1e-4


def _writer(directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bluesky_ptycho.sim_filewriter",
            str(directory),
            "--interval",
            "0.15",
            *extra,
        ],
        stderr=subprocess.PIPE,
    )


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode(errors="replace")


class _Used:
    """``on_frame`` of PtychoCallback: every frame handed to the reconstruction, by index."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.frames: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []

    def __call__(self, index, intensities, mask, positions_px) -> None:
        self.indices.append(int(index))
        self.frames.append(intensities.copy())
        self.positions.append(np.asarray(positions_px, dtype=np.float64).copy())


def test_follow_reads_a_scan_while_it_is_written_and_matches_the_offline_result(
    small_dataset, tmp_path
):
    ds = small_dataset
    scan = tmp_path / "scan"
    used = _Used()
    options = LiveOptions(pacing=PacingPolicy(passes_per_batch=0), final_passes=30)
    cb = PtychoCallback(options=options, on_frame=used)
    writer = _writer(scan, "--layout", "eiger", "--positions", "h5", "--stop-marker", "")
    try:
        result = follow(scan, callback=cb, options=FollowOptions(timeout_s=30, poll_s=0.05))
    finally:
        cb.close()
        _wait(writer)
    report = result.report
    # it ended because the scan's last frame was read (the writer writes no stop marker)
    assert report.reason == "complete", report
    assert report.problems == () and result.rejected == 0
    # every frame used once, in scan order, with its own position
    assert report.frames_sent == 81 and report.files_read == 9
    assert used.indices == list(range(81))
    np.testing.assert_array_equal(np.stack(used.frames), ds.intensities)
    np.testing.assert_allclose(np.stack(used.positions), ds.positions_px, rtol=0, atol=1e-9)
    state = result.state
    assert state.n_patterns == 81 and cb.status.frames_used == 81
    # the offline reconstruction of the same frames and positions, same options
    engine = EPIE(ds.frame.object_shape, options=options.epie, probe_shape=(64, 64))
    engine.add(ds.intensities, ds.positions_px)
    # as the live final passes: the last quarter (7 of 30) with the held-out patterns in use
    engine.iterate(23)
    engine.release_held_out()
    engine.iterate(7)
    offline = engine.state()
    assert state.iteration == offline.iteration == 30
    np.testing.assert_allclose(state.object, offline.object, rtol=0, atol=OFFLINE_MATCH_ATOL)
    np.testing.assert_allclose(state.probe, offline.probe, rtol=0, atol=OFFLINE_MATCH_ATOL * 1e3)
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    assert object_error(state.object, ds.object, region=region) < LIVE_OBJECT_ERROR


def test_follow_iterates_while_files_arrive_and_reconstructs_the_object(small_dataset, tmp_path):
    """Default pacing (iterating between files), chunk files and a text position file."""
    ds = small_dataset
    scan = tmp_path / "scan"
    writer = _writer(scan, "--layout", "chunks", "--positions", "txt")
    try:
        result = follow(
            scan,
            options=FollowOptions(timeout_s=30, poll_s=0.05),
            live_options=LiveOptions(final_passes=60),
            output=tmp_path / "result.h5",
        )
    finally:
        _wait(writer)
    assert result.report.reason == "complete" and result.report.frames_sent == 81
    state = result.state
    assert state.n_patterns == 81 and result.rejected == 0
    region = illuminated_region(ds.probe, state.positions_px, ds.object.shape, threshold=0.3)
    assert object_error(state.object, ds.object, region=region) < LIVE_OBJECT_ERROR
    saved = read_result(tmp_path / "result.h5")
    np.testing.assert_array_equal(saved.state.object, state.object)
    assert saved.metadata["ended"] == "complete"


def test_the_cli_follows_a_directory_and_writes_the_result(small_dataset, tmp_path, capsys):
    scan = tmp_path / "scan"
    writer = _writer(scan, "--layout", "eiger", "--frames", "45")  # then its stop marker
    try:
        code = cli_main(
            [
                "follow",
                str(scan),
                "--timeout",
                "30",
                "--output",
                str(tmp_path / "r.h5"),
                "--final-passes",
                "5",
                "--no-plot",
                "--quiet",
            ]
        )
    finally:
        _wait(writer)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "45 of 81 frames used; ended: stop marker 'scan.done' found" in out
    assert "problem: scan incomplete: 45 of 81 frames read" in out
    saved = read_result(tmp_path / "r.h5")
    assert saved.state.n_patterns == 45 and saved.metadata["ended"] == "stop marker"


def test_the_cli_says_what_is_wrong_when_nothing_can_be_read(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli_main(["follow", str(empty), "--timeout", "0.3", "--no-plot", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no setup for" in err and "give one (--setup FILE.json|yaml)" in err
    code = cli_main(["follow", str(empty), "--setup", str(tmp_path / "absent.json")])
    assert code == 1 and "absent.json" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["eiger", "chunks"])
def test_a_directory_is_replayed_through_the_same_reader(small_dataset, tmp_path, layout):
    """A finished scan directory, read by io.replay.replay (which uses the Follower)."""
    from bluesky_ptycho.io.replay import replay
    from bluesky_ptycho.sim_filewriter import FileWriterConfig, write_scan

    scan = write_scan(tmp_path / "scan", FileWriterConfig(layout=layout, interval_s=0))
    used = _Used()
    cb = PtychoCallback(options=LiveOptions(final_passes=0), on_frame=used)
    replay(scan, cb, options=FollowOptions(timeout_s=5, poll_s=0.01))
    cb.result(timeout=60)
    cb.close()
    assert used.indices == list(range(81))
    np.testing.assert_array_equal(np.stack(used.frames), small_dataset.intensities)
