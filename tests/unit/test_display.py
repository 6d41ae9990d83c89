"""Matplotlib figures: panels, PNG output, masked probe phase, throttled in-place live plot."""

from __future__ import annotations

import threading
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bluesky_ptycho.display import (
    LivePlot,
    ScanSnapshots,
    error_series,
    probe_phase_masked,
    result_figure,
    save_figure,
    signal_verdict,
    snapshot_path,
    summary,
)
from bluesky_ptycho.engine.state import ReconstructionState

N = 16


def make_state(passes: int = 3, seed: int = 0, shape: tuple[int, int] = (40, 48)):
    rng = np.random.default_rng(seed)
    obj = np.exp(1j * rng.uniform(-1, 1, size=shape)).astype(np.complex64)
    r = np.arange(N) - N // 2
    amp = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 8.0)
    probe = (amp * np.exp(1j * 0.3 * r[None, :])).astype(np.complex64)
    positions = np.array([[2.0, 3.0], [10.0, 20.0], [20.0, 30.0]])
    return ReconstructionState(
        object=obj,
        probe=probe,
        positions_px=positions,
        iteration=passes,
        pattern_updates=passes * 3,
        fourier_error=np.geomspace(1.0, 0.01, passes),
        updates_per_pattern=np.full(3, passes, dtype=np.int64),
    )


def make_scan_state(
    n_patterns: int = 20, updates: int = 640, validation: float = 0.011, seed: int = 0
) -> ReconstructionState:
    """A state as published during a scan: no completed pass, only an error trace."""
    state = make_state(passes=0, seed=seed)
    state.positions_px = np.tile([[2.0, 3.0]], (n_patterns, 1))
    state.pattern_updates = updates
    steps = np.arange(64, updates + 1, 64, dtype=np.float64)
    state.error_trace = np.column_stack([steps, np.geomspace(0.1, 0.01, steps.size)])
    state.validation_error = validation
    state.validation_baseline = 0.02  # the mean pattern's error on the held-out patterns
    return state


def titled_axes(fig: Figure) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def test_result_figure_panels() -> None:
    fig = result_figure(make_state())
    assert isinstance(fig, Figure)
    assert set(titled_axes(fig)) == {
        "Object amplitude",
        "Object phase",
        "Probe amplitude",
        "Probe phase",
        "Fourier error",
    }
    # Four images with a colorbar each, plus the error plot.
    assert len(fig.axes) == 4 + 4 + 1
    axes = titled_axes(fig)
    assert axes["Fourier error"].get_yscale() == "log"
    assert fig.get_suptitle().startswith("pass 3, 3 updates/pattern, 3 patterns")
    assert "validation ratio not yet known" in fig.get_suptitle()


def test_result_figure_without_error_and_with_truth() -> None:
    state = make_state(passes=0)
    truth = np.exp(1j * np.ones((40, 48))).astype(np.complex64)
    fig = result_figure(state, truth=truth, title="my scan")
    names = set(titled_axes(fig))
    assert "Fourier error" not in names
    assert "Ground-truth phase" in names
    assert len(fig.axes) == 5 + 5  # five images with colorbars
    assert fig.get_suptitle() == "my scan"
    np.testing.assert_allclose(titled_axes(fig)["Ground-truth phase"].images[0].get_array(), 1.0)


def test_scan_positions_are_patch_centres_in_pixels() -> None:
    state = make_state()
    ax = titled_axes(result_figure(state))["Object phase"]
    (dots,) = ax.collections
    xy = dots.get_offsets()
    expected = state.positions_px + N / 2
    np.testing.assert_allclose(xy[:, 0], expected[:, 1])  # x is the column
    np.testing.assert_allclose(xy[:, 1], expected[:, 0])
    assert ax.get_xlabel() == "column (px)"


def test_axes_in_micrometres_with_pixel_size() -> None:
    state = make_state()
    fig = result_figure(state, pixel_size_m=(20e-9, 10e-9))
    ax = titled_axes(fig)["Object phase"]
    assert "µm" in ax.get_xlabel()
    xy = ax.collections[0].get_offsets()
    expected = state.positions_px + N / 2
    np.testing.assert_allclose(xy[:, 0], expected[:, 1] * 0.01)
    np.testing.assert_allclose(xy[:, 1], expected[:, 0] * 0.02)
    left, right, bottom, top = ax.images[0].get_extent()
    assert right - left == pytest.approx(48 * 0.01)
    assert bottom - top == pytest.approx(40 * 0.02)
    # The probe is centred on zero.
    left, right, _, _ = titled_axes(fig)["Probe amplitude"].images[0].get_extent()
    assert left == pytest.approx(-right - 0.01)


