"""The operator's panel (``bluesky-ptycho panel``) against a running device server, offscreen.

A ``bluesky-0MQ-proxy`` and a database-free device server run as subprocesses; the panel runs
in this process with ``QT_QPA_PLATFORM=offscreen``. A ``RunEngine`` scans the simulated
beamline while Qt keeps running (the RunEngine's ``during_task`` processes Qt events), so the
panel refreshes on its own timer during the scan. The test presses the panel's buttons and
types into its fields as an operator would, and checks the device did what was asked.

Set ``PANEL_SCREENSHOT=path.png`` to keep the screenshot taken at the end of the scan (this is
how ``docs/taurus/panel.png`` is made).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.run_engine import DuringTask
from bluesky_ptycho.plans import spirangle_ptycho

from bluesky_ptycho.io.cxi import write_cxi
from bluesky_ptycho.sim_beamline import make_beamline
from bluesky_ptycho.simulate import simulate_dataset, small_preset
from bluesky_ptycho.transport import publish

pytest.importorskip("PyQt5", reason="the panel needs the gui extra (part of the test extra)")
pytest.importorskip("taurus_pyqtgraph", reason="the panel needs the gui extra")

from taurus.external.qt import Qt

from bluesky_ptycho.panel import taurus_device_name
from bluesky_ptycho.panel.window import SETPOINTS, PtychoPanel, application

if TYPE_CHECKING:
    from conftest import ServerFactory, TangoServer

WAIT = 120.0  # upper bound only


def spin(ms: int = 20) -> None:
    """Run the application's event loop for ``ms`` milliseconds.

    ``TaurusApplication.exec_`` it must be: Taurus subscribes its widgets' models only once
    the application has started (a nested ``QEventLoop`` or ``processEvents`` leaves the
    forms showing "None").
    """
    app = application()
    Qt.QTimer.singleShot(ms, app.quit)
    app.exec_()


def pump(app: Any, condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Run Qt until ``condition`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        spin()
        if condition():
            return True
        if time.monotonic() > deadline:
            return False


class QtDuringTask(DuringTask):
    """Keep Qt running in the main thread while the RunEngine runs a plan."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def block(self, blocking_event: Any) -> None:
        while not blocking_event.is_set():
            spin()


@pytest.fixture(scope="module")
def app() -> Any:
    return application()


@pytest.fixture(scope="module")
def server(zmq_proxy: Any, tango_servers: ServerFactory) -> TangoServer:
    return tango_servers.start(
        zmq=zmq_proxy.out_address, extra=["--publish-period", "0.2", "--final-passes", "20"]
    )


@pytest.fixture(scope="module")
def panel(app: Any, server: TangoServer) -> Iterator[PtychoPanel]:
    name = taurus_device_name(f"tango://127.0.0.1:{server.port}/{server.device}#dbase=no")
    confirmations: list[str] = []

    def confirm(question: str) -> bool:
        confirmations.append(question)
        return True

    widget = PtychoPanel(name, period_s=0.2, confirm=confirm)
    widget.confirmations = confirmations  # type: ignore[attr-defined]
    widget.show()
    yield widget
    widget.shutdown()
    widget.close()
    widget.deleteLater()
    spin()


def setpoint_widgets(panel: PtychoPanel) -> dict[str, Any]:
    """The set-point form's write widgets, by attribute name."""
    found = {}
    for value in panel.setpoint_form:
        name = value.getModelName().rsplit("/", 1)[-1]
        widget = value.writeWidget()
        if widget is not None:
            found[name] = widget
    return found


