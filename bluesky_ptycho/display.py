"""Matplotlib figures of a reconstruction, static and live.

Everything here builds :class:`matplotlib.figure.Figure` objects directly and never touches
pyplot's global state, so it works headless, in worker threads and in Jupyter. To show a live
plot in Jupyter, pass a pyplot-managed figure (``%matplotlib widget``)::

    import matplotlib.pyplot as plt
    live = LivePlot(figure=plt.figure(figsize=(11, 7)))
    live.update(state)  # from any one thread; redraws with ``canvas.draw_idle()``

Without a figure, :class:`LivePlot` renders to an off-screen Agg canvas (``save_png``).
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D

    from bluesky_ptycho.engine.state import ReconstructionState

__all__ = [
    "PROBE_PHASE_THRESHOLD",
    "LivePlot",
    "probe_phase_masked",
    "result_figure",
    "save_figure",
]

PROBE_PHASE_THRESHOLD = 0.05
"""Probe phase is shown only where the amplitude exceeds this fraction of its maximum."""

_PHASE_CMAP = "twilight"
_AMP_CMAP = "gray"
_OBJ_PHASE_CMAP = "viridis"
_DOT_COLOR = "red"
_DOT_STYLE: Mapping[str, Any] = MappingProxyType(
    {"s": 9, "c": _DOT_COLOR, "edgecolors": "white", "linewidths": 0.4}
)
_RECEIVED_COLOR = "tab:orange"


# --------------------------------------------------------------------------------------------
# coordinates


@dataclass(frozen=True)
class _Scale:
    """Pixel → axis-unit conversion: µm when a pixel size is known, else pixels."""

    row: float
    col: float
    unit: str

    @classmethod
    def from_pixel_size(cls, pixel_size_m: float | tuple[float, float] | None) -> _Scale:
        if pixel_size_m is None:
            return cls(1.0, 1.0, "px")
        ps = np.asarray(pixel_size_m, dtype=np.float64).ravel()
        if ps.size == 1:
            ps = np.repeat(ps, 2)
        if ps.size != 2 or not np.all(np.isfinite(ps)) or np.any(ps <= 0):
            raise ValueError(
                f"pixel_size_m must be a positive float or (row, col) pair, got {pixel_size_m!r}"
            )
        return cls(float(ps[0]) * 1e6, float(ps[1]) * 1e6, "µm")

    def extent(self, shape: tuple[int, ...], centre: bool = False) -> tuple[float, ...]:
        """imshow extent so that pixel ``i`` sits at coordinate ``i`` (minus N/2 if centred)."""
        h, w = shape[0], shape[1]
        r0 = -h / 2 if centre else 0.0
        c0 = -w / 2 if centre else 0.0
        return (
            (c0 - 0.5) * self.col,
            (c0 + w - 0.5) * self.col,
            (r0 + h - 0.5) * self.row,
            (r0 - 0.5) * self.row,
        )

    def points(self, rc_px: np.ndarray) -> np.ndarray:
        """(n, 2) (row, col) pixel coordinates → (n, 2) (x, y) axis coordinates."""
        rc = np.asarray(rc_px, dtype=np.float64).reshape(-1, 2)
        return np.column_stack([rc[:, 1] * self.col, rc[:, 0] * self.row])

    def label(self, ax: Axes) -> None:
        if self.unit == "px":
            ax.set_xlabel("column (px)")
            ax.set_ylabel("row (px)")
        else:
            ax.set_xlabel(f"x ({self.unit})")
            ax.set_ylabel(f"y ({self.unit})")


def _patch_centres(positions_px: np.ndarray | None, probe_size: int) -> np.ndarray:
    if positions_px is None:
        return np.zeros((0, 2))
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    return pos + probe_size / 2


def probe_phase_masked(
    probe: np.ndarray, threshold: float = PROBE_PHASE_THRESHOLD
) -> np.ma.MaskedArray:
    """Phase of a probe, masked where its amplitude is at most ``threshold`` times the maximum.

    Parameters
    ----------
    probe : ndarray, complex
        The probe.
    threshold : float, default 0.05
        Fraction of the maximum amplitude below (or at) which the phase is masked.

    Returns
    -------
    numpy.ma.MaskedArray
        Phase in radians, in ``[-pi, pi]``.
    """
    probe = np.asarray(probe)
    amp = np.abs(probe)
    peak = float(amp.max()) if amp.size else 0.0
    return np.ma.masked_where(amp <= threshold * peak, np.angle(probe))


def _summary(state: ReconstructionState) -> str:
    text = (
        f"pass {state.iteration}, {state.n_patterns} patterns, "
        f"{state.pattern_updates} pattern updates"
    )
    err = np.asarray(state.fourier_error)
    if err.size:
        text += f", Fourier error {float(err[-1]):.3g}"
    return text


def _plot_error(ax: Axes, fourier_error: np.ndarray) -> Line2D:
    err = np.asarray(fourier_error, dtype=np.float64)
    (line,) = ax.plot(np.arange(1, err.size + 1), err, marker=".", color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("pass")
    ax.set_ylabel("Fourier error")
    ax.grid(True, which="both", alpha=0.3)
    return line


# --------------------------------------------------------------------------------------------
# static figure


def result_figure(
    state: ReconstructionState,
    *,
    pixel_size_m: float | tuple[float, float] | None = None,
    title: str | None = None,
    truth: np.ndarray | None = None,
) -> Figure:
    """Figure of a reconstruction: object, probe, scan positions and error history.

    Panels: object amplitude, object phase with the probe-patch centres of the scan positions
    (``positions_px + N/2``) as dots, an optional ground-truth phase, probe amplitude, probe
    phase (masked where the amplitude is at most 5 % of its maximum) and the Fourier error per
    pass on a log axis when there is any. Every image panel has a colorbar.

    Parameters
    ----------
    state : ReconstructionState
        The reconstruction.
    pixel_size_m : float or (float, float), optional
        Object pixel size (row, col) in metres; axes are then in µm, otherwise in pixels.
    title : str, optional
        Figure title; by default a one-line summary (passes, patterns, last error).
    truth : ndarray, complex, optional
        Ground-truth object; its phase is shown in an extra panel.

    Returns
    -------
    matplotlib.figure.Figure
        A figure not registered with pyplot (save it with :func:`save_figure`).
    """
    scale = _Scale.from_pixel_size(pixel_size_m)
    obj = np.asarray(state.object)
    probe = np.asarray(state.probe)
    err = np.asarray(state.fourier_error)
    n_top = 3 if truth is not None else 2
    n_bottom = 3 if err.size else 2
    ncols = max(n_top, n_bottom)

    fig = Figure(figsize=(4.2 * ncols, 7.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, ncols, squeeze=False)

    ax = axes[0, 0]
    im = ax.imshow(np.abs(obj), cmap=_AMP_CMAP, extent=scale.extent(obj.shape))
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Object amplitude")
    scale.label(ax)

    ax = axes[0, 1]
    im = ax.imshow(np.angle(obj), cmap=_OBJ_PHASE_CMAP, extent=scale.extent(obj.shape))
    fig.colorbar(im, ax=ax, shrink=0.8, label="rad")
    xy = scale.points(_patch_centres(state.positions_px, probe.shape[0]))
    ax.scatter(xy[:, 0], xy[:, 1], label="scan positions", **_DOT_STYLE)
    ax.set_title("Object phase")
    scale.label(ax)

    if truth is not None:
        t = np.asarray(truth)
        ax = axes[0, 2]
        im = ax.imshow(np.angle(t), cmap=_OBJ_PHASE_CMAP, extent=scale.extent(t.shape))
        fig.colorbar(im, ax=ax, shrink=0.8, label="rad")
        ax.set_title("Ground-truth phase")
        scale.label(ax)

    ax = axes[1, 0]
    im = ax.imshow(np.abs(probe), cmap=_AMP_CMAP, extent=scale.extent(probe.shape, centre=True))
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("Probe amplitude")
    scale.label(ax)

    ax = axes[1, 1]
    im = ax.imshow(
        probe_phase_masked(probe),
        cmap=_PHASE_CMAP,
        vmin=-math.pi,
        vmax=math.pi,
        extent=scale.extent(probe.shape, centre=True),
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="rad")
    ax.set_title("Probe phase")
    scale.label(ax)

    if err.size:
        ax = axes[1, 2]
        _plot_error(ax, err)
        ax.set_title("Fourier error")

    for ax in axes.flat:
        if not ax.get_title():
            fig.delaxes(ax)
    fig.suptitle(title if title is not None else _summary(state))
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float = 100) -> Path:
    """Save a figure as PNG through the Agg renderer, atomically.

    A figure without a canvas of its own gets an Agg canvas; a figure shown by an interactive
    backend keeps its canvas (matplotlib renders the PNG with Agg either way).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or path-like
        Destination PNG file; its directory must exist.
    dpi : float, default 100
        Resolution.

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    if type(fig.canvas) is FigureCanvasBase:
        FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# live figure


