"""Playing recipes through the engine: steps, passes, snapshots, synchronisation, measuring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bluesky_ptycho.engine import ReconstructionState
from bluesky_ptycho.recipes import (
    Recipe,
    StudyData,
    StudySettings,
    average_objects,
    first_fraction_below,
    run_recipe,
    run_study,
)
from bluesky_ptycho.recipes.runner import RecipeRun, Record


@pytest.fixture(scope="module")
def data(small_dataset):
    return StudyData.from_simulated(small_dataset)


def test_a_live_recipe_adds_per_step_and_tops_up_to_n(data):
    recipe = Recipe("r", "r", per_step=20, iterations_per_step=3, iterations=20)
    run = run_recipe(recipe, data, StudySettings(probe="auto", stages=(0.25, 1.0)))
    # 81 patterns: 5 arrival steps of 3 passes (15), then 3 + 2 passes up to 20
    assert [r.patterns for r in run.records] == [20, 40, 60, 80, 81, 81, 81]
    assert [r.iteration for r in run.records] == [3, 6, 9, 12, 15, 18, 20]
    assert run.records[-1].fraction_of_scan == 1.0
    assert all(math.isnan(r.error_to_reference) for r in run.records)  # nothing to measure
    # snapshots at 25 % and 100 % of the scan and at the end
    assert [s.patterns for s in run.snapshots] == [40, 81, 81]
    assert math.isinf(run.snapshots[-1].stage)
    assert run.snapshots[-1].object.shape == data.object_shape


def test_an_arrival_longer_than_n_keeps_its_passes_per_step(data):
    recipe = Recipe("o", "o", per_step=40, iterations_per_step=15, iterations=20)
    run = run_recipe(recipe, data, StudySettings(probe="auto"))
    assert [r.iteration for r in run.records] == [15, 30, 45]


def test_an_offline_recipe_records_every_iterations_per_step(data):
    recipe = Recipe("ref", "ref", iterations_per_step=4, iterations=10)
    run = run_recipe(recipe, data, StudySettings(probe="auto", stages=(0.5,)))
    assert [r.iteration for r in run.records] == [4, 8, 10]
    assert all(r.fraction_of_scan == 1.0 for r in run.records)
    assert [s.iteration for s in run.snapshots] == [8, 10]  # stage by iterations, then end


def test_subsets_are_synchronised_and_start_from_one_probe(data):
    recipe = Recipe("p", "p", per_step=10, iterations_per_step=2, iterations=12, subsets=3,
                    dealing="round_robin")  # fmt: skip
    seen = []

    def measure(obj, arrived):
        seen.append(arrived.size)
        return 0.5, 0.25

    run = run_recipe(recipe, data, StudySettings(probe="auto"), measure=measure)
    assert run.subset[:10].tolist() == [0] * 10 and run.subset[10:20].tolist() == [1] * 10
    assert seen[:3] == [10, 20, 30]
    assert run.records[0].error_to_reference == 0.5
    assert run.records[0].error_in_scanned_region == 0.25
    assert run.probe_origin.startswith(("mean_pattern", "gaussian"))
    assert np.all(np.isfinite(run.final.object))


def test_plain_mean_and_illumination_weighted_averages():
    shape, n = (12, 12), 4
    probe = np.ones((n, n), np.complex64)
    a = ReconstructionState(np.full(shape, 2.0, np.complex64), probe, np.array([[0.0, 0.0]]))
    b = ReconstructionState(np.full(shape, 4.0, np.complex64), 3 * probe, np.array([[8.0, 8.0]]))
    obj, p = average_objects([a, b], weighting="mean")
    assert np.allclose(obj, 3.0) and np.allclose(p, 2.0)
    obj, _ = average_objects([a, b], weighting="illumination")
    assert obj[1, 1] == pytest.approx(2.0)  # only a lit it
    assert obj[10, 10] == pytest.approx(4.0)  # only b lit it
    assert obj[6, 1] == pytest.approx(3.0)  # nobody lit it: the plain mean
    with pytest.raises(ValueError, match="weighting"):
        average_objects([a, b], weighting="median")


def test_the_reference_ends_at_zero_and_the_others_are_measured(data):
    small = data.first(36)
    settings = StudySettings(
        probe="auto", iterations=8, per_step=12, iterations_per_step=4,
        overoptimization_iterations_per_step=6, subsets=2,
    )  # fmt: skip
    result = run_study(small, settings, schemes=["raster", "parallel"])
    assert list(result.runs) == ["reference", "raster", "parallel"]
    ref = result.reference.series("error_to_reference")
    assert ref[-1] == 0.0 and np.all(ref[:-1] > 0)
    for name in ("raster", "parallel"):
        errs = result.runs[name].series("error_to_reference")
        assert np.all(np.isfinite(errs)) and np.all(errs > 0)
    assert result.region.shape == small.object_shape and result.region.any()
    with pytest.raises(ValueError, match="unknown scheme"):
        run_study(small, settings, schemes=["sideways"])


def _run(errors, fractions):
    run = RecipeRun(Recipe("x", "x", per_step=1), np.arange(3), np.zeros(3, np.int64))
    run.records = [Record(f, 1, 1, e, e) for f, e in zip(fractions, errors, strict=True)]
    return run


def test_first_fraction_below_twice_the_final_error():
    run = _run([0.9, 0.5, 0.19, 0.15, 0.1], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert first_fraction_below(run) == 0.6
    assert first_fraction_below(run, 5.0) == 0.4
    assert math.isnan(first_fraction_below(_run([0.3, 0.0], [1.0, 1.0])))
