"""PtychoCallback on documents built with event_model.compose_run (no RunEngine needed)."""

from __future__ import annotations

import threading
import time
import uuid

import event_model
import h5py
import numpy as np
import pytest

from bluesky_ptycho.io.result import read_result
from bluesky_ptycho.live import LiveOptions

FAST = LiveOptions(final_passes=2)


@pytest.fixture
def setup(callback_setup):
    return callback_setup


@pytest.fixture
def h(helpers):
    return helpers


def _um(ds, k):
    return ds.positions_m[k] / 1e-6


def _feed(run, ds, indices):
    run.feed(ds, indices)


def test_configures_itself_from_the_start_document(small_dataset, setup, doc_run, make_callback):
    ds = small_dataset
    cb = make_callback(options=FAST)
    run = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    _feed(run, ds, range(len(ds.intensities)))
    run.stop()
    state = cb.result(timeout=60)
    assert state.n_patterns == len(ds.intensities)
    # measured encoder positions map onto the simulation's object frame
    np.testing.assert_allclose(state.positions_px, ds.positions_px, atol=1e-6)
    assert state.object.shape == ds.object.shape
    assert state.iteration >= 2
    st = cb.status
    assert st.frames_used == st.frames_received == len(ds.intensities)
    assert st.rejected == 0 and st.documents["event"] == len(ds.intensities)


def test_user_setup_is_the_fallback_for_any_plan(small_dataset, setup, doc_run, make_callback):
    ds = small_dataset
    cb = make_callback(setup, options=FAST)
    run = doc_run(cb)  # no start["ptycho"]
    _feed(run, ds, range(10))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 10


def test_run_without_any_setup_is_ignored_and_says_why(small_dataset, doc_run, make_callback):
    ds = small_dataset
    cb = make_callback(options=FAST)
    run = doc_run(cb)
    _feed(run, ds, range(3))
    run.stop()
    st = cb.status
    assert st.runs == 0
    assert st.rejected == 1  # the start; its events are not counted again
    assert "no ScanSetup" in st.reasons[0] and run.run.start_doc["uid"] in st.reasons[0]
    with pytest.raises(RuntimeError):
        cb.result(timeout=1)


def test_event_page_gives_the_same_frames_and_positions(
    small_dataset, setup, doc_run, make_callback
):
    ds = small_dataset
    states = []
    for paged in (False, True):
        cb = make_callback(options=LiveOptions(final_passes=0))
        run = doc_run(cb, md={"ptycho": setup.to_start_doc()})
        docs = []
        for k in range(12):
            y, x = _um(ds, k)
            docs.append(run.event(ds.intensities[k], y, x, send=not paged))
        if paged:
            cb("event_page", event_model.pack_event_page(*docs))
        run.stop()
        states.append(cb.result(timeout=60))
        assert cb.status.frames_used == 12
    np.testing.assert_array_equal(states[0].positions_px, states[1].positions_px)


def test_bad_documents_are_reported_and_skipped_all_good_frames_used(
    small_dataset, setup, doc_run, make_callback
):
    ds = small_dataset
    cb = make_callback(options=FAST, orphan_wait=0.05)
    run = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    good = 0
    _feed(run, ds, range(5))
    good += 5
    y, x = _um(ds, 5)
    run.event(ds.intensities[5], None, x)  # missing position key
    run.event(ds.intensities[5][:32, :32], y, x)  # wrong frame shape
    nan_frame = ds.intensities[5].copy()
    nan_frame[3, 3] = np.nan
    run.event(nan_frame, y, x)  # NaN frame
    run.event(ds.intensities[5], 1e3, x)  # far outside the object frame
    # an event for a descriptor nobody announced
    stray = dict(run.event(ds.intensities[5], y, x, send=False))
    stray["descriptor"] = str(uuid.uuid4())
    cb("event", stray)
    # a datum for an unknown resource
    cb("datum", {"datum_id": "nope/0", "resource": "nope", "datum_kwargs": {}})
    cb("not_a_document", {})  # unknown document name
    cb("event", "not even a dict")
    _feed(run, ds, range(6, 20))
    good += 14
    run.stop()
    state = cb.result(timeout=60)
    deadline = time.monotonic() + 30  # the stray event waits orphan_wait for its descriptor
    while not any("unknown descriptor" in r for r in cb.status.reasons):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    st = cb.status
    assert state.n_patterns == good
    assert st.frames_used == good
    assert st.lost == 1  # the stray event took seq_num 10 of the run's stream
    reasons = "\n".join(st.reasons)
    for text in (
        "position key(s) ['sy'] missing",
        "frame shape (32, 32) differs",
        "NaN or infinite",
        "outside the object frame",
        "unknown descriptor",
        "unknown resource 'nope'",
    ):
        assert text in reasons, text
    assert st.rejected >= 8
    # each rejection says where: document name, uid and seq_num
    assert any("seq_num 7" in r and "frame shape" in r for r in st.reasons)


