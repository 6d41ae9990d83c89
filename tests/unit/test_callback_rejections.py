"""PtychoCallback on bad frame files: one report per cause with a count, every good frame used."""

from __future__ import annotations

import logging
import uuid

import h5py
import numpy as np
import pytest

from bluesky_ptycho.live import LiveOptions

FAST = LiveOptions(final_passes=1)


@pytest.fixture
def new_run(doc_run, helpers, callback_setup):
    """``new_run(cb, external=None, shape=(64, 64))``: a run with the shared setup, started."""

    def make(cb, external=None, shape=(64, 64)):
        keys = helpers.data_keys(shape=shape, external=external)
        return doc_run(cb, md={"ptycho": callback_setup.to_start_doc()}, data_keys=keys)

    return make


def _um(ds, k):
    return ds.positions_m[k] / 1e-6


def _write(path, frames):
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames, chunks=(1, *frames.shape[1:]))
    return path


def _only(cb, run_uid=None):
    (entry,) = [r for r in cb.status.rejections if run_uid is None or r.run_uid == run_uid]
    return entry


def test_a_cause_hitting_many_frames_is_one_reason_with_a_count(
    small_dataset, caplog, new_run, make_callback
):
    ds = small_dataset
    cb = make_callback(options=FAST)
    run = new_run(cb)
    bad = ds.intensities[0].copy()
    bad[1, 1] = np.nan
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho"):
        for k in range(len(ds.intensities)):
            frame = bad if 10 <= k < 60 else ds.intensities[k]
            run.event(frame, *_um(ds, k))
        run.stop()
        cb.result(timeout=60)
    st = cb.status
    assert st.frames_used == len(ds.intensities) - 50
    assert st.rejected == 50
    entry = _only(cb)
    assert (entry.cause, entry.count, entry.first_seq_num, entry.last_seq_num) == (
        "NONFINITE",
        50,
        11,
        60,
    )
    assert st.reasons == (entry.text(),)
    assert "seq_num 11" in entry.message and "[50 items, seq_num 11..60]" in entry.text()
    lines = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
    # the first, the 10th, and the run's summary; not fifty
    assert len(lines) == 3, lines
    assert "50 items" in lines[-1]
    assert "50 rejected, most for:" in st.message and "NaN" in st.message


def test_truncated_and_missing_files_are_reported_once_each_good_frames_used(
    small_dataset, tmp_path, new_run, make_callback
):
    ds = small_dataset
    _write(tmp_path / "good.h5", ds.intensities[:30])
    cut = _write(tmp_path / "cut.h5", ds.intensities[30:60])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the writer died half-way
    cb = make_callback(options=FAST)
    run = new_run(cb, external="FILESTORE:")
    good = run.resource(tmp_path, "good.h5")
    truncated = run.resource(tmp_path, "cut.h5")
    missing = run.resource(tmp_path, "gone.h5")
    for k in range(30):
        run.datum_event(good, k, *_um(ds, k))
    for k in range(30, 60):
        run.datum_event(truncated, k - 30, *_um(ds, k))
    for k in range(60, 81):
        run.datum_event(missing, k - 60, *_um(ds, k))
    run.stop()
    state = cb.result(timeout=60)
    assert state.n_patterns == cb.status.frames_used == 30
    causes = {r.cause: r for r in cb.status.rejections}
    assert set(causes) == {"TRUNCATED", "FILE_MISSING"}
    assert (causes["TRUNCATED"].count, causes["TRUNCATED"].first_seq_num) == (30, 31)
    assert (causes["FILE_MISSING"].count, causes["FILE_MISSING"].last_seq_num) == (21, 81)
    assert "cut.h5" in causes["TRUNCATED"].message and "re-acquire" in causes["TRUNCATED"].message
    assert "gone.h5" in causes["FILE_MISSING"].message
    assert cb.status.rejected == 51


def test_a_file_with_fewer_frames_than_events_keeps_its_frames(
    small_dataset, tmp_path, new_run, make_callback, helpers
):
    """A half-written file (the writer stopped early): frames and positions of different
    lengths. Every frame in the file is used; the events beyond it are one counted cause."""
    ds = small_dataset
    path = _write(tmp_path / "short.h5", ds.intensities[:20][:, None])
    cb = make_callback(options=FAST)
    run = new_run(cb, external="STREAM:", shape=(1, 64, 64))
    sres = {
        "uid": str(uuid.uuid4()),
        "run_start": run.run.start_doc["uid"],
        "data_key": helpers.DET,
        "mimetype": "application/x-hdf5",
        "uri": f"file://localhost{path}",
        "parameters": {"dataset": "/entry/data/data", "chunk_shape": [1, 1, 64, 64]},
    }
    cb("stream_resource", sres)
    n = 30
    cb(
        "stream_datum",
        {
            "uid": f"{sres['uid']}/0",
            "stream_resource": sres["uid"],
            "descriptor": run.desc.descriptor_doc["uid"],
            "indices": {"start": 0, "stop": n},
            "seq_nums": {"start": 1, "stop": n + 1},
        },
    )
    for k in range(n):
        run.event(None, *_um(ds, k))
    run.stop()
    state = cb.result(timeout=120)
    assert state.n_patterns == 20
    np.testing.assert_allclose(state.positions_px, ds.positions_px[:20], atol=1e-6)
    entry = _only(cb)
    assert (entry.cause, entry.count, entry.first_seq_num, entry.last_seq_num) == (
        "BEING_WRITTEN",
        10,
        21,
        30,
    )
    assert "frame 20 is not in" in entry.message and "holds 20 frame(s)" in entry.message


def test_a_detector_shape_change_keeps_the_first_shape(
    small_dataset, tmp_path, new_run, make_callback
):
    ds = small_dataset
    _write(tmp_path / "a.h5", ds.intensities[:40])
    _write(tmp_path / "b.h5", np.pad(ds.intensities[40:], ((0, 0), (0, 8), (0, 8))))
    cb = make_callback(options=FAST)
    run = new_run(cb, external="FILESTORE:", shape=(1, 64, 64))
    first = run.resource(tmp_path, "a.h5")
    second = run.resource(tmp_path, "b.h5")  # the ROI was changed mid-scan
    for k in range(40):
        run.datum_event(first, k, *_um(ds, k))
    for k in range(40, 81):
        run.datum_event(second, k - 40, *_um(ds, k))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 40
    entry = _only(cb)
    assert (entry.cause, entry.count, entry.first_seq_num) == ("SHAPE_CHANGED", 41, 41)
    assert "(72, 72) differs from the detector's (64, 64)" in entry.message
    assert "ROI" in entry.message


def test_rejections_of_two_runs_are_kept_apart(small_dataset, tmp_path, new_run, make_callback):
    ds = small_dataset
    cb = make_callback(options=FAST)
    uids = []
    for _ in range(2):
        run = new_run(cb, external="FILESTORE:")
        uids.append(run.run.start_doc["uid"])
        missing = run.resource(tmp_path, "nowhere.h5")
        for k in range(5):
            run.datum_event(missing, k, *_um(ds, k))
        run.stop()
        cb.result(timeout=60)
    assert [(r.run_uid, r.count) for r in cb.status.rejections] == [(u, 5) for u in uids]
    assert cb.status.rejected == 10
