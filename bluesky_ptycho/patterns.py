"""Scan patterns as pure position arrays.

Every function returns a float64 array of shape ``(n, 2)`` in metres, in visiting order.
Column 0 is the row axis (``y``), column 1 the column axis (``x``). Patterns are centred on
``(0, 0)`` unless a ``center=(y, x)`` keyword is given.

Patterns
--------
``raster``
    Line scan with ``y`` as the fast axis and flyback: each line (a column of the grid) runs
    in increasing ``y``, lines follow each other in increasing ``x``.
``meander``
    Same grid, every other line reversed (snake), so there is no flyback.
``random``
    The raster grid visited in a seeded random order.
``spirangle``
    Square spiral over an ``n_side x n_side`` grid, one grid step per move, from the centre
    outward or from a corner inward.
``fermat``
    Fermat (sunflower) spiral with golden-angle increments.

Overlap
-------
The *linear* overlap of two circular probe footprints of diameter ``D`` whose centres are a
step ``s`` apart is ``o = 1 - s / D`` (``o = 0``: the discs touch, ``o -> 1``: they coincide),
see :func:`step_for_overlap` and :func:`overlap_for_step`.

This module imports only NumPy, the standard library and :mod:`bluesky_ptycho.validation`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bluesky_ptycho.validation import (
    check_extent,
    check_finite_scalar,
    check_non_negative_int,
    check_pair,
    check_positions,
    check_positive_int,
    check_positive_scalar,
)

__all__ = [
    "GOLDEN_ANGLE",
    "PATTERN_NAMES",
    "fermat_spiral",
    "fermat_spiral_extent",
    "meander",
    "overlap_for_step",
    "positions",
    "random_grid",
    "random_order",
    "raster",
    "spirangle",
    "step_for_overlap",
]

#: Golden angle in radians, ``π (3 - √5)`` ≈ 137.5°.
GOLDEN_ANGLE: float = math.pi * (3.0 - math.sqrt(5.0))

#: Names accepted by :func:`positions`.
PATTERN_NAMES: tuple[str, ...] = ("raster", "meander", "random", "spirangle", "fermat")

_SPIRANGLE_DIRECTIONS = ("outward", "inward")

# Spirangle moves in (row, col): +col, +row, -col, -row (counter-clockwise with y pointing up).
_SPIRANGLE_MOVES = ((0, 1), (1, 0), (0, -1), (-1, 0))


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


_positive_int = check_positive_int
_positive_float = check_positive_scalar
_finite_float = check_finite_scalar


def _step_pair(step_m: Any) -> tuple[float, float]:
    """A scalar step or a ``(row, col)`` pair of steps, each positive and finite."""
    return check_pair("step_m", step_m, check_positive_scalar, scalar_ok=True)


def _center_array(center: Any) -> NDArray[np.float64]:
    return np.array(check_pair("center", center, what="(y, x) in metres"), dtype=np.float64)


def _centred_grid_coords(n: int, step: float) -> NDArray[np.float64]:
    """``n`` coordinates ``step`` apart, symmetric about zero."""
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * step


def _extent_array(extent_m: ArrayLike) -> NDArray[np.float64]:
    return np.sort(check_extent("extent_m", extent_m), axis=1)


# --------------------------------------------------------------------------------------------
# grid scans
# --------------------------------------------------------------------------------------------


def _grid(
    n_rows: int, n_cols: int, step_m: float | tuple[float, float], snake: bool
) -> NDArray[np.float64]:
    n_rows = _positive_int("n_rows", n_rows)
    n_cols = _positive_int("n_cols", n_cols)
    step_y, step_x = _step_pair(step_m)
    ys = _centred_grid_coords(n_rows, step_y)
    xs = _centred_grid_coords(n_cols, step_x)
    # Each line is one column of the grid (fixed x), traversed along y: y is the fast axis.
    col_idx = np.repeat(np.arange(n_cols), n_rows)
    row_idx = np.tile(np.arange(n_rows), n_cols)
    if snake:
        odd = (col_idx % 2) == 1
        row_idx[odd] = n_rows - 1 - row_idx[odd]
    return np.stack([ys[row_idx], xs[col_idx]], axis=1)


def raster(
    n_rows: int,
    n_cols: int,
    step_m: float | tuple[float, float],
    *,
    center: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """Raster (line) scan with ``y`` as the fast axis and flyback.

    Points ``k = j * n_rows + i`` are at row index ``i`` and column index ``j``: the row
    coordinate changes fastest, and every line starts at the lowest ``y``.

    Parameters
    ----------
    n_rows, n_cols : int
        Number of grid points along ``y`` (rows) and ``x`` (columns), positive.
    step_m : float or (float, float)
        Grid step in metres, or ``(row_step, col_step)``.
    center : (float, float), optional
        Centre ``(y, x)`` of the grid in metres.

    Returns
    -------
    ndarray of float64, shape (n_rows * n_cols, 2)
        Positions ``(y, x)`` in visiting order.

    Raises
    ------
    ValueError
        If a count or step is not positive, naming the argument.
    """
    return _grid(n_rows, n_cols, step_m, snake=False) + _center_array(center)


def meander(
    n_rows: int,
    n_cols: int,
    step_m: float | tuple[float, float],
    *,
    center: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """Snake scan: as :func:`raster`, but every other line runs in decreasing ``y``.

    Parameters
    ----------
    n_rows, n_cols : int
        Number of grid points along ``y`` (rows) and ``x`` (columns), positive.
    step_m : float or (float, float)
        Grid step in metres, or ``(row_step, col_step)``.
    center : (float, float), optional
        Centre ``(y, x)`` of the grid in metres.

    Returns
    -------
    ndarray of float64, shape (n_rows * n_cols, 2)
        Positions ``(y, x)`` in visiting order; consecutive points are always one step apart.
    """
    return _grid(n_rows, n_cols, step_m, snake=True) + _center_array(center)


def random_order(positions: ArrayLike, *, seed: int = 0) -> NDArray[np.float64]:
    """The same points visited in a seeded random order.

    Parameters
    ----------
    positions : array_like, shape (n, 2)
        Positions ``(y, x)`` in metres.
    seed : int, optional
        Seed for ``numpy.random.default_rng``; the same seed gives the same order.

    Returns
    -------
    ndarray of float64, shape (n, 2)
        ``positions[default_rng(seed).permutation(n)]`` (a new array).
    """
    pos = check_positions("positions", positions)
    check_non_negative_int("seed", seed)
    order = np.random.default_rng(int(seed)).permutation(pos.shape[0])
    return pos[order]


def random_grid(
    n_rows: int,
    n_cols: int,
    step_m: float | tuple[float, float],
    *,
    seed: int = 0,
    center: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """The :func:`raster` grid visited in a seeded random order.

    Parameters
    ----------
    n_rows, n_cols : int
        Number of grid points along ``y`` and ``x``.
    step_m : float or (float, float)
        Grid step in metres, or ``(row_step, col_step)``.
    seed : int, optional
        Seed of the permutation.
    center : (float, float), optional
        Centre ``(y, x)`` of the grid in metres.

    Returns
    -------
    ndarray of float64, shape (n_rows * n_cols, 2)
    """
    return random_order(raster(n_rows, n_cols, step_m, center=center), seed=seed)


# --------------------------------------------------------------------------------------------
# spirals
# --------------------------------------------------------------------------------------------


def _spiral_indices(n_side: int) -> NDArray[np.int64]:
    """Integer ``(row, col)`` cells of a square spiral filling an ``n_side``² square.

    Legs of lengths 1, 1, 2, 2, 3, 3, ... turning counter-clockwise; the first ``k²`` cells
    of such a spiral always fill a ``k x k`` square.
    """
    total = n_side * n_side
    cells = np.zeros((total, 2), dtype=np.int64)
    r = c = 0
    count = 1
    leg = 1
    turn = 0
    while count < total:
        for _ in range(2):
            dr, dc = _SPIRANGLE_MOVES[turn % 4]
            for _ in range(leg):
                if count >= total:
                    break
                r += dr
                c += dc
                cells[count] = (r, c)
                count += 1
            turn += 1
        leg += 1
    return cells - cells.min(axis=0)


def spirangle(
    n_side: int,
    step_m: float,
    *,
    direction: str = "outward",
    center: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """Square spiral ("spirangle") visiting each point of an ``n_side x n_side`` grid once.

    Every move is one grid step along ``x`` or ``y``. ``"outward"`` starts at the centre of the
    grid (for even ``n_side``, at one of the four central points) and ends at a corner;
    ``"inward"`` is the same path reversed.

    Parameters
    ----------
    n_side : int
        Grid points per side, positive.
    step_m : float
        Grid step in metres.
    direction : {"outward", "inward"}, optional
        Spiral from the centre outward (default) or from a corner inward.
    center : (float, float), optional
        Centre ``(y, x)`` of the grid in metres.

    Returns
    -------
    ndarray of float64, shape (n_side**2, 2)
        Positions ``(y, x)`` in visiting order.

    Raises
    ------
    ValueError
        If ``n_side`` or ``step_m`` is not positive or ``direction`` is unknown.
    """
    n_side = _positive_int("n_side", n_side)
    step = _positive_float("step_m", step_m)
    if direction not in _SPIRANGLE_DIRECTIONS:
        raise ValueError(f"direction must be one of {_SPIRANGLE_DIRECTIONS}, got {direction!r}")
    cells = _spiral_indices(n_side).astype(np.float64)
    pts = (cells - (n_side - 1) / 2.0) * step + _center_array(center)
    if direction == "inward":
        pts = pts[::-1].copy()
    return pts


def fermat_spiral(
    num_points: int,
    step_m: float,
    *,
    center: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.float64]:
    """Fermat (sunflower) spiral with mean nearest-neighbour distance close to ``step_m``.

    Point ``k = 0 .. num_points - 1`` is at radius ``r_k = c sqrt(k)`` and angle
    ``θ_k = k * GOLDEN_ANGLE``, ``y = r sin θ``, ``x = r cos θ``. The radial scale is
    ``c = step_m / sqrt(π)``, which gives the spiral the same point density as a square grid
    of pitch ``step_m`` (one point per ``step_m²``); the mean nearest-neighbour distance is then
    about ``0.96 * step_m``. (With ``c = step_m`` it would be about ``1.7 * step_m``.)

    Parameters
    ----------
    num_points : int
        Number of points, positive.
    step_m : float
        Nominal neighbour spacing in metres.
    center : (float, float), optional
        Centre ``(y, x)`` of the spiral in metres (the first point).

    Returns
    -------
    ndarray of float64, shape (num_points, 2)
        Positions ``(y, x)`` from the centre outward.
    """
    num_points = _positive_int("num_points", num_points)
    step = _positive_float("step_m", step_m)
    k = np.arange(num_points, dtype=np.float64)
    radius = (step / math.sqrt(math.pi)) * np.sqrt(k)
    theta = k * GOLDEN_ANGLE
    pts = np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1)
    return pts + _center_array(center)


def fermat_spiral_extent(extent_m: ArrayLike, step_m: float) -> NDArray[np.float64]:
    """Fermat spiral covering a rectangle, centred on it, with points outside dropped.

    The spiral (see :func:`fermat_spiral`) is centred on the rectangle and grown until its
    radius reaches the rectangle's corners; points outside the rectangle (boundary included
    as inside) are dropped, keeping the visiting order. Roughly ``area / step_m²`` points
    remain.

    Parameters
    ----------
    extent_m : array_like, ((r0, r1), (c0, c1))
        Rectangle of beam positions in metres (order within each pair does not matter).
    step_m : float
        Nominal neighbour spacing in metres.

    Returns
    -------
    ndarray of float64, shape (n, 2)
        Positions ``(y, x)`` inside the rectangle, from its centre outward.
    """
    ext = _extent_array(extent_m)
    step = _positive_float("step_m", step_m)
    center = ext.mean(axis=1)
    half = (ext[:, 1] - ext[:, 0]) / 2.0
    radius_max = float(np.hypot(half[0], half[1]))
    c = step / math.sqrt(math.pi)
    num_points = math.ceil((radius_max / c) ** 2) + 1
    pts = fermat_spiral(num_points, step, center=(float(center[0]), float(center[1])))
    tol = 1e-9 * max(step, radius_max)
    inside = np.all((pts >= ext[:, 0] - tol) & (pts <= ext[:, 1] + tol), axis=1)
    return pts[inside]


# --------------------------------------------------------------------------------------------
# overlap
# --------------------------------------------------------------------------------------------


def step_for_overlap(probe_diameter_m: float, overlap: float) -> float:
    """Step between neighbouring positions for a given linear probe overlap.

    Linear overlap definition: two probe footprints of diameter ``D`` with centres ``s``
    apart overlap by ``o = 1 - s / D``, hence ``s = D (1 - o)``.

    Parameters
    ----------
    probe_diameter_m : float
        Probe diameter in metres, positive.
    overlap : float
        Linear overlap in ``[0, 1)``.

    Returns
    -------
    float
        Step in metres.

    Raises
    ------
    ValueError
        If the diameter is not positive or the overlap is outside ``[0, 1)``.
    """
    diameter = _positive_float("probe_diameter_m", probe_diameter_m)
    o = _finite_float("overlap", overlap)
    if not 0.0 <= o < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    return diameter * (1.0 - o)


def overlap_for_step(probe_diameter_m: float, step_m: float) -> float:
    """Linear overlap ``1 - step / D`` of probe footprints ``step_m`` apart.

    Parameters
    ----------
    probe_diameter_m : float
        Probe diameter in metres, positive.
    step_m : float
        Step in metres, positive.

    Returns
    -------
    float
        Overlap, below 1; negative when the step exceeds the diameter (a gap between
        footprints).
    """
    diameter = _positive_float("probe_diameter_m", probe_diameter_m)
    step = _positive_float("step_m", step_m)
    return 1.0 - step / diameter


# --------------------------------------------------------------------------------------------
# dispatcher
# --------------------------------------------------------------------------------------------


def _resolve(pattern: str, kwargs: dict[str, Any]) -> Callable[..., NDArray[np.float64]] | None:
    """The function implementing ``pattern`` for these keyword arguments, or ``None``."""
    if pattern == "fermat":
        return fermat_spiral_extent if "extent_m" in kwargs else fermat_spiral
    table: dict[str, Callable[..., NDArray[np.float64]]] = {
        "raster": raster,
        "meander": meander,
        "random": random_grid,
        "spirangle": spirangle,
    }
    return table.get(pattern)


def positions(pattern: str, **kwargs: Any) -> NDArray[np.float64]:
    """Positions of a named pattern.

    Parameters
    ----------
    pattern : str
        One of :data:`PATTERN_NAMES`: ``"raster"`` (:func:`raster`), ``"meander"``
        (:func:`meander`), ``"random"`` (:func:`random_grid`), ``"spirangle"``
        (:func:`spirangle`), ``"fermat"`` (:func:`fermat_spiral`, or
        :func:`fermat_spiral_extent` when ``extent_m`` is given).
    **kwargs
        Arguments of the pattern function.

    Returns
    -------
    ndarray of float64, shape (n, 2)

    Raises
    ------
    ValueError
        If the pattern name is unknown (the message lists the valid names) or its
        arguments are invalid.
    """
    func = _resolve(pattern, kwargs) if isinstance(pattern, str) else None
    if func is None:
        valid = ", ".join(PATTERN_NAMES)
        raise ValueError(f"unknown scan pattern {pattern!r}; valid names: {valid}")
    try:
        inspect.signature(func).bind(**kwargs)
    except TypeError as exc:
        raise ValueError(
            f"bad arguments for pattern {pattern!r} ({func.__name__}): {exc}"
        ) from None
    return func(**kwargs)
