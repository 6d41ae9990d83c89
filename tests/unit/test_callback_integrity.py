"""Run integrity of PtychoCallback (issue 10): each case with the message it must give.

Documents are composed with event_model (tests/unit/conftest.py); the reconstructions are real.
"""

from __future__ import annotations

import logging
import time
import uuid

import event_model
import h5py
import numpy as np
import pytest

from bluesky_ptycho.callback import PatternRecord
from bluesky_ptycho.io.result import read_result, write_result
from bluesky_ptycho.live import LiveOptions

FAST = LiveOptions(final_passes=1)


@pytest.fixture
def ptycho_md(callback_setup):
    return {"ptycho": callback_setup.to_start_doc()}


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_a_duplicated_event_is_used_once(small_dataset, doc_run, make_callback, ptycho_md):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    events = run.feed(small_dataset, range(10))
    cb("event", events[3])  # the same document again
    again = dict(events[5], uid=str(uuid.uuid4()))  # a new uid, the same (descriptor, seq_num)
    cb("event", again)
    run.stop()
    assert cb.result(timeout=60).n_patterns == 10
    st = cb.status
    assert st.frames_used == st.frames_received == 10
    assert st.duplicates == 2 and st.rejected == 0 and st.lost == 0
    assert "2 duplicate document(s) not used" in st.message


def test_a_replayed_event_page_is_used_once(small_dataset, doc_run, make_callback, ptycho_md):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    page = event_model.pack_event_page(*run.feed(small_dataset, range(12), send=False))
    cb("event_page", page)
    cb("event_page", page)  # replayed
    cb("descriptor", run.descriptor_doc)  # and a repeated descriptor
    run.stop()
    assert cb.result(timeout=60).n_patterns == 12
    st = cb.status
    assert st.frames_used == 12 and st.duplicates == 13 and st.rejected == 0


@pytest.mark.parametrize(
    "intruder",
    ["another plan's start", "a garbage dict", "None"],
)
def test_a_foreign_start_garbage_or_none_does_not_close_the_open_run(
    small_dataset, doc_run, make_callback, ptycho_md, intruder
):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    run.feed(small_dataset, range(5))
    if intruder == "another plan's start":  # no ptycho metadata, no fallback setup
        other = doc_run(cb)
        other.event(None, 0.0, 0.0)
        other.stop()
        expected = 'run ignored: no start["ptycho"] and no ScanSetup given'
    elif intruder == "a garbage dict":
        cb("start", {"hello": "world"})
        expected = "start document without a uid: ignored, no open run affected"
    else:
        cb("start", None)
        expected = "start (not a dict: NoneType): not a document: NoneType"
    assert cb.status.open_runs == (run.uid,)
    run.feed(small_dataset, range(5, 10))
    run.stop()
    assert cb.result(timeout=60, run_uid=run.uid).n_patterns == 10
    st = cb.status
    assert st.rejected == 1 and expected in st.reasons[0], st.reasons
    assert st.runs == 1 and st.missing_stops == 0


def test_a_late_stop_of_run_one_does_not_close_run_two(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST)
    first = doc_run(cb, md=ptycho_md)
    first.feed(small_dataset, range(4))
    second = doc_run(cb, md=ptycho_md)
    second.feed(small_dataset, range(3))
    first.stop()  # late: run 2 is already going
    assert cb.status.open_runs == (second.uid,)
    second.feed(small_dataset, range(3, 8))
    assert cb.result(timeout=60, run_uid=first.uid).n_patterns == 4
    second.stop()
    assert cb.result(timeout=60).n_patterns == 8
    assert cb.status.run_uid == second.uid and cb.status.frames_used == 8


def test_interleaved_runs_each_get_their_own_frames(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST)
    a, b = doc_run(cb, md=ptycho_md), doc_run(cb, md=ptycho_md)
    for k in range(6):
        a.feed(small_dataset, [k])
        b.feed(small_dataset, [80 - k])
    b.feed(small_dataset, [70])
    a.stop()
    b.stop()
    assert cb.result(timeout=60, run_uid=a.uid).n_patterns == 6
    assert cb.result(timeout=60, run_uid=b.uid).n_patterns == 7


