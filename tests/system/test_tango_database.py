"""The device in a real Tango database: registered, started with ``TANGO_HOST``, restarted.

PyTango's own database server runs as a subprocess on a free loopback port (SQLite in a
temporary directory, fixture ``tango_database``); the device server is the installed
``bluesky-ptycho-tango`` script started with ``TANGO_HOST`` pointing at it. Its properties come
from the database, memorized attributes are written there and restored after a restart, and
Taurus reaches it by ``tango://HOST:PORT/dom/fam/member`` names.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import tango
from bluesky_ptycho.tango_device import SERVER_NAME
from bluesky_ptycho.tango_device.logic import SETPOINTS
from tango import DevState

if TYPE_CHECKING:
    from conftest import ServerFactory, TangoDatabase, TangoServer

INSTANCE = "dbtest"
DEVICE = "test/dbptycho/1"


def tango_script() -> list[str]:
    """The installed ``bluesky-ptycho-tango`` console script (run by this interpreter)."""
    script = Path(sys.executable).with_name("bluesky-ptycho-tango")
    if script.is_file():
        return [str(script)]
    found = shutil.which("bluesky-ptycho-tango")
    if found:
        return [found]
    code = "import sys; from bluesky_ptycho.tango_device import main; sys.exit(main())"
    return ["-c", code]  # not installed as a script (a plain source checkout)


def server_command(instance: str) -> Callable[[int], list[str]]:
    """``bluesky-ptycho-tango INSTANCE -ORBendPoint giop:tcp:127.0.0.1:PORT``."""

    def argv(port: int) -> list[str]:
        return [*tango_script(), instance, "-ORBendPoint", f"giop:tcp:127.0.0.1:{port}"]

    return argv


def register(db: Any, output_dir: Path) -> None:
    """Register the server and its device, with properties, as an operator would."""
    info = tango.DbDevInfo()
    info.server = f"{SERVER_NAME}/{INSTANCE}"
    info._class = "PtychoReconstruction"
    info.name = DEVICE
    db.add_device(info)
    db.put_device_property(
        DEVICE,
        {"OutputDirectory": [str(output_dir)], "PublishPeriod": ["0.3"], "FinalPasses": ["5"]},
    )


def start(tango_servers: ServerFactory, tango_database: TangoDatabase, out: Path) -> TangoServer:
    return tango_servers.launch(
        server_command(INSTANCE),
        device=DEVICE,
        tango_host=tango_database.host,
        output_dir=out,
        instance=INSTANCE,
    )


def test_registered_started_memorized_restarted_and_reached_by_taurus(
    tango_database: TangoDatabase, tango_servers: ServerFactory, tmp_path: Path
) -> None:
    db = tango_database.database()
    out = tmp_path / "out"
    out.mkdir()
    register(db, out)
    assert DEVICE in db.get_device_name(f"{SERVER_NAME}/{INSTANCE}", "PtychoReconstruction")

    server = start(tango_servers, tango_database, out)
    assert server.address == f"tango://{tango_database.host}/{DEVICE}"
    dev = server.proxy()
    assert dev.info().server_id == f"{SERVER_NAME}/{INSTANCE}"
    assert dev.state() == DevState.ON
    # the properties came from the database
    status = dev.status()
    assert "publish period 0.3 s" in status and "final passes 5" in status, status
    with pytest.raises(tango.DevFailed, match="no reconstruction"):  # OutputDirectory is set
        dev.Save("x.h5")
    # memorized set-points: the write value is the value in force from the first read
    for name in SETPOINTS:
        attr = dev.read_attribute(name)
        assert attr.w_value == pytest.approx(attr.value), (name, attr.value, attr.w_value)
    assert dev.read_attribute("PublishPeriod").w_value == pytest.approx(0.3)
    assert dev.read_attribute("Beta").w_value == pytest.approx(1.0)

    dev.Alpha = 0.7
    dev.IterationsPerBatch = 7
    dev.PublishPeriod = 0.4
    stored = db.get_device_attribute_property(DEVICE, ["Alpha", "IterationsPerBatch"])
    assert float(stored["Alpha"]["__value"][0]) == pytest.approx(0.7)
    assert int(stored["IterationsPerBatch"]["__value"][0]) == 7

    tango_servers.stop(server)
    again = start(tango_servers, tango_database, out)
    dev2 = again.proxy()
    assert dev2.state() == DevState.ON
    for name, value in (("Alpha", 0.7), ("IterationsPerBatch", 7), ("PublishPeriod", 0.4)):
        attr = dev2.read_attribute(name)
        assert attr.value == pytest.approx(value), name
        assert attr.w_value == pytest.approx(value), name
    assert dev2.read_attribute("Beta").w_value == pytest.approx(1.0)  # never written: in force
    assert "alpha 0.7" in dev2.status() and "publish period 0.4 s" in dev2.status()
    dev2.Init()  # re-reads the properties, keeps the set-points (equal to the memorized ones)
    assert dev2.Alpha == pytest.approx(0.7) and dev2.read_attribute("Alpha").w_value == 0.7
    assert "final passes 5" in dev2.status()

    taurus = pytest.importorskip("taurus", reason="Taurus is part of the test extra")
    name = f"tango://{tango_database.host}/{DEVICE}"
    alpha = taurus.Attribute(f"{name}/Alpha").read(cache=False)
    assert float(getattr(alpha.rvalue, "magnitude", alpha.rvalue)) == pytest.approx(0.7)
    assert float(getattr(alpha.wvalue, "magnitude", alpha.wvalue)) == pytest.approx(0.7)
    device = taurus.Device(name)
    assert device.getDeviceProxy().name().lower() == DEVICE
    assert str(device.getDeviceProxy().state()) == "ON"
    received = taurus.Attribute(f"{name}/PatternsReceived").read(cache=False).rvalue
    assert int(getattr(received, "magnitude", received)) == 0
    tango_servers.stop(again)
