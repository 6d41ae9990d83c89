"""Recipes as declarations: the study's seven schemes, arrival orders, steps and subsets."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.patterns import raster, spirangle
from bluesky_ptycho.recipes.schedule import (
    SCHEME_NAMES,
    Recipe,
    StudySettings,
    arrival_order,
    batches,
    deal,
    spirangle_order,
    study_recipes,
)


def test_the_study_has_seven_schemes_with_the_studys_numbers():
    recipes = {r.name: r for r in study_recipes()}
    assert tuple(recipes) == SCHEME_NAMES
    assert recipes["reference"].per_step is None and recipes["reference"].subsets == 1
    for name in ("raster", "random", "spirangle", "parallel_live", "overoptimization"):
        assert recipes[name].per_step == 10
    assert recipes["raster"].order == "recorded"
    assert recipes["random"].order == "random"
    assert recipes["spirangle"].order == "spirangle"
    assert recipes["parallel"].subsets == 4 and recipes["parallel"].dealing == "random"
    assert recipes["parallel"].per_step is None
    assert recipes["parallel_live"].dealing == "round_robin"
    assert recipes["overoptimization"].iterations_per_step == 1000
    assert all(r.iterations == 1000 for r in recipes.values())
    assert {r.figure for r in recipes.values()} == {f"Fig. {k}" for k in (5, 6, 7, 8, 9, 10, 13)}


def test_the_studys_engine_start_is_plain_epie_from_a_gaussian():
    s = StudySettings()
    assert s.probe == "gaussian"
    assert (s.options.alpha, s.options.beta) == (1.0, 1.0)
    assert not s.options.probe_power and not s.options.probe_centre
    assert s.options.object_amplitude_max is None
    m = StudySettings.measured(iterations=50)
    assert m.probe == "auto" and m.iterations == 50
    assert m.options.object_amplitude_max == 2.0 and not m.options.probe_centre


@pytest.mark.parametrize(
    "bad",
    [
        {"order": "sideways"},
        {"dealing": "fair"},
        {"per_step": 0},
        {"iterations": 0},
        {"subsets": 0},
    ],
)
def test_a_recipe_rejects_what_it_cannot_run(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Recipe("x", "x", **bad)


def test_settings_reject_unknown_probes_and_averaging():
    with pytest.raises(ValueError, match="probe"):
        StudySettings(probe="array")
    with pytest.raises(ValueError, match="averaging"):
        StudySettings(averaging="median")


def test_orders_are_permutations():
    pos = raster(5, 7, 1.0)
    for order in ("recorded", "random", "spirangle"):
        idx = arrival_order(pos, order, seed=3)
        assert sorted(idx.tolist()) == list(range(35))
    assert arrival_order(pos, "recorded").tolist() == list(range(35))
    assert arrival_order(pos, "random", seed=3).tolist() != list(range(35))
    with pytest.raises(ValueError, match="order"):
        arrival_order(pos, "sideways")


def _ring(pos):
    centre = (pos.min(axis=0) + pos.max(axis=0)) / 2
    return np.max(np.abs(pos - centre), axis=1)


def test_spirangle_order_walks_inward_ring_by_ring_on_a_grid():
    pos = raster(9, 9, 1.0)
    walked = pos[spirangle_order(pos)]
    rings = _ring(walked)
    assert np.all(np.diff(rings) <= 1e-9)  # never outward
    assert rings[0] == 4 and rings[-1] == 0
    steps = np.max(np.abs(np.diff(walked, axis=0)), axis=1)
    # within a ring every move is one grid step (the ring's perimeter is walked)
    same_ring = np.diff(rings) == 0
    assert np.all(steps[same_ring] <= 1.0 + 1e-9)
    # the same ring sequence as the project's inward spirangle scan
    ref = spirangle(9, 1.0, direction="inward")
    assert np.allclose(np.sort(_ring(ref))[::-1], rings)


def test_spirangle_order_on_irregular_rectangular_positions():
    rng = np.random.default_rng(0)
    pos = rng.uniform([0, 0], [20, 200], size=(150, 2))  # 10 x wider than tall
    walked = pos[spirangle_order(pos)]
    centre = (pos.min(axis=0) + pos.max(axis=0)) / 2
    half = (pos.max(axis=0) - pos.min(axis=0)) / 2
    cheb = np.max(np.abs(walked - centre) / half, axis=1)
    # outermost first: the first tenth lies further out than the last tenth
    assert cheb[:15].min() > cheb[-15:].max()


def test_batches_and_dealing():
    order = np.arange(23)
    steps = batches(order, 5)
    assert [s.size for s in steps] == [5, 5, 5, 5, 3]
    assert batches(order, None)[0].size == 23
    rr = Recipe("p", "p", per_step=5, subsets=4, dealing="round_robin")
    subset = deal(rr, steps, 23)
    assert subset[:5].tolist() == [0] * 5 and subset[5:10].tolist() == [1] * 5
    assert subset[20:].tolist() == [0] * 3
    rnd = Recipe("q", "q", subsets=4, dealing="random")
    subset = deal(rnd, [order], 23, seed=0)
    assert sorted(np.bincount(subset).tolist()) == [5, 6, 6, 6]  # disjoint, near equal
    assert not np.all(np.diff(subset) >= 0)  # not contiguous blocks
    assert deal(Recipe("s", "s"), steps, 23).tolist() == [0] * 23
