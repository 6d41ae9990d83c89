"""Property tests: PtychoCallback fed real RunEngine streams, mutated by hypothesis.

Three runs of the simulated beamlines (ophyd with frames inline, ophyd writing HDF5 with
resource/datum documents, ophyd-async with stream_resource/stream_datum) are recorded once per
session from a real RunEngine. Each example
drops, corrupts, reorders, duplicates, interleaves and truncates them, inserts garbage, and
feeds the result to a fresh callback. Whatever happens: no exception escapes, every good frame
is used exactly once, every item that cannot be used is rejected with a reason, and the lost
count equals the events really missing (all of them when the stop arrived; otherwise the gaps
below the highest ``seq_num`` received, which is all that can be known).
"""

from __future__ import annotations

import collections
import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_ptycho.plans import spirangle_ptycho
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bluesky_ptycho.callback import PatternRecord, PtychoCallback
from bluesky_ptycho.callback.runs import usable_seq_num
from bluesky_ptycho.geometry import Geometry
from bluesky_ptycho.live import LiveOptions
from bluesky_ptycho.sim_beamline import make_beamline
from bluesky_ptycho.sim_beamline_async import make_async_beamline
from bluesky_ptycho.simulate import small_preset

OPTIONS = LiveOptions(final_passes=0, publish_period_s=60.0)
IDLE_S, ORPHAN_S = 1.0, 0.2
DOC_NAMES = (
    "start",
    "descriptor",
    "event",
    "stop",
    "resource",
    "datum",
    "stream_resource",
    "stream_datum",
    "bogus",
)


def _tiny_preset():
    preset = small_preset()
    n = 32
    pixel = Geometry(preset.energy_eV, preset.detector_distance_m, preset.detector_pixel_m, n)
    return replace(
        preset,
        shape=n,
        n_rows=4,
        n_cols=4,
        step_m=4.0 * pixel.pixel_size_m[0],
        focus_fwhm_m=300e-9,
        defocus_m=100e-6,
    )


def _recorder(docs):
    return lambda name, doc: docs.append((name, copy.deepcopy(doc)))


@pytest.fixture(scope="session")
def recorded_runs(tmp_path_factory) -> list[list[tuple[str, dict]]]:
    """Three real scans' documents: frames inline, in HDF5 with resource/datum (ophyd), and in
    HDF5 with stream_resource/stream_datum (ophyd-async)."""
    RE = RunEngine({})
    runs = []
    for mode in ("inline", "hdf5", "stream"):
        directory = tmp_path_factory.mktemp(mode)
        if mode == "stream":
            beamline = make_async_beamline(_tiny_preset(), directory=directory, seed=1)
        else:
            beamline = make_beamline(_tiny_preset(), mode=mode, directory=directory, seed=1)
        docs: list[tuple[str, dict]] = []
        token = RE.subscribe(_recorder(docs))
        preset = beamline.specimen.preset
        RE(
            spirangle_ptycho(
                [beamline.detector],
                beamline.x_motor,
                beamline.y_motor,
                setup=beamline.setup(),
                n_side=preset.n_rows,
                step=preset.step_m / beamline.position_scale_m,
            )
        )
        RE.unsubscribe(token)
        runs.append(docs)
    return runs


@dataclass
class _Item:
    """One document to send, and what was done to it."""

    name: str
    doc: object
    run: int
    key: str  # the original document's identity ("start", "descriptor", "event:<uid>"...)
    fate: str = "keep"  # keep | none (sent as None) | nan (event frame NaN) | seq (bad seq_num)


def _key(name: str, doc: dict) -> str:
    if name == "datum":
        return f"datum:{doc['datum_id']}"
    if name in ("event", "resource", "stream_resource", "stream_datum", "descriptor"):
        return f"{name}:{doc['uid']}"
    return name


