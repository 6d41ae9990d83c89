"""``bluesky-ptycho demo --tango``: one spelling of the event name; Ctrl-C ends every process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tango")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_the_scan_the_server_and_the_proxy(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "bluesky_ptycho.cli", "demo", "--tango"),
            *("--dwell", "0.2", "--output", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("event ") and "PatternsReceived    0" not in line:
                break  # frames are arriving: the scan runs
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines) + out
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
    assert len(pids) == 2, text  # the proxy and the device server
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "interrupted: scan aborted; stopped the device server and the proxy"
    ]
    assert "Traceback" not in text
    events = re.findall(r"event (\w+):", text)
    assert events and set(events) == {"ObjectPhase"}  # one spelling
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), pids
