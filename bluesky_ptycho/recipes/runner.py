"""Play recipes through the engine and measure them against the reference.

:func:`run_study` runs the reference scheme first, then every other scheme, and measures each
record against the reference's final object: the relative object error in the scanned region
with the global complex factor and the shift removed
(:func:`~bluesky_ptycho.metrics.object_error`). A parallel scheme runs one
:class:`~bluesky_ptycho.engine.EPIE` per subset over the same object frame; synchronising
averages their objects and probes and hands the average back to every subset
(``set_object``, ``set_probe``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from bluesky_ptycho.engine import EPIE
from bluesky_ptycho.engine.parallel import average_states
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.metrics import illuminated_region, object_error
from bluesky_ptycho.probes import ProbeInit, make_start_probe
from bluesky_ptycho.recipes.data import StudyData
from bluesky_ptycho.recipes.schedule import (
    Recipe,
    StudySettings,
    arrival_order,
    batches,
    deal,
    study_recipes,
)

__all__ = [
    "RecipeRun",
    "Record",
    "Snapshot",
    "StudyResult",
    "average_objects",
    "first_fraction_below",
    "run_recipe",
    "run_study",
]

_AUTO_RETRY_UNTIL = 256  # patterns; as the engine's "auto" start


@dataclass(frozen=True)
class Record:
    """Where a scheme stood after one step.

    Attributes
    ----------
    fraction_of_scan : float
        Patterns arrived over all patterns.
    patterns : int
        Patterns arrived.
    iteration : int
        Passes done so far (per subset).
    error_to_reference : float
        Object error against the reference's final object over the region the whole scan lit
        (NaN until measured).
    error_in_scanned_region : float
        The same over the part of that region lit by the patterns arrived so far.
    """

    fraction_of_scan: float
    patterns: int
    iteration: int
    error_to_reference: float = float("nan")
    error_in_scanned_region: float = float("nan")


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Object and probe kept at one stage, for the figures and the HDF5 file."""

    stage: float
    fraction_of_scan: float
    patterns: int
    iteration: int
    object: NDArray[np.complex64]
    probe: NDArray[np.complex64]


@dataclass(eq=False)
class RecipeRun:
    """What one scheme did.

    Attributes
    ----------
    recipe : Recipe
    order : ndarray of int64
        Arrival order of the patterns.
    subset : ndarray of int64
        Subset of each pattern (all 0 for a sequential scheme).
    records : list of Record
        One per step.
    snapshots : list of Snapshot
        At the settings' stages and at the end.
    probe_origin : str
        How the starting probe was made.
    seconds : float
        Wall time of the run.
    """

    recipe: Recipe
    order: NDArray[np.int64]
    subset: NDArray[np.int64]
    records: list[Record] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    probe_origin: str = ""
    seconds: float = 0.0

    @property
    def final(self) -> Snapshot:
        """The last snapshot (the end of the run)."""
        return self.snapshots[-1]

    def series(self, name: str) -> NDArray[np.float64]:
        """One field of every record as an array (e.g. ``"error_to_reference"``)."""
        return np.asarray([getattr(r, name) for r in self.records], dtype=np.float64)

    @property
    def final_error(self) -> float:
        """Error to the reference at the end."""
        return float(self.records[-1].error_to_reference)


@dataclass(eq=False)
class StudyResult:
    """Every scheme of a study on one dataset.

    Attributes
    ----------
    data : StudyData
    settings : StudySettings
    runs : dict of str to RecipeRun
        By scheme name, the reference first.
    region : ndarray of bool
        The compared region (lit by the whole scan with the reference probe).
    """

    data: StudyData
    settings: StudySettings
    runs: dict[str, RecipeRun]
    region: NDArray[np.bool_]

    @property
    def reference(self) -> RecipeRun:
        """The reference run."""
        return self.runs["reference"]


# --------------------------------------------------------------------------------------------
# synchronisation


