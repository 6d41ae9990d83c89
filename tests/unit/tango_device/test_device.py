"""The ``DeviceTestContext`` checks of the device, run in a fresh interpreter.

``device_context_checks.py`` starts the device with ``tango.test_context.DeviceTestContext``
(a forked server process). Forked from this pytest process, which by then holds the threads of
hundreds of tests, the server process hung at exit; in a thread instead, omniORB aborted the
interpreter at exit. A fresh interpreter has neither problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECKS = Path(__file__).with_name("device_context_checks.py")


def test_the_device_in_a_device_test_context() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout, done.stdout[-2000:]
