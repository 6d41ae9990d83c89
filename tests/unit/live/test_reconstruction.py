"""LiveReconstruction: frames submitted while a worker thread iterates.

Nothing here measures speed: waits use generous timeouts only so that a broken worker fails the
test instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

import bluesky_ptycho.live.reconstruction as reconstruction_module
from bluesky_ptycho.engine import EPIE, EPIEOptions, ReconstructionState
from bluesky_ptycho.live import (
    LiveOptions,
    LiveReconstruction,
    PacingPolicy,
    Snapshot,
)
from bluesky_ptycho.metrics import illuminated_region, object_error

TIMEOUT = 60.0  # seconds; only to turn a hang into a failure

# Offline ePIE on this dataset reaches 0.066 after 50 passes (tests/unit/engine/test_epie.py).
# Fed frame by frame, the live run (capped at 20 updates per pattern during the scan, then 50
# final passes) measured 0.025-0.04 whatever the arrival timing; the bound leaves room for
# timing and platform differences while staying far below the start (an object of ones scores
# 0.27) and the plateau that iterating a lone first pattern causes (about 0.29).
LIVE_OBJECT_ERROR = 0.10


def _wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def _latest_has(live: LiveReconstruction, predicate: Callable[[Snapshot], bool]) -> bool:
    snap = live.latest()
    return snap is not None and predicate(snap)


def _region(ds):
    return illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)


class _Recorder:
    """Thread-safe list of the snapshots an observer received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snaps: list[Snapshot] = []

    def __call__(self, snap: Snapshot) -> None:
        with self._lock:
            self._snaps.append(snap)

    @property
    def snaps(self) -> list[Snapshot]:
        with self._lock:
            return list(self._snaps)


@pytest.fixture
def make_live(small_dataset):
    """Factory of LiveReconstructions on the small dataset; stops them all at teardown."""
    made: list[LiveReconstruction] = []

    def make(
        pacing: PacingPolicy | None = None, *, name: str = "live", **options
    ) -> LiveReconstruction:
        ds = small_dataset
        opts = LiveOptions(pacing=pacing or PacingPolicy(), **options)
        live = LiveReconstruction(
            ds.object.shape,
            ds.intensities.shape[1:],
            expected_patterns=ds.n_patterns,
            options=opts,
            name=name,
        )
        made.append(live)
        return live

    yield make
    for live in made:
        live.stop()
        if live.status.phase not in ("idle", "stopped"):
            live.wait(TIMEOUT)


# ---------------------------------------------------------------------- options


def test_options_are_validated():
    with pytest.raises(ValueError, match="pacing mode"):
        PacingPolicy(min_patterns=2, mode="eager")
    with pytest.raises(ValueError, match="chunk_updates"):
        PacingPolicy(min_patterns=2, chunk_updates=0)
    with pytest.raises(ValueError, match="max_updates_per_pattern"):
        PacingPolicy(min_patterns=2, max_updates_per_pattern=0)
    with pytest.raises(ValueError, match="passes_per_batch"):
        PacingPolicy(min_patterns=2, mode="batch", passes_per_batch=float("nan"))
    with pytest.raises(ValueError, match="publish_period_s"):
        LiveOptions(publish_period_s=-1.0)
    with pytest.raises(ValueError, match="final_passes"):
        LiveOptions(final_passes=-1)
    with pytest.raises(ValueError, match="staging_chunk"):
        LiveOptions(staging_chunk=0)
    with pytest.raises(ValueError, match="probe"):
        LiveReconstruction((112, 112), (64, 64), probe=np.ones((32, 32), np.complex64))


# ---------------------------------------------------------------------- end to end


