"""Pacer: driven directly on a real ePIE engine, no threads."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions
from bluesky_ptycho.live import PacingPolicy
from bluesky_ptycho.live.pacer import Pacer


def _engine(ds) -> EPIE:
    return EPIE(ds.object.shape, options=EPIEOptions(seed=0), probe_shape=ds.intensities.shape[1:])


def _add(engine: EPIE, pacer: Pacer, ds, lo: int, hi: int) -> None:
    engine.add(ds.intensities[lo:hi], ds.positions_px[lo:hi])
    pacer.on_added(hi - lo)


def _counts(engine: EPIE) -> np.ndarray:
    return engine.state().updates_per_pattern


def test_capped_never_exceeds_the_cap_and_picks_the_fewest_updated_first(small_dataset):
    ds = small_dataset
    engine = _engine(ds)
    cap, chunk = 3, 7
    pacer = Pacer(
        engine,
        PacingPolicy(
            min_patterns=2, mode="capped", max_updates_per_pattern=cap, chunk_updates=chunk
        ),
    )
    _add(engine, pacer, ds, 0, 10)

    seen = []
    while (err := pacer.run_chunk()) is not None:
        assert math.isfinite(err)
        counts = _counts(engine)
        seen.append(counts)
        assert counts.max() <= cap
        # fewest-updated first: the updates are spread, never two apart
        assert counts.max() - counts.min() <= 1
    assert len(seen) == math.ceil(cap * 10 / chunk)
    np.testing.assert_array_equal(_counts(engine), np.full(10, cap))
    assert engine.pattern_updates == cap * 10
    assert engine.iteration == 0  # capped updates are not passes

    # new patterns: only they are updated, up to the cap
    _add(engine, pacer, ds, 10, 14)
    err = pacer.run_chunk()
    assert err is not None
    counts = _counts(engine)
    np.testing.assert_array_equal(counts[:10], np.full(10, cap))
    new = counts[10:]  # a chunk of 7: one update each for the 4 new, then 3 second ones
    assert new.sum() == chunk and new.min() == 1 and new.max() == 2
    while pacer.run_chunk() is not None:
        pass
    np.testing.assert_array_equal(_counts(engine), np.full(14, cap))


def test_capped_follows_the_engine_counts_after_sync(small_dataset):
    ds = small_dataset
    engine = _engine(ds)
    pacer = Pacer(
        engine,
        PacingPolicy(min_patterns=2, mode="capped", max_updates_per_pattern=2, chunk_updates=4),
    )
    _add(engine, pacer, ds, 0, 6)
    engine.update([0, 0, 1, 1])  # outside the pacer: patterns 0 and 1 at the cap
    pacer.sync(_counts(engine))
    assert pacer.run_chunk() is not None
    counts = _counts(engine)
    assert counts[0] == 2 and counts[1] == 2  # not updated again
    np.testing.assert_array_equal(counts[2:], np.ones(4))


def test_batch_runs_its_budget_then_waits(small_dataset):
    ds = small_dataset
    engine = _engine(ds)
    pacer = Pacer(
        engine, PacingPolicy(min_patterns=2, mode="batch", passes_per_batch=2.0, chunk_updates=16)
    )
    assert pacer.run_chunk() is None  # nothing held
    _add(engine, pacer, ds, 0, 20)
    assert pacer.budget == 40
    chunks = 0
    while pacer.run_chunk() is not None:
        chunks += 1
        assert engine.pattern_updates <= 40
    assert chunks >= math.ceil(40 / 16)
    assert engine.pattern_updates == 40 and engine.iteration == 2  # two whole passes
    assert pacer.budget == 0
    assert pacer.run_chunk() is None  # waits for more data

    _add(engine, pacer, ds, 20, 30)
    assert pacer.budget == 60  # 2 passes over all 30 held
    while pacer.run_chunk() is not None:
        pass
    assert engine.pattern_updates == 100

    pacer.policy = PacingPolicy(min_patterns=2, mode="capped")
    assert pacer.budget == 0  # a change of mode drops the batch


def test_free_runs_passes_without_new_data(small_dataset):
    ds = small_dataset
    engine = _engine(ds)
    pacer = Pacer(engine, PacingPolicy(min_patterns=2, mode="free", chunk_updates=8))
    _add(engine, pacer, ds, 0, 12)
    err = pacer.run_chunk()
    assert err is not None and math.isnan(err)
    assert engine.pattern_updates == 8
    assert pacer.pass_open  # 8 of 12
    assert pacer.run_chunk() is not None
    assert engine.iteration == 1 and not pacer.pass_open  # stops at the end of the pass
    for _ in range(5):
        assert pacer.run_chunk() is not None
    assert engine.pattern_updates > 12 + 8
    pacer.state_replaced()
    assert not pacer.pass_open


@pytest.mark.parametrize("mode", ["capped", "batch", "free"])
def test_min_patterns_holds_every_mode(small_dataset, mode):
    ds = small_dataset
    engine = _engine(ds)
    pacer = Pacer(engine, PacingPolicy(mode=mode, min_patterns=3, chunk_updates=4))
    _add(engine, pacer, ds, 0, 1)
    assert pacer.run_chunk() is None
    _add(engine, pacer, ds, 1, 2)
    assert pacer.run_chunk() is None
    assert engine.pattern_updates == 0
    _add(engine, pacer, ds, 2, 3)
    assert pacer.run_chunk() is not None
    assert engine.pattern_updates > 0


def test_a_lone_pattern_is_updated_when_min_patterns_is_one(small_dataset):
    ds = small_dataset
    engine = _engine(ds)
    pacer = Pacer(engine, PacingPolicy(mode="free", min_patterns=1))
    _add(engine, pacer, ds, 0, 1)
    assert pacer.run_chunk() is not None
    assert engine.pattern_updates == 1


def test_the_policy_is_type_checked(small_dataset):
    engine = _engine(small_dataset)
    with pytest.raises(TypeError):
        Pacer(engine, {"mode": "capped"})  # type: ignore[arg-type]
    pacer = Pacer(engine, PacingPolicy())
    with pytest.raises(TypeError):
        pacer.policy = "free"  # type: ignore[assignment]


def test_capped_selection_skips_excluded_patterns(small_dataset):
    ds = small_dataset
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=0))
    engine.add(ds.intensities[:20], ds.positions_px[:20])
    engine.exclude([3, 7])
    policy = PacingPolicy(mode="capped", max_updates_per_pattern=2, chunk_updates=100)
    pacer = Pacer(engine, replace(policy, min_patterns=1))
    assert pacer.run_chunk() is not None
    ups = engine.state().updates_per_pattern
    assert ups[3] == ups[7] == 0 and np.all(np.delete(ups, [3, 7]) == 2)
    assert engine.pattern_updates == 36


@pytest.mark.parametrize(
    "policy",
    [
        PacingPolicy(min_patterns=4, mode="capped", max_updates_per_pattern=2, chunk_updates=5),
        PacingPolicy(min_patterns=4, mode="batch", passes_per_batch=1.0, chunk_updates=5),
        PacingPolicy(min_patterns=4, mode="batch", passes_per_batch=0.0, chunk_updates=5),
    ],
    ids=["capped", "batch", "batch-no-passes"],
)
def test_has_work_says_what_run_chunk_will_do_without_doing_it(small_dataset, policy):
    ds = small_dataset
    engine = _engine(ds)
    pacer = Pacer(engine, policy)
    _add(engine, pacer, ds, 0, 3)
    assert not pacer.has_work()  # fewer than min_patterns
    _add(engine, pacer, ds, 3, 8)
    for _ in range(20):
        updates = engine.pattern_updates
        expected = pacer.has_work()
        assert pacer.has_work() == expected and engine.pattern_updates == updates
        assert (pacer.run_chunk() is not None) == expected
        if not expected:
            break
    assert not pacer.has_work()
    assert engine.pattern_updates == (
        0
        if policy.passes_per_batch == 0 and policy.mode == "batch"
        else 16
        if policy.mode == "capped"
        else 8
    )
