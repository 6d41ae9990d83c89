"""The study's schemes as small declarative recipes: which patterns arrive when, how many
iterations follow, how the data are split between independent reconstructions.

A :class:`Recipe` says nothing about numerics; :func:`~bluesky_ptycho.recipes.runner.run_recipe`
plays it through :class:`~bluesky_ptycho.engine.EPIE`, the engine live data go through.
:func:`study_recipes` gives the seven schemes of the study ("Live iterative ptychography",
Microscopy and Microanalysis 2024) for one :class:`StudySettings`.

Arrival orders (:func:`arrival_order`) work on any positions, not only on grids:

- ``"recorded"``: the order the patterns are stored in (a raster scan's line order);
- ``"random"``: a seeded permutation;
- ``"spirangle"``: an inward square spiral (:func:`spirangle_order`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from bluesky_ptycho.engine import EPIEOptions

__all__ = [
    "AVERAGING",
    "DEALINGS",
    "ORDERS",
    "SCHEME_NAMES",
    "Recipe",
    "StudySettings",
    "arrival_order",
    "batches",
    "deal",
    "spirangle_order",
    "study_recipes",
]

ORDERS = ("recorded", "random", "spirangle")
"""Arrival orders a recipe can ask for."""
DEALINGS = ("random", "round_robin")
"""How patterns are dealt to the subsets of a parallel recipe."""
AVERAGING = ("mean", "illumination")
"""How subset objects are averaged when they are synchronised."""
SCHEME_NAMES = (
    "reference",
    "raster",
    "random",
    "spirangle",
    "parallel",
    "parallel_live",
    "overoptimization",
)
"""The study's schemes, in the order :func:`study_recipes` returns them."""