def test_frames_fed_while_running_reconstruct_the_object(small_dataset, make_live):
    ds = small_dataset
    live = make_live(publish_period_s=0.02, final_passes=50, name="e2e")
    rec = _Recorder()
    live.add_observer(rec)
    assert live.status.phase == "idle"
    live.start()
    live.start()  # idempotent
    assert "e2e-worker" in [t.name for t in threading.enumerate()]

    indices: list[int] = []

    def produce() -> None:
        for i in range(ds.n_patterns):
            indices.append(live.submit(ds.intensities[i], ds.positions_px[i]))

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(TIMEOUT)
    assert not producer.is_alive()
    assert indices == list(range(ds.n_patterns))
    live.finish()
    state = live.wait(TIMEOUT)

    status = live.status
    assert status.phase == "finished"
    assert status.patterns_received == status.patterns_in_use == ds.n_patterns
    assert status.rejected == 0 and status.fault is None
    assert state.n_patterns == ds.n_patterns
    assert state.iteration >= 50
    np.testing.assert_array_equal(state.positions_px, ds.positions_px)
    assert np.isfinite(status.fourier_error)

    err = object_error(state.object, ds.object, region=_region(ds))
    assert err < LIVE_OBJECT_ERROR
    start = object_error(np.ones_like(ds.object), ds.object, region=_region(ds))
    assert start > 2.5 * LIVE_OBJECT_ERROR  # the bound means something

    snaps = rec.snaps
    assert len(snaps) >= 3
    seqs = [s.seq for s in snaps]
    assert seqs == list(range(1, len(snaps) + 1))
    in_use = [s.patterns_in_use for s in snaps]
    assert in_use == sorted(in_use)
    assert all(s.patterns_in_use == s.state.n_patterns for s in snaps)
    assert snaps[-1].phase == "finished"
    assert snaps[-1].patterns_received == ds.n_patterns
    assert live.latest() is snaps[-1]
    assert not any(t.name == "e2e-worker" for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        live.submit(ds.intensities[0], ds.positions_px[0])
    with pytest.raises(RuntimeError):
        live.start()


def test_frames_submitted_before_start_are_used(small_dataset, make_live):
    ds = small_dataset
    live = make_live(final_passes=2)
    assert live.submit(ds.intensities[:40], ds.positions_px[:40]) == 0
    assert live.submit(ds.intensities[40:], ds.positions_px[40:]) == 40
    assert live.status.patterns_in_use == 0
    live.finish()  # starts the worker
    state = live.wait(TIMEOUT)
    assert state.n_patterns == ds.n_patterns
    assert state.iteration >= 2


# ---------------------------------------------------------------------- pacing


def test_capped_policy_never_exceeds_the_cap_before_finish(small_dataset, make_live):
    ds = small_dataset
    cap = 5
    live = make_live(
        PacingPolicy(min_patterns=2, mode="capped", max_updates_per_pattern=cap, chunk_updates=16),
        publish_period_s=0.0,
    )
    rec = _Recorder()
    live.add_observer(rec)
    live.start()

    def produce() -> None:
        for i in range(ds.n_patterns):
            live.submit(ds.intensities[i], ds.positions_px[i])

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(TIMEOUT)
    held = int(np.sum(np.arange(ds.n_patterns) % 25 == 12))  # validation_every=25 by default
    assert held == 3
    total = cap * (ds.n_patterns - held)
    assert _wait_for(
        lambda: live.status.pattern_updates == total and live.status.phase == "waiting"
    )
    time.sleep(0.2)
    assert live.status.pattern_updates == total  # all at the cap: waits for new data

    before = rec.snaps
    assert len(before) >= 3
    for snap in before:
        assert snap.phase not in ("finishing", "finished")
        assert snap.state.updates_per_pattern.max(initial=0) <= cap
    # the least-updated-first choice spreads the updates: every pattern reached the cap
    trained = np.arange(ds.n_patterns) % 25 != 12
    assert _wait_for(
        lambda: _latest_has(live, lambda s: s.state.updates_per_pattern[trained].min() == cap)
    )

    live.finish(final_passes=3)
    state = live.wait(TIMEOUT)
    assert state.iteration >= 3
    assert state.updates_per_pattern[trained].min() >= cap + 3
    # the last final passes (a quarter, at least 2) put the held-out patterns back into use
    assert state.updates_per_pattern[~trained].min() >= 2
    assert np.isfinite(state.validation_error)  # the last signal value is kept


def test_batch_policy_runs_passes_per_new_batch_then_waits(small_dataset, make_live):
    ds = small_dataset
    live = make_live(
        PacingPolicy(min_patterns=2, mode="batch", passes_per_batch=2.0, chunk_updates=16)
    )
    live.start()
    expected_updates = 0
    for k, (lo, hi) in enumerate([(0, 20), (20, 50), (50, 81)], start=1):
        live.submit(ds.intensities[lo:hi], ds.positions_px[lo:hi])
        expected_updates += 2 * hi

        def settled(expected: int = expected_updates, n: int = hi) -> bool:
            s = live.status
            return s.patterns_in_use == n and s.pattern_updates == expected and s.phase == "waiting"

        assert _wait_for(settled), live.status
        time.sleep(0.2)
        status = live.status
        assert status.pattern_updates == expected_updates  # waits for more data
        assert status.iteration == 2 * k  # whole passes over everything held
    live.finish(final_passes=2)
    state = live.wait(TIMEOUT)
    assert state.iteration >= 2 * 3 + 2
    assert state.n_patterns == ds.n_patterns


def test_free_mode_keeps_iterating_without_new_data(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(min_patterns=2, mode="free", chunk_updates=32))
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    assert _wait_for(lambda: live.status.iteration >= 2)
    updates = live.status.pattern_updates
    assert _wait_for(lambda: live.status.pattern_updates > updates + 2 * ds.n_patterns)
    assert live.status.phase == "running"
    live.stop()
    live.wait(TIMEOUT)
    assert live.status.phase == "stopped"


def test_a_lone_first_pattern_is_not_iterated(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(min_patterns=2, mode="free"), publish_period_s=0.0)
    live.start()
    live.submit(ds.intensities[0], ds.positions_px[0])
    # the worker ingested it and decided there is nothing to do
    assert _wait_for(
        lambda: _latest_has(live, lambda s: s.patterns_in_use == 1 and s.phase == "waiting")
    )
    assert live.status.pattern_updates == 0
    live.submit(ds.intensities[1], ds.positions_px[1])
    assert _wait_for(lambda: live.status.pattern_updates > 0)

    alone = make_live(PacingPolicy(mode="free", min_patterns=1))
    alone.submit(ds.intensities[0], ds.positions_px[0])
    alone.start()
    assert _wait_for(lambda: alone.status.pattern_updates > 0)


# ---------------------------------------------------------------------- control


def test_pause_stops_updates_but_not_ingestion(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(min_patterns=2, mode="free", chunk_updates=16))
    live.submit(ds.intensities[:60], ds.positions_px[:60])
    live.start()
    assert _wait_for(lambda: live.status.pattern_updates > 0)
    live.pause()
    assert _wait_for(lambda: live.status.phase == "paused")
    frozen = live.status.pattern_updates
    time.sleep(0.3)
    assert live.status.pattern_updates == frozen
    live.submit(ds.intensities[60:], ds.positions_px[60:])
    assert _wait_for(lambda: live.status.patterns_in_use == ds.n_patterns)
    assert _wait_for(lambda: _latest_has(live, lambda s: s.patterns_in_use == ds.n_patterns))
    assert live.latest().phase == "paused"
    assert live.status.pattern_updates == frozen
    assert live.state().pattern_updates == frozen
    live.resume()
    assert _wait_for(lambda: live.status.pattern_updates > frozen)
    assert live.status.phase == "running"


def test_stop_ends_the_worker_and_keeps_the_state(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(min_patterns=2, mode="free"), name="stopper")
    rec = _Recorder()
    live.add_observer(rec)
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    assert _wait_for(lambda: live.status.pattern_updates > 0)
    live.stop()
    state = live.wait(TIMEOUT)
    assert live.status.phase == "stopped"
    assert rec.snaps[-1].phase == "stopped"
    assert state.pattern_updates == live.status.pattern_updates > 0
    assert not np.array_equal(state.object, np.ones_like(state.object))
    assert not any(t.name == "stopper-worker" for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        live.submit(ds.intensities[0], ds.positions_px[0])


def test_wait_times_out_while_running(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(min_patterns=2, mode="free"))
    with pytest.raises(RuntimeError):
        live.wait(0.01)  # never started
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    with pytest.raises(TimeoutError):
        live.wait(0.05)


# ---------------------------------------------------------------------- bad input


def test_bad_frames_raise_and_the_good_ones_are_all_used(small_dataset, make_live):
    ds = small_dataset
    live = make_live(final_passes=1)
    live.start()
    with pytest.raises(ValueError, match=r"\(64, 64\)") as info:
        live.submit(np.ones((2, 32, 32), np.float32), ds.positions_px[:2])
    assert "(2, 32, 32)" in str(info.value)
    bad = ds.intensities[:3].copy()
    bad[1, 5, 7] = np.nan
    with pytest.raises(ValueError, match=r"frame\(s\) \[1\]"):
        live.submit(bad, ds.positions_px[:3])
    bad[1, 5, 7] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        live.submit(bad, ds.positions_px[:3])
    with pytest.raises(ValueError, match="positions_px"):
        live.submit(ds.intensities[:3], ds.positions_px[:2])
    with pytest.raises(ValueError, match="positions_px"):
        live.submit(ds.intensities[0], [np.nan, 3.0])
    with pytest.raises(ValueError, match="mask"):
        live.submit(ds.intensities[0], ds.positions_px[0], mask=np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="real"):
        live.submit(ds.intensities[:1].astype(np.complex64), ds.positions_px[:1])
    assert live.status.patterns_received == 0
    assert live.status.rejected == 0

    good = list(range(0, ds.n_patterns, 2))
    for k, i in enumerate(good):
        mask = np.zeros((64, 64), bool) if k % 3 == 0 else None
        assert live.submit(ds.intensities[i], ds.positions_px[i], mask=mask) == k
    live.finish()
    state = live.wait(TIMEOUT)
    assert live.status.patterns_received == len(good)
    assert state.n_patterns == len(good)
    np.testing.assert_array_equal(state.positions_px, ds.positions_px[good])


def test_position_outside_the_object_is_rejected_by_the_worker(small_dataset, make_live):
    ds = small_dataset
    live = make_live(final_passes=1)
    live.start()
    positions = ds.positions_px[:5].copy()
    positions[2] = (500.0, 500.0)
    assert live.submit(ds.intensities[:5], positions) == 0  # accepted: the engine decides
    live.submit(ds.intensities[5:8], ds.positions_px[5:8])
    live.finish()
    state = live.wait(TIMEOUT)
    status = live.status
    assert status.rejected == 1
    assert status.patterns_received == 8
    assert state.n_patterns == status.patterns_in_use == 7
    assert any("frame 2" in m and "outside" in m for m in status.messages)
    kept = [0, 1, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(state.positions_px, ds.positions_px[kept])
    assert status.phase == "finished"


def test_record_rejection_and_failing_observers_are_reported(small_dataset, make_live):
    ds = small_dataset
    live = make_live(final_passes=1)

    def broken(snap: Snapshot) -> None:
        raise RuntimeError("observer bug")

    rec = _Recorder()
    live.add_observer(broken)
    live.add_observer(rec)
    live.record_rejection("event seq_num 7: no detector frame")
    live.submit(ds.intensities[:10], ds.positions_px[:10])
    live.finish()
    live.wait(TIMEOUT)
    status = live.status
    assert status.phase == "finished"
    assert status.rejected == 1
    assert "event seq_num 7: no detector frame" in status.messages
    assert any("observer bug" in m for m in status.messages)
    assert rec.snaps and rec.snaps[-1].phase == "finished"  # later observers still called
    live.remove_observer(broken)
    live.remove_observer(broken)  # no-op


def test_submit_never_waits_for_a_busy_worker(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(min_patterns=2, mode="free"), staging_chunk=8, final_passes=1)
    entered, release = threading.Event(), threading.Event()

    def slow_observer(snap: Snapshot) -> None:
        entered.set()
        release.wait(TIMEOUT)  # the worker is stuck here until the test releases it

    live.add_observer(slow_observer)
    live.submit(ds.intensities[:2], ds.positions_px[:2])
    live.start()
    assert entered.wait(TIMEOUT)

    n = 200
    indices: list[int] = []

    def produce() -> None:
        for k in range(n):
            i = k % ds.n_patterns
            indices.append(live.submit(ds.intensities[i], ds.positions_px[i]))

    try:
        producer = threading.Thread(target=produce)
        producer.start()
        producer.join(TIMEOUT)
        assert not producer.is_alive()  # finished while the worker was blocked
        assert not release.is_set()
        assert indices == list(range(2, 2 + n))
        assert live.status.patterns_received == 2 + n
        assert live.status.patterns_in_use == 2  # the worker took nothing yet
    finally:
        release.set()
    live.remove_observer(slow_observer)
    live.finish()
    state = live.wait(TIMEOUT)
    assert state.n_patterns == 2 + n  # none dropped
    expected = np.concatenate([ds.positions_px[:2], ds.positions_px[np.arange(n) % 81]])
    np.testing.assert_array_equal(state.positions_px, expected)


# ---------------------------------------------------------------------- divergence


def test_divergence_rolls_back_and_faults_until_resume(small_dataset, make_live, monkeypatch):
    ds = small_dataset
    poison = threading.Event()

    class DivergingEPIE(EPIE):
        """Leaves NaN in the object once, after the step in which ``poison`` is set."""

        def step(self, max_updates: int) -> int:
            done = super().step(max_updates)
            if poison.is_set():
                poison.clear()
                self._object[10:13, 10:13] = np.nan  # what a numerical blow-up leaves
            return done

    monkeypatch.setattr(reconstruction_module, "EPIE", DivergingEPIE)
    live = make_live(
        PacingPolicy(min_patterns=2, mode="free", chunk_updates=16), publish_period_s=0.0
    )
    rec = _Recorder()
    live.add_observer(rec)
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    assert _wait_for(lambda: live.status.iteration >= 2)
    poison.set()
    assert _wait_for(lambda: live.status.phase == "fault")

    status = live.status
    assert status.fault is not None and "NaN" in status.fault
    assert status.fault in status.messages
    snaps = rec.snaps
    k = next(i for i, s in enumerate(snaps) if s.phase == "fault")
    fault_snap, good_snap = snaps[k], snaps[k - 1]
    assert fault_snap.message == status.fault
    assert np.all(np.isfinite(fault_snap.state.object))
    # rolled back to the last good snapshot
    np.testing.assert_array_equal(fault_snap.state.object, good_snap.state.object)
    np.testing.assert_array_equal(fault_snap.state.probe, good_snap.state.probe)
    assert fault_snap.state.pattern_updates == good_snap.state.pattern_updates
    assert np.all(np.isfinite(live.state().object))

    # no iterations while faulted; data still ingested
    frozen = live.status.pattern_updates
    live.submit(ds.intensities[:3], ds.positions_px[:3])
    assert _wait_for(lambda: live.status.patterns_in_use == ds.n_patterns + 3)
    time.sleep(0.2)
    assert live.status.pattern_updates == frozen
    assert live.status.phase == "fault"

    live.resume()
    assert _wait_for(lambda: live.status.pattern_updates > frozen)
    assert live.status.fault is None
    live.finish(final_passes=2)
    state = live.wait(TIMEOUT)
    assert live.status.phase == "finished"
    assert np.all(np.isfinite(state.object))


# ---------------------------------------------------------------------- steering


def test_set_options_beta_zero_freezes_the_probe(small_dataset, make_live):
    ds = small_dataset
    live = make_live(
        PacingPolicy(min_patterns=2, mode="free", chunk_updates=16), publish_period_s=0.0
    )
    rec = _Recorder()
    live.add_observer(rec)
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    assert _wait_for(lambda: len(rec.snaps) >= 3)
    early = rec.snaps
    assert not np.array_equal(early[-2].state.probe, early[-1].state.probe)  # beta=1 moves it

    with pytest.raises(TypeError):
        live.set_options(epie={"beta": 0.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        live.set_options(publish_period_s=float("inf"))
    seq = live.latest().seq
    live.set_options(epie=EPIEOptions(alpha=0.5, beta=0.0), publish_period_s=0.01)
    assert live.options.epie.beta == 0.0 and live.options.publish_period_s == 0.01
    assert _wait_for(lambda: sum(s.seq > seq for s in rec.snaps) >= 4)
    after = [s for s in rec.snaps if s.seq > seq]
    # The first snapshot after the request may end a chunk begun before it; the worker applies
    # the options before its next chunk, so from there on the probe never changes.
    for snap in after[1:]:
        np.testing.assert_array_equal(snap.state.probe, after[0].state.probe)
    assert after[-1].state.pattern_updates > after[0].state.pattern_updates
    assert not np.array_equal(after[-1].state.object, after[0].state.object)


def test_load_state_mid_run(small_dataset, make_live):
    ds = small_dataset
    live = make_live(
        PacingPolicy(min_patterns=2, mode="free", chunk_updates=16), publish_period_s=0.02
    )
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    assert _wait_for(lambda: live.status.pattern_updates > 0)

    with pytest.raises(ValueError, match="object"):
        live.load_state(
            ReconstructionState(
                object=np.ones((50, 50), np.complex64),
                probe=ds.probe,
                positions_px=ds.positions_px,
            )
        )
    nan_probe = ds.probe.copy()
    nan_probe[0, 0] = np.nan
    with pytest.raises(ValueError, match="probe"):
        live.load_state(
            ReconstructionState(object=ds.object, probe=nan_probe, positions_px=ds.positions_px)
        )

    live.pause()
    assert _wait_for(lambda: live.status.phase == "paused")
    truth = ReconstructionState(
        object=ds.object.copy(),
        probe=ds.probe.copy(),
        positions_px=ds.positions_px.copy(),
        iteration=100,
        pattern_updates=8100,
    )
    live.load_state(truth)
    assert _wait_for(lambda: _latest_has(live, lambda s: np.array_equal(s.state.object, ds.object)))
    snap = live.latest()
    np.testing.assert_array_equal(snap.state.probe, ds.probe)
    assert snap.state.iteration == 100 and live.status.pattern_updates == 8100
    np.testing.assert_array_equal(live.state().object, ds.object)

    live.resume()
    live.finish(final_passes=5)
    state = live.wait(TIMEOUT)
    assert state.iteration >= 105
    # continuing from the truth stays near it (the data are noisy, so not exactly on it)
    assert object_error(state.object, ds.object, region=_region(ds)) < 0.05


def test_worker_thread_runs_nicer_than_its_caller():
    import os
    import threading

    from bluesky_ptycho.live import lower_thread_priority

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread niceness on this platform")
    seen = {}

    def probe():
        seen["changed"] = lower_thread_priority(7)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen["changed"] is True
    assert seen["nice"] == min(19, before + 7)
    # the caller's own niceness is untouched
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_the_synchronous_engine_runs_live_and_matches_for_any_worker_count(small_dataset, executor):
    """LiveOptions(parallel="synchronous"): same result with 1 and 2 workers, frames fed live."""
    from bluesky_ptycho.engine.parallel import ParallelOptions, SynchronousEPIE

    ds = small_dataset
    results = []
    for workers in (1, 2):
        opts = LiveOptions(
            pacing=PacingPolicy(mode="batch", passes_per_batch=0, min_patterns=2),
            final_passes=5,
            parallel="synchronous",
            workers=workers,
            parallel_options=ParallelOptions(batch_size=16, executor=executor),
            publish_period_s=0.0,
        )
        live = LiveReconstruction(
            ds.object.shape, ds.intensities.shape[1:], probe=ds.probe, options=opts
        )
        assert isinstance(live._engine, SynchronousEPIE)
        live.start()
        live.submit(ds.intensities, ds.positions_px)
        live.finish()
        results.append(live.wait(TIMEOUT))
        assert live.status.phase == "finished"
    one, two = results
    assert one.iteration == two.iteration == 5
    np.testing.assert_allclose(two.object, one.object, atol=1e-5)
    np.testing.assert_allclose(two.probe, one.probe, rtol=1e-4, atol=1e-4)


def test_live_parallel_options_are_checked():
    from bluesky_ptycho.engine.parallel import ParallelOptions

    with pytest.raises(ValueError, match="parallel must be one of"):
        LiveOptions(parallel="averaging")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        LiveOptions(workers=0)
    with pytest.raises(ValueError, match="not MPI"):
        LiveOptions(parallel_options=ParallelOptions(executor="mpi"))


# ---------------------------------------------------------------------- poisoned frames


def test_a_fault_is_not_cleared_by_finish(small_dataset, make_live, monkeypatch):
    ds = small_dataset
    poison = threading.Event()

    class DivergingEPIE(EPIE):
        def step(self, max_updates: int) -> int:
            done = super().step(max_updates)
            if poison.is_set():
                poison.clear()
                self._object[10:13, 10:13] = np.nan
            return done

    monkeypatch.setattr(reconstruction_module, "EPIE", DivergingEPIE)
    live = make_live(
        PacingPolicy(min_patterns=2, mode="free", chunk_updates=16), publish_period_s=0.0
    )
    rec = _Recorder()
    live.add_observer(rec)
    live.submit(ds.intensities, ds.positions_px)
    live.start()
    assert _wait_for(lambda: live.status.iteration >= 2)
    poison.set()
    assert _wait_for(lambda: live.status.phase == "fault")
    fault = live.status.fault
    assert fault is not None and fault.endswith("resume() to continue")
    live.finish(final_passes=2)
    state = live.wait(TIMEOUT)
    status = live.status
    assert status.phase == "finished" and np.all(np.isfinite(state.object))
    assert status.fault == fault and status.faults == (fault,)
    assert status.removed == 0  # NaN from nowhere: no pattern to blame
    assert rec.snaps[-1].message == f"ended with a fault: {fault}"


def test_implausible_frames_are_quarantined_and_kept_aside(small_dataset, make_live):
    ds = small_dataset
    live = make_live(PacingPolicy(passes_per_batch=0))
    frames = ds.intensities.copy()
    frames[30] *= 1000
    frames[50] = 0.0
    live.submit(frames[:20], ds.positions_px[:20])
    live.start()
    assert _wait_for(lambda: live.status.patterns_in_use == 20)
    for k in range(20, ds.n_patterns):  # one by one, as a scan delivers them
        live.submit(frames[k], ds.positions_px[k])
    live.finish(final_passes=1)
    live.wait(TIMEOUT)
    status = live.status
    assert status.quarantined == 2 and status.rejected == 0
    assert status.patterns_received == ds.n_patterns
    assert status.patterns_in_use == ds.n_patterns - 2
    first, second = status.quarantine_reasons
    assert first.startswith("frame 30: quarantined: total counts ") and "times the median" in first
    assert second.startswith("frame 50: quarantined: total counts 0: no counts")
    assert first in status.messages and second in status.messages
    aside = live.quarantined_frames()
    assert [a.index for a in aside] == [30, 50]
    np.testing.assert_array_equal(aside[0].frame, frames[30].astype(np.float32))
    np.testing.assert_array_equal(aside[1].position_px, ds.positions_px[50])
    assert aside[0].reason in first


def test_quarantine_can_be_switched_off(small_dataset, make_live):
    from bluesky_ptycho.live.quarantine import QuarantinePolicy

    ds = small_dataset
    live = make_live(PacingPolicy(passes_per_batch=0), quarantine=QuarantinePolicy(enabled=False))
    frames = ds.intensities.copy()
    frames[30] = 0.0
    live.submit(frames, ds.positions_px)
    live.finish(final_passes=0)
    live.wait(TIMEOUT)
    assert live.status.quarantined == 0 and live.status.patterns_in_use == ds.n_patterns
