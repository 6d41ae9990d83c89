"""Tests for bluesky_ptycho.patterns."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from bluesky_ptycho import patterns
from bluesky_ptycho.patterns import (
    PATTERN_NAMES,
    fermat_spiral,
    fermat_spiral_extent,
    meander,
    overlap_for_step,
    positions,
    random_grid,
    random_order,
    raster,
    spirangle,
    step_for_overlap,
)


def _steps(p: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.diff(p, axis=0), axis=1)


def _as_set(p: np.ndarray, step: float) -> set[tuple[int, int]]:
    idx = np.rint(p / step * 2).astype(int)  # half-step units handle even grids
    return {(int(a), int(b)) for a, b in idx}


def _nearest_neighbour(p: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


# --- raster / meander ---------------------------------------------------------------------------


def test_raster_shape_dtype_centring() -> None:
    p = raster(4, 3, 1e-7)
    assert p.shape == (12, 2)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p.mean(axis=0), [0.0, 0.0], atol=1e-20)
    np.testing.assert_allclose(np.unique(p[:, 0]), [-1.5e-7, -0.5e-7, 0.5e-7, 1.5e-7])
    np.testing.assert_allclose(np.unique(p[:, 1]), [-1e-7, 0.0, 1e-7])


def test_raster_fast_axis_is_y_with_flyback() -> None:
    p = raster(3, 2, 1.0)
    expected = [[-1, -0.5], [0, -0.5], [1, -0.5], [-1, 0.5], [0, 0.5], [1, 0.5]]
    np.testing.assert_allclose(p, expected)
    big = raster(5, 4, 1.0)
    lines = big.reshape(4, 5, 2)
    # within a line only y changes, always increasing; x is constant per line
    assert np.all(np.diff(lines[:, :, 0], axis=1) == 1.0)
    assert np.all(np.diff(lines[:, :, 1], axis=1) == 0.0)
    # every line starts at the same side (flyback)
    assert np.all(lines[:, 0, 0] == -2.0)


def test_raster_rect_step_and_center() -> None:
    p = raster(3, 5, (2.0, 0.5), center=(10.0, -4.0))
    np.testing.assert_allclose(p.mean(axis=0), [10.0, -4.0])
    np.testing.assert_allclose(np.ptp(p, axis=0), [4.0, 2.0])
    np.testing.assert_allclose(p[1] - p[0], [2.0, 0.0])
    np.testing.assert_allclose(p[3] - p[0], [0.0, 0.5])


def test_meander_alternates_lines() -> None:
    p = meander(3, 4, 1.0)
    lines = p.reshape(4, 3, 2)
    np.testing.assert_allclose(lines[0, :, 0], [-1, 0, 1])
    np.testing.assert_allclose(lines[1, :, 0], [1, 0, -1])
    np.testing.assert_allclose(lines[2, :, 0], [-1, 0, 1])
    np.testing.assert_allclose(lines[3, :, 0], [1, 0, -1])
    # no flyback: every move is exactly one step
    np.testing.assert_allclose(_steps(p), 1.0)
    # same set of points as the raster
    assert _as_set(p, 1.0) == _as_set(raster(3, 4, 1.0), 1.0)


def test_raster_has_flyback_jumps() -> None:
    s = _steps(raster(3, 4, 1.0))
    assert np.isclose(s, np.hypot(2.0, 1.0)).sum() == 3


@pytest.mark.parametrize("func", [raster, meander, random_grid])
@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 3, 1.0), "n_rows"),
        ((3, -1, 1.0), "n_cols"),
        ((3, 3, 0.0), "step_m"),
        ((3, 3, -1.0), "step_m"),
        ((3, 3, (1.0, 0.0)), "step_m"),
        ((3, 3, (1.0, 1.0, 1.0)), "step_m"),
        ((2.5, 3, 1.0), "n_rows"),
    ],
)
def test_grid_bad_arguments(
    func: Callable[..., np.ndarray], args: tuple[object, ...], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        func(*args)


def test_bad_center() -> None:
    with pytest.raises(ValueError, match="center"):
        raster(2, 2, 1.0, center=(0.0,))
    with pytest.raises(ValueError, match="center"):
        spirangle(3, 1.0, center=(np.nan, 0.0))


# --- random -------------------------------------------------------------------------------------


def test_random_order_is_seeded_permutation() -> None:
    base = raster(6, 7, 1.0)
    a = random_order(base, seed=3)
    b = random_order(base, seed=3)
    c = random_order(base, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, base)

    # a permutation: same multiset of rows
    def rows_sorted(x: np.ndarray) -> np.ndarray:
        return x[np.lexsort((x[:, 1], x[:, 0]))]

    np.testing.assert_array_equal(rows_sorted(a), rows_sorted(base))
    perm = np.random.default_rng(3).permutation(len(base))
    np.testing.assert_array_equal(a, base[perm])
    # the input is not modified
    np.testing.assert_array_equal(base, raster(6, 7, 1.0))


def test_random_grid_shortcut() -> None:
    g = random_grid(5, 4, 2.0, seed=11, center=(1.0, 2.0))
    np.testing.assert_array_equal(g, random_order(raster(5, 4, 2.0, center=(1.0, 2.0)), seed=11))
    assert g.shape == (20, 2)


def test_random_order_bad_input() -> None:
    with pytest.raises(ValueError, match="positions"):
        random_order(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="seed"):
        random_order(np.zeros((3, 2)), seed=1.5)  # type: ignore[arg-type]


# --- spirangle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_side", [1, 2, 3, 4, 5, 8, 21])
def test_spirangle_covers_grid_once_with_unit_moves(n_side: int) -> None:
    step = 50e-9
    p = spirangle(n_side, step)
    assert p.shape == (n_side**2, 2)
    pts = _as_set(p, step)
    assert len(pts) == n_side**2  # no point visited twice
    assert pts == _as_set(raster(n_side, n_side, step), step)  # exactly the grid
    if n_side > 1:
        d = np.diff(p, axis=0) / step
        # 4-neighbour moves: exactly one coordinate changes by exactly one step
        np.testing.assert_allclose(np.abs(d).sum(axis=1), 1.0)
        np.testing.assert_allclose(np.abs(d).max(axis=1), 1.0)


def test_spirangle_starts_at_centre_and_ends_at_corner() -> None:
    p = spirangle(5, 1.0, center=(3.0, -2.0))
    np.testing.assert_allclose(p[0], [3.0, -2.0])
    np.testing.assert_allclose(np.abs(p[-1] - [3.0, -2.0]), [2.0, 2.0])
    np.testing.assert_allclose(p.mean(axis=0), [3.0, -2.0])
    # distance from the centre never decreases by more than a step along the path
    r = np.abs(p - [3.0, -2.0]).max(axis=1)
    assert np.all(np.diff(r) >= 0)


def test_spirangle_even_starts_at_a_central_point() -> None:
    p = spirangle(4, 1.0)
    np.testing.assert_allclose(np.abs(p[0]), [0.5, 0.5])
    np.testing.assert_allclose(p.mean(axis=0), [0.0, 0.0], atol=1e-12)


def test_spirangle_inward_is_reversed_outward() -> None:
    out = spirangle(7, 2.0)
    inward = spirangle(7, 2.0, direction="inward")
    np.testing.assert_array_equal(inward, out[::-1])
    np.testing.assert_allclose(inward[-1], [0.0, 0.0])


def test_spirangle_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_side"):
        spirangle(0, 1.0)
    with pytest.raises(ValueError, match="step_m"):
        spirangle(3, 0.0)
    with pytest.raises(ValueError, match="direction"):
        spirangle(3, 1.0, direction="sideways")


# --- fermat -------------------------------------------------------------------------------------


def test_fermat_spiral_shape_and_formula() -> None:
    step = 50e-9
    p = fermat_spiral(300, step, center=(1e-6, 2e-6))
    assert p.shape == (300, 2)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p[0], [1e-6, 2e-6])
    rel = p - [1e-6, 2e-6]
    r = np.hypot(rel[:, 0], rel[:, 1])
    k = np.arange(300)
    np.testing.assert_allclose(r, step / np.sqrt(np.pi) * np.sqrt(k), rtol=1e-9, atol=1e-20)
    theta = np.arctan2(rel[1:, 0], rel[1:, 1])
    dtheta = np.angle(np.exp(1j * (theta - k[1:] * patterns.GOLDEN_ANGLE)))
    np.testing.assert_allclose(dtheta, 0.0, atol=1e-9)
    assert np.degrees(patterns.GOLDEN_ANGLE) == pytest.approx(137.50776, abs=1e-5)


@pytest.mark.parametrize("num_points", [100, 441, 1000])
def test_fermat_neighbour_spacing_close_to_step(num_points: int) -> None:
    step = 50e-9
    nn = _nearest_neighbour(fermat_spiral(num_points, step))
    assert abs(nn.mean() / step - 1.0) < 0.2
    assert nn.min() > 0.5 * step


def test_fermat_spiral_extent_inside_and_covering() -> None:
    step = 0.1
    ext = ((-1.0, 1.0), (3.0, 7.0))  # 2 x 4 rectangle centred at (0, 5)
    p = fermat_spiral_extent(ext, step)
    assert np.all((p[:, 0] >= -1.0) & (p[:, 0] <= 1.0))
    assert np.all((p[:, 1] >= 3.0) & (p[:, 1] <= 7.0))
    np.testing.assert_allclose(p[0], [0.0, 5.0])
    # about one point per step² of area
    assert abs(len(p) / (2.0 * 4.0 / step**2) - 1.0) < 0.05
    # covers the corners: every corner has a point within ~a step
    for corner in [(-1, 3), (-1, 7), (1, 3), (1, 7)]:
        assert np.min(np.hypot(*(p - corner).T)) < 1.5 * step
    # the order of the bounds within each pair does not matter
    np.testing.assert_array_equal(fermat_spiral_extent(((1.0, -1.0), (7.0, 3.0)), step), p)


def test_fermat_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_points"):
        fermat_spiral(0, 1.0)
    with pytest.raises(ValueError, match="step_m"):
        fermat_spiral(10, -1.0)
    with pytest.raises(ValueError, match="extent_m"):
        fermat_spiral_extent([0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="step_m"):
        fermat_spiral_extent([[0.0, 1.0], [0.0, 1.0]], 0.0)


# --- overlap ------------------------------------------------------------------------------------


def test_step_for_overlap() -> None:
    assert step_for_overlap(1e-6, 0.0) == pytest.approx(1e-6)
    assert step_for_overlap(1e-6, 0.6) == pytest.approx(0.4e-6)
    assert step_for_overlap(2e-6, 0.75) == pytest.approx(0.5e-6)
    assert overlap_for_step(2e-6, 0.5e-6) == pytest.approx(0.75)
    assert overlap_for_step(1e-6, 2e-6) == pytest.approx(-1.0)
    for o in (0.0, 0.3, 0.9):
        assert overlap_for_step(3e-6, step_for_overlap(3e-6, o)) == pytest.approx(o)


@pytest.mark.parametrize(
    ("diameter", "overlap", "name"),
    [(1e-6, 1.0, "overlap"), (1e-6, -0.1, "overlap"), (0.0, 0.5, "probe_diameter_m")],
)
def test_step_for_overlap_bad(diameter: float, overlap: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        step_for_overlap(diameter, overlap)


def test_overlap_for_step_bad() -> None:
    with pytest.raises(ValueError, match="step_m"):
        overlap_for_step(1e-6, 0.0)
    with pytest.raises(ValueError, match="probe_diameter_m"):
        overlap_for_step(-1e-6, 1e-7)


# --- dispatcher ---------------------------------------------------------------------------------


def test_pattern_names_immutable() -> None:
    assert isinstance(PATTERN_NAMES, tuple)
    assert set(PATTERN_NAMES) == {"raster", "meander", "random", "spirangle", "fermat"}


def test_dispatcher_matches_functions() -> None:
    np.testing.assert_array_equal(
        positions("raster", n_rows=3, n_cols=4, step_m=1.0), raster(3, 4, 1.0)
    )
    np.testing.assert_array_equal(
        positions("meander", n_rows=3, n_cols=4, step_m=1.0), meander(3, 4, 1.0)
    )
    np.testing.assert_array_equal(
        positions("random", n_rows=3, n_cols=4, step_m=1.0, seed=5),
        random_grid(3, 4, 1.0, seed=5),
    )
    np.testing.assert_array_equal(
        positions("spirangle", n_side=5, step_m=1.0, direction="inward"),
        spirangle(5, 1.0, direction="inward"),
    )
    np.testing.assert_array_equal(
        positions("fermat", num_points=50, step_m=1.0), fermat_spiral(50, 1.0)
    )
    ext = [[0.0, 1.0], [0.0, 2.0]]
    np.testing.assert_array_equal(
        positions("fermat", extent_m=ext, step_m=0.1), fermat_spiral_extent(ext, 0.1)
    )
    for name in PATTERN_NAMES:
        assert name in {"raster", "meander", "random", "spirangle", "fermat"}


def test_dispatcher_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="raster, meander, random, spirangle, fermat"):
        positions("zigzag", n_rows=2)
    with pytest.raises(ValueError, match="unknown scan pattern"):
        positions(None)  # type: ignore[arg-type]


def test_dispatcher_bad_kwargs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="raster"):
        positions("raster", n_rows=3, step_m=1.0)
    with pytest.raises(ValueError, match="n_side"):
        positions("spirangle", n_side=-2, step_m=1.0)