def average_objects(
    states: Sequence[ReconstructionState], *, weighting: str = "mean"
) -> tuple[NDArray[np.complex64], NDArray[np.complex64]]:
    """Average the objects and probes of subsets that reconstructed over one object frame.

    Parameters
    ----------
    states : sequence of ReconstructionState
        One per subset holding patterns; each state's ``positions_px`` are its subset's.
    weighting : {"mean", "illumination"}
        ``"mean"``: the study's plain mean of the objects and of the probes.
        ``"illumination"``: :func:`bluesky_ptycho.engine.parallel.average_states`, each object
        pixel weighted by how strongly each subset lit it and the probes by the patterns each
        subset holds (a subset says nothing about pixels it never lit, where the plain mean
        pulls the average back towards the start).

    Returns
    -------
    (object, probe) : complex64 arrays
    """
    if not states:
        raise ValueError("average_objects needs at least one state")
    if weighting == "illumination":
        return average_states(states)
    if weighting != "mean":
        raise ValueError(f"weighting must be 'mean' or 'illumination', got {weighting!r}")
    obj = np.mean([np.asarray(s.object, dtype=np.complex128) for s in states], axis=0)
    probe = np.mean([np.asarray(s.probe, dtype=np.complex128) for s in states], axis=0)
    return obj.astype(np.complex64), probe.astype(np.complex64)


# --------------------------------------------------------------------------------------------
# one recipe


class _Subsets:
    """The engines of one recipe (one per subset) and their shared start probe."""

    def __init__(self, recipe: Recipe, data: StudyData, settings: StudySettings) -> None:
        self.recipe = recipe
        self.data = data
        self.settings = settings
        opts = settings.engine_options()
        n = data.frame_size
        self.engines = [
            EPIE(
                data.object_shape,
                probe=settings.probe if recipe.subsets == 1 else None,
                options=replace(opts, seed=int(settings.seed) + k),
                probe_shape=(n, n),
            )
            for k in range(recipe.subsets)
        ]
        self.held: list[list[int]] = [[] for _ in range(recipe.subsets)]
        self._origin = ""
        self._tried_at = 0

    @property
    def probe_origin(self) -> str:
        if self.recipe.subsets == 1:
            return self.engines[0].probe_origin
        return self._origin

    def add(self, indices: NDArray[np.int64], subset: NDArray[np.int64]) -> None:
        d = self.data
        for k, engine in enumerate(self.engines):
            mine = indices[subset[indices] == k]
            if mine.size:
                engine.add(d.intensities[mine], d.positions_px[mine], d.mask)
                self.held[k].extend(int(j) for j in mine)
        if self.recipe.subsets > 1:
            self._start_probe()

    def _start_probe(self) -> None:
        """One start probe for every subset, made from all patterns arrived so far.

        As the engine's own ``"auto"`` start: a Gaussian fallback is retried whenever the
        patterns arrived have doubled (up to 256), and a successful retry restarts every
        subset from the new probe and an object of ones.
        """
        arrived = np.asarray(sorted(j for h in self.held for j in h), dtype=np.int64)
        n = arrived.size
        retry = (
            self.settings.probe == "auto"
            and self._origin.startswith("gaussian")
            and n >= 2 * self._tried_at
            and self._tried_at < _AUTO_RETRY_UNTIL
        )
        if self._origin and not retry:
            return
        take = arrived if n <= 256 else arrived[np.linspace(0, n - 1, 256).astype(np.int64)]
        probe, origin = make_start_probe(
            ProbeInit(kind=self.settings.probe),
            self.data.intensities[take],
            self.data.positions_px[take],
            fwhm_fraction=self.settings.options.probe_fwhm_fraction,
        )
        self._tried_at = n
        if self._origin and origin.startswith("gaussian"):
            return  # the retry fell back again: keep going from the current state
        ones = np.ones(self.data.object_shape, dtype=np.complex64)
        for engine in self.engines:
            engine.set_probe(probe)
            engine.set_object(ones)
        self._origin = origin if not self._origin else f"{origin} (restarted at {n} patterns)"

    def iterate(self, passes: int) -> None:
        for engine in self.engines:
            if engine.n_patterns:
                engine.iterate(passes)

    def synchronise(self) -> None:
        if self.recipe.subsets == 1:
            return
        active = [k for k, e in enumerate(self.engines) if e.n_patterns]
        states = [self.engines[k].state(validation=False) for k in active]
        obj, probe = average_objects(states, weighting=self.settings.averaging)
        for engine in self.engines:
            engine.set_object(obj)
            engine.set_probe(probe)

    def current(self) -> tuple[NDArray[np.complex64], NDArray[np.complex64]]:
        """Object and probe of the scheme now (after a synchronisation they agree)."""
        for engine in self.engines:
            if engine.n_patterns:
                st = engine.state(validation=False)
                return st.object.copy(), st.probe.copy()
        raise RuntimeError("no subset holds patterns yet")


