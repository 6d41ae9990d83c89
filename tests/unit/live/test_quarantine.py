"""Quarantine: implausible frames are kept aside with a reason (issue 10, part 4)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bluesky_ptycho.live.quarantine import Quarantine, QuarantinePolicy


def _frames(n: int, seed: int = 0, counts: float = 1000.0) -> np.ndarray:
    """Poisson frames with a bright centre and a total that varies by about +-30 %."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-16:16, -16:16]
    shape = np.exp(-(yy**2 + xx**2) / 20.0)
    level = counts * rng.uniform(0.7, 1.3, size=n)
    return rng.poisson(level[:, None, None] * shape).astype(np.float32)


def _warm(q: Quarantine, n: int = 20) -> None:
    verdicts = q.screen(_frames(n, seed=1))
    assert not verdicts.rejected.any(), verdicts.reasons


def test_ordinary_frames_pass_and_join_the_statistics():
    q = Quarantine()
    verdicts = q.screen(_frames(50))
    assert verdicts.reasons == (None,) * 50 and verdicts.notes == ()
    assert q.accepted == 50


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        (1000.0, r"total counts \S+ is \S+ times the median \S+ of \d+ accepted frames"),
        (1e-3, r"total counts \S+ is \S+ times the median"),
        (0.0, r"total counts 0: no counts \(median of the accepted frames \S+\)"),
    ],
)
def test_frames_outside_the_band_are_quarantined(factor, message):
    q = Quarantine()
    _warm(q)
    chunk = _frames(5, seed=2)
    chunk[2] *= factor
    verdicts = q.screen(chunk)
    assert verdicts.rejected.tolist() == [False, False, True, False, False]
    assert re.search(message, verdicts.reasons[2] or ""), verdicts.reasons[2]
    assert q.accepted == 24  # the quarantined frame does not join the statistics


def test_one_hot_pixel_is_caught_by_the_peak():
    q = Quarantine()
    _warm(q)
    frame = _frames(1, seed=3)
    frame[0, 0, 0] = 1e6  # the total grows by a few times only, the peak by thousands
    (reason,) = q.screen(frame).reasons
    assert reason is not None and reason.startswith("peak ")


def test_a_mostly_masked_frame_is_quarantined():
    q = Quarantine()
    frames = _frames(21, seed=4)
    mask = np.zeros(frames.shape, bool)
    mask[:, 0, 0] = True  # a usual bad pixel
    mask[20, :, :24] = True
    verdicts = q.screen(frames, mask)
    assert verdicts.rejected.tolist() == [False] * 20 + [True]
    assert verdicts.reasons[20] == "75% of its pixels are masked (flag values, counts above " + (
        "max_count...), typically 0%"
    )


def test_the_physical_bound_protects_the_first_frames():
    q = Quarantine(QuarantinePolicy(max_pixel=1e9))
    first = _frames(2, seed=5)
    first[0] *= 1e30
    verdicts = q.screen(first)
    assert verdicts.rejected.tolist() == [True, False]
    assert verdicts.reasons[0] is not None
    assert "above the physical bound 1e+09 (max_pixel)" in verdicts.reasons[0]


def test_before_warmup_the_chunk_itself_is_the_reference():
    """A whole scan submitted at once is screened too: one bad frame does not move a median."""
    q = Quarantine()
    frames = _frames(30, seed=6)
    frames[3] *= 1000
    verdicts = q.screen(frames)
    assert np.flatnonzero(verdicts.rejected).tolist() == [3]
    # a small first chunk has no reference: only the physical bound applies
    q2 = Quarantine()
    two = _frames(2, seed=6)
    two[1] *= 1000
    assert not q2.screen(two).rejected.any()


def test_a_change_of_level_restarts_the_statistics():
    q = Quarantine(QuarantinePolicy(warmup=4))
    _warm(q)
    brighter = _frames(12, seed=7) * 500
    verdicts = q.screen(brighter)
    assert verdicts.rejected[:4].all()
    assert verdicts.notes and "the counts changed level" in verdicts.notes[0]
    assert not verdicts.rejected[8:].any()  # accepted at the new level


def test_disabled_quarantine_accepts_everything():
    q = Quarantine(QuarantinePolicy(enabled=False))
    frames = _frames(20)
    frames[10] *= 1e6
    assert not q.screen(frames).rejected.any()


def test_non_finite_counts_are_quarantined():
    q = Quarantine()
    frames = _frames(3)
    frames[1, 4, 4] = np.inf
    assert q.screen(frames).reasons[1] == "counts are not finite"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup": 2}, "warmup"),
        ({"window": 4}, "window"),
        ({"band_mads": 0.0}, "band_mads"),
        ({"min_factor": 1.0}, "min_factor"),
        ({"max_pixel": float("inf")}, "max_pixel"),
        ({"masked_jump": 0.0}, "masked_jump"),
        ({"keep": -1}, "keep"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_bad_policies_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        QuarantinePolicy(**kwargs)
