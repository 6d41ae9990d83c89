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

from bluesky_ptycho.engine.state import SIGNAL_FOUND, SIGNAL_NOT_FOUND
from bluesky_ptycho.engine.state import signal_verdict as state_signal_verdict

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import PathCollection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D

    from bluesky_ptycho.engine.state import ReconstructionState

__all__ = [
    "PLATEAU_RATIO",
    "PROBE_PHASE_THRESHOLD",
    "SIGNAL_OK_RATIO",
    "LivePlot",
    "ScanSnapshots",
    "error_series",
    "probe_phase_masked",
    "result_figure",
    "save_figure",
    "signal_verdict",
    "snapshot_path",
    "summary",
    "updates_per_pattern",
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
_ERROR_COLOR = "tab:blue"
_VALIDATION_COLOR = "tab:red"

SIGNAL_OK_RATIO = SIGNAL_FOUND
"""A validation ratio at most this says the reconstruction has found the specimen."""
PLATEAU_RATIO = SIGNAL_NOT_FOUND
"""A validation ratio above this says the reconstruction has not found the specimen."""


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

    def extent(
        self, shape: tuple[int, ...], centre: bool = False
    ) -> tuple[float, float, float, float]:
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


def updates_per_pattern(state: ReconstructionState) -> float:
    """Pattern updates per pattern held (``pattern_updates / n_patterns``; 0 when none)."""
    n = state.n_patterns
    return float(state.pattern_updates) / n if n else 0.0


def signal_verdict(ratio: float) -> str:
    """The validation ratio in words (see :func:`bluesky_ptycho.engine.state.signal_verdict`)."""
    return state_signal_verdict(ratio)


def summary(state: ReconstructionState) -> str:
    """One line: passes, updates per pattern, patterns, latest error and the validation ratio.

    For example ``"pass 12, 35 updates/pattern, 43 patterns, Fourier error 0.0027,
    validation ratio 1.08 (converging)"``.
    """
    text = (
        f"pass {state.iteration}, {updates_per_pattern(state):.3g} updates/pattern, "
        f"{state.n_patterns} patterns"
    )
    err = state.latest_error
    if math.isfinite(err):
        text += f", Fourier error {err:.3g}"
    ratio = state.validation_ratio
    if math.isfinite(ratio):
        text += f", validation ratio {ratio:.2f} ({signal_verdict(ratio)})"
    else:
        text += ", validation ratio not yet known"
    return text


def error_series(state: ReconstructionState) -> tuple[np.ndarray, np.ndarray]:
    """The error history as ``(updates per pattern held, Fourier error)``.

    From ``state.error_trace`` (an entry after every chunk of updates, during the scan too):
    ``x = pattern_updates / n_patterns`` with the patterns held now. Without a trace (a state
    from an older file), the per-pass errors at ``x = 1, 2, ...`` (a pass is one update per
    pattern).
    """
    trace = np.asarray(state.error_trace, dtype=np.float64).reshape(-1, 2)
    if trace.shape[0]:
        n = max(state.n_patterns, 1)
        return trace[:, 0] / n, trace[:, 1].copy()
    err = np.asarray(state.fourier_error, dtype=np.float64).ravel()
    return np.arange(1, err.size + 1, dtype=np.float64), err.copy()


def _plot_error(ax: Axes, x: np.ndarray, y: np.ndarray) -> tuple[Line2D, Line2D]:
    """The error curve of the patterns in use and the held-out (validation) markers."""
    (line,) = ax.plot(x, y, marker=".", markersize=3, color=_ERROR_COLOR, label="patterns in use")
    (held,) = ax.plot(
        [],
        [],
        linestyle="none",
        marker="D",
        markersize=5,
        color=_VALIDATION_COLOR,
        label="held out (validation)",
    )
    ax.set_yscale("log")
    ax.set_xlabel("updates per pattern held")
    ax.set_ylabel("Fourier error")
    ax.grid(True, which="both", alpha=0.3)
    return line, held


def _autoscale_error(ax: Axes, *ys: np.ndarray) -> None:
    values = np.concatenate([np.asarray(y, dtype=np.float64).ravel() for y in ys])
    if np.any(np.isfinite(values) & (values > 0)):
        ax.relim()
        ax.autoscale_view()
        if ax.get_legend() is None:
            ax.legend(loc="upper right", fontsize="small")


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
    phase (masked where the amplitude is at most 5 % of its maximum) and, when there is any,
    the Fourier error history against updates per pattern held (:func:`error_series`) on a
    log axis, with the held-out patterns' error as a marker when known. Every image panel has
    a colorbar.

    Parameters
    ----------
    state : ReconstructionState
        The reconstruction.
    pixel_size_m : float or (float, float), optional
        Object pixel size (row, col) in metres; axes are then in µm, otherwise in pixels.
    title : str, optional
        Figure title; by default :func:`summary` (passes, updates per pattern, patterns, latest
        error, validation ratio).
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
    err_x, err_y = error_series(state)
    n_top = 3 if truth is not None else 2
    n_bottom = 3 if err_y.size else 2
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

    if err_y.size:
        ax = axes[1, 2]
        _, held = _plot_error(ax, err_x, err_y)
        validation = float(state.validation_error)
        if math.isfinite(validation):
            held.set_data([updates_per_pattern(state)], [validation])
        _autoscale_error(ax, err_y, np.array([validation]))
        ax.set_title("Fourier error")

    for ax in axes.flat:
        if not ax.get_title():
            fig.delaxes(ax)
    fig.suptitle(title if title is not None else summary(state))
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
    validation: Line2D


def _pushes_frames(canvas: object) -> bool:
    """Whether a canvas is matplotlib's web canvas (ipympl's included): frames are pushed."""
    return any(c.__name__ == "FigureCanvasWebAggCore" for c in type(canvas).__mro__)


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
    The error panel shows :func:`error_series` (the error after every chunk of updates, during
    the scan too) and the held-out patterns' error of every state shown so far (the
    validation error is a single number per state; the plot keeps its history, starting over
    when the pattern updates go back, as for a new run). The title is :func:`summary`.

    Meant to be updated from one worker thread; a lock serialises :meth:`update` and
    :meth:`save_png`. The off-screen figure is laid out once, at the first redraw with an
    error history, and keeps that layout (a redraw then takes about half the time). With an
    interactive canvas the redraw is requested with ``canvas.draw_idle()``; an Agg canvas is
    rendered immediately, and so is a web canvas (ipympl's ``%matplotlib widget`` in Jupyter,
    matplotlib's webagg), whose frame is then sent to the browser at once: the figure updates
    while a RunEngine scan runs in the same kernel (see ``docs/notebooks/live-scan.ipynb``).
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
        self._has_error = False
        self._validation: list[tuple[float, float]] = []  # (pattern updates, error)
        self.redraws = 0
        """Redraws so far (updates not throttled away)."""
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
        title: str | None = None,
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
        title : str, optional
            A line above the figure title, :func:`summary` (e.g. ``"50 % of the scan"``).

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
            self._set_state(state, received_positions_px, title)
            canvas = self._figure.canvas
            if type(canvas) is FigureCanvasAgg:
                canvas.draw()
                if self._freeze_layout and self._has_error:
                    # The panels are laid out now; constrained layout costs about half of
                    # every redraw, so keep these positions for the redraws that follow.
                    self._figure.set_layout_engine("none")
                    self._freeze_layout = False
            elif _pushes_frames(canvas):
                # ipympl (Jupyter) and other webagg canvases: render and send the frame now.
                # draw_idle() would wait for the browser to ask for it, which the kernel
                # cannot answer while a RunEngine scan blocks it.
                canvas.draw()
            else:
                canvas.draw_idle()
            self._last_draw = time.monotonic()
            self.redraws += 1
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

    def _set_state(
        self, state: ReconstructionState, received: np.ndarray | None, title: str | None = None
    ) -> None:
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
        err_x, err_y = error_series(state)
        upp = updates_per_pattern(state)
        validation = float(state.validation_error)
        if self._validation and state.pattern_updates < self._validation[-1][0]:
            self._validation = []  # a new run, or a rolled-back state
        if math.isfinite(validation):
            if self._validation and self._validation[-1][0] == state.pattern_updates:
                self._validation[-1] = (float(state.pattern_updates), validation)
            else:
                self._validation.append((float(state.pattern_updates), validation))
        held = np.asarray(self._validation, dtype=np.float64).reshape(-1, 2)

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

        a.error.set_data(err_x, err_y)
        a.validation.set_data(held[:, 0] / max(state.n_patterns, 1), held[:, 1])
        _autoscale_error(self._axes["error"], err_y, held[:, 1])
        self._has_error = bool(err_y.size)

        n_received = 0 if received is None else int(np.asarray(received).reshape(-1, 2).shape[0])
        lines = [
            f"patterns in use: {state.n_patterns}",
            f"passes: {state.iteration}",
            f"pattern updates: {state.pattern_updates}",
            f"updates per pattern: {upp:.3g}",
        ]
        if received is not None:
            lines.insert(0, f"patterns received: {n_received}")
        err = state.latest_error
        if math.isfinite(err):
            lines.append(f"Fourier error: {err:.4g}")
        if math.isfinite(validation):
            lines.append(f"held-out error: {validation:.4g}")
        ratio = state.validation_ratio
        ratio_text = f"{ratio:.2f} " if math.isfinite(ratio) else ""
        lines.append(f"validation ratio: {ratio_text}\n  {signal_verdict(ratio)}")
        lines.append(
            f"  (held-out error / mean-pattern\n  error; <= {SIGNAL_OK_RATIO:g}: found\n"
            f"  the specimen, > {PLATEAU_RATIO:g}: not found)"
        )
        self._patterns_text.set_text("\n".join(lines))
        self._figure.suptitle(f"{title}\n{summary(state)}" if title else summary(state))

    def _create(
        self, images: dict[str, Any], extents: dict[str, tuple[float, float, float, float]]
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
        error, validation = _plot_error(self._axes["error"], np.zeros(0), np.zeros(0))
        return _LiveArtists(
            obj_amp=made["obj_amp"],
            obj_phase=made["obj_phase"],
            probe_amp=made["probe_amp"],
            probe_phase=made["probe_phase"],
            positions=positions,
            received=received,
            error=error,
            validation=validation,
        )


# --------------------------------------------------------------------------------------------
# snapshots at fractions of a scan


def snapshot_path(directory: str | os.PathLike[str], percent: int) -> Path:
    """``directory/snapshot-050pct.png``: the file of the snapshot at ``percent`` of a scan."""
    return Path(directory) / f"snapshot-{int(percent):03d}pct.png"


class ScanSnapshots:
    """PNG files of a :class:`LivePlot` at fractions of a scan, drawn off the caller's thread.

    :meth:`offer` is cheap: called with every published state (from the reconstruction's
    worker thread, say), it only notes which fractions the state has reached and hands the
    state to a drawing thread, so the reconstruction is not held up by matplotlib. A state
    holding at least ``ceil(total * percent / 100)`` patterns is drawn, titled with the
    fraction and :func:`summary`, and saved as :func:`snapshot_path` ``(directory,
    percent)``.

    Parameters
    ----------
    plot : LivePlot
        The figure to draw into (only this object's thread draws into it until
        :meth:`close`).
    directory : str or path-like
        Existing directory for the PNG files.
    total : int
        Patterns the scan will hold when complete.
    percents : sequence of int, default (25, 50, 75, 100)
        The fractions of the scan, in percent.
    """

    def __init__(
        self,
        plot: LivePlot,
        directory: str | os.PathLike[str],
        total: int,
        percents: tuple[int, ...] = (25, 50, 75, 100),
    ) -> None:
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        self._plot = plot
        self._directory = Path(directory)
        self._total = int(total)
        self._marks = {int(p): max(1, math.ceil(total * p / 100)) for p in sorted(percents)}
        self._lock = threading.Condition()
        self._queue: list[tuple[int, ReconstructionState, np.ndarray | None]] = []
        self._closed = False
        self.written: list[Path] = []
        """The files written so far, in scan order."""
        self.summaries: dict[Path, str] = {}
        """Each file's :func:`summary` line."""
        self.errors: list[str] = []
        """Problems drawing or saving (the files concerned are missing)."""
        self._thread = threading.Thread(target=self._main, name="scan-snapshots", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> list[int]:
        """The fractions (percent) not reached yet."""
        with self._lock:
            return sorted(self._marks)

    def offer(
        self, state: ReconstructionState, received_positions_px: np.ndarray | None = None
    ) -> list[int]:
        """Queue ``state`` for the fractions of the scan it has reached; return those.

        Parameters
        ----------
        state : ReconstructionState
            A published state (kept, not copied: treat it as read-only).
        received_positions_px : ndarray, optional
            As for :meth:`LivePlot.update`.
        """
        n = state.n_patterns
        with self._lock:
            if self._closed:
                return []
            due = [p for p, k in self._marks.items() if n >= k]
            for p in due:
                del self._marks[p]
                self._queue.append((p, state, received_positions_px))
            if due:
                self._lock.notify_all()
        return due

    def close(self, timeout: float | None = None) -> list[Path]:
        """Draw what is queued, stop the thread and return the files written."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout)
        return list(self.written)

    def _main(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue:
                    return
                percent, state, received = self._queue.pop(0)
            title = f"{percent} % of the scan ({state.n_patterns}/{self._total} patterns)"
            try:
                self._plot.update(state, received_positions_px=received, force=True, title=title)
                path = self._plot.save_png(snapshot_path(self._directory, percent))
            except Exception as exc:  # a figure must not take the scan down
                self.errors.append(f"{percent} %: {type(exc).__name__}: {exc}")
                continue
            self.summaries[path] = summary(state)
            self.written.append(path)