def test_an_event_before_its_descriptor_is_used_when_it_arrives(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST, orphan_wait=30)
    run = doc_run(cb, md=ptycho_md, send=False)
    cb("start", run.start_doc)
    early = run.feed(small_dataset, range(3), send=False)
    for doc in early:
        cb("event", doc)
    assert cb.status.frames_received == 0
    cb("descriptor", run.descriptor_doc)
    run.feed(small_dataset, range(3, 9))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 9
    assert cb.status.rejected == 0


def test_an_event_whose_descriptor_never_comes_is_rejected_after_orphan_wait(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST, orphan_wait=0.1)
    run = doc_run(cb, md=ptycho_md)
    stray = run.feed(small_dataset, [0], send=False)[0]
    stray["descriptor"] = "never-sent"
    cb("event", stray)
    _wait_for(lambda: cb.status.rejected == 1)
    (entry,) = cb.status.rejections
    assert entry.cause == "NO_DESCRIPTOR"
    assert "unknown descriptor 'never-sent': no such descriptor arrived within 0.1 s" in (
        entry.message
    )


def test_held_events_are_bounded(small_dataset, doc_run, make_callback, ptycho_md):
    cb = make_callback(options=FAST, orphan_wait=60, max_orphans=3)
    run = doc_run(cb, md=ptycho_md)
    for doc in run.feed(small_dataset, range(5), send=False):
        cb("event", dict(doc, descriptor="later"))
    st = cb.status
    assert st.rejected == 2
    assert "more than 3 events waited for descriptors" in st.reasons[0]


def test_a_missing_stop_finishes_and_saves_the_run_after_the_idle_timeout(
    small_dataset, doc_run, make_callback, ptycho_md, tmp_path
):
    cb = make_callback(options=FAST, idle_timeout=0.5, output_dir=tmp_path)
    run = doc_run(cb, md=ptycho_md)
    run.feed(small_dataset, range(10))  # and no stop
    state = cb.result(timeout=60)  # returns after the idle timeout
    assert state.n_patterns == 10
    _wait_for(lambda: cb.result_path is not None)
    st = cb.status
    assert st.missing_stops == 1 and st.open_runs == ()
    assert "no stop document: finished after 0.5 s without documents (idle timeout)" in st.message
    saved = read_result(cb.result_path)
    assert saved.metadata["missing_stop"] and saved.metadata["exit_status"] == "no stop"
    assert saved.metadata["frames_used"] == 10
    assert "idle timeout" in saved.metadata["message"]
    # the tail never came: the start document's scan has more points than arrived
    assert st.lost == saved.metadata["lost"] == len(small_dataset.nominal_positions_m) - 10
    assert f"{st.lost} event(s) lost" in st.message
    # an event after the run was finished is said to be too late
    run.feed(small_dataset, [10])
    (reason,) = cb.status.reasons
    assert "seq_num 11: its run" in reason
    assert "has already ended (finished by the idle timeout)" in reason


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "seven", None, 2.5, True])
def test_an_unusable_seq_num_still_uses_an_inline_frame(
    small_dataset, doc_run, make_callback, ptycho_md, bad
):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    events = run.feed(small_dataset, range(6), send=False)
    for k, doc in enumerate(events):
        if k == 2:
            if bad is None:
                del doc["seq_num"]
            else:
                doc["seq_num"] = bad
        cb("event", doc)
    run.stop()
    assert cb.result(timeout=60).n_patterns == 6
    st = cb.status
    assert st.rejected == 0 and st.lost == 0