def test_bad_pixel_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="pixel_size_m"):
        result_figure(make_state(), pixel_size_m=-1.0)


def test_probe_phase_is_masked_where_dark() -> None:
    state = make_state()
    amp = np.abs(state.probe)
    dark = amp <= 0.05 * amp.max()
    assert dark.any() and (~dark).any()

    masked = probe_phase_masked(state.probe)
    np.testing.assert_array_equal(np.ma.getmaskarray(masked), dark)
    np.testing.assert_allclose(masked.compressed(), np.angle(state.probe)[~dark])

    im = titled_axes(result_figure(state))["Probe phase"].images[0]
    shown = im.get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), dark)
    assert im.get_clim() == pytest.approx((-np.pi, np.pi))


def test_save_figure_writes_a_real_png(tmp_path: Path) -> None:
    fig = result_figure(make_state())
    path = save_figure(fig, tmp_path / "result.png", dpi=50)
    assert path == tmp_path / "result.png"
    assert path.stat().st_size > 5000
    img = mpimg.imread(path)
    w, h = fig.get_size_inches() * 50
    assert img.shape[:2] == (round(h), round(w))
    assert img.shape[2] in (3, 4)
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]


def test_save_figure_gives_a_bare_figure_an_agg_canvas(tmp_path: Path) -> None:
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "bare.png", dpi=40)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    assert mpimg.imread(tmp_path / "bare.png").shape[:2] == (40, 80)


def test_live_plot_throttles() -> None:
    live = LivePlot(min_interval_s=60.0)
    state = make_state()
    assert live.update(state) is True  # first update always draws
    assert live.update(state) is False  # within the interval
    assert live.update(state, force=True) is True
    assert live.update(state) is False


def test_live_plot_zero_interval_always_draws() -> None:
    live = LivePlot(min_interval_s=0.0)
    assert live.update(make_state())
    assert live.update(make_state())


def test_live_plot_updates_images_in_place(tmp_path: Path) -> None:
    live = LivePlot(min_interval_s=0.0)
    n_axes_before = len(live.figure.axes)
    live.update(make_state(passes=1, seed=1))
    n_axes = len(live.figure.axes)
    assert n_axes == n_axes_before + 4  # the colorbars, once
    axes = live.axes
    images = {name: axes[name].images[0] for name in ("obj_amp", "obj_phase", "probe_phase")}
    line = axes["error"].lines[0]

    new = make_state(passes=4, seed=2)
    new.positions_px = np.array([[5.0, 5.0], [6.0, 7.0]])
    received = np.array([[5.0, 5.0], [6.0, 7.0], [8.0, 9.0]])
    assert live.update(new, received_positions_px=received)

    assert len(live.figure.axes) == n_axes
    for name, im in images.items():
        assert list(axes[name].images) == [im], name
    np.testing.assert_allclose(images["obj_phase"].get_array(), np.angle(new.object))
    lo, hi = images["obj_phase"].get_clim()
    assert lo == pytest.approx(np.angle(new.object).min())
    assert hi == pytest.approx(np.angle(new.object).max())
    assert list(axes["error"].lines) == [line, axes["error"].lines[1]]
    np.testing.assert_allclose(line.get_ydata(), new.fourier_error)
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4])  # a pass: 1 update/pattern
    assert axes["error"].get_yscale() == "log"

    received_dots, dots = axes["obj_phase"].collections
    np.testing.assert_allclose(dots.get_offsets(), (new.positions_px + N / 2)[:, ::-1])
    np.testing.assert_allclose(received_dots.get_offsets(), (received + N / 2)[:, ::-1])
    assert "patterns received: 3" in live.axes["patterns"].texts[0].get_text()
    assert live.figure.get_suptitle().startswith("pass 4, 6 updates/pattern, 2 patterns")

    path = live.save_png(tmp_path / "live.png")
    assert mpimg.imread(path).shape[:2] == (760, 1200)