@dataclass(frozen=True)
class Recipe:
    """One simulated-live scheme.

    The recipe runs in steps. At each step the next ``per_step`` patterns (in ``order``)
    arrive, every subset that holds patterns runs ``iterations_per_step`` ePIE passes, and with
    more than one subset object and probe are averaged and handed back to every subset. Once
    every pattern has arrived the steps go on without new data until ``iterations`` passes are
    done (a recipe whose arrival already took more passes stops when the last pattern has had
    its ``iterations_per_step``).

    Attributes
    ----------
    name : str
        Key of the scheme in the outputs (``study.json``, the HDF5 file).
    title : str
        What the scheme is, for figures.
    order : {"recorded", "random", "spirangle"}
        Arrival order, see :func:`arrival_order`.
    per_step : int or None
        Patterns arriving per step; None: all of them before the first step (an offline
        reconstruction).
    iterations_per_step : int
        Passes per step (per subset), and the interval of records and synchronisations once
        all data are in.
    iterations : int
        Passes in total (per subset), the study's N.
    subsets : int
        Independent reconstructions (1: sequential ePIE).
    dealing : {"random", "round_robin"}
        With subsets: ``"random"`` deals a seeded random partition of all patterns into
        disjoint subsets of (nearly) equal size; ``"round_robin"`` deals each step's arrivals
        as a whole to subset ``step % subsets``.
    figure : str
        The study's figure the scheme reproduces.
    """

    name: str
    title: str
    order: str = "recorded"
    per_step: int | None = None
    iterations_per_step: int = 10
    iterations: int = 1000
    subsets: int = 1
    dealing: str = "random"
    figure: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a recipe needs a name")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.dealing not in DEALINGS:
            raise ValueError(f"dealing must be one of {DEALINGS}, got {self.dealing!r}")
        if self.per_step is not None and int(self.per_step) < 1:
            raise ValueError(f"per_step must be >= 1 or None, got {self.per_step!r}")
        for name in ("iterations_per_step", "iterations", "subsets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def live(self) -> bool:
        """True when patterns arrive during the reconstruction (``per_step`` is set)."""
        return self.per_step is not None

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON fields of the recipe."""
        return {
            "name": self.name,
            "title": self.title,
            "order": self.order,
            "per_step": self.per_step,
            "iterations_per_step": self.iterations_per_step,
            "iterations": self.iterations,
            "subsets": self.subsets,
            "dealing": self.dealing,
            "figure": self.figure,
        }


@dataclass(frozen=True)
class StudySettings:
    """The numbers shared by the study's recipes, and how the engine starts.

    Attributes
    ----------
    iterations : int
        N, passes per scheme (the study: 1,000).
    per_step : int
        Patterns arriving per step in the live schemes (the study: 10).
    iterations_per_step : int
        Passes per step and between synchronisations (the study: 10).
    subsets : int
        Subsets of the parallel schemes (the study: 4).
    overoptimization_iterations_per_step : int
        Passes per step of the over-optimisation scheme (the study: 1,000).
    probe : str
        Starting probe: ``"gaussian"`` (the study's, flat phase) or ``"auto"`` (the project's
        default, made from the data; see :class:`~bluesky_ptycho.probes.ProbeInit`). Every
        scheme, the reference included, starts from it.
    options : EPIEOptions
        Engine options of every scheme; default the study's plain ePIE
        (:meth:`EPIEOptions.study`: alpha = beta = 1, no convergence aid).
    averaging : {"mean", "illumination"}
        Synchronisation of the parallel schemes: the study's plain mean of the subsets'
        objects, or each object pixel weighted by how strongly each subset lit it.
    seed : int
        Seed of the random order, the random dealing and the engines' shuffling.
    stages : tuple of float
        Progress at which snapshots are kept for the figures: fractions of the scan for live
        schemes, fractions of the iterations for the others (the end is always kept).
    region_threshold : float
        The compared region: object pixels the whole scan lit above this fraction of the
        maximum (:func:`~bluesky_ptycho.metrics.illuminated_region` with the reference probe).
    """

    iterations: int = 1000
    per_step: int = 10
    iterations_per_step: int = 10
    subsets: int = 4
    overoptimization_iterations_per_step: int = 1000
    probe: str = "gaussian"
    options: EPIEOptions = field(default_factory=EPIEOptions.study)
    averaging: str = "mean"
    seed: int = 0
    stages: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    region_threshold: float = 0.3

    def __post_init__(self) -> None:
        for name in (
            "iterations",
            "per_step",
            "iterations_per_step",
            "subsets",
            "overoptimization_iterations_per_step",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.probe not in ("gaussian", "auto"):
            raise ValueError(f"probe must be 'gaussian' or 'auto', got {self.probe!r}")
        if self.averaging not in AVERAGING:
            raise ValueError(f"averaging must be one of {AVERAGING}, got {self.averaging!r}")
        if not all(0.0 < s <= 1.0 for s in self.stages):
            raise ValueError(f"stages must be fractions in (0, 1], got {self.stages!r}")
        if not 0.0 < self.region_threshold < 1.0:
            raise ValueError(f"region_threshold must be in (0, 1), got {self.region_threshold!r}")

    @classmethod
    def measured(cls, **changes: Any) -> StudySettings:
        """Settings for measured data: the data-made probe and a bounded object.

        The study's Gaussian start does not find the measured Siemens star (plain ePIE stays on
        a plateau, object error 0.36 to 0.42 against a supplied-probe reconstruction, see
        ``tests/integration/test_blind_start.py``), so the probe is ``"auto"``. Plain ePIE from
        that probe blows up after 100 to 200 passes on the star (Fourier error 1e7), so the
        object amplitude is bounded by 2 with the probe power held to the counts
        (``EPIEOptions.study(object_amplitude_max=2.0, probe_power=True)``); no other aid
        (no probe centring, which would move each subset's object differently).
        """
        seed = int(changes.get("seed", 0))
        base: dict[str, Any] = {
            "probe": "auto",
            "options": EPIEOptions.study(object_amplitude_max=2.0, probe_power=True, seed=seed),
        }
        base.update(changes)
        return cls(**base)

    def engine_options(self) -> EPIEOptions:
        """``options`` with this study's seed."""
        return replace(self.options, seed=self.seed)

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON fields (the options as their own fields)."""
        out = {
            k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("options", "stages")
        }
        out["stages"] = list(self.stages)
        out["options"] = {k: getattr(self.options, k) for k in self.options.__dataclass_fields__}
        return out


def study_recipes(settings: StudySettings | None = None) -> tuple[Recipe, ...]:
    """The study's seven schemes (:data:`SCHEME_NAMES`) for ``settings``.

    - ``reference``: all patterns, N iterations (Fig. 5);
    - ``raster``: ``per_step`` patterns at a time in recorded (line) order,
      ``iterations_per_step`` passes per step, then the full set up to N (Fig. 6);
    - ``random``: the same in random order (Fig. 7);
    - ``spirangle``: the same along an inward square spiral (Fig. 8);
    - ``parallel``: ``subsets`` random disjoint subsets, ``iterations_per_step`` passes each,
      then averaged, up to N (Fig. 9);
    - ``parallel_live``: ``per_step`` patterns at a time in line order dealt round-robin to the
      subsets, ``iterations_per_step`` passes on each, averaged, up to N (Fig. 10);
    - ``overoptimization``: ``raster`` with ``overoptimization_iterations_per_step`` passes per
      step (Fig. 13).
    """
    s = settings if settings is not None else StudySettings()
    n, k, ips = s.iterations, s.per_step, s.iterations_per_step
    return (
        Recipe("reference", "Reference: all patterns", iterations=n, iterations_per_step=ips,
               figure="Fig. 5"),
        Recipe("raster", f"Raster: {k} patterns per step in line order", order="recorded",
               per_step=k, iterations_per_step=ips, iterations=n, figure="Fig. 6"),
        Recipe("random", f"Random: {k} patterns per step in random order", order="random",
               per_step=k, iterations_per_step=ips, iterations=n, figure="Fig. 7"),
        Recipe("spirangle", f"Spirangle: {k} patterns per step, inward square spiral",
               order="spirangle", per_step=k, iterations_per_step=ips, iterations=n,
               figure="Fig. 8"),
        Recipe("parallel", f"Parallel: {s.subsets} random subsets, averaged every {ips}",
               iterations_per_step=ips, iterations=n, subsets=s.subsets, dealing="random",
               figure="Fig. 9"),
        Recipe("parallel_live", f"Parallel live: {k} patterns per step round-robin to "
               f"{s.subsets} subsets", order="recorded", per_step=k, iterations_per_step=ips,
               iterations=n, subsets=s.subsets, dealing="round_robin", figure="Fig. 10"),
        Recipe("overoptimization", f"Over-optimisation: raster, "
               f"{s.overoptimization_iterations_per_step} iterations per step",
               order="recorded", per_step=k,
               iterations_per_step=s.overoptimization_iterations_per_step, iterations=n,
               figure="Fig. 13"),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# orders, steps and subsets


def _positions(positions: ArrayLike) -> NDArray[np.float64]:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
        raise ValueError(f"positions must have shape (n, 2) with n >= 1, got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contain NaN or infinite values")
    return pos


def spirangle_order(positions: ArrayLike) -> NDArray[np.int64]:
    """Indices of ``positions`` along an inward square spiral.

    Each position gets a square ring: its Chebyshev distance from the centre of the scan's
    bounding box, each axis scaled by the box's half-size (so a rectangular scan has
    rectangular rings), quantised into ``ceil(sqrt(n) / 2)`` rings (on an ``m x m`` grid that
    is one ring per grid ring). Rings are visited outermost first; within a ring by angle,
    counter-clockwise (rows pointing down, as displayed) from the ring's top-left corner, so
    consecutive positions walk round the ring.

    Parameters
    ----------
    positions : array_like, shape (n, 2)
        ``(row, col)`` in any unit.

    Returns
    -------
    ndarray of int64, shape (n,)
        A permutation of ``range(n)``.
    """
    pos = _positions(positions)
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    half = (hi - lo) / 2.0
    rel = (pos - (lo + hi) / 2.0) / np.where(half > 0, half, 1.0)
    cheb = np.max(np.abs(rel), axis=1)  # 0 at the centre, 1 on the box edge
    n_rings = max(1, math.ceil(math.sqrt(pos.shape[0]) / 2.0))
    ring = np.rint(cheb * (n_rings - 1)).astype(np.int64) if n_rings > 1 else np.zeros_like(cheb)
    # angle measured from the top-left corner direction (-1, -1), increasing down the left
    # edge first: atan2(col, row) grows from the left edge (col < 0) towards the bottom
    angle = np.mod(np.arctan2(-rel[:, 1], rel[:, 0]) - np.arctan2(1.0, -1.0), 2.0 * np.pi)
    return np.lexsort((angle, -ring)).astype(np.int64)


def arrival_order(positions: ArrayLike, order: str, *, seed: int = 0) -> NDArray[np.int64]:
    """Indices of the patterns in the order they arrive.

    Parameters
    ----------
    positions : array_like, shape (n, 2)
        Pattern positions, in the order stored.
    order : {"recorded", "random", "spirangle"}
        ``"recorded"``: as stored; ``"random"``: ``default_rng(seed).permutation(n)``;
        ``"spirangle"``: :func:`spirangle_order`.
    seed : int, optional

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    pos = _positions(positions)
    n = pos.shape[0]
    if order == "recorded":
        return np.arange(n, dtype=np.int64)
    if order == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    if order == "spirangle":
        return spirangle_order(pos)
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def batches(order: NDArray[np.int64], per_step: int | None) -> list[NDArray[np.int64]]:
    """``order`` cut into the arrivals of successive steps (all at once for None)."""
    if per_step is None:
        return [order]
    k = int(per_step)
    return [order[i : i + k] for i in range(0, order.size, k)]


def deal(recipe: Recipe, steps: list[NDArray[np.int64]], n: int, *, seed: int = 0) -> NDArray:
    """The subset of each pattern (``int64`` array of length ``n``, all 0 without subsets).

    ``"random"`` partitions ``default_rng(seed + 1).permutation(n)`` into ``recipe.subsets``
    parts of (nearly) equal size; ``"round_robin"`` gives the arrivals of step ``s`` to subset
    ``s % recipe.subsets``.
    """
    subset = np.zeros(n, dtype=np.int64)
    if recipe.subsets == 1:
        return subset
    if recipe.dealing == "random":
        perm = np.random.default_rng(seed + 1).permutation(n)
        for k, part in enumerate(np.array_split(perm, recipe.subsets)):
            subset[part] = k
        return subset
    for s, arrivals in enumerate(steps):
        subset[arrivals] = s % recipe.subsets
    return subset