def test_an_unusable_seq_num_rejects_a_stream_frame_and_says_why(
    small_dataset, doc_run, make_callback, ptycho_md, helpers, tmp_path
):
    path = tmp_path / "stream.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=small_dataset.intensities[:4][:, None])
    cb = make_callback(options=FAST)
    keys = helpers.data_keys(shape=(1, 64, 64), external="STREAM:")
    run = doc_run(cb, md=ptycho_md, data_keys=keys)
    sres = {
        "uid": str(uuid.uuid4()),
        "run_start": run.uid,
        "data_key": helpers.DET,
        "mimetype": "application/x-hdf5",
        "uri": f"file://localhost{path}",
        "parameters": {"dataset": "/entry/data/data", "chunk_shape": [1, 1, 64, 64]},
    }
    cb("stream_resource", sres)
    cb(
        "stream_datum",
        {
            "uid": f"{sres['uid']}/0",
            "stream_resource": sres["uid"],
            "descriptor": run.descriptor_doc["uid"],
            "indices": {"start": 0, "stop": 4},
            "seq_nums": {"start": 1, "stop": 5},
        },
    )
    events = [run.event(None, *helpers.um(small_dataset, k), send=False) for k in range(4)]
    events[1]["seq_num"] = float("nan")
    for doc in events:
        cb("event", doc)
    run.stop()
    assert cb.result(timeout=60).n_patterns == 3
    (entry,) = cb.status.rejections
    assert "seq_num nan is not a usable sequence number, and a stream frame is found by it" in (
        entry.message
    )


def test_one_oversized_first_frame_does_not_spoil_the_rest(
    small_dataset, doc_run, make_callback, ptycho_md, helpers
):
    keys = helpers.data_keys(shape=())  # the descriptor gives no detector shape
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md, data_keys=keys)
    big = np.pad(small_dataset.intensities[0], 8)
    run.event(big, *helpers.um(small_dataset, 0))
    run.feed(small_dataset, range(1, 21))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 20
    (entry,) = cb.status.rejections
    assert entry.cause == "SHAPE_CHANGED" and entry.count == 1 and entry.first_seq_num == 1
    assert "frame shape (80, 80) differs from the detector's (64, 64)" in entry.message


def test_a_wrong_detector_key_is_named_with_the_keys_seen(
    small_dataset, doc_run, make_callback, callback_setup, helpers, caplog
):
    from dataclasses import replace

    wrong = replace(callback_setup, detector_key="eiger_image")
    cb = make_callback(options=FAST)
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho"):
        run = doc_run(cb, md={"ptycho": wrong.to_start_doc()})
        run.feed(small_dataset, range(5))
        run.stop()
        cb.result(timeout=60)
    st = cb.status
    note = (
        f"detector_key 'eiger_image' is in no descriptor of run {run.uid[:8]}; "
        "data keys seen: ['det_image', 'sx', 'sy']"
    )
    assert st.reasons == (note,) and st.rejected == 1
    assert note in st.message and "0/0 frames used" in st.message
    said = [r.getMessage() for r in caplog.records if "is in no descriptor" in r.getMessage()]
    assert len(said) == 2, said  # at the first event, and in the run's final summary


def test_a_baseline_event_before_the_primary_descriptor_is_not_a_wrong_key(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md, send=False)
    cb("start", run.start_doc)
    base = run.run.compose_descriptor(
        name="baseline", data_keys={"ring_current": {"source": "s", "dtype": "number", "shape": []}}
    )
    cb("descriptor", base.descriptor_doc)
    cb("event", base.compose_event(data={"ring_current": 1.0}, timestamps={"ring_current": 0.0}))
    cb("descriptor", run.descriptor_doc)
    run.feed(small_dataset, range(4))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 4
    assert cb.status.rejected == 0


def test_seq_num_gaps_and_the_stops_num_events_are_lost_events(
    small_dataset, doc_run, make_callback, ptycho_md, caplog
):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    events = run.feed(small_dataset, range(12), send=False)
    for k, doc in enumerate(events):
        if k not in (3, 4, 11):  # two in the middle, and the last one
            cb("event", doc)
    assert cb.status.lost == 2  # the gap is known before the stop
    with caplog.at_level(logging.WARNING, logger="bluesky_ptycho"):
        run.stop()  # num_events says 12
        cb.result(timeout=60)
    st = cb.status
    assert st.lost == 3 and st.frames_used == 9
    assert "3 event(s) lost" in st.message
    lines = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lines) == 1 and "3 event(s) lost" in lines[0] and "'primary': 3" in lines[0]


