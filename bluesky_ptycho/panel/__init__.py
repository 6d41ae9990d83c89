"""``bluesky-ptycho panel``: an operator's Taurus panel for the ``PtychoReconstruction`` device.

The panel (:mod:`bluesky_ptycho.panel.window`, needs the ``gui`` extra: Taurus, PyQt5 and
taurus-pyqtgraph) shows the object's and the probe's amplitude and phase with physical axes
(µm) and colour bars, the scan positions over the object, the Fourier error and the "did it
work" validation ratio over time, the device's State (coloured) and full Status, buttons for
Start, Stop, Reset, Save and Replay, and the memorized set-points as the device holds them.

This module holds what the panel computes (no Qt, unit-tested on its own) and :func:`main`;
Qt and Taurus are imported only when a panel is built.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "COMMAND_STATES",
    "DEFAULT_DEVICE",
    "ImageFrame",
    "RatioTrace",
    "allowed_commands",
    "beam_centres",
    "colour_levels",
    "image_frame",
    "log_ticks",
    "main",
    "taurus_device_name",
]

DEFAULT_DEVICE = "bluesky/ptycho/1"
"""The device ``bluesky-ptycho serve`` creates by default (``--device``)."""

COMMAND_STATES: dict[str, tuple[str, ...]] = {
    "Start": ("ON",),
    "Stop": ("STANDBY", "RUNNING", "FAULT"),
    "Reset": ("ON", "FAULT"),
    "Save": ("ON", "STANDBY", "RUNNING", "FAULT"),
    "Replay": ("ON",),
}
"""The states in which the device allows each command (docs/how-to/tango.md, Commands)."""


def taurus_device_name(text: str) -> str:
    """The Taurus name of a device given as any of the names an operator may have at hand.

    Parameters
    ----------
    text : str
        ``dom/fam/member`` (found through ``TANGO_HOST``), ``tango://host:port/dom/fam/member``
        (a Tango database), ``tango-nodb://host:port/dom/fam/member`` (database-free, as
        ``bluesky-ptycho serve`` prints it for Taurus) or ``tango://host:port/dom/fam/member
        #dbase=no`` (database-free, as ``serve`` prints it for Tango clients, which Taurus does
        not accept: it becomes the ``tango-nodb`` form).

    Returns
    -------
    str
        A name ``taurus.Device`` accepts.

    Raises
    ------
    ValueError
        If the name is empty or has no ``dom/fam/member`` part.
    """
    name = text.strip().rstrip("/")
    nodb = name.endswith("#dbase=no")
    if nodb:
        name = name[: -len("#dbase=no")].rstrip("/")
    scheme, sep, rest = name.partition("://")
    if not sep:
        scheme, rest = "tango", name
    if scheme not in ("tango", "tango-nodb"):
        raise ValueError(f"{text!r}: only tango:// and tango-nodb:// device names are supported")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 3:
        raise ValueError(f"{text!r} is not a device name (dom/fam/member)")
    if nodb or scheme == "tango-nodb":
        return f"tango-nodb://{rest}"
    return f"tango://{rest}"


def allowed_commands(state: str) -> frozenset[str]:
    """The commands the device allows in ``state`` (a ``DevState`` name), for the buttons."""
    return frozenset(name for name, states in COMMAND_STATES.items() if state in states)


@dataclass(frozen=True)
class ImageFrame:
    """Where an image lies on the plot: its rectangle in display units.

    Attributes
    ----------
    x0, y0 : float
        The top-left corner of pixel ``[0, 0]``.
    width, height : float
        The image's extent along columns (x) and rows (y).
    unit : str
        ``"µm"`` when the pixel size is known, else ``"px"``.
    scale : (float, float)
        Display units per pixel, ``(row, col)``.
    """

    x0: float
    y0: float
    width: float
    height: float
    unit: str
    scale: tuple[float, float]


def image_frame(
    shape: Sequence[int], pixel_size_m: Sequence[float] | np.ndarray, *, centred: bool = False
) -> ImageFrame:
    """The rectangle of an image of ``shape`` with pixels of ``pixel_size_m``, in µm.

    Parameters
    ----------
    shape : (int, int)
        ``(rows, cols)``.
    pixel_size_m : (float, float)
        ``(row, col)`` pixel size in metres; when not finite and positive, the frame is in
        pixels.
    centred : bool
        Put 0 at the image's centre pixel ``shape // 2`` (the probe: the beam axis) instead of
        at the corner of pixel ``[0, 0]`` (the object).

    Returns
    -------
    ImageFrame
    """
    rows, cols = (int(n) for n in shape)
    px = np.asarray(pixel_size_m, dtype=np.float64).reshape(-1)
    if px.size == 2 and bool(np.all(np.isfinite(px))) and bool(np.all(px > 0)):
        scale = (float(px[0]) * 1e6, float(px[1]) * 1e6)
        unit = "µm"
    else:
        scale, unit = (1.0, 1.0), "px"
    y0 = -(rows // 2) * scale[0] if centred else 0.0
    x0 = -(cols // 2) * scale[1] if centred else 0.0
    return ImageFrame(x0, y0, cols * scale[1], rows * scale[0], unit, scale)


def beam_centres(
    positions_px: Any, probe_shape: Sequence[int], frame: ImageFrame
) -> tuple[np.ndarray, np.ndarray]:
    """The beam centre of each scan position on the object plot, ``(x, y)`` in display units.

    Parameters
    ----------
    positions_px : array_like, shape (n, 2)
        ``ScanPositions``: ``(row, col)`` probe-patch top-left corners in object pixels.
    probe_shape : (int, int)
        The probe's shape; the beam centre is at its pixel ``shape // 2`` (the engine's
        convention).
    frame : ImageFrame
        The object's frame (:func:`image_frame`, not centred).

    Returns
    -------
    (ndarray, ndarray)
        x (columns) and y (rows), empty when there are no positions.
    """
    pos = np.asarray(positions_px, dtype=np.float64)
    if pos.size == 0:
        return np.zeros(0), np.zeros(0)
    pos = pos.reshape(-1, 2)
    half = np.asarray([int(probe_shape[0]) // 2, int(probe_shape[1]) // 2], dtype=np.float64)
    centre = pos + half + 0.5  # pixel k spans [k, k + 1) on the plot
    return (
        frame.x0 + centre[:, 1] * frame.scale[1],
        frame.y0 + centre[:, 0] * frame.scale[0],
    )


def colour_levels(image: Any) -> tuple[float, float]:
    """Colour-bar limits of an image: its finite minimum and maximum (never equal).

    Returns
    -------
    (float, float)
        ``(0, 1)`` for an empty or all-NaN image; ``(v - 0.5, v + 0.5)`` for a flat one.
    """
    data = np.asarray(image, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return lo - 0.5, hi + 0.5
    return lo, hi


def log_ticks(values: Any) -> list[float]:
    """Tick values for a logarithmic axis over ``values``: 1, 2 and 5 times powers of ten.

    Parameters
    ----------
    values : array_like
        The plotted values; only finite positive ones count.

    Returns
    -------
    list of float
        The ticks within the values' range, plus the one just below and above it (empty when
        there is no finite positive value).
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data) & (data > 0)]
    if data.size == 0:
        return []
    lo, hi = float(data.min()), float(data.max())
    ticks = [
        m * 10.0**k
        for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1.0, 2.0, 5.0)
    ]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    start = below[-1] if below else ticks[0]
    stop = above[0] if above else ticks[-1]
    return [float(f"{t:.3g}") for t in ticks if start <= t <= stop]