def test_the_set_points_show_the_devices_values(app: Any, panel: PtychoPanel, server: Any) -> None:
    dev = server.proxy()
    assert pump(app, lambda: len(setpoint_widgets(panel)) == len(SETPOINTS), timeout=30)

    def shown() -> dict[str, str]:
        return {name: w.text() for name, w in setpoint_widgets(panel).items()}

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return float("nan")

    # the line edits show "None" until Taurus has the value
    assert pump(app, lambda: all(np.isfinite(number(t)) for t in shown().values()), timeout=30), (
        shown()
    )
    for name, text in shown().items():
        assert float(text) == pytest.approx(float(dev.read_attribute(name).value)), (name, text)
    assert float(shown()["Beta"]) == pytest.approx(1.0)  # not 0: Apply would not freeze the probe
    # an edited set-point goes to the device with the (renamed) Apply button
    beta = setpoint_widgets(panel)["Beta"]
    beta.setText("0.9")
    apply = panel.setpoint_form.buttonBox.button(Qt.QDialogButtonBox.Apply)
    assert apply.text() == "Apply edited set-points"
    apply.click()
    assert pump(app, lambda: abs(dev.Beta - 0.9) < 1e-9, timeout=10), dev.Beta
    assert dev.read_attribute("Beta").w_value == pytest.approx(0.9)
    # a write from another client reaches the form (Taurus polls these attributes), and
    # "Discard edits" then shows the device's set-point in place of the operator's edit
    dev.Beta = 1.0

    def read_beta() -> float:
        for value in panel.setpoint_form:
            if value.getModelName().endswith("/Beta"):
                return number(value.readWidget().text())
        return float("nan")

    assert pump(app, lambda: read_beta() == 1.0, timeout=15), read_beta()
    panel.setpoint_form.buttonBox.button(Qt.QDialogButtonBox.Reset).click()
    assert pump(app, lambda: number(setpoint_widgets(panel)["Beta"].text()) == 1.0, timeout=10), (
        shown()
    )


