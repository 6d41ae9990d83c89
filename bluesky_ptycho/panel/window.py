"""The panel's Qt widget (needs the ``gui`` extra: Taurus, PyQt5, taurus-pyqtgraph).

Layout::

    device name   [State]   Start  Stop  Reset   [file] Save   [file or uid] Replay   message
    ┌ object amplitude + scan positions ┬ object phase ┐  Did it work? ratio, LED, legend
    ├ probe amplitude                   ┼ probe phase  ┤  Run: Taurus form of the counters
    └───────────────────────────────────┴──────────────┘  Set-points: Taurus form (memorized)
    Fourier error history │ validation ratio over time │ Status (full text)

The four images, the scan positions, the error history, the ratio trace, State and Status are
refreshed together by a timer reading them in one call (``read_attributes``), so they always
show the same snapshot; the forms, the ratio label and the LED are Taurus widgets listening to
the device's change events. Images have physical axes (µm, from ``PixelSize``; pixels while it
is unknown) and colour bars scaled to each image.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyqtgraph as pg
from taurus.external.qt import Qt
from taurus.qt.qtgui.display import TaurusLabel, TaurusLed
from taurus.qt.qtgui.panel import TaurusForm
from taurus.qt.qtgui.util.tauruscolor import QT_DEVICE_STATE_PALETTE

from bluesky_ptycho.engine.state import SIGNAL_FOUND, SIGNAL_NOT_FOUND

from . import (
    COMMAND_STATES,
    RatioTrace,
    allowed_commands,
    beam_centres,
    colour_levels,
    image_frame,
    log_ticks,
)

__all__ = ["IMAGES", "READOUTS", "SETPOINTS", "PtychoPanel", "run_panel"]

IMAGES = (
    # attribute, title, colour map, colour-bar label, centred on the beam axis
    ("ObjectAmplitude", "Object amplitude (dots: beam positions)", "CET-L1", "|O|", False),
    ("ObjectPhase", "Object phase", "viridis", "rad", False),
    ("ProbeAmplitude", "Probe amplitude", "inferno", "√counts", True),
    ("ProbePhase", "Probe phase", "CET-C2", "rad", True),
)
"""The images shown, in reading order."""

READOUTS = (
    "RunPhase",
    "Progress",
    "PatternsReceived",
    "PatternsInUse",
    "Iteration",
    "FourierError",
    "ValidationError",
)
"""Counters shown in the Run form (read-only); the run's uid is in Status."""

SETPOINTS = ("IterationsPerBatch", "Alpha", "Beta", "PublishPeriod", "ReplayRate")
"""The memorized set-points shown in the Set-points form."""

SIGNAL_LEGEND = (
    f"at most {SIGNAL_FOUND:g} (LED on): found the specimen; above {SIGNAL_NOT_FOUND:g}: "
    "not found; NaN: not yet known"
)

_READ = (
    *(name for name, *_ in IMAGES),
    "ScanPositions",
    "PixelSize",
    "ErrorHistory",
    "ValidationRatio",
    "ScanUid",
)


def _array(value: Any) -> np.ndarray:
    """An attribute value as an array (Tango gives None or [] for empty images)."""
    if value is None:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(value)