def _stage_hits(stages: Sequence[float], done: set[float], progress: float) -> list[float]:
    hits = [s for s in sorted(stages) if s not in done and progress >= s - 1e-12]
    done.update(hits)
    return hits


def run_recipe(
    recipe: Recipe,
    data: StudyData,
    settings: StudySettings | None = None,
    *,
    measure: Callable[[NDArray[np.complex64], NDArray[np.int64]], tuple[float, float]]
    | None = None,
    keep: Callable[[NDArray[np.complex64]], None] | None = None,
    progress: Callable[[RecipeRun, Record], None] | None = None,
) -> RecipeRun:
    """Play one recipe through the engine.

    Parameters
    ----------
    recipe : Recipe
    data : StudyData
    settings : StudySettings, optional
        Probe start, engine options, averaging, seed and stages (default ``StudySettings()``).
    measure : callable(object, arrived_indices) -> (error, error_in_scanned_region), optional
        Called after every step; its values go into the records (NaN without it).
    keep : callable(object), optional
        Called with the object after every step (the reference keeps them to be measured
        against its own end).
    progress : callable(run, record), optional
        Called after every record.

    Returns
    -------
    RecipeRun
    """
    import time

    s = settings if settings is not None else StudySettings()
    n = data.n_patterns
    order = arrival_order(data.positions_px, recipe.order, seed=s.seed)
    steps = batches(order, recipe.per_step)
    subset = deal(recipe, steps, n, seed=s.seed)
    run = RecipeRun(recipe=recipe, order=order, subset=subset)
    engines = _Subsets(recipe, data, s)
    t0 = time.perf_counter()
    done_stages: set[float] = set()
    arrived = 0
    passes = 0
    step = 0
    while True:
        if step < len(steps):
            engines.add(steps[step], subset)
            arrived += int(steps[step].size)
            # every arrival has its passes (the study's protocol), an offline start runs N
            chunk = recipe.iterations_per_step
            if not recipe.live:
                chunk = min(chunk, recipe.iterations)
        elif passes < recipe.iterations:
            chunk = min(recipe.iterations_per_step, recipe.iterations - passes)
        else:
            break
        step += 1
        engines.iterate(chunk)
        engines.synchronise()
        passes += chunk
        obj, probe = engines.current()
        error, scanned = (
            measure(obj, order[:arrived]) if measure is not None else (math.nan, math.nan)
        )
        if keep is not None:
            keep(obj)
        record = Record(arrived / n, arrived, passes, error, scanned)
        run.records.append(record)
        stage_progress = arrived / n if recipe.live else passes / recipe.iterations
        for stage in _stage_hits(s.stages, done_stages, stage_progress):
            run.snapshots.append(Snapshot(stage, arrived / n, arrived, passes, obj, probe))
        if progress is not None:
            progress(run, record)
    obj, probe = engines.current()
    run.snapshots.append(Snapshot(math.inf, arrived / n, arrived, passes, obj, probe))
    run.probe_origin = engines.probe_origin
    run.seconds = time.perf_counter() - t0
    return run


