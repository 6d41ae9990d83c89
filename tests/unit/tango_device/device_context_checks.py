"""The device itself in a real Tango server started by ``DeviceTestContext``.

Run by ``test_device.py`` in a fresh interpreter (``python -m pytest`` on this file): a device
server process forked from the full suite's heavily threaded pytest process hung at exit, and a
threaded context crashed omniORB at interpreter exit.

The subprocess system tests (``tests/system/test_tango_device.py``) drive whole scans; these
check the thin shell: initial state and Status, set-points shown as write values, refusals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tango
from bluesky_ptycho.tango_device import PtychoReconstruction
from bluesky_ptycho.tango_device.logic import SETPOINTS, setpoints
from tango import DevState
from tango.test_context import DeviceTestContext

from bluesky_ptycho.live import LiveOptions


@pytest.fixture(scope="module")
def dev() -> Iterator[Any]:
    with DeviceTestContext(
        PtychoReconstruction,
        properties={"PublishPeriod": 0.25, "FinalPasses": 3},
        process=True,
        timeout=30,
    ) as proxy:
        yield proxy


def test_a_fresh_device_is_idle_and_says_so(dev: Any) -> None:
    assert dev.state() == DevState.ON
    status = dev.status()
    assert status.splitlines()[0] == "ON: idle"
    assert "publish period 0.25 s" in status and "final passes 3" in status
    assert dev.PatternsReceived == 0 and dev.ObjectPhase.size == 0
    assert math.isnan(dev.ValidationRatio) and not dev.SignalOK


def test_memorized_setpoints_show_the_values_in_force_from_the_first_read(dev: Any) -> None:
    expected = setpoints(LiveOptions(publish_period_s=0.25, final_passes=3), 0.0)
    for name in SETPOINTS:
        attr = dev.read_attribute(name)
        assert attr.value == pytest.approx(expected[name]), name
        assert attr.w_value == pytest.approx(attr.value), name
    assert dev.read_attribute("Beta").w_value == pytest.approx(1.0)  # not 0: a frozen probe


def test_a_write_becomes_the_value_and_the_set_point(dev: Any) -> None:
    dev.Beta = 0.5
    attr = dev.read_attribute("Beta")
    assert attr.value == pytest.approx(0.5) and attr.w_value == pytest.approx(0.5)
    assert "beta 0.5" in dev.status()
    dev.Beta = 1.0


def test_init_keeps_the_set_points_in_force(dev: Any) -> None:
    """Tango writes memorized values back only when the server starts, not after Init."""
    dev.Alpha = 0.7
    dev.IterationsPerBatch = 7
    dev.Init()
    for name, value in (("Alpha", 0.7), ("IterationsPerBatch", 7), ("Beta", 1.0)):
        attr = dev.read_attribute(name)
        assert attr.value == pytest.approx(value) and attr.w_value == pytest.approx(value), name
    assert "final passes 3" in dev.status()  # the properties were read again
    dev.Alpha = 1.0
    dev.IterationsPerBatch = 20


def test_pixel_size_is_unknown_before_a_run(dev: Any) -> None:
    pixel = np.asarray(dev.PixelSize)
    assert pixel.shape == (2,) and np.isnan(pixel).all()


def test_commands_refused_say_why(dev: Any) -> None:
    with pytest.raises(tango.DevFailed, match="ZmqAddress"):
        dev.Start()
    with pytest.raises(tango.DevFailed, match="not allowed in state ON"):
        dev.Stop()
    with pytest.raises(tango.DevFailed, match="OutputDirectory"):
        dev.Save("x.h5")
    with pytest.raises(tango.DevFailed, match="above the maximum"):
        dev.Alpha = 5.0
    assert dev.Alpha == pytest.approx(1.0) and dev.state() == DevState.ON
