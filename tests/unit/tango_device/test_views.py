"""Snapshot -> attribute values (``tango_device.views``), without Tango."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bluesky_ptycho.tango_device.views import (
    RunInfo,
    SnapshotView,
    make_view,
    pixel_size_m,
    progress_percent,
    signal_ok,
)

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.live import Snapshot
from bluesky_ptycho.simulate import simulate_dataset, small_preset


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    ds = simulate_dataset(small_preset())
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0))
    engine.add(ds.intensities[:40], ds.positions_px[:40])
    engine.iterate(2)
    return Snapshot(engine.state(), 45, 40, "running", "", 7, 0.0)


def test_make_view_converts_a_snapshot_to_attribute_values(snapshot: Snapshot) -> None:
    st = snapshot.state
    view = make_view(snapshot, uid="u1", expected=90, pixel_size=(5e-8, 6e-8))
    assert view.seq == 7 and view.uid == "u1" and view.phase == "running"
    assert view.object_amplitude.dtype == np.float32 and view.object_phase.dtype == np.float32
    np.testing.assert_allclose(view.object_amplitude, np.abs(st.object), rtol=1e-6)
    np.testing.assert_allclose(view.object_phase, np.angle(st.object), atol=1e-6)
    np.testing.assert_allclose(view.probe_amplitude, np.abs(st.probe), rtol=1e-6)
    assert view.positions_px.shape == (40, 2)
    assert view.iteration == 2 and view.patterns_received == 45 and view.patterns_in_use == 40
    assert view.progress == pytest.approx(50.0)
    assert view.error_history.ndim == 1 and view.error_history.size >= 2
    assert view.fourier_error == pytest.approx(float(st.latest_error))
    np.testing.assert_array_equal(view.pixel_size_m, [5e-8, 6e-8])
    assert view.signal_ok == signal_ok(view.validation_ratio)


def test_make_view_without_pixel_size_reports_it_unknown(snapshot: Snapshot) -> None:
    view = make_view(snapshot, uid="", expected=None)
    assert view.pixel_size_m.shape == (2,) and np.isnan(view.pixel_size_m).all()
    assert view.progress == 0.0


def test_the_empty_view_shows_nothing() -> None:
    view = SnapshotView.empty()
    assert view.seq == 0 and view.object_phase.shape == (0, 0)
    assert math.isnan(view.fourier_error) and not view.signal_ok
    assert np.isnan(view.pixel_size_m).all()


def test_pixel_size_comes_from_the_runs_scan_contract() -> None:
    from bluesky_ptycho.sim_beamline import make_beamline

    setup = make_beamline(mode="inline", seed=0).setup()
    run = RunInfo.from_start({"uid": "u", "ptycho": setup.to_start_doc()})
    assert run.setup is not None
    pixel = pixel_size_m(run)
    np.testing.assert_allclose(pixel, setup.geometry().pixel_size_m)
    assert (pixel > 1e-10).all() and (pixel < 1e-5).all()  # an object pixel, in metres
    assert np.isnan(pixel_size_m(None)).all()
    assert np.isnan(pixel_size_m(RunInfo.from_start({"uid": "u", "num_points": 5}))).all()


def test_progress_percent_is_clipped() -> None:
    assert progress_percent(20, 80) == 25.0 and progress_percent(100, 81) == 100.0
    assert progress_percent(3, None) == 0.0
