"""``PtychoReconstruction.Follow``: a real device server process follows a scan directory that a
simulated detector, in another process, writes file by file."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tango
from tango import DevState

from bluesky_ptycho.sim_filewriter import FileWriterConfig, write_scan

if TYPE_CHECKING:
    from conftest import ServerFactory, TangoServer

FINAL_PASSES = 20
WAIT = 120.0  # upper bound only


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def server(tango_servers: ServerFactory) -> TangoServer:
    return tango_servers.start(extra=["--final-passes", str(FINAL_PASSES)])


@pytest.fixture(scope="module")
def dev(server: TangoServer) -> Any:
    return server.proxy()


def test_follow_a_directory_while_a_detector_writes_it(dev: Any, small_dataset, tmp_path):
    assert dev.state() == DevState.ON, dev.status()
    scan = tmp_path / "scan"
    writer = subprocess.Popen(
        [sys.executable, "-m", "bluesky_ptycho.sim_filewriter", str(scan), "--interval", "0.2"],
        stderr=subprocess.PIPE,
    )
    try:
        dev.Follow(str(scan))  # the directory does not exist yet: it is waited for
        assert wait_for(lambda: dev.RunPhase == "finished" and dev.state() == DevState.ON), (
            dev.status()
        )
    finally:
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err.decode(errors="replace")
    assert dev.PatternsReceived == 81 and dev.PatternsInUse == 81
    assert dev.Progress == pytest.approx(100.0)
    assert dev.Iteration >= FINAL_PASSES and len(dev.ScanUid) > 0
    assert np.asarray(dev.ObjectPhase).shape == small_dataset.object.shape
    assert "Follow" not in dev.status()  # no problem to report


def test_follow_reports_a_bad_data_file_and_keeps_the_good_frames(dev: Any, tmp_path):
    assert dev.state() == DevState.ON, dev.status()
    scan = write_scan(tmp_path / "scan", FileWriterConfig(layout="chunks", interval_s=0))
    with open(scan / "chunk_00004.h5", "r+b") as f:
        f.truncate(2000)
    before = dev.ScanUid
    dev.Follow(str(scan))

    def finished() -> bool:
        return dev.ScanUid != before and dev.RunPhase == "finished"

    assert wait_for(lambda: finished() and dev.state() == DevState.ON), dev.status()
    assert dev.PatternsReceived == 72
    status = dev.status()
    assert "chunk_00004.h5" in status and "unreadable" in status, status


def test_follow_refuses_a_file_and_a_busy_device(dev: Any, server: TangoServer, tmp_path):
    not_a_dir = tmp_path / "scan.h5"
    not_a_dir.write_text("x")
    with pytest.raises(tango.DevFailed, match="is not a directory"):
        dev.Follow(str(not_a_dir))
    with pytest.raises(tango.DevFailed, match="give a scan directory"):
        dev.Follow("  ")
    dev.Follow(str(tmp_path / "never-written"))  # waits for it...
    with pytest.raises(tango.DevFailed, match="not allowed in state STANDBY"):
        dev.Follow(str(tmp_path))
    dev.Stop()  # ...until stopped
    assert wait_for(lambda: dev.state() == DevState.ON, timeout=10), dev.status()
    assert Path(server.log_file).exists()