class PtychoPanel(Qt.QWidget):
    """The operator's panel for one ``PtychoReconstruction`` device.

    Parameters
    ----------
    device : str
        The device's Taurus name (``tango://...`` or ``tango-nodb://...``; see
        :func:`bluesky_ptycho.panel.taurus_device_name`).
    period_s : float
        Seconds between refreshes of images, State and Status.
    confirm : callable, optional
        ``confirm(question) -> bool`` asked before Reset (which drops the reconstruction);
        default a Yes/No dialog.
    """

    def __init__(
        self,
        device: str,
        period_s: float = 0.5,
        confirm: Callable[[str], bool] | None = None,
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        import taurus

        self.device = device
        self.confirm = confirm or self._ask
        self.proxy = taurus.Device(device).getDeviceProxy()
        self.proxy.set_timeout_millis(10_000)
        self.trace = RatioTrace()
        self.state_name = "UNKNOWN"
        self.refreshes = 0
        self.images: dict[str, np.ndarray] = {}
        self.pixel_size = np.full(2, np.nan)
        self.setWindowTitle(f"bluesky-ptycho: {device}")
        pg.setConfigOptions(imageAxisOrder="row-major")

        layout = Qt.QGridLayout(self)
        layout.addLayout(self._header(), 0, 0, 1, 2)
        layout.addWidget(self._image_grid(), 1, 0)
        layout.addWidget(self._side(), 1, 1)
        layout.addWidget(self._bottom(), 2, 0, 1, 2)
        layout.setRowStretch(1, 5)
        layout.setRowStretch(2, 2)
        layout.setColumnStretch(0, 3)
        layout.setColumnStretch(1, 1)
        self.resize(1500, 1050)

        self.timer = Qt.QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(max(50, int(period_s * 1000)))
        self.refresh()

    # ------------------------------------------------------------------ building
    def _header(self) -> Any:
        row = Qt.QHBoxLayout()
        title = Qt.QLabel(f"<b>{self.device}</b>")
        title.setTextInteractionFlags(Qt.Qt.TextSelectableByMouse)
        row.addWidget(title)
        self.state_label = Qt.QLabel("UNKNOWN")
        self.state_label.setAlignment(Qt.Qt.AlignCenter)
        self.state_label.setMinimumWidth(110)
        self.state_label.setToolTip("The device's State (Tango colours)")
        row.addWidget(self.state_label)
        self.buttons: dict[str, Any] = {}
        tips = {
            "Start": "Arm: reconstruct every run the 0MQ proxy sends (ON -> STANDBY)",
            "Stop": "Stop the feed or replay and the reconstruction; keep the data (-> ON)",
            "Reset": "Drop the reconstruction and everything shown; clear a FAULT (-> ON)",
            "Save": "Write the current reconstruction to this file inside OutputDirectory",
            "Replay": "Reconstruct a recorded scan (CXI file on the server, or a run uid)",
        }
        for name in ("Start", "Stop", "Reset"):
            button = Qt.QPushButton(name)
            button.setToolTip(tips[name])
            button.clicked.connect(lambda _=False, n=name: self.run_command(n))
            self.buttons[name] = button
            row.addWidget(button)
        row.addSpacing(12)
        self.save_edit = Qt.QLineEdit()
        self.save_edit.setPlaceholderText("file in OutputDirectory (empty: a dated name)")
        self.replay_edit = Qt.QLineEdit()
        self.replay_edit.setPlaceholderText("CXI file on the server, or run uid")
        for name, edit in (("Save", self.save_edit), ("Replay", self.replay_edit)):
            edit.setMinimumWidth(180)
            button = Qt.QPushButton(name)
            button.setToolTip(tips[name])
            button.clicked.connect(lambda _=False, n=name: self.run_command(n))
            self.buttons[name] = button
            row.addWidget(edit)
            row.addWidget(button)
        self.message = Qt.QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.Qt.TextSelectableByMouse)
        row.addWidget(self.message, 1)
        return row

    def _image_grid(self) -> Any:
        glw = pg.GraphicsLayoutWidget()
        glw.setBackground("w")
        self.plots: dict[str, Any] = {}
        self.items: dict[str, Any] = {}
        self.bars: dict[str, Any] = {}
        for i, (name, title, cmap, label, _centred) in enumerate(IMAGES):
            plot = glw.addPlot(row=i // 2, col=i % 2, title=title)
            plot.setAspectLocked(True)
            plot.invertY(True)
            item = pg.ImageItem()
            plot.addItem(item)
            bar = pg.ColorBarItem(
                values=(0.0, 1.0), colorMap=pg.colormap.get(cmap), interactive=False, label=label
            )
            bar.setImageItem(item, insert_in=plot)
            self.plots[name], self.items[name], self.bars[name] = plot, item, bar
            self._label_axes(name, "px")
        self.scatter = pg.ScatterPlotItem(
            size=5, pen=pg.mkPen(None), brush=pg.mkBrush(230, 40, 40, 200)
        )
        self.plots["ObjectAmplitude"].addItem(self.scatter)
        return glw

    def _label_axes(self, name: str, unit: str) -> None:
        plot = self.plots[name]
        plot.setLabel("bottom", f"x ({unit})")
        plot.setLabel("left", f"y ({unit})")

    def _side(self) -> Any:
        side = Qt.QWidget()
        column = Qt.QVBoxLayout(side)
        column.setContentsMargins(0, 0, 0, 0)

        signal = Qt.QGroupBox("Did it work?")
        grid = Qt.QGridLayout(signal)
        self.ratio_label = TaurusLabel()
        self.ratio_label.setModel(f"{self.device}/ValidationRatio")
        font = self.ratio_label.font()
        font.setPointSize(int(font.pointSize() * 2))
        self.ratio_label.setFont(font)
        self.signal_led = TaurusLed()
        self.signal_led.setModel(f"{self.device}/SignalOK")
        grid.addWidget(Qt.QLabel("Validation ratio"), 0, 0)
        grid.addWidget(self.ratio_label, 0, 1)
        grid.addWidget(self.signal_led, 0, 2)
        legend = Qt.QLabel(SIGNAL_LEGEND)
        legend.setWordWrap(True)
        grid.addWidget(legend, 1, 0, 1, 3)
        column.addWidget(signal)

        run = Qt.QGroupBox("Run")
        box = Qt.QVBoxLayout(run)
        self.run_form = TaurusForm()
        self.run_form.setWithButtons(False)
        self.run_form.setModel([f"{self.device}/{name}" for name in READOUTS])
        box.addWidget(self.run_form)
        column.addWidget(run, 4)

        setpoints = Qt.QGroupBox("Set-points (memorized; the device's values in force)")
        box = Qt.QVBoxLayout(setpoints)
        self.setpoint_form = TaurusForm()
        self.setpoint_form.setModel([f"{self.device}/{name}" for name in SETPOINTS])
        buttons = self.setpoint_form.buttonBox
        buttons.button(Qt.QDialogButtonBox.Apply).setText("Apply edited set-points")
        buttons.button(Qt.QDialogButtonBox.Reset).setText("Discard edits")
        box.addWidget(self.setpoint_form)
        setpoints.setMinimumHeight(260)
        column.addWidget(setpoints, 3)
        return side

    def _bottom(self) -> Any:
        bottom = Qt.QWidget()
        row = Qt.QHBoxLayout(bottom)
        row.setContentsMargins(0, 0, 0, 0)
        self.error_plot = pg.PlotWidget(title="Fourier error (after every chunk of updates)")
        self.error_plot.setBackground("w")
        self.error_plot.setLogMode(y=True)
        self.error_plot.setLabel("bottom", "chunk of updates")
        self.error_curve = self.error_plot.plot(pen=pg.mkPen("b", width=2))
        row.addWidget(self.error_plot, 2)

        self.ratio_plot = pg.PlotWidget(title="Validation ratio (did it work?) over time")
        self.ratio_plot.setBackground("w")
        self.ratio_plot.setLabel("bottom", "time since the run began (s)")
        for level, colour in ((SIGNAL_FOUND, "g"), (SIGNAL_NOT_FOUND, "r")):
            self.ratio_plot.addItem(
                pg.InfiniteLine(
                    pos=level, angle=0, pen=pg.mkPen(colour, width=1, style=Qt.Qt.DashLine)
                )
            )
        self.ratio_plot.setYRange(0.0, 1.5)
        self.ratio_curve = self.ratio_plot.plot(
            pen=pg.mkPen("k", width=2), symbol="o", symbolSize=4
        )
        row.addWidget(self.ratio_plot, 2)

        self.status_text = Qt.QPlainTextEdit()
        self.status_text.setReadOnly(True)
        self.status_text.setLineWrapMode(Qt.QPlainTextEdit.WidgetWidth)
        mono = Qt.QFontDatabase.systemFont(Qt.QFontDatabase.FixedFont)
        self.status_text.setFont(mono)
        status_box = Qt.QGroupBox("Status")
        box = Qt.QVBoxLayout(status_box)
        box.addWidget(self.status_text)
        row.addWidget(status_box, 3)
        return bottom

    # ------------------------------------------------------------------ refreshing
    def refresh(self) -> None:
        """Read images, positions, errors, State and Status in one go and show them."""
        try:
            values = {
                name: attr.value
                for name, attr in zip(_READ, self.proxy.read_attributes(list(_READ)), strict=True)
            }
            state = str(self.proxy.state())
            status = str(self.proxy.status())
        except Exception as exc:  # the device is down or busy: say so, keep the last images
            self._show_state("UNKNOWN")
            self.status_text.setPlainText(f"cannot read {self.device}:\n{exc}")
            return
        self._show_state(state)
        if status != self.status_text.toPlainText():
            self.status_text.setPlainText(status)
        pixel = np.asarray(values["PixelSize"] if values["PixelSize"] is not None else [])
        self.pixel_size = pixel.reshape(2) if pixel.size == 2 else np.full(2, np.nan)
        probe_shape = _array(values["ProbeAmplitude"]).shape
        for name, _title, _cmap, _label, centred in IMAGES:
            self._show_image(name, _array(values[name]), centred)
        obj = self.images.get("ObjectAmplitude")
        if obj is not None and obj.size and len(probe_shape) == 2:
            frame = image_frame(obj.shape, self.pixel_size)
            x, y = beam_centres(_array(values["ScanPositions"]), probe_shape, frame)
            self.scatter.setData(x, y)
        else:
            self.scatter.setData([], [])
        history = np.asarray(
            values["ErrorHistory"] if values["ErrorHistory"] is not None else [], dtype=float
        )
        keep = np.isfinite(history) & (history > 0)
        self.error_curve.setData(np.flatnonzero(keep), history[keep])
        # ticks at 1, 2, 5 x 10^k: pyqtgraph's own labels overlap within a decade
        self.error_plot.getAxis("left").setTicks(
            [[(math.log10(t), f"{t:g}") for t in log_ticks(history[keep])], []]
        )
        ratio = values["ValidationRatio"]
        self.trace.add(
            str(values["ScanUid"] or ""),
            time.monotonic(),
            float(ratio) if ratio is not None else math.nan,
        )
        self.ratio_curve.setData(self.trace.times, self.trace.ratios)
        if self.trace.ratios:
            self.ratio_plot.setYRange(0.0, max(1.5, 1.1 * max(self.trace.ratios)))
        self.refreshes += 1

    def _show_image(self, name: str, image: np.ndarray, centred: bool) -> None:
        item = self.items[name]
        if image.ndim != 2 or image.size == 0:
            self.images.pop(name, None)
            item.clear()
            return
        self.images[name] = image
        frame = image_frame(image.shape, self.pixel_size, centred=centred)
        lo, hi = colour_levels(image)
        item.setImage(image, autoLevels=False, levels=(lo, hi))
        item.setRect(Qt.QRectF(frame.x0, frame.y0, frame.width, frame.height))
        self.bars[name].setLevels((lo, hi))
        self._label_axes(name, frame.unit)

    def _show_state(self, state: str) -> None:
        self.state_name = state
        self.state_label.setText(state)
        try:
            bg, fg = QT_DEVICE_STATE_PALETTE.qcolor(state)
        except KeyError:
            bg, fg = QT_DEVICE_STATE_PALETTE.qcolor("UNKNOWN")
        self.state_label.setStyleSheet(
            f"QLabel {{ background-color: {bg.name()}; color: {fg.name()}; "
            "font-weight: bold; padding: 4px; border-radius: 3px; }"
        )
        allowed = allowed_commands(state)
        for name, button in self.buttons.items():
            button.setEnabled(name in allowed)

    # ------------------------------------------------------------------ commands
    def run_command(self, name: str) -> Any:
        """Run a device command from its button; show its result or refusal in the header.

        Returns
        -------
        object or None
            The command's result (the path Save wrote), None when refused or cancelled.
        """
        import tango

        if name not in COMMAND_STATES:
            raise ValueError(f"unknown command {name!r}")
        argument: str | None = None
        if name == "Reset" and not self.confirm(
            "Reset drops the reconstruction and everything shown. Reset?"
        ):
            self.message.setText("Reset cancelled")
            return None
        if name == "Save":
            argument = self.save_edit.text().strip() or time.strftime("panel-%Y%m%d-%H%M%S.h5")
        if name == "Replay":
            argument = self.replay_edit.text().strip()
        try:
            if argument is None:
                result = self.proxy.command_inout(name)
            else:
                result = self.proxy.command_inout(name, argument)
        except tango.DevFailed as exc:
            desc = exc.args[0].desc if exc.args else str(exc)
            self.message.setText(f"<span style='color:#b00000'>{name} refused: {desc}</span>")
            self.refresh()
            return None
        self.message.setText(f"{name}: done" + (f" ({result})" if result else ""))
        self.refresh()
        return result

    def _ask(self, question: str) -> bool:
        answer = Qt.QMessageBox.question(
            self, "bluesky-ptycho", question, Qt.QMessageBox.Yes | Qt.QMessageBox.No
        )
        return answer == Qt.QMessageBox.Yes

    def shutdown(self) -> None:
        """Stop refreshing and detach every Taurus widget from the device.

        Call it before the application ends: Tango events or Taurus polls arriving for
        widgets Qt is destroying can crash the interpreter at exit.
        """
        self.timer.stop()
        for form in (self.run_form, self.setpoint_form):
            form.setModel([])
        for widget in (self.ratio_label, self.signal_led):
            widget.setModel("")

    def save_png(self, path: str | os.PathLike[str]) -> bool:
        """Render the panel into a PNG file (works offscreen); True when written."""
        return bool(self.grab().save(os.fspath(path)))


def application() -> Any:
    """The running Qt application, or a new ``TaurusApplication``."""
    from taurus.qt.qtgui.application import TaurusApplication

    app = Qt.QApplication.instance()
    if app is None:
        app = TaurusApplication([], cmd_line_parser=None, app_name="bluesky-ptycho-panel")
    return app


def run_panel(
    device: str, *, period_s: float = 0.5, screenshot: str | None = None, wait_s: float = 5.0
) -> int:
    """Show the panel until its window closes, or save one screenshot and exit.

    Parameters
    ----------
    device : str
        The device's Taurus name.
    period_s : float
        Seconds between refreshes.
    screenshot : str, optional
        Save the panel to this PNG after ``wait_s`` seconds, then exit (with
        ``QT_QPA_PLATFORM=offscreen`` no display is needed).
    wait_s : float
        Seconds before the screenshot.

    Returns
    -------
    int
        The event loop's exit code (1 when the screenshot could not be written).
    """
    app = application()
    panel = PtychoPanel(device, period_s=period_s)
    panel.show()
    failed: list[str] = []
    if screenshot:

        def grab() -> None:
            panel.refresh()
            if not panel.save_png(screenshot):
                failed.append(screenshot)
            app.quit()

        Qt.QTimer.singleShot(int(wait_s * 1000), grab)
    code = int(app.exec_())
    panel.shutdown()
    panel.close()
    panel.deleteLater()
    app.processEvents()
    return 1 if failed else code