# --------------------------------------------------------------------------------------------
# a study


def run_study(
    data: StudyData,
    settings: StudySettings | None = None,
    *,
    schemes: Sequence[str] | None = None,
    recipes: Sequence[Recipe] | None = None,
    progress: Callable[[RecipeRun, Record], None] | None = None,
) -> StudyResult:
    """Run the reference and the chosen schemes on ``data`` and measure them.

    Parameters
    ----------
    data : StudyData
    settings : StudySettings, optional
    schemes : sequence of str, optional
        Names of the schemes to run besides the reference (default: all of
        :func:`~bluesky_ptycho.recipes.schedule.study_recipes`).
    recipes : sequence of Recipe, optional
        Recipes to use instead of :func:`study_recipes`; must include one named
        ``"reference"``.
    progress : callable(run, record), optional

    Returns
    -------
    StudyResult
        Every record measured against the reference's final object; the reference's own
        last error is 0 by definition.
    """
    s = settings if settings is not None else StudySettings()
    available = {r.name: r for r in (recipes if recipes is not None else study_recipes(s))}
    if "reference" not in available:
        raise ValueError("the recipes need one named 'reference'")
    wanted = list(schemes) if schemes is not None else [k for k in available if k != "reference"]
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ValueError(f"unknown scheme(s) {unknown}; known: {sorted(available)}")

    kept: list[NDArray[np.complex64]] = []
    reference = run_recipe(available["reference"], data, s, keep=kept.append, progress=progress)
    ref_obj, ref_probe = reference.final.object, reference.final.probe
    region = illuminated_region(
        ref_probe, data.positions_px, data.object_shape, threshold=s.region_threshold
    )
    frame = data.object_shape

    def measure(obj: NDArray[np.complex64], arrived: NDArray[np.int64]) -> tuple[float, float]:
        whole = object_error(obj, ref_obj, region=region)
        if arrived.size == data.n_patterns:
            return whole, whole
        lit = region & illuminated_region(
            ref_probe, data.positions_px[arrived], frame, threshold=s.region_threshold
        )
        part = object_error(obj, ref_obj, region=lit) if lit.any() else math.nan
        return whole, part

    arrived_all = np.arange(data.n_patterns, dtype=np.int64)
    measured = []
    for i, (rec, obj) in enumerate(zip(reference.records, kept, strict=True)):
        err = 0.0 if i == len(kept) - 1 else measure(obj, arrived_all)[0]
        measured.append(replace(rec, error_to_reference=err, error_in_scanned_region=err))
    reference.records = measured
    runs = {"reference": reference}
    for name in wanted:
        runs[name] = run_recipe(available[name], data, s, measure=measure, progress=progress)
    return StudyResult(data=data, settings=s, runs=runs, region=region)


def first_fraction_below(run: RecipeRun, factor: float = 2.0, *, field: str = "") -> float:
    """Fraction of the scan at which the error first falls below ``factor`` x its final value.

    Parameters
    ----------
    run : RecipeRun
    factor : float
        Default 2 (the benchmark's "twice its final value").
    field : str
        ``"error_in_scanned_region"`` (default) or ``"error_to_reference"``.

    Returns
    -------
    float
        NaN when the final error is 0 (the reference) or not finite.
    """
    name = field or "error_in_scanned_region"
    errors = run.series(name)
    fractions = run.series("fraction_of_scan")
    final = float(errors[-1]) if errors.size else math.nan
    if not (math.isfinite(final) and final > 0):
        return math.nan
    below = np.flatnonzero(errors <= factor * final)
    return float(fractions[below[0]]) if below.size else math.nan