@dataclass
class RatioTrace:
    """The validation ratio of the run shown, over time, as the panel saw it.

    A new run (another ``ScanUid``) starts a new trace; NaN values (not yet known) are kept
    out of the curve.

    Attributes
    ----------
    uid : str
        The run traced.
    times, ratios : list of float
        Seconds since the trace began, and the ratio then.
    """

    uid: str = ""
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    _t0: float = math.nan

    def add(self, uid: str, t: float, ratio: float) -> None:
        """Record ``ratio`` of run ``uid`` at time ``t`` (s, any monotonic clock)."""
        if uid != self.uid:
            self.uid, self.times, self.ratios, self._t0 = uid, [], [], t
        if math.isnan(self._t0):
            self._t0 = t
        if uid and math.isfinite(ratio):
            self.times.append(t - self._t0)
            self.ratios.append(float(ratio))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bluesky-ptycho panel",
        description="An operator's Taurus panel for a PtychoReconstruction Tango device.",
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The panel's command-line arguments (shared by ``bluesky-ptycho panel``)."""
    p.add_argument(
        "device",
        nargs="?",
        default=DEFAULT_DEVICE,
        help=f"the device: dom/fam/member through TANGO_HOST (default {DEFAULT_DEVICE}), "
        "tango://HOST:PORT/dom/fam/member, or the database-free tango-nodb://HOST:PORT/... "
        "(or tango://HOST:PORT/...#dbase=no) that bluesky-ptycho serve prints",
    )
    p.add_argument(
        "--period", type=float, default=0.5, help="seconds between image refreshes (default 0.5)"
    )
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        help="save the panel to PNG after --wait seconds, then exit (headless: set "
        "QT_QPA_PLATFORM=offscreen)",
    )
    p.add_argument("--wait", type=float, default=5.0, help="seconds before --screenshot")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the panel until its window closes (or save one screenshot with ``--screenshot``).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The Qt event loop's exit code; 2 for a bad device name.
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the panel for parsed arguments (see :func:`add_arguments`)."""
    try:
        device = taurus_device_name(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .window import run_panel

    return run_panel(
        device, period_s=float(args.period), screenshot=args.screenshot, wait_s=args.wait
    )


if __name__ == "__main__":
    sys.exit(main())
