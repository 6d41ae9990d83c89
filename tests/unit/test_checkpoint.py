"""Crash-recovery checkpoints (``bluesky_ptycho.checkpoint``) with real files.

The interrupted writes are made the way a ``kill -9`` leaves them: a pattern store cut at every
byte of its last record, a record with a flipped byte, a temporary state file left half written
beside the good one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from event_model import compose_run

from bluesky_ptycho.checkpoint import (
    PATTERN_FILE,
    RUN_FILE,
    STATE_FILE,
    CheckpointWriter,
    read_checkpoint,
    read_checkpoints,
)

N = 16


@dataclass(frozen=True)
class Record:
    run_uid: str
    descriptor: str
    seq_num: int | None
    index: int
    intensities: np.ndarray
    mask: np.ndarray | None
    positions_px: np.ndarray


def documents() -> tuple[dict, dict]:
    bundle = compose_run(metadata={"ptycho": {"crop": N}, "num_points": 10})
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={"det": {"dtype": "array", "shape": [N, N], "source": "sim"}},
    )
    return dict(bundle.start_doc), dict(desc.descriptor_doc)


def records(run_uid: str, desc_uid: str, n: int, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mask = None
        if i % 3 == 1:
            mask = rng.random((N, N)) < 0.1
        out.append(
            Record(
                run_uid=run_uid,
                descriptor=desc_uid,
                seq_num=i + 1,
                index=i,
                intensities=rng.poisson(50.0, (N, N)).astype(np.float32),
                mask=mask,
                positions_px=rng.uniform(0, 40, 2),
            )
        )
    return out


def assert_same(saved: object, rec: Record) -> None:
    for name in ("run_uid", "descriptor", "seq_num", "index"):
        assert getattr(saved, name) == getattr(rec, name), name
    np.testing.assert_array_equal(saved.intensities, rec.intensities)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(saved.positions_px, rec.positions_px)  # type: ignore[attr-defined]
    if rec.mask is None:
        assert saved.mask is None  # type: ignore[attr-defined]
    else:
        np.testing.assert_array_equal(saved.mask, rec.mask)  # type: ignore[attr-defined]


def test_a_checkpoint_reads_back_what_was_written(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    recs = records(start["uid"], desc["uid"], 7)
    for r in recs[:5]:
        writer.append(r)
    obj = (np.ones((40, 40)) * np.exp(0.3j)).astype(np.complex64)
    probe = np.full((N, N), 2 + 1j, dtype=np.complex64)
    writer.write_state(obj, probe, iteration=3)
    for r in recs[5:]:  # after the last state: still restored (the store is flushed)
        writer.append(r)
    assert writer.patterns == 7

    cp = read_checkpoint(writer.directory)
    assert cp.run_uid == start["uid"]
    assert cp.start == json.loads(json.dumps(start))
    assert [d["uid"] for d in cp.descriptors] == [desc["uid"]]
    assert len(cp.patterns) == 7 and cp.torn_bytes == 0
    for saved, rec in zip(cp.patterns, recs, strict=True):
        assert_same(saved, rec)
    np.testing.assert_array_equal(cp.object, obj)
    np.testing.assert_array_equal(cp.probe, probe)
    assert cp.iteration == 3 and cp.state_patterns == 5 and cp.stop is None
    assert "7 pattern(s)" in cp.summary()


def test_a_pattern_store_torn_at_any_byte_keeps_every_complete_record(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    recs = records(start["uid"], desc["uid"], 4)
    for r in recs[:3]:
        writer.append(r)
    three = writer.bytes_written
    writer.append(recs[3])
    full = writer.bytes_written
    writer.close()
    store = writer.directory / PATTERN_FILE
    data = store.read_bytes()
    assert len(data) == full
    for cut in range(three, full):  # a kill -9 in the middle of the fourth record
        store.write_bytes(data[:cut])
        cp = read_checkpoint(writer.directory)
        assert len(cp.patterns) == 3, cut
        assert cp.torn_bytes == cut - three
        for saved, rec in zip(cp.patterns, recs, strict=False):
            assert_same(saved, rec)
    store.write_bytes(data)
    assert len(read_checkpoint(writer.directory).patterns) == 4


def test_a_corrupted_record_ends_the_store_there(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    recs = records(start["uid"], desc["uid"], 4)
    sizes = []
    for r in recs:
        writer.append(r)
        sizes.append(writer.bytes_written)
    writer.close()
    store = writer.directory / PATTERN_FILE
    data = bytearray(store.read_bytes())
    data[sizes[1] + 100] ^= 0xFF  # a byte inside the third record's frame
    store.write_bytes(bytes(data))
    cp = read_checkpoint(writer.directory)
    assert len(cp.patterns) == 2
    assert cp.torn_bytes == sizes[3] - sizes[1]


def test_a_state_write_interrupted_midway_leaves_the_previous_state(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    for r in records(start["uid"], desc["uid"], 2):
        writer.append(r)
    obj = np.full((40, 40), 1 + 0j, dtype=np.complex64)
    probe = np.ones((N, N), dtype=np.complex64)
    writer.write_state(obj, probe, iteration=1)
    good = (writer.directory / STATE_FILE).read_bytes()
    # what a kill -9 during the next write_state leaves: a truncated temporary file beside it
    torn = writer.directory / f".{STATE_FILE}.abcd.tmp"
    torn.write_bytes(good[: len(good) // 2])
    torn_run = writer.directory / f".{RUN_FILE}.efgh.tmp"
    torn_run.write_bytes(b'{"format": 1, "start": {"uid": "x"')
    cp = read_checkpoint(writer.directory)
    np.testing.assert_array_equal(cp.object, obj)
    assert cp.iteration == 1 and cp.state_patterns == 2 and len(cp.patterns) == 2
    assert cp.run_uid == start["uid"]


def test_an_unreadable_state_file_still_restores_the_patterns(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    for r in records(start["uid"], desc["uid"], 2):
        writer.append(r)
    (writer.directory / STATE_FILE).write_bytes(b"PK\x03\x04 not a zip")
    cp = read_checkpoint(writer.directory)
    assert cp.object is None and cp.probe is None and len(cp.patterns) == 2


def test_a_resumed_writer_cuts_the_torn_tail_and_appends_after_it(tmp_path: Path) -> None:
    start, desc = documents()
    recs = records(start["uid"], desc["uid"], 5)
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    for r in recs[:3]:
        writer.append(r)
    writer.close()
    store = writer.directory / PATTERN_FILE
    store.write_bytes(store.read_bytes()[:-7])  # the third record torn
    cp = read_checkpoint(writer.directory)
    assert len(cp.patterns) == 2

    again = CheckpointWriter(tmp_path, cp.run_uid, cp.start, cp.descriptors)
    assert again.patterns == 2
    for r in recs[3:]:
        again.append(r)
    again.close()
    cp2 = read_checkpoint(again.directory)
    assert [p.seq_num for p in cp2.patterns] == [1, 2, 4, 5] and cp2.torn_bytes == 0


def test_descriptors_stop_and_removal(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start)
    writer.add_descriptor(desc)
    writer.add_descriptor(desc)  # a duplicate is kept once
    writer.mark_stopped({"uid": "s1", "run_start": start["uid"], "exit_status": "success"})
    found, problems = read_checkpoints(tmp_path)
    assert problems == [] and len(found) == 1
    assert len(found[0].descriptors) == 1 and found[0].stop is not None
    writer.remove()
    assert not writer.directory.exists()
    assert read_checkpoints(tmp_path) == ([], [])
    assert read_checkpoints(tmp_path / "missing") == ([], [])


def test_an_unreadable_run_directory_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / RUN_FILE).write_text("{ not json")
    found, problems = read_checkpoints(tmp_path)
    assert found == [] and len(problems) == 1 and "junk" in problems[0]


def test_a_hostile_run_uid_stays_inside_the_directory(tmp_path: Path) -> None:
    start, desc = documents()
    start["uid"] = "../../escape"
    writer = CheckpointWriter(tmp_path / "cp", start["uid"], start, [desc])
    assert writer.directory.parent == tmp_path / "cp"
    writer.remove()
    assert not (tmp_path / "escape").exists()


def test_bad_patterns_are_refused_without_damaging_the_store(tmp_path: Path) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    good = records(start["uid"], desc["uid"], 1)[0]
    writer.append(good)
    bad = Record(**{**good.__dict__, "seq_num": 2, "intensities": np.zeros((2, N, N), np.float32)})
    with pytest.raises(ValueError, match="expected"):
        writer.append(bad)
    writer.append(Record(**{**good.__dict__, "seq_num": 3}))
    assert len(read_checkpoint(writer.directory).patterns) == 2


def test_appending_costs_one_frame_and_state_writes_leave_no_temporary_files(
    tmp_path: Path,
) -> None:
    start, desc = documents()
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    recs = records(start["uid"], desc["uid"], 6)
    sizes = []
    for r in recs:
        before = writer.bytes_written
        writer.append(r)
        sizes.append(writer.bytes_written - before)
    frame_bytes = 4 * N * N
    for r, size in zip(recs, sizes, strict=True):  # one frame (+ its mask) and a small header
        assert frame_bytes < size <= frame_bytes + (N * N if r.mask is not None else 0) + 128
    for it in range(3):
        writer.write_state(np.ones((40, 40)), np.ones((N, N)), iteration=it)
    assert sorted(os.listdir(writer.directory)) == sorted([RUN_FILE, PATTERN_FILE, STATE_FILE])


def test_a_pattern_handed_over_again_is_not_stored_twice(tmp_path: Path) -> None:
    start, desc = documents()
    recs = records(start["uid"], desc["uid"], 3)
    writer = CheckpointWriter(tmp_path, start["uid"], start, [desc])
    assert all(writer.append(r) for r in recs)
    assert not writer.append(recs[1])
    writer.close()
    again = CheckpointWriter(tmp_path, start["uid"], start, [desc])  # after a restart
    assert not again.append(recs[0])
    assert again.patterns == 3
    again.close()
    assert [p.seq_num for p in read_checkpoint(again.directory).patterns] == [1, 2, 3]
