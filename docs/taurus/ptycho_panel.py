"""A ready Taurus panel for the ``PtychoReconstruction`` Tango device.

Object phase, probe amplitude and the error history as live images and a curve (taurus_pyqtgraph),
the "did it work" signal (ValidationRatio with the SignalOK LED), and a TaurusForm with the
scalars, the steering attributes and the commands.

    pip install "bluesky-ptycho[gui]"
    python docs/taurus/ptycho_panel.py tango-nodb://127.0.0.1:PORT/ptycho/recon/1
    # headless, one screenshot:
    QT_QPA_PLATFORM=offscreen python docs/taurus/ptycho_panel.py DEVICE --screenshot panel.png

``DEVICE`` is the device's Taurus name: ``tango-nodb://host:port/dom/fam/member`` for a
database-free server (as ``bluesky-ptycho serve`` prints it), ``tango://dom/fam/member`` with a
Tango database. The quick alternative without this file:
``taurus form DEVICE/Iteration DEVICE/PatternsReceived DEVICE/FourierError DEVICE/ValidationRatio
DEVICE/Progress``.
"""

from __future__ import annotations

import argparse
import sys

SIGNAL_LEGEND = "at most 0.6 (LED on): found the specimen; above 0.8: not found; NaN: not yet"
SIGNAL_HELP = (
    "Validation ratio = Fourier error of the held-out patterns (never used in an update) / "
    "Fourier error of predicting them by the mean pattern (knowing nothing of the specimen).\n"
    "At most 0.6 (measured 0.09 to 0.40; SignalOK): the reconstruction has found the "
    "specimen.\n"
    "Above 0.8 (measured 0.87 to 1.66): not found, a plateau or a wrong starting probe.\n"
    "NaN: not yet known (no update or no held-out pattern inside the scan yet)."
)

SCALARS = (
    "State",
    "Status",
    "ScanUid",
    "Progress",
    "PatternsReceived",
    "PatternsInUse",
    "Iteration",
    "FourierError",
    "ValidationError",
    "ValidationRatio",
    "SignalOK",
    "IterationsPerBatch",
    "Alpha",
    "Beta",
    "PublishPeriod",
)


def build_panel(device: str):
    """The panel widget for ``device`` (a Taurus device name)."""
    import pyqtgraph as pg
    from taurus.external.qt import Qt
    from taurus.qt.qtgui.display import TaurusLabel, TaurusLed
    from taurus.qt.qtgui.panel import TaurusForm
    from taurus_pyqtgraph import TaurusPlot
    from taurus_pyqtgraph.taurusimageitem import TaurusImageItem

    window = Qt.QWidget()
    window.setWindowTitle(f"bluesky-ptycho: {device}")
    layout = Qt.QGridLayout(window)
    window.taurus_items = []  # Taurus keeps listeners weakly: hold them here

    for col, (attr, colormap) in enumerate(
        (("ObjectPhase", "viridis"), ("ProbeAmplitude", "inferno"))
    ):
        view = pg.PlotWidget(title=attr)
        view.setAspectLocked(True)
        view.invertY(True)
        item = TaurusImageItem()
        item.setColorMap(pg.colormap.get(colormap))
        item.setModel(f"{device}/{attr}")
        view.addItem(item)
        window.taurus_items.append(item)
        layout.addWidget(view, 0, col)

    errors = TaurusPlot()
    errors.setModel([f"{device}/ErrorHistory"])
    errors.setTitle("Fourier error after every chunk of updates")
    errors.setLogMode(y=True)
    layout.addWidget(errors, 1, 0, 2, 1)

    signal = Qt.QGroupBox("Did it work?")
    row = Qt.QGridLayout(signal)
    ratio = TaurusLabel()
    ratio.setModel(f"{device}/ValidationRatio")
    font = ratio.font()
    font.setPointSize(font.pointSize() * 2)
    ratio.setFont(font)
    led = TaurusLed()
    led.setModel(f"{device}/SignalOK")
    row.addWidget(Qt.QLabel("ValidationRatio"), 0, 0)
    row.addWidget(ratio, 0, 1)
    row.addWidget(led, 0, 2)
    legend = Qt.QLabel(SIGNAL_LEGEND)
    legend.setWordWrap(True)
    row.addWidget(legend, 1, 0, 1, 3)
    signal.setToolTip(SIGNAL_HELP)
    window.taurus_items += [ratio, led]
    layout.addWidget(signal, 1, 1)

    form = TaurusForm()
    form.setModel([f"{device}/{name}" for name in SCALARS])
    layout.addWidget(form, 2, 1)
    layout.setRowStretch(0, 3)
    layout.setRowStretch(2, 2)
    window.resize(1100, 900)
    return window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device", help="Taurus device name, e.g. tango-nodb://host:port/d/f/m")
    parser.add_argument("--screenshot", help="render once after --wait seconds, save, exit")
    parser.add_argument("--wait", type=float, default=3.0)
    args = parser.parse_args(argv)

    from taurus.external.qt import Qt
    from taurus.qt.qtgui.application import TaurusApplication

    app = TaurusApplication(cmd_line_parser=None, app_name="bluesky-ptycho-panel")
    panel = build_panel(args.device)
    panel.show()
    if args.screenshot:

        def grab() -> None:
            panel.grab().save(args.screenshot)
            app.quit()

        Qt.QTimer.singleShot(int(args.wait * 1000), grab)
    return app.exec_()


if __name__ == "__main__":
    sys.exit(main())