@st.composite
def mutated_streams(draw, recorded):
    """A mutated, interleaved document stream of the two recorded runs."""
    per_run: list[list[_Item]] = []
    for r, docs in enumerate(recorded):
        items: list[_Item] = []
        for name, doc in docs:
            item = _Item(name, copy.deepcopy(doc), r, _key(name, doc))
            if name == "event":
                fate = draw(st.sampled_from(["keep"] * 6 + ["drop", "nan", "seq"]))
                if fate == "nan" and r > 0:
                    fate = "keep"  # frames of the HDF5 runs are in their files
            else:
                fate = draw(st.sampled_from(["keep"] * 10 + ["drop", "none"]))
            if fate == "drop":
                continue
            item.fate = fate
            if fate == "none":
                item.doc = None
            elif fate == "seq":
                item.doc["seq_num"] = draw(st.sampled_from([float("nan"), float("inf"), "x"]))
            elif fate == "nan":
                frame = np.array(item.doc["data"]["eiger_image"], dtype=np.float32)
                frame[0, 0] = np.nan
                item.doc["data"]["eiger_image"] = frame
            items.append(item)
        if r == 0:  # events of the inline run may come early (even before their descriptor)
            for _ in range(draw(st.integers(0, 4))):
                events = [i for i, it in enumerate(items) if it.name == "event"]
                if not events:
                    break
                i = draw(st.sampled_from(events))
                j = max(1, i - draw(st.integers(1, 3)))
                items.insert(j, items.pop(i))
        per_run.append(items)
    # interleave the two runs, each keeping its own order
    picks = draw(st.permutations([r for r, items in enumerate(per_run) for _ in items]))
    sources = [iter(items) for items in per_run]
    stream = [next(sources[p]) for p in picks]
    # duplicates, later in the stream
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(stream) - 1))
        j = draw(st.integers(i + 1, len(stream)))
        stream.insert(j, copy.deepcopy(stream[i]))
    # garbage
    for _ in range(draw(st.integers(0, 3))):
        garbage = draw(
            st.sampled_from([None, {}, {"uid": 5}, {"descriptor": []}, {"run_start": {}}, "x"])
        )
        name = draw(st.sampled_from(DOC_NAMES))
        stream.insert(draw(st.integers(0, len(stream))), _Item(name, garbage, -1, "garbage"))
    # truncated
    cut = draw(st.one_of(st.none(), st.integers(len(stream) // 2, len(stream))))
    return stream if cut is None else stream[:cut]


def _expectations(recorded, stream):
    """What the callback must do with ``stream``: frames used, lost events, least rejected."""
    uids = [docs[0][1]["uid"] for docs in recorded]
    good = {(it.run, it.key) for it in stream if it.fate != "none"}
    used: collections.Counter = collections.Counter()
    lost: dict[str, int] = {}
    unusable = sum(1 for it in stream if it.run == -1 or it.fate == "none")
    for r, docs in enumerate(recorded):
        started = (r, "start") in good
        stopped = (r, "stop") in good
        stop = next(d for n, d in docs if n == "stop")
        resources_ok = all(
            (r, _key(n, d)) in good for n, d in docs if n in ("resource", "stream_resource")
        )
        stream_datums = [d for n, d in docs if n == "stream_datum"]
        received = {}  # uid -> item (one per event; duplicates are not received again)
        for it in stream:
            if it.run == r and it.name == "event" and it.fate != "none":
                received.setdefault(it.doc["uid"], it)
        per_desc: dict[str, tuple[set, int]] = {}
        for it in received.values():
            desc = it.doc["descriptor"]
            seq = usable_seq_num(it.doc.get("seq_num"))
            ok = started and (r, f"descriptor:{desc}") in good and it.fate != "nan"
            if r == 1:  # resource/datum
                datum_id = it.doc["data"]["eiger_image"]
                ok = ok and resources_ok and (r, f"datum:{datum_id}") in good
            elif r == 2:  # stream_resource/stream_datum: found by seq_num
                covering = [
                    d
                    for d in stream_datums
                    if seq is not None and d["seq_nums"]["start"] <= seq < d["seq_nums"]["stop"]
                ]
                ok = (
                    ok
                    and resources_ok
                    and any((r, _key("stream_datum", d)) in good for d in covering)
                )
            if ok:
                used[(uids[r], seq)] += 1
            else:
                unusable += 1
            seqs, unnumbered = per_desc.setdefault(desc, (set(), 0))
            if seq is None:
                per_desc[desc] = (seqs, unnumbered + 1)
            else:
                seqs.add(seq)
        if not started:
            continue
        lost[uids[r]] = 0
        for n, d in docs:
            if n != "descriptor" or (r, f"descriptor:{d['uid']}") not in good:
                continue
            seqs, unnumbered = per_desc.get(d["uid"], (set(), 0))
            top = max(seqs, default=0)
            total = sum(1 for m, e in docs if m == "event" and e["descriptor"] == d["uid"])
            if stopped:
                assert stop["num_events"].get(d["name"], 0) == total
                top = max(top, total)
                got = sum(1 for it in received.values() if it.doc["descriptor"] == d["uid"])
                assert top - len(seqs) - unnumbered == total - got  # the real loss
            elif docs[0][1]["ptycho"]["detector_key"] in d["data_keys"]:
                # no stop: the run ends by the idle timeout, and the start's num_points says
                # how many frame events there should have been
                assert docs[0][1]["num_points"] == total
                top = max(top, total)
            lost[uids[r]] += max(0, top - len(seqs) - unnumbered)
    return used, lost, unusable


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_document_streams(recorded_runs, data):
    stream = data.draw(mutated_streams(recorded_runs))
    used_expected, lost_expected, unusable = _expectations(recorded_runs, stream)
    records: list[PatternRecord] = []
    cb = PtychoCallback(
        options=OPTIONS, on_pattern=records.append, idle_timeout=IDLE_S, orphan_wait=ORPHAN_S
    )
    try:
        for item in stream:
            cb(item.name, item.doc)  # nothing may escape
        # the runs end (by their stop or the idle timeout), held events are given up
        _wait_for(lambda: cb.status.open_runs == () and cb.status.waiting == 0)
        for uid in cb.status.lost_by_run:
            cb.result(timeout=60, run_uid=uid)
        st_ = cb.status
        used = collections.Counter((r.run_uid, r.seq_num) for r in records)
        assert used == used_expected  # every good frame, exactly once
        assert {u: st_.lost_by_run[u] for u in lost_expected} == lost_expected
        # every item that cannot be used is rejected, with a reason naming it
        assert st_.rejected >= unusable
        assert sum(r.count for r in st_.rejections) == st_.rejected
        for rejection in st_.rejections:
            assert rejection.message.split(" ")[0] in (*DOC_NAMES, "not_a_document", "detector_key")
            assert ": " in rejection.message
    finally:
        cb.close()