def test_on_pattern_gives_each_used_pattern_once(small_dataset, doc_run, make_callback, ptycho_md):
    records: list[PatternRecord] = []
    cb = make_callback(options=FAST, on_pattern=records.append)
    run = doc_run(cb, md=ptycho_md)
    run.feed(small_dataset, range(7))
    run.stop()
    cb.result(timeout=60)
    assert [r.seq_num for r in records] == list(range(1, 8))
    assert {r.run_uid for r in records} == {run.uid}
    assert {r.descriptor for r in records} == {run.descriptor_doc["uid"]}
    assert [r.index for r in records] == list(range(7))
    assert records[0].intensities.shape == (64, 64)


def test_resume_run_continues_from_saved_patterns(small_dataset, doc_run, make_callback, ptycho_md):
    records: list[PatternRecord] = []
    first = make_callback(options=FAST, on_pattern=records.append)
    run = doc_run(first, md=ptycho_md)
    events = run.feed(small_dataset, range(20))
    _wait_for(lambda: len(records) == 20 and first.live.status.pattern_updates > 0)
    first.close()  # the server dies here; events 21..30 were never received
    lost_events = run.feed(small_dataset, range(20, 30), send=False)
    assert len(lost_events) == 10
    second = make_callback(options=FAST)
    state = first.live.state()
    second.resume_run(
        run.start_doc,
        [run.descriptor_doc],
        records[:15],  # the checkpoint holds 15 of them
        object_=state.object,
        probe=state.probe,
    )
    for doc in events[10:20]:  # the proxy re-sends some: seq_num 11..15 are duplicates
        second("event", doc)
    run.cb = second  # the restarted server receives the rest
    run.feed(small_dataset, range(30, 40), send=True)
    run.stop()
    final = second.result(timeout=60)
    st = second.status
    assert final.n_patterns == 15 + 5 + 10
    assert st.duplicates == 5 and st.lost == 10 and st.rejected == 0
    assert "(15 recovered)" in st.message


def test_probe_init_path_outside_probe_dirs_is_refused_with_one_message(
    small_dataset, doc_run, make_callback, callback_setup, tmp_path
):
    from dataclasses import replace

    allowed = tmp_path / "probes"
    allowed.mkdir()
    elsewhere = tmp_path / "private"
    elsewhere.mkdir()
    state = small_dataset
    from bluesky_ptycho.engine.state import ReconstructionState

    result = ReconstructionState(
        object=state.object.astype(np.complex64),
        probe=state.probe.astype(np.complex64),
        positions_px=np.zeros((0, 2)),
    )
    write_result(allowed / "p.h5", result)
    write_result(elsewhere / "secret.h5", result)
    messages = []
    for path in (elsewhere / "secret.h5", elsewhere / "absent.h5"):
        cb = make_callback(options=FAST, probe_dirs=[allowed])
        setup = replace(callback_setup, probe_init=str(path))
        doc_run(cb, md={"ptycho": setup.to_start_doc()})
        (reason,) = cb.status.reasons
        messages.append(reason.split(": ", 1)[1].replace(path.name, "X"))
        assert cb.status.runs == 0
    assert messages[0] == messages[1]
    assert "is not inside the allowed probe directories" in messages[0]
    cb = make_callback(options=FAST, probe_dirs=[allowed])
    setup = replace(callback_setup, probe_init="p.h5")  # relative to the probe directory
    run = doc_run(cb, md={"ptycho": setup.to_start_doc()})
    run.feed(small_dataset, range(3))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 3 and cb.status.rejected == 0
    escape = replace(callback_setup, probe_init="../private/secret.h5")
    cb = make_callback(options=FAST, probe_dirs=[allowed])
    doc_run(cb, md={"ptycho": escape.to_start_doc()})
    assert "is not inside the allowed probe directories" in cb.status.reasons[0]


def test_an_event_page_before_its_descriptor_waits_for_it(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST, orphan_wait=30)
    run = doc_run(cb, md=ptycho_md, send=False)
    cb("start", run.start_doc)
    cb("event_page", event_model.pack_event_page(*run.feed(small_dataset, range(6), send=False)))
    assert cb.status.waiting == 6 and cb.status.frames_received == 0
    cb("descriptor", run.descriptor_doc)
    assert cb.status.waiting == 0
    run.stop()
    assert cb.result(timeout=60).n_patterns == 6 and cb.status.rejected == 0