@dataclass
class _LiveArtists:
    obj_amp: AxesImage
    obj_phase: AxesImage
    probe_amp: AxesImage
    probe_phase: AxesImage
    positions: PathCollection
    received: PathCollection
    error: Line2D


class LivePlot:
    """A throttled figure of a running reconstruction, updated in place.

    Parameters
    ----------
    min_interval_s : float, default 0.5
        Minimum time between two redraws; :meth:`update` calls in between are skipped.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into, e.g. ``plt.figure()`` in Jupyter with ipympl. By default a new
        off-screen figure with an Agg canvas.
    pixel_size_m : float or (float, float), optional
        Object pixel size in metres; axes are then in µm, otherwise in pixels.

    Notes
    -----
    Meant to be updated from one worker thread; a lock serialises :meth:`update` and
    :meth:`save_png`. The off-screen figure is laid out once, at the first redraw, and keeps
    that layout (a redraw then takes about half the time). With an interactive canvas the
    redraw is requested with ``canvas.draw_idle()``; an Agg canvas is rendered immediately.
    GUI toolkits such as Qt must not be driven from a worker thread: there, call
    :meth:`update` from the GUI thread (e.g. a timer) instead.
    """

    def __init__(
        self,
        min_interval_s: float = 0.5,
        *,
        figure: Figure | None = None,
        pixel_size_m: float | tuple[float, float] | None = None,
    ) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.min_interval_s = float(min_interval_s)
        self._scale = _Scale.from_pixel_size(pixel_size_m)
        self._lock = threading.Lock()
        self._last_draw: float | None = None
        self._artists: _LiveArtists | None = None
        self._freeze_layout = figure is None
        if figure is None:
            figure = Figure(figsize=(12, 7.6), layout="constrained")
            FigureCanvasAgg(figure)
        elif type(figure.canvas) is FigureCanvasBase:
            FigureCanvasAgg(figure)
        self._figure = figure
        axes = figure.subplots(2, 3, squeeze=False)
        titles = (
            ("Object amplitude", "Object phase", "Fourier error"),
            ("Probe amplitude", "Probe phase", "Patterns"),
        )
        for ax, t in zip(axes.flat, (t for row in titles for t in row), strict=True):
            ax.set_title(t)
        self._axes: dict[str, Axes] = {
            "obj_amp": axes[0, 0],
            "obj_phase": axes[0, 1],
            "error": axes[0, 2],
            "probe_amp": axes[1, 0],
            "probe_phase": axes[1, 1],
            "patterns": axes[1, 2],
        }
        self._patterns_text = axes[1, 2].text(
            0.05, 0.95, "waiting for data", va="top", ha="left", transform=axes[1, 2].transAxes
        )
        axes[1, 2].set_axis_off()
        figure.suptitle("waiting for data")

    @property
    def figure(self) -> Figure:
        """The figure drawn into."""
        return self._figure

    @property
    def axes(self) -> dict[str, Axes]:
        """The panels by name: obj_amp, obj_phase, error, probe_amp, probe_phase, patterns."""
        return dict(self._axes)

    def update(
        self,
        state: ReconstructionState,
        *,
        received_positions_px: np.ndarray | None = None,
        force: bool = False,
    ) -> bool:
        """Show a new state, unless the last redraw was less than ``min_interval_s`` ago.

        Parameters
        ----------
        state : ReconstructionState
            The current reconstruction.
        received_positions_px : ndarray, shape (m, 2), optional
            Top-left corners of all patterns received so far (including those not yet in the
            engine); their patch centres are drawn as hollow markers.
        force : bool, default False
            Redraw regardless of the interval (e.g. for the final state).

        Returns
        -------
        bool
            True if the figure was redrawn, False if the update was throttled away.
        """
        with self._lock:
            now = time.monotonic()
            if (
                not force
                and self._last_draw is not None
                and now - self._last_draw < self.min_interval_s
            ):
                return False
            self._set_state(state, received_positions_px)
            canvas = self._figure.canvas
            if type(canvas) is FigureCanvasAgg:
                canvas.draw()
                if self._freeze_layout:
                    # The panels are laid out now; constrained layout costs about half of
                    # every redraw, so keep these positions for the redraws that follow.
                    self._figure.set_layout_engine("none")
                    self._freeze_layout = False
            else:
                canvas.draw_idle()
            self._last_draw = time.monotonic()
            return True

    def save_png(self, path: str | os.PathLike[str], *, dpi: float = 100) -> Path:
        """Save the current figure as PNG (see :func:`save_figure`).

        Parameters
        ----------
        path : str or path-like
            Destination file.
        dpi : float, default 100
            Resolution.

        Returns
        -------
        Path
            The path written.
        """
        with self._lock:
            return save_figure(self._figure, path, dpi=dpi)

    # ----------------------------------------------------------------------------------------

    def _set_state(self, state: ReconstructionState, received: np.ndarray | None) -> None:
        obj = np.asarray(state.object)
        probe = np.asarray(state.probe)
        scale = self._scale
        obj_extent = scale.extent(obj.shape)
        probe_extent = scale.extent(probe.shape, centre=True)
        images: dict[str, Any] = {
            "obj_amp": np.abs(obj),
            "obj_phase": np.angle(obj),
            "probe_amp": np.abs(probe),
            "probe_phase": probe_phase_masked(probe),
        }
        extents = {
            "obj_amp": obj_extent,
            "obj_phase": obj_extent,
            "probe_amp": probe_extent,
            "probe_phase": probe_extent,
        }
        centres = scale.points(_patch_centres(state.positions_px, probe.shape[0]))
        received_xy = scale.points(_patch_centres(received, probe.shape[0]))
        err = np.asarray(state.fourier_error, dtype=np.float64)

        if self._artists is None:
            self._artists = self._create(images, extents)
        a = self._artists
        for name in images:
            im: AxesImage = getattr(a, name)
            im.set_data(images[name])
            im.set_extent(extents[name])
            if name != "probe_phase":
                im.autoscale()
        for name in ("obj_amp", "obj_phase"):
            ax = self._axes[name]
            ext = extents[name]
            ax.set_xlim(ext[0], ext[1])
            ax.set_ylim(ext[2], ext[3])
        a.positions.set_offsets(centres)
        a.received.set_offsets(received_xy)

        a.error.set_data(np.arange(1, err.size + 1), err)
        ax = self._axes["error"]
        positive = err[np.isfinite(err) & (err > 0)]
        if positive.size:
            ax.relim()
            ax.autoscale_view()

        n_received = 0 if received is None else int(np.asarray(received).reshape(-1, 2).shape[0])
        lines = [
            f"patterns in use: {state.n_patterns}",
            f"passes: {state.iteration}",
            f"pattern updates: {state.pattern_updates}",
        ]
        if received is not None:
            lines.insert(0, f"patterns received: {n_received}")
        if err.size:
            lines.append(f"Fourier error: {float(err[-1]):.4g}")
        self._patterns_text.set_text("\n".join(lines))
        self._figure.suptitle(_summary(state))

    def _create(
        self, images: dict[str, Any], extents: dict[str, tuple[float, ...]]
    ) -> _LiveArtists:
        fig = self._figure
        scale = self._scale
        made: dict[str, AxesImage] = {}
        for name in images:
            ax = self._axes[name]
            if name == "probe_phase":
                im = ax.imshow(
                    images[name],
                    cmap=_PHASE_CMAP,
                    vmin=-math.pi,
                    vmax=math.pi,
                    extent=extents[name],
                )
            else:
                cmap = _OBJ_PHASE_CMAP if name == "obj_phase" else _AMP_CMAP
                im = ax.imshow(images[name], cmap=cmap, extent=extents[name])
            fig.colorbar(im, ax=ax, shrink=0.8, label="rad" if "phase" in name else None)
            scale.label(ax)
            made[name] = im
        empty = np.zeros((0, 2))
        ax = self._axes["obj_phase"]
        received = ax.scatter(
            empty[:, 0],
            empty[:, 1],
            s=16,
            facecolors="none",
            edgecolors=_RECEIVED_COLOR,
            linewidths=0.6,
        )
        positions = ax.scatter(empty[:, 0], empty[:, 1], **_DOT_STYLE)
        error = _plot_error(self._axes["error"], np.zeros(0))
        return _LiveArtists(
            obj_amp=made["obj_amp"],
            obj_phase=made["obj_phase"],
            probe_amp=made["probe_amp"],
            probe_phase=made["probe_phase"],
            positions=positions,
            received=received,
            error=error,
        )