def test_resource_datum_frames_and_missing_files(
    small_dataset, setup, tmp_path, doc_run, make_callback, h
):
    ds = small_dataset
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=ds.intensities[:6])
    cb = make_callback(options=FAST)
    run = doc_run(
        cb, md={"ptycho": setup.to_start_doc()}, data_keys=h.data_keys(external="FILESTORE:")
    )
    res = run.run.compose_resource(
        spec="AD_HDF5",
        root=str(tmp_path),
        resource_path="frames.h5",
        resource_kwargs={"frame_per_point": 1},
    )
    cb("resource", res.resource_doc)
    missing = run.run.compose_resource(
        spec="AD_HDF5",
        root=str(tmp_path),
        resource_path="gone.h5",
        resource_kwargs={"frame_per_point": 1},
    )
    cb("resource", missing.resource_doc)
    for k in range(6):
        datum = res.compose_datum(datum_kwargs={"point_number": k})
        cb("datum", datum)
        y, x = _um(ds, k)
        run.event(datum["datum_id"], y, x, filled={h.DET: False})
    lost = missing.compose_datum(datum_kwargs={"point_number": 0})
    cb("datum", lost)
    run.event(lost["datum_id"], *_um(ds, 6), filled={h.DET: False})
    run.stop()
    state = cb.result(timeout=60)
    assert state.n_patterns == 6
    assert any("gone.h5" in r and "not found" in r for r in cb.status.reasons)


def test_stream_resource_and_stream_datum(
    small_dataset, setup, tmp_path, doc_run, make_callback, h
):
    ds = small_dataset
    path = tmp_path / "stream.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=ds.intensities[:8][:, None])  # (n, 1, N, N)
    cb = make_callback(options=LiveOptions(final_passes=0))
    run = doc_run(
        cb,
        md={"ptycho": setup.to_start_doc()},
        data_keys=h.data_keys(shape=(1, 64, 64), external="STREAM:"),
    )
    start_uid = run.run.start_doc["uid"]
    sres = {
        "uid": str(uuid.uuid4()),
        "run_start": start_uid,
        "data_key": h.DET,
        "mimetype": "application/x-hdf5",
        "uri": f"file://localhost{path}",
        "parameters": {"dataset": "/entry/data/data", "chunk_shape": [1, 1, 64, 64]},
    }
    cb("stream_resource", sres)
    for k in range(8):
        cb(
            "stream_datum",
            {
                "uid": f"{sres['uid']}/{k}",
                "stream_resource": sres["uid"],
                "descriptor": run.desc.descriptor_doc["uid"],
                "indices": {"start": k, "stop": k + 1},
                "seq_nums": {"start": k + 1, "stop": k + 2},
            },
        )
        y, x = _um(ds, k)
        run.event(None, y, x)  # ophyd-async events carry only the motors
    run.event(None, *_um(ds, 9))  # no stream_datum for this one
    run.stop()
    state = cb.result(timeout=60)
    assert state.n_patterns == 8
    np.testing.assert_allclose(state.positions_px, ds.positions_px[:8], atol=1e-6)
    assert any("no stream_datum covers seq_num 9" in r for r in cb.status.reasons)


def test_aborted_run_keeps_what_it_has_and_says_so(
    small_dataset, setup, tmp_path, doc_run, make_callback
):
    ds = small_dataset
    cb = make_callback(options=FAST, output_dir=tmp_path)
    run = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    _feed(run, ds, range(15))
    run.stop(exit_status="abort")
    state = cb.result(timeout=60)
    assert state.n_patterns == 15
    assert "abort" in cb.status.message and "kept" in cb.status.message
    saved = read_result(cb.result_path)
    assert saved.metadata["exit_status"] == "abort"
    assert saved.metadata["frames_used"] == 15
    np.testing.assert_array_equal(saved.state.object, state.object)


def test_a_new_start_leaves_the_open_run_open_its_stop_never_comes(
    small_dataset, setup, doc_run, make_callback
):
    ds = small_dataset
    cb = make_callback(options=FAST, idle_timeout=1.0)
    first = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    _feed(first, ds, range(7))
    old_live = cb.live
    second = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    assert cb.status.open_runs == (first.uid, second.uid)
    _feed(second, ds, range(4))
    second.stop()
    assert cb.result(timeout=60).n_patterns == 4
    # the first run never stops: finished after the idle timeout, with all its frames
    assert cb.result(timeout=60, run_uid=first.uid).n_patterns == 7
    assert old_live.wait(timeout=60).n_patterns == 7
    st = cb.status
    assert st.runs == 2 and st.missing_stops == 1 and st.open_runs == ()


def test_status_says_when_frames_are_still_being_processed(
    small_dataset, setup, doc_run, make_callback
):
    ds = small_dataset
    release = threading.Event()
    cb = make_callback(options=FAST, on_frame=lambda *args: release.wait(30))
    run = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    _feed(run, ds, range(6))
    run.stop()  # the documents are all in, as right after RE() returns
    st = cb.status
    assert st.frames_received == 6 and st.frames_pending >= 5 and not st.finished
    assert f"{st.frames_pending} frame(s) still being processed" in st.message
    release.set()
    cb.result(timeout=60)
    deadline = time.monotonic() + 10
    while not cb.status.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    st = cb.status
    assert st.finished and st.frames_pending == 0 and st.frames_used == 6
    assert st.message.endswith("6/6 frames used; finished")


def test_a_user_setup_without_the_nominal_scan_ignores_the_run_and_says_why(
    small_dataset, setup, doc_run, make_callback
):
    from dataclasses import replace

    bare = replace(setup, nominal_positions_m=None, extent_m=None)
    cb = make_callback(bare, options=FAST)
    run = doc_run(cb)  # a plan that writes no start["ptycho"]
    _feed(run, small_dataset, range(3))
    run.stop()
    st = cb.status
    assert st.runs == 0 and st.rejected == 1
    assert "run ignored" in st.reasons[0] and "nominal_positions_m or extent_m" in st.reasons[0]
