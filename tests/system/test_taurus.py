"""Taurus reads the running device server's attributes (database-free, ``tango-nodb://``)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_ptycho.plans import spirangle_ptycho

from bluesky_ptycho.sim_beamline import make_beamline
from bluesky_ptycho.transport import publish

taurus = pytest.importorskip("taurus", reason="Taurus is part of the test extra")


def test_taurus_reads_object_phase_of_the_running_server(zmq_proxy, tango_servers):
    server = tango_servers.start(zmq=zmq_proxy.out_address)
    dev = server.proxy()
    dev.Start()
    RE = RunEngine({})
    beamline = make_beamline(mode="inline", seed=2)
    preset = beamline.specimen.preset
    with publish(RE, zmq_proxy.in_address):
        time.sleep(0.5)  # 0MQ slow joiner
        RE(
            spirangle_ptycho(
                [beamline.detector],
                beamline.x_motor,
                beamline.y_motor,
                setup=beamline.setup(),
                n_side=5,
                step=preset.step_m / beamline.position_scale_m,
            )
        )
    deadline = time.monotonic() + 120
    while dev.RunPhase != "finished":
        assert time.monotonic() < deadline, dev.Status()
        time.sleep(0.2)

    name = f"tango-nodb://127.0.0.1:{server.port}/{server.device}"
    phase = taurus.Attribute(f"{name}/ObjectPhase").read(cache=False).rvalue
    phase = np.asarray(getattr(phase, "magnitude", phase))
    direct = dev.read_attribute("ObjectPhase").value
    assert phase.ndim == 2 and phase.shape == direct.shape
    assert min(phase.shape) > preset.shape  # object = scan extent + probe + margins
    np.testing.assert_array_equal(phase, direct)
    assert np.ptp(phase) > 0.1  # a reconstructed phase, not the flat start
    received = taurus.Attribute(f"{name}/PatternsReceived").read(cache=False).rvalue
    assert int(getattr(received, "magnitude", received)) == 25
    assert taurus.Device(name).getDeviceProxy().name().lower() == server.device.lower()