def test_start_then_the_images_follow_a_scan(
    app: Any, panel: PtychoPanel, server: TangoServer, zmq_proxy: Any, tmp_path: Path
) -> None:
    dev = server.proxy()
    assert pump(app, lambda: panel.state_name == "ON", timeout=20), panel.state_name
    assert panel.buttons["Start"].isEnabled() and not panel.buttons["Stop"].isEnabled()
    panel.buttons["Start"].click()
    assert str(dev.state()) == "STANDBY", dev.status()
    assert pump(app, lambda: panel.state_name == "STANDBY", timeout=10)
    assert panel.buttons["Stop"].isEnabled() and not panel.buttons["Start"].isEnabled()
    assert "armed" in panel.status_text.toPlainText()

    seen: list[tuple[float, int, float]] = []  # (time, patterns received, object phase sum)

    def record() -> None:
        image = panel.images.get("ObjectPhase")
        if image is not None:
            seen.append((time.monotonic(), image.size, float(np.abs(image).sum())))

    panel.timer.timeout.connect(record)  # after the panel's own refresh
    RE = RunEngine({}, during_task=QtDuringTask(app))
    bl = make_beamline(mode="inline", seed=3)
    preset = bl.specimen.preset

    def per_step(detectors: Any, step: Any, pos_cache: Any) -> Any:
        yield from bps.one_nd_step(detectors, step, pos_cache)
        yield from bps.sleep(0.03)

    with publish(RE, zmq_proxy.in_address):
        for _ in range(100):  # the 0MQ slow joiner: throwaway runs the device ignores
            RE(bp.count([bl.x_motor]))
            if pump(app, lambda: dev.DocumentsReceived > 0, timeout=0.2):
                break
        t0 = time.monotonic()
        (uid,) = RE(
            spirangle_ptycho(
                [bl.detector],
                bl.x_motor,
                bl.y_motor,
                setup=bl.setup(),
                n_side=9,
                step=preset.step_m / bl.position_scale_m,
                per_step=per_step,
            )
        )
        t1 = time.monotonic()
    during = [s for s in seen if t0 <= s[0] <= t1 and s[1] > 0]
    assert len({round(s[2], 3) for s in during}) >= 2, during  # the object changed meanwhile
    assert pump(app, lambda: dev.ScanUid == uid and dev.RunPhase == "finished", timeout=WAIT), (
        dev.status()
    )
    assert pump(app, lambda: panel.state_name == "STANDBY", timeout=10)
    panel.timer.timeout.disconnect(record)
    # physical axes: the device knows the pixel size, the panel shows micrometres
    assert np.all(np.isfinite(panel.pixel_size))
    np.testing.assert_allclose(panel.pixel_size, bl.setup().geometry().pixel_size_m)
    assert "µm" in panel.plots["ObjectPhase"].getAxis("bottom").labelText
    assert panel.images["ObjectPhase"].shape == dev.ObjectPhase.shape
    xs, _ = panel.scatter.getData()
    assert len(xs) == dev.PatternsInUse > 0  # one dot per scan position
    assert len(panel.trace.ratios) >= 1 and panel.trace.uid == uid
    assert uid in panel.status_text.toPlainText()  # the full Status, not "..."

    shot = tmp_path / "panel.png"
    assert panel.save_png(shot)
    image = Qt.QImage(str(shot))
    assert image.width() >= 1200 and image.height() >= 900
    keep = os.environ.get("PANEL_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_save_stop_reset_and_replay_buttons_run_the_commands(
    app: Any, panel: PtychoPanel, server: TangoServer, tmp_path: Path
) -> None:
    dev = server.proxy()
    assert pump(app, lambda: dev.PatternsReceived > 0, timeout=5), (
        "needs the scan of the test before"
    )
    panel.save_edit.setText("from-panel/result.h5")
    written = panel.run_command("Save")  # the button's slot; the click below is the same
    assert written is not None and Path(written).is_file()
    assert Path(written) == (server.output_dir / "from-panel" / "result.h5").resolve()
    panel.buttons["Save"].click()  # the same name again: refused, and the panel says why
    assert "Save refused" in panel.message.text() and "exists" in panel.message.text()

    panel.buttons["Stop"].click()
    assert str(dev.state()) == "ON"
    assert pump(app, lambda: panel.state_name == "ON", timeout=10)

    panel.buttons["Reset"].click()
    assert panel.confirmations  # type: ignore[attr-defined]
    assert dev.PatternsReceived == 0 and dev.ScanUid == ""
    assert pump(app, lambda: "ObjectPhase" not in panel.images, timeout=10)

    panel.replay_edit.setText("/nonexistent/scan.cxi")
    panel.buttons["Replay"].click()
    assert "Replay refused" in panel.message.text() and "not an existing file" in (
        panel.message.text()
    )
    ds = simulate_dataset(small_preset())
    g = ds.geometry
    cxi = write_cxi(
        tmp_path / "scan.cxi",
        ds.intensities,
        ds.positions_m,
        energy_eV=g.energy_eV,
        detector_distance_m=g.detector_distance_m,
        detector_pixel_m=g.detector_pixel_m,
    )
    panel.replay_edit.setText(str(cxi))
    panel.buttons["Replay"].click()
    assert pump(app, lambda: dev.RunPhase == "finished" and str(dev.state()) == "ON"), dev.status()
    assert pump(app, lambda: "ObjectPhase" in panel.images, timeout=10)
    assert panel.images["ObjectPhase"].shape == dev.ObjectPhase.shape


def test_the_command_line_panel_saves_a_screenshot_headless(
    server: TangoServer, tmp_path: Path
) -> None:
    """``bluesky-ptycho panel DEVICE --screenshot``: a separate process, no display."""
    shot = tmp_path / "cli-panel.png"
    # the address serve prints for Tango clients; the panel turns it into the Taurus form
    address = f"tango://127.0.0.1:{server.port}/{server.device}#dbase=no"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bluesky_ptycho.cli", "panel", address),
            *("--screenshot", str(shot), "--wait", "2"),
        ],
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    image = Qt.QImage(str(shot))
    assert (image.width(), image.height()) == (1500, 1050)


def test_the_panel_says_when_the_device_is_gone(
    app: Any, panel: PtychoPanel, server: TangoServer, tango_servers: ServerFactory
) -> None:
    tango_servers.stop(server)
    assert pump(app, lambda: panel.state_name == "UNKNOWN", timeout=30), panel.state_name
    assert panel.status_text.toPlainText().startswith("cannot read")
    assert not any(button.isEnabled() for button in panel.buttons.values())
