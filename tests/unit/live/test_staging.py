"""Staging and Publisher on their own (no worker thread)."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import ReconstructionState
from bluesky_ptycho.live.publisher import Publisher
from bluesky_ptycho.live.staging import MAX_SPARE_CHUNKS, Staging, check_frames, feed


def test_staging_keeps_every_frame_in_order_across_chunks():
    staging = Staging(3, (4, 4))
    frames = np.arange(8 * 16, dtype=np.float32).reshape(8, 4, 4)
    positions = np.arange(16, dtype=np.float64).reshape(8, 2)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    assert staging.put(*check_frames(frames[:5], positions[:5], None, (4, 4))) == 0
    assert staging.put(*check_frames(frames[5:], positions[5:], mask, (4, 4))) == 5
    assert staging.received == 8
    chunks = staging.take()
    assert [ch.count for ch in chunks] == [3, 3, 2]
    assert [ch.first for ch in chunks] == [0, 3, 6]
    np.testing.assert_array_equal(np.concatenate([ch.frames[: ch.count] for ch in chunks]), frames)
    np.testing.assert_array_equal(
        np.concatenate([ch.positions[: ch.count] for ch in chunks]), positions
    )
    assert not chunks[0].has_mask and chunks[1].has_mask and chunks[2].has_mask
    assert chunks[1].masks is not None and not chunks[1].masks[:2].any()  # frames 3, 4
    assert chunks[1].masks[2, 1, 2] and chunks[1].masks[2].sum() == 1  # frame 5
    assert staging.take() == []  # nothing new

    class Engine:
        def __init__(self) -> None:
            self.rows: list[float] = []

        def add(self, intensities, positions_px, mask=None):
            pos = np.atleast_2d(positions_px)
            if np.any(pos[:, 0] == 6.0):  # frame 3
                raise ValueError("outside the object")
            self.rows.extend(pos[:, 0].tolist())

    rejected: list[str] = []
    engine = Engine()
    assert feed(engine, chunks, rejected.append) == 7
    assert rejected == ["frame 3: outside the object"]
    assert engine.rows == [0, 2, 4, 8, 10, 12, 14]
    staging.recycle(chunks * 3)
    assert all(ch.count == 0 for ch in chunks)
    assert len(staging._spare) == MAX_SPARE_CHUNKS


def test_check_frames_refuses_bad_input_whole():
    good = np.ones((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"frames must have frames of shape \(4, 4\)"):
        check_frames(np.ones((2, 3, 3)), np.zeros((2, 2)), None, (4, 4))
    with pytest.raises(ValueError, match="NaN"):
        check_frames(good, [[0, 0], [np.inf, 1]], None, (4, 4))
    with pytest.raises(ValueError, match="mask"):
        check_frames(good, np.zeros((2, 2)), np.zeros((3, 4, 4), bool), (4, 4))
    f, pos, m = check_frames(good[0], [1, 2], np.zeros((4, 4), bool), (4, 4))
    assert f.shape == (1, 4, 4) and pos.shape == (1, 2) and m is not None and m.shape == (1, 4, 4)


def test_publisher_timing_numbering_and_failing_observers():
    reports: list[str] = []
    pub = Publisher(period_s=10.0, every_updates=5, report=reports.append)
    st = ReconstructionState(
        object=np.ones((8, 8), np.complex64),
        probe=np.ones((4, 4), np.complex64),
        positions_px=np.zeros((0, 2)),
    )
    assert pub.due(now=0.0)  # never published
    got: list[int] = []

    def broken(snap):
        raise RuntimeError("observer bug")

    pub.add_observer(broken)
    pub.add_observer(lambda snap: got.append(snap.seq))
    snap = pub.make(st, patterns_received=3, patterns_in_use=2, phase="running")
    assert snap.seq == 1 and snap.message.startswith("running: 2 of 3 patterns in use")
    pub.emit(snap)
    assert got == [1] and pub.latest() is snap
    assert len(reports) == 1 and "observer bug" in reports[0]
    assert not pub.due() and pub.seconds_until_due() is None
    pub.changed(updates=4)
    assert not pub.due(now=snap.time + 1.0)  # period not over, too few updates
    assert pub.seconds_until_due(now=snap.time + 1.0) == pytest.approx(9.0)
    pub.changed(updates=1)
    assert pub.due(now=snap.time + 1.0)  # 5 updates
    pub.remove_observer(broken)
    pub.emit(pub.make(st, patterns_received=3, patterns_in_use=3, phase="waiting", message="m"))
    assert got == [1, 2] and len(reports) == 1


def test_feed_leaves_out_skipped_frames_and_numbers_the_rest():
    staging = Staging(4, (2, 2))
    frames = np.arange(6 * 4, dtype=np.float32).reshape(6, 2, 2)
    positions = np.arange(12, dtype=np.float64).reshape(6, 2)
    mask = np.zeros((6, 2, 2), bool)
    mask[:, 0, 0] = True
    staging.put(*check_frames(frames, positions, mask, (2, 2)))
    chunks = staging.take()
    chunks[0].skip = np.array([False, True, False, False])  # frame 1 quarantined
    chunks[1].skip = np.array([True, True])  # frames 4 and 5: the whole chunk

    class Engine:
        def __init__(self) -> None:
            self.rows: list[float] = []
            self.masks = 0

        def add(self, intensities, positions_px, mask=None):
            pos = np.atleast_2d(positions_px)
            if np.any(pos[:, 0] == 6.0):  # frame 3
                raise ValueError("outside the object")
            self.rows.extend(pos[:, 0].tolist())
            self.masks += 0 if mask is None else int(np.sum(mask))

    rejected: list[str] = []
    engine = Engine()
    assert feed(engine, chunks, rejected.append) == 2
    assert engine.rows == [0, 4] and engine.masks == 2
    assert rejected == ["frame 3: outside the object"]
    staging.recycle(chunks)
    assert all(ch.skip is None for ch in chunks)