def test_a_malformed_event_page_is_rejected_and_the_run_goes_on(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    page = event_model.pack_event_page(*run.feed(small_dataset, range(4), send=False))
    page["seq_num"] = page["seq_num"][:2]  # columns of different lengths
    cb("event_page", page)
    run.feed(small_dataset, range(4, 8))
    run.stop()
    assert cb.result(timeout=60).n_patterns == 4
    st = cb.status
    assert "malformed event_page: its columns are not all 4 rows long" in st.reasons[0]
    assert st.lost == 4  # seq_num 1..4 never arrived in a usable form


def test_a_stop_naming_no_run_closes_nothing(small_dataset, doc_run, make_callback, ptycho_md):
    cb = make_callback(options=FAST)
    run = doc_run(cb, md=ptycho_md)
    run.feed(small_dataset, range(3))
    cb("stop", {"uid": "x", "exit_status": "success"})  # no run_start
    cb("stop", {"uid": "y", "run_start": "someone-else", "exit_status": "success"})
    # (its reason: "run_start 'someone-else' names no run received (its start is missing...)")
    assert cb.status.open_runs == (run.uid,)
    (entry,) = cb.status.rejections  # one cause, two items
    assert entry.cause == "NO_RUN" and entry.count == 2
    assert entry.message == "stop x: it names no run (no run_start)"
    stop = run.stop()
    cb("stop", stop)  # repeated
    assert cb.result(timeout=60).n_patterns == 3 and cb.status.duplicates == 1


def test_a_stop_after_the_idle_timeout_still_counts_the_lost_events(
    small_dataset, doc_run, make_callback, ptycho_md
):
    cb = make_callback(options=FAST, idle_timeout=0.3)
    run = doc_run(cb, md=ptycho_md)
    run.feed(small_dataset, range(5))
    run.feed(small_dataset, range(5, 8), send=False)  # the last three are lost
    cb.result(timeout=60)
    # without a stop, the start's scan (its nominal points) says how many were expected
    expected = len(small_dataset.nominal_positions_m)
    assert cb.status.missing_stops == 1 and cb.status.lost == expected - 5
    run.stop()  # late: num_events says 8
    assert cb.status.lost == 3 and cb.status.rejected == 0


def test_a_backlog_beyond_its_bound_is_rejected_not_grown(
    small_dataset, doc_run, make_callback, ptycho_md
):
    frame_bytes = small_dataset.intensities[0].nbytes
    cb = make_callback(options=FAST, max_backlog_bytes=frame_bytes - 1)
    run = doc_run(cb, md=ptycho_md)
    run.feed(small_dataset, range(4))
    run.stop()
    cb.result(timeout=60)
    st = cb.status
    assert st.frames_used == 0 and st.rejected == 4
    assert any(r.cause == "BACKLOG" and r.count == 4 for r in st.rejections)
    assert "max_backlog_bytes" in st.reasons[0] and "cannot keep up" in st.reasons[0]

    # a bound of one frame: frames sent one at a time are all used (the bytes are released)
    cb = make_callback(options=FAST, max_backlog_bytes=frame_bytes)
    run = doc_run(cb, md=ptycho_md)
    for k in range(4):
        run.feed(small_dataset, [k])
        _wait_for(lambda k=k: cb.status.frames_used == k + 1)
    run.stop()
    assert cb.result(timeout=60).n_patterns == 4 and cb.status.rejected == 0
    with pytest.raises(ValueError, match="max_backlog_bytes"):
        make_callback(max_backlog_bytes=0)


def test_frames_beyond_the_limit_of_a_run_are_rejected(
    small_dataset, doc_run, make_callback, callback_setup
):
    import dataclasses

    from bluesky_ptycho.setup import Limits

    n = len(small_dataset.nominal_positions_m)
    setup = dataclasses.replace(callback_setup, limits=Limits(max_frames=n))
    cb = make_callback(setup, options=FAST)
    run = doc_run(cb)
    run.feed(small_dataset, [*range(n), 0, 1])
    run.stop()
    assert cb.result(timeout=120).n_patterns == n
    st = cb.status
    assert st.rejected == 2
    assert any(r.cause == "MAX_FRAMES" and r.count == 2 for r in st.rejections)
    assert f"more than {n} frames (Limits.max_frames)" in " ".join(st.reasons)