def test_live_plot_uses_draw_idle_on_interactive_canvases() -> None:
    class RecordingCanvas(FigureCanvasAgg):
        def __init__(self, figure: Figure) -> None:
            super().__init__(figure)
            self.idle_calls = 0
            self.draw_calls = 0

        def draw_idle(self, *args: object, **kwargs: object) -> None:
            self.idle_calls += 1

        def draw(self) -> None:
            self.draw_calls += 1
            super().draw()

    fig = Figure()
    canvas = RecordingCanvas(fig)
    live = LivePlot(0.0, figure=fig)
    assert live.figure is fig
    live.update(make_state())
    assert canvas.idle_calls == 1
    assert canvas.draw_calls == 0


def test_live_plot_from_a_worker_thread(tmp_path: Path) -> None:
    live = LivePlot(min_interval_s=0.0)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for k in range(1, 4):
                live.update(make_state(passes=k, seed=k))
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    live.save_png(tmp_path / "during.png")
    t.join()
    assert errors == []
    np.testing.assert_allclose(live.axes["error"].lines[0].get_xdata(), [1, 2, 3])
    assert (tmp_path / "during.png").stat().st_size > 1000


def test_live_plot_rejects_negative_interval() -> None:
    with pytest.raises(ValueError, match="min_interval_s"):
        LivePlot(-1.0)


# --------------------------------------------------------------------------------------------
# the error history during a scan, the "did it work" signal, snapshot files


def test_error_series_from_the_trace_in_updates_per_pattern() -> None:
    state = make_scan_state(n_patterns=20, updates=640)
    x, y = error_series(state)
    np.testing.assert_allclose(x, state.error_trace[:, 0] / 20)
    np.testing.assert_allclose(y, state.error_trace[:, 1])
    assert x[-1] == pytest.approx(32.0)
    # a state without a trace (an older file): the per-pass errors, one update per pattern each
    x, y = error_series(make_state(passes=3))
    np.testing.assert_allclose(x, [1, 2, 3])
    np.testing.assert_allclose(y, make_state(passes=3).fourier_error)


def test_result_figure_error_panel_from_the_trace_alone() -> None:
    state = make_scan_state()
    assert state.iteration == 0 and state.fourier_error.size == 0
    ax = titled_axes(result_figure(state))["Fourier error"]
    curve, held = ax.lines
    assert curve.get_xdata().size == state.error_trace.shape[0] > 0
    np.testing.assert_allclose(curve.get_ydata(), state.error_trace[:, 1])
    np.testing.assert_allclose(held.get_xdata(), [32.0])
    np.testing.assert_allclose(held.get_ydata(), [0.011])
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "updates per pattern held"
    lo, hi = ax.get_ylim()
    assert lo <= 0.01 and hi >= 0.1  # autoscaled to the data


def test_live_plot_error_panel_has_data_during_the_scan() -> None:
    live = LivePlot(min_interval_s=0.0)
    state = make_scan_state(validation=float("nan"))
    live.update(state)
    curve, held = live.axes["error"].lines
    np.testing.assert_allclose(curve.get_xdata(), state.error_trace[:, 0] / 20)
    np.testing.assert_allclose(curve.get_ydata(), state.error_trace[:, 1])
    assert held.get_xdata().size == 0  # no validation error known yet
    assert "validation ratio not yet known" in live.figure.get_suptitle()

    # the held-out error of every state shown is kept, at the updates per pattern it had
    live.update(make_scan_state(n_patterns=20, updates=640, validation=0.011))
    later = make_scan_state(n_patterns=40, updates=1280, validation=0.012)
    live.update(later)
    np.testing.assert_allclose(held.get_xdata(), [640 / 40, 1280 / 40])
    np.testing.assert_allclose(held.get_ydata(), [0.011, 0.012])
    np.testing.assert_allclose(curve.get_xdata(), later.error_trace[:, 0] / 40)
    title = live.figure.get_suptitle()
    assert title.startswith("pass 0, 32 updates/pattern, 40 patterns, Fourier error 0.01,")
    assert title.endswith("validation ratio 0.60 (found the specimen)")
    text = live.axes["patterns"].texts[0].get_text()
    assert "validation ratio: 0.60 \n  found the specimen" in text
    assert "updates per pattern: 32" in text

    # a new run (fewer updates) starts the held-out history over
    live.update(make_scan_state(n_patterns=20, updates=128, validation=0.05))
    np.testing.assert_allclose(held.get_ydata(), [0.05])
    assert "not found" in live.figure.get_suptitle()  # 0.05 / 0.02 = 2.5


