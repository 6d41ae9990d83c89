"""The parallel schemes: synchronous is independent of the workers, averaging is not."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import EPIE, EPIEOptions, ParallelOptions, SynchronousEPIE, reconstruct
from bluesky_ptycho.engine.workers import ProcessWorkers, ThreadWorkers, split
from bluesky_ptycho.metrics import illuminated_region, object_error

# float32 rounding of an object of amplitude ~1 after a few passes
F32_TOL = 1e-5
# Measured on the small preset (64 px, 9 x 9 raster) from the default "auto" start, 50 passes,
# seed 0: object error 0.024 sequential, 0.031 synchronous (batch 32, regulariser 0.5);
# 0.022 to 0.037 for batches of 8 to 32 and regularisers 0.1 to 1. We require at least two
# thirds of the sequential quality: an object error at most 1.5 times the sequential one.
QUALITY_FRACTION = 2 / 3


def _sync(ds, workers: int, executor: str = "threads", passes: int = 8, **kw):
    return reconstruct(
        ds.intensities,
        ds.positions_px,
        passes=passes,
        options=EPIEOptions(seed=0),
        parallel="synchronous",
        workers=workers,
        parallel_options=ParallelOptions(batch_size=16, executor=executor),
        **kw,
    )


def _assert_same(a, b) -> None:
    np.testing.assert_allclose(a.object, b.object, rtol=F32_TOL, atol=F32_TOL)
    scale = float(np.abs(b.probe).max())
    np.testing.assert_allclose(a.probe, b.probe, rtol=F32_TOL, atol=F32_TOL * scale)
    np.testing.assert_allclose(a.fourier_error, b.fourier_error, rtol=1e-4)


@pytest.fixture(scope="module")
def one_worker(small_dataset):
    return _sync(small_dataset, 1)


@pytest.mark.parametrize("workers", [2, 4])
def test_synchronous_threads_give_the_one_worker_result(small_dataset, one_worker, workers):
    state = _sync(small_dataset, workers)
    _assert_same(state, one_worker)
    # and the run did something: the object moved far from its start of ones
    assert np.abs(state.object - 1).max() > 100 * F32_TOL


def test_synchronous_processes_give_the_one_worker_result(small_dataset, one_worker):
    for workers in (2, 4):
        _assert_same(_sync(small_dataset, workers, executor="processes"), one_worker)


def test_averaging_depends_on_the_workers(small_dataset):
    ds = small_dataset
    states = [
        reconstruct(
            ds.intensities,
            ds.positions_px,
            passes=8,
            options=EPIEOptions(seed=0),
            parallel="averaging",
            workers=k,
            parallel_options=ParallelOptions(average_every=2),
        )
        for k in (1, 2)
    ]
    diff = np.abs(states[0].object - states[1].object).max()
    # measured about 0.1: four orders of magnitude above the synchronous scheme's tolerance
    assert diff > 1000 * F32_TOL
    assert all(np.isfinite(s.fourier_error).all() for s in states)
    assert states[1].iteration == 8 and states[1].fourier_error.shape == (8,)


def test_synchronous_reaches_a_fraction_of_sequential_quality(small_dataset):
    ds = small_dataset
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)

    def error(state) -> float:
        # reconstruct's frame starts at the smallest position, the truth's at 0: same here
        # (margin equal to the smallest position), then pad to the truth's shape
        obj = np.ones_like(ds.object)
        h = min(obj.shape[0], state.object.shape[0])
        w = min(obj.shape[1], state.object.shape[1])
        obj[:h, :w] = state.object[:h, :w]
        return object_error(obj, ds.object, region=region)

    margin = int(ds.positions_px.min())
    common = {"passes": 50, "options": EPIEOptions(seed=0), "margin_px": margin}
    sequential = error(reconstruct(ds.intensities, ds.positions_px, **common))
    synchronous = error(
        reconstruct(ds.intensities, ds.positions_px, parallel="synchronous", workers=2, **common)
    )
    start = error(reconstruct(ds.intensities, ds.positions_px, **{**common, "passes": 0}))
    assert sequential < 0.06  # the sequential engine works (see test_epie)
    assert synchronous <= sequential / QUALITY_FRACTION
    assert synchronous < 0.25 * start


def test_synchronous_engine_is_incremental_and_validates(small_dataset):
    ds = small_dataset
    half = len(ds.intensities) // 2
    pool = ThreadWorkers(2)
    try:
        engine = SynchronousEPIE(
            ds.object.shape,
            probe=ds.probe,
            options=EPIEOptions(seed=0, validation_every=5),
            batch_size=8,
            workers=pool,
        )
        engine.add(ds.intensities[:half], ds.positions_px[:half])
        engine.iterate(3)
        engine.add(ds.intensities[half:], ds.positions_px[half:])
        errors = engine.iterate(5)
        engine.step(10)  # a partial pass, as the live worker runs it
        state = engine.state()
    finally:
        pool.close()
    assert state.n_patterns == len(ds.intensities)
    assert errors[-1] < errors[0]
    held = engine.held_out
    assert held.any() and np.all(state.updates_per_pattern[held] == 0)
    assert state.validation_ratio < 0.6  # found the specimen


def test_bad_settings_are_refused(small_dataset):
    ds = small_dataset
    with pytest.raises(ValueError, match="parallel must be one of"):
        reconstruct(ds.intensities, ds.positions_px, parallel="async")
    with pytest.raises(ValueError, match="workers"):
        reconstruct(ds.intensities, ds.positions_px, parallel="synchronous", workers=0)
    for bad in ({"batch_size": 0}, {"regulariser": 0.0}, {"average_every": 0}, {"executor": "x"}):
        with pytest.raises(ValueError):
            ParallelOptions(**bad)
    with pytest.raises(ValueError, match="subpixel"):
        SynchronousEPIE((80, 80), options=EPIEOptions(subpixel=True), probe_shape=(64, 64))
    with pytest.raises(ValueError, match="threads or MPI"):
        reconstruct(
            ds.intensities,
            ds.positions_px,
            passes=1,
            parallel="averaging",
            workers=2,
            parallel_options=ParallelOptions(executor="processes"),
        )


def test_split_covers_the_batch_in_order():
    assert split(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert split(3, 4)[0] == (0, 1) and split(3, 4)[-1][1] == 3
    assert sum(b - a for a, b in split(33, 2)) == 33


def test_process_pool_closes_and_refuses_work_after(small_dataset):
    ds = small_dataset
    pool = ProcessWorkers(2)
    engine = SynchronousEPIE(ds.object.shape, probe=ds.probe, batch_size=8, workers=pool)
    engine.add(ds.intensities, ds.positions_px)
    engine.iterate(1)
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.iterate(1)
    assert isinstance(engine, EPIE)