def test_signal_verdict() -> None:
    assert signal_verdict(float("nan")) == "not yet known"
    assert signal_verdict(0.09) == signal_verdict(0.6) == "found the specimen"
    assert signal_verdict(0.7) == "undecided"
    assert signal_verdict(0.87) == signal_verdict(1.6) == "not found"
    state = make_scan_state(validation=0.0108)  # latest error 0.01
    assert summary(state) == (
        "pass 0, 32 updates/pattern, 20 patterns, Fourier error 0.01, "
        "validation ratio 0.54 (found the specimen)"
    )


def test_scan_snapshots_are_named_by_the_fraction_of_the_scan(tmp_path: Path) -> None:
    assert snapshot_path(tmp_path, 50) == tmp_path / "snapshot-050pct.png"
    snaps = ScanSnapshots(LivePlot(min_interval_s=60.0), tmp_path, total=81)
    assert snaps.pending == [25, 50, 75, 100]
    # marks at ceil(81 * p / 100) patterns: 21, 41, 61, 81
    assert snaps.offer(make_scan_state(n_patterns=20, updates=640)) == []
    assert snaps.offer(make_scan_state(n_patterns=21, updates=700, validation=0.03)) == [25]
    assert snaps.offer(make_scan_state(n_patterns=21, updates=800)) == []  # once per mark
    # a state past two marks is written under both names
    assert snaps.offer(make_scan_state(n_patterns=62, updates=1984, seed=3)) == [50, 75]
    assert snaps.pending == [100]
    written = snaps.close(timeout=60)
    assert snaps.errors == []
    names = ["snapshot-025pct.png", "snapshot-050pct.png", "snapshot-075pct.png"]
    assert [p.name for p in written] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert snaps.summaries[written[0]].startswith("pass 0, 33.3 updates/pattern, 21 patterns")
    assert snaps.summaries[written[0]].endswith("validation ratio 1.50 (not found)")
    assert snaps.summaries[written[2]].startswith("pass 0, 32 updates/pattern, 62 patterns")
    img = mpimg.imread(written[0])
    assert img.shape[:2] == (760, 1200) and float(np.std(img[..., :3])) > 0.05
    assert snaps.offer(make_scan_state(n_patterns=81)) == []  # closed


def test_scan_snapshot_titles_say_the_fraction(tmp_path: Path) -> None:
    live = LivePlot(min_interval_s=60.0)
    snaps = ScanSnapshots(live, tmp_path, total=40, percents=(50,))
    snaps.offer(make_scan_state(n_patterns=20))
    snaps.close(timeout=60)
    first, second = live.figure.get_suptitle().split("\n")
    assert first == "50 % of the scan (20/40 patterns)"
    assert second.startswith("pass 0, 32 updates/pattern, 20 patterns")
    # the error panel of the file has the trace
    assert live.axes["error"].lines[0].get_xdata().size > 0


class _Browser:
    """A web socket of matplotlib's web canvas that records what it is sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.events: list[dict] = []

    def send_binary(self, data: bytes) -> None:
        self.frames.append(data)

    def send_json(self, content: dict) -> None:
        self.events.append(content)


def test_live_plot_pushes_frames_to_a_web_canvas_without_being_asked() -> None:
    """ipympl's canvas is a web canvas: frames must go out while the kernel is busy."""
    from matplotlib.backends.backend_webagg_core import FigureCanvasWebAggCore, FigureManagerWebAgg

    fig = Figure(figsize=(6, 4))
    canvas = FigureCanvasWebAggCore(fig)
    manager = FigureManagerWebAgg(canvas, 1)
    browser = _Browser()
    manager.add_web_socket(browser)
    live = LivePlot(0.0, figure=fig)
    assert live.redraws == 0
    assert live.update(make_state(passes=2))
    # no "draw" round trip through the browser: the rendered frame itself was sent
    assert len(browser.frames) == 1 and browser.frames[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert live.update(make_state(passes=4, seed=1))
    assert len(browser.frames) == 2 and live.redraws == 2
    assert not any(e.get("type") == "draw" for e in browser.events)
