"""Convergence: starting probes, convergence aids and live pacing, measured and simulated.

Prints markdown tables (and the command line used) for three questions:

1. **Starting probes.** ``auto``, ``gaussian``, ``mean_pattern`` (defocus estimated from the
   shadow images), ``optics`` (a rough pupil: the bright-field radius +20 % and the nominal
   defocus -20 %) and the supplied (measured data) or true (simulation) probe, on the measured
   Siemens star and on simulations with a structured (defocused, ring-and-fringes) probe in
   four scan patterns. Object error after 10, 25 and 50 passes, and the pass at which the run
   was "recognised" by the validation signal (``validation_ratio < SIGNAL_FOUND``, 0.6) and
   by the truth (object error below 1.5 times the supplied/true-probe run's final error), so
   the reader sees whether the signal agreed with the truth.
2. **Aids.** Each aid toggled from the default ``EPIEOptions`` (and ``EPIEOptions.study()``),
   on the star (auto probe) and on one simulation: object error at 25, 50 and 100 passes and
   the cost per pass relative to plain ePIE (``EPIEOptions.study()`` from the supplied/true
   probe) timed in the same run; plus a long run (300 passes over the first half of the star)
   that shows what the object-amplitude bound prevents.
3. **Live.** The star delivered in recorded order at 25 frames/s into
   ``LiveReconstruction`` (default options, capped pacing, study-like), blind and from the
   supplied probe, and the simulated structured probe on a Fermat spiral at 40 frames/s:
   object error in the region covered so far and the validation ratio at 25 %, 50 % and 100 %
   of the scan (100 % after ``finish(20)``).

Object errors are :func:`bluesky_ptycho.metrics.object_error` (translation and complex factor
removed). On the star the truth is a reference: ePIE from the supplied probe,
``EPIEOptions.study()`` (another shuffling seed than the runs'), 40 passes, compared over
``illuminated_region(ref.probe, positions, shape, 0.3)``; there an object of ones scores about
0.35 and a failed blind ePIE 0.36-0.42; two references of different seeds differ by 0.07. On
the simulations the truth is the simulated object over the region the true probe lit (same
threshold).

    python benchmarks/convergence.py [--quick | --full] [--sections 1 2 3]

``--quick`` (the default) takes about 5-6 minutes on 2 cores; ``--full`` uses three simulation
seeds, 100 passes in section 1, 200 in section 2 and live runs of every seed (not timed; expect
about twice as long).
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import io
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bluesky_ptycho.engine import EPIE
from bluesky_ptycho.engine.epie import EPIEOptions, scale_probe
from bluesky_ptycho.engine.state import SIGNAL_FOUND, ReconstructionState
from bluesky_ptycho.live import LiveOptions, LiveReconstruction, PacingPolicy
from bluesky_ptycho.metrics import illuminated_region, object_error
from bluesky_ptycho.probes import (
    ProbeInit,
    bright_field,
    curvature_from_defocus,
    estimate_defocus,
)
from bluesky_ptycho.simulate import SimulationPreset, simulate_dataset, small_preset

STAR_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STAR_FILE = STAR_PATH / "siemens-star-small.npz.bz2"

#: Defocus of the structured-probe simulations: the small preset's 80 nm focus seen 800 µm
#: downstream is a ring with fringes inside, about 24 px across (90 % of the intensity) in the
#: 64 px frame, instead of the preset's 600 µm spot-in-a-ring of about 12 px.
STRUCTURED_DEFOCUS_M = 800e-6
SIM_PATTERNS = ("fermat", "spirangle", "raster", "random")

#: "Recognised" thresholds: the validation signal, and the truth relative to the run from the
#: supplied (or true) probe.
SIGNAL_RATIO = SIGNAL_FOUND
TRUTH_FACTOR = 1.5

#: How rough the "optics" start is: pupil radius and pupil curvature (defocus) scaled by these.
ROUGH_RADIUS = 1.2
ROUGH_CURVATURE = 0.8

VALIDATION_EVERY = 25
REFERENCE_PASSES = 40
#: The reference's shuffling seed differs from the runs' (seed 0): with the same seed the runs
#: visit the patterns in the reference's order, and at pass 40 their error against it drops
#: from 0.071 to 0.046 (measured), a coincidence of the last passes' noise, not a convergence.
REFERENCE_SEED = 20


# ------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Config:
    """Sizes of a run.

    Attributes
    ----------
    seeds : tuple of int
        Simulation seeds (object, noise, scan order of ``random``).
    start_passes : tuple of int
        Checkpoints of section 1; the last is the run length.
    aid_passes : tuple of int
        Checkpoints of section 2; the last is the run length.
    long_patterns, long_passes : int
        Patterns of the star and passes of the long run of section 2 (0 passes: none).
    long_rows : tuple of str
        Variants of the long run (names of :func:`aid_variants`).
    star_rate_hz, sim_rate_hz : float
        Live delivery rates of section 3.
    cost_rounds : int
        Timed passes per row for the cost column of section 2.
    final_passes : int
        Passes of ``finish`` in section 3.
    live_sim_seeds : tuple of int
        Seeds of the live simulation runs.
    """

    seeds: tuple[int, ...] = (0,)
    start_passes: tuple[int, ...] = (10, 25, 50)
    aid_passes: tuple[int, ...] = (25, 50, 100)
    long_patterns: int = 258
    long_passes: int = 300
    long_rows: tuple[str, ...] = ("default", "object_amplitude_max None", "study()")
    star_rate_hz: float = 25.0
    sim_rate_hz: float = 40.0
    cost_rounds: int = 7
    final_passes: int = 20
    live_sim_seeds: tuple[int, ...] = (0,)


QUICK = Config()
FULL = Config(
    seeds=(0, 1, 2),
    start_passes=(10, 25, 50, 100),
    aid_passes=(25, 50, 100, 200),
    live_sim_seeds=(0, 1, 2),
)


# ------------------------------------------------------------------------------------ datasets
@dataclass
class Dataset:
    """A scan with what it is judged against.

    Attributes
    ----------
    name : str
        Row label.
    frames : ndarray (n, N, N)
        Counts, zero frequency at ``N // 2``.
    positions : ndarray (n, 2)
        Top-left patch corners in object pixels.
    object_shape : (int, int)
    truth : ndarray
        The object errors are measured against (reference or simulated object).
    region : ndarray of bool
        Pixels compared.
    probe : ndarray
        Supplied (star) or true (simulation) probe, scaled to the counts.
    probe_label : str
        ``"supplied"`` or ``"true"``.
    optics : ProbeInit
        The rough optics start.
    notes : list of str
        What the reader should know (reference quality, optics numbers).
    """

    name: str
    frames: np.ndarray
    positions: np.ndarray
    object_shape: tuple[int, int]
    truth: np.ndarray
    region: np.ndarray
    probe: np.ndarray
    probe_label: str
    optics: ProbeInit
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of patterns."""
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Frame (probe) shape."""
        return (int(self.frames.shape[1]), int(self.frames.shape[2]))


def bright_field_radius(frames: np.ndarray) -> float:
    """Radius in pixels of the disc with the area of the mean pattern's bright field."""
    _, disc = bright_field(frames)
    return math.sqrt(float(disc.sum()) / math.pi)


def rough_optics(frames: np.ndarray, curvature: float) -> ProbeInit:
    """The ``"optics"`` start: bright-field radius and ``curvature``, both deliberately off."""
    return ProbeInit(
        kind="optics",
        pupil_radius_px=ROUGH_RADIUS * bright_field_radius(frames),
        curvature=ROUGH_CURVATURE * curvature,
    )


def load_star(path: Path) -> Dataset:
    """The measured Siemens star with its reference reconstruction.

    Parameters
    ----------
    path : Path
        ``siemens-star-small.npz.bz2``.

    Returns
    -------
    Dataset
        Truth: ePIE from the supplied probe, ``EPIEOptions.study()``, 40 passes (shuffling
        seed :data:`REFERENCE_SEED`).
    """
    with bz2.open(path) as fh:
        d = np.load(io.BytesIO(fh.read()))
        data, scan, supplied = d["data"], d["scan"], d["probe"]
    frames = np.ascontiguousarray(np.fft.fftshift(data[0], axes=(-2, -1)), dtype=np.float32)
    pos = scan[0].astype(np.float64)
    pos = pos - pos.min(axis=0) + 4.0
    n = frames.shape[-1]
    shape = tuple(int(v) for v in np.ceil(pos.max(axis=0)) + n + 6)
    probe = scale_probe(supplied[0, 0, 0, 0], frames)
    t0 = time.perf_counter()
    ref_engine = EPIE(shape, probe=probe, options=EPIEOptions.study(seed=REFERENCE_SEED))
    ref_engine.add(frames, pos)
    ref_engine.iterate(REFERENCE_PASSES)
    ref = ref_engine.state()
    region = illuminated_region(ref.probe, pos, shape, threshold=0.3)
    est = estimate_defocus(frames, pos)
    optics = rough_optics(frames, est.curvature)
    notes = [
        f"star: {frames.shape[0]} patterns of {n} px, object {shape[0]} x {shape[1]}; reference "
        f"= ePIE from the supplied probe, study(seed={REFERENCE_SEED}), {REFERENCE_PASSES} passes "
        f"({time.perf_counter() - t0:.1f} s, final Fourier error {ref.fourier_error[-1]:.4f}); "
        f"region {int(region.sum())} px",
        f"star optics start: pupil radius {optics.pupil_radius_px:.1f} px "
        f"({ROUGH_RADIUS:g} x bright field {bright_field_radius(frames):.1f} px), curvature "
        f"{optics.curvature:.4f} ({ROUGH_CURVATURE:g} x the shadow-image estimate "
        f"{est.curvature:.4f}; the star has no recorded optics)",
    ]
    return Dataset(
        name="star",
        frames=frames,
        positions=pos,
        object_shape=(shape[0], shape[1]),
        truth=ref.object,
        region=region,
        probe=probe,
        probe_label="supplied",
        optics=optics,
        notes=notes,
    )


def structured_preset(pattern: str, seed: int = 0) -> SimulationPreset:
    """The small preset with a structured (defocused) probe and the given scan pattern."""
    return replace(small_preset(), defocus_m=STRUCTURED_DEFOCUS_M, pattern=pattern, seed=seed)


def load_simulation(pattern: str, seed: int = 0) -> Dataset:
    """A simulated scan of the structured probe.

    Parameters
    ----------
    pattern : str
        ``"fermat"``, ``"spirangle"``, ``"raster"`` or ``"random"``.
    seed : int
        Simulation seed.

    Returns
    -------
    Dataset
        Truth: the simulated object; rough optics from the nominal defocus.
    """
    preset = structured_preset(pattern, seed)
    ds = simulate_dataset(preset)
    geom = ds.geometry
    nominal = curvature_from_defocus(
        preset.defocus_m, geom.wavelength_m, geom.detector_distance_m, geom.detector_pixel_m
    )
    frames = np.ascontiguousarray(ds.intensities, dtype=np.float32)
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    optics = rough_optics(frames, nominal)
    name = f"sim {pattern}" + (f" s{seed}" if seed else "")
    notes = [
        f"{name}: {ds.n_patterns} patterns of {preset.shape} px, object "
        f"{ds.object.shape[0]} x {ds.object.shape[1]}, defocus {preset.defocus_m * 1e6:.0f} µm "
        f"(probe {probe_diameter(ds.probe):.0f} px across, 90 % of the intensity); optics start: "
        f"pupil {optics.pupil_radius_px:.1f} px, curvature {optics.curvature:.4f} "
        f"(nominal {nominal:.4f})"
    ]
    return Dataset(
        name=name,
        frames=frames,
        positions=np.asarray(ds.positions_px, dtype=np.float64),
        object_shape=(int(ds.object.shape[0]), int(ds.object.shape[1])),
        truth=ds.object,
        region=region,
        probe=np.asarray(ds.probe, dtype=np.complex64),
        probe_label="true",
        optics=optics,
        notes=notes,
    )


def probe_diameter(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter in pixels of the centred disc holding ``fraction`` of the probe's intensity."""
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    intensity /= intensity.sum()
    rows, cols = np.indices(intensity.shape)
    cy, cx = float((intensity * rows).sum()), float((intensity * cols).sum())
    r = np.hypot(rows - cy, cols - cx).ravel()
    order = np.argsort(r)
    k = int(np.searchsorted(np.cumsum(intensity.ravel()[order]), fraction))
    return 2.0 * float(r[order][min(k, r.size - 1)])


def start_probes(ds: Dataset) -> dict[str, Any]:
    """The starting probes of section 1, by row label (the supplied/true probe last)."""
    return {
        "auto": "auto",
        "gaussian": "gaussian",
        "mean_pattern": ProbeInit(kind="mean_pattern"),
        "optics (rough)": ds.optics,
        ds.probe_label: ds.probe,
    }


# ----------------------------------------------------------------------------- measurements
def safe_error(obj: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Object error, ``inf`` for an object that is no longer finite."""
    if not np.all(np.isfinite(obj)):
        return math.inf
    with np.errstate(all="ignore"):
        err = object_error(obj, truth, region=region)
    return err if math.isfinite(err) else math.inf


@dataclass
class Track:
    """What one offline run measured.

    Attributes
    ----------
    origin : str
        ``engine.probe_origin``.
    errors, ratios : dict
        Object error and validation ratio by completed pass.
    fourier : ndarray
        Fourier error of every pass.
    final : ndarray
        The object after the last pass.
    """

    origin: str
    errors: dict[int, float]
    ratios: dict[int, float]
    fourier: np.ndarray
    final: np.ndarray


def run_offline(
    ds: Dataset,
    probe: Any,
    options: EPIEOptions,
    passes: int,
    checkpoints: Sequence[int] | None = None,
    *,
    n_patterns: int | None = None,
    region: np.ndarray | None = None,
) -> Track:
    """Run ePIE pass by pass, measuring at ``checkpoints`` (every pass when None).

    Parameters
    ----------
    ds : Dataset
    probe : array, str or ProbeInit
        The start, as :class:`~bluesky_ptycho.engine.EPIE` takes it.
    options : EPIEOptions
    passes : int
    checkpoints : sequence of int, optional
        Passes after which object error and validation ratio are measured.
    n_patterns : int, optional
        Use only the first patterns.
    region : ndarray of bool, optional
        Pixels compared (default ``ds.region``).

    Returns
    -------
    Track
    """
    n = ds.n if n_patterns is None else int(n_patterns)
    engine = EPIE(ds.object_shape, probe=probe, options=options, probe_shape=ds.frame_shape)
    engine.add(ds.frames[:n], ds.positions[:n])
    marks = set(range(1, passes + 1)) if checkpoints is None else set(checkpoints)
    reg = ds.region if region is None else region
    errors: dict[int, float] = {}
    ratios: dict[int, float] = {}
    for p in range(1, passes + 1):
        engine.iterate(1)
        if p in marks:
            st = engine.state()
            errors[p] = safe_error(st.object, ds.truth, reg)
            ratios[p] = st.validation_ratio
    st = engine.state()
    return Track(engine.probe_origin, errors, ratios, st.fourier_error, st.object)


def pass_costs(
    ds: Dataset, runs: dict[str, tuple[Any, EPIEOptions]], *, warmup: int = 2, rounds: int = 7
) -> dict[str, float]:
    """Seconds per pass of each run, timed in interleaved rounds.

    Every run gets its own engine, ``warmup`` untimed passes (the first makes the starting
    probe), then one timed pass per round, the runs taking turns, so that a change of the
    machine's load affects all of them alike.

    Parameters
    ----------
    ds : Dataset
    runs : dict
        ``name -> (start, options)``.
    warmup, rounds : int

    Returns
    -------
    dict
        ``name -> median seconds per pass``.
    """
    engines = {}
    for name, (start, options) in runs.items():
        engine = EPIE(ds.object_shape, probe=start, options=options, probe_shape=ds.frame_shape)
        engine.add(ds.frames, ds.positions)
        engine.iterate(warmup)
        engines[name] = engine
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.iterate(1)
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def first_pass(values: dict[int, float], below: float) -> int | None:
    """The first pass whose value is below ``below`` (None if none)."""
    for p in sorted(values):
        v = values[p]
        if math.isfinite(v) and v < below:
            return p
    return None


def stays_below_from(values: dict[int, float], below: float) -> int | None:
    """The first pass from which every value to the end of the run is below ``below``."""
    start = None
    for p in sorted(values):
        v = values[p]
        if math.isfinite(v) and v < below:
            start = p if start is None else start
        else:
            start = None
    return start


def agreement(signal: int | None, truth: int | None) -> str:
    """Whether the validation signal recognised the run when the truth did."""
    if signal is None and truth is None:
        return "yes (neither)"
    if signal is None:
        return "no: signal missed"
    if truth is None:
        return "no: false signal"
    tol = max(2, round(0.25 * truth))
    if abs(signal - truth) <= tol:
        return "yes"
    return f"signal {'early' if signal < truth else 'late'} by {abs(signal - truth)}"


# ---------------------------------------------------------------------------------- printing
def fmt(value: float, digits: int = 3) -> str:
    """A number for a table cell (``-`` for NaN, ``inf`` for a blow-up)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 1e4:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def fmt_pass(p: int | None, passes: int) -> str:
    """A pass number, or ``>passes`` when it never happened."""
    return f">{passes}" if p is None else str(p)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short_origin(origin: str) -> str:
    """``probe_origin`` without its parenthesised details."""
    head = origin.split(" (")[0]
    if "restarted" in origin:
        head += " (restarted)"
    return head


def say(text: str = "") -> None:
    """Print and flush (the tables appear as each section ends)."""
    print(text, flush=True)


# ------------------------------------------------------------------------- section 1: probes
def section_starts(datasets: Sequence[Dataset], cfg: Config) -> None:
    """Section 1: starting probes x datasets."""
    passes = max(cfg.start_passes)
    options = EPIEOptions(validation_every=VALIDATION_EVERY)
    rows = []
    t0 = time.perf_counter()
    for ds in datasets:
        starts = start_probes(ds)
        tracks = {label: run_offline(ds, p, options, passes) for label, p in starts.items()}
        ref_final = tracks[ds.probe_label].errors[passes]
        threshold = TRUTH_FACTOR * ref_final
        for label, tr in tracks.items():
            first = first_pass(tr.ratios, SIGNAL_RATIO)
            signal = stays_below_from(tr.ratios, SIGNAL_RATIO)
            truth = first_pass(tr.errors, threshold)
            rows.append(
                [
                    ds.name,
                    label,
                    short_origin(tr.origin),
                    *(fmt(tr.errors[p]) for p in cfg.start_passes),
                    fmt(max(tr.ratios.values()), 2),
                    fmt(tr.ratios[passes], 2),
                    fmt_pass(first, passes),
                    fmt_pass(signal, passes),
                    fmt_pass(truth, passes),
                    agreement(signal, truth),
                ]
            )
    say(f"## 1. Starting probes ({time.perf_counter() - t0:.0f} s)")
    say()
    say(
        f"Default `EPIEOptions(validation_every={VALIDATION_EVERY})`, {passes} passes. Signal: "
        f"the first pass with validation_ratio < {SIGNAL_RATIO}, and the first pass from which "
        f"it stays below {SIGNAL_RATIO} to the end of the run (the ratio: held-out error over "
        "the mean pattern's error on the same patterns). Truth: the first pass with object "
        "error < "
        f"{TRUTH_FACTOR} x the final error of the run from the supplied/true probe on the same "
        f"dataset. 'agree' compares the sustained signal with the truth (within 2 passes or "
        f"25 %). '>{passes}': not within the run."
    )
    say()
    headers = [
        "dataset",
        "start",
        "probe made",
        *(f"err @{p}" for p in cfg.start_passes),
        "max ratio",
        f"ratio @{passes}",
        "signal: first",
        "signal: stays",
        "truth",
        "agree",
    ]
    say(table(headers, rows))
    say()


# --------------------------------------------------------------------------- section 2: aids
def aid_variants() -> dict[str, EPIEOptions]:
    """The options of section 2, by row label: each aid toggled from the default."""
    base = EPIEOptions(validation_every=VALIDATION_EVERY)
    return {
        "default": base,
        "probe_power off": replace(base, probe_power=False),
        "probe_centre off": replace(base, probe_centre=False),
        "probe_support 0.8": replace(base, probe_support=0.8),
        "object_amplitude_max None": replace(base, object_amplitude_max=None),
        "probe_update_start 5": replace(base, probe_update_start=5),
        "algorithm rpie": replace(base, algorithm="rpie"),
        "algorithm mpie": replace(base, algorithm="mpie"),
        "study()": EPIEOptions.study(validation_every=VALIDATION_EVERY),
    }


def section_aids(star: Dataset | None, sim: Dataset | None, sim_start: str, cfg: Config) -> None:
    """Section 2: convergence aids, cost per pass, and the long run on half the star."""
    passes = max(cfg.aid_passes)
    variants = aid_variants()
    rows = []
    t0 = time.perf_counter()
    cases: list[tuple[Dataset, Any, str]] = []
    if star is not None:
        cases.append((star, "auto", "auto"))
    if sim is not None:
        start: Any = sim.optics if sim_start == "optics" else sim_start
        cases.append((sim, start, sim_start))
    for ds, start, start_label in cases:
        runs: dict[str, tuple[Any, EPIEOptions]] = {
            name: (start, opts) for name, opts in variants.items()
        }
        baseline = f"study(), {ds.probe_label} probe (cost baseline)"
        runs[baseline] = (ds.probe, EPIEOptions.study(validation_every=VALIDATION_EVERY))
        tracks = {
            name: run_offline(ds, start, opts, passes, cfg.aid_passes)
            for name, (start, opts) in runs.items()
        }
        costs = pass_costs(ds, runs, rounds=cfg.cost_rounds)
        for name, tr in tracks.items():
            with np.errstate(all="ignore"):
                deramped = (
                    object_error(tr.final, ds.truth, region=ds.region, remove_ramp=True)
                    if np.all(np.isfinite(tr.final))
                    else math.inf
                )
            rows.append(
                [
                    ds.name,
                    ds.probe_label if name == baseline else start_label,
                    name,
                    *(fmt(tr.errors[p]) for p in cfg.aid_passes),
                    fmt(deramped),
                    fmt(tr.ratios[passes], 2),
                    fmt(float(np.max(tr.fourier)), 4),
                    f"{costs[name] * 1e3:.1f}",
                    f"{costs[name] / costs[baseline]:.2f}",
                ]
            )
    say(f"## 2. Convergence aids ({time.perf_counter() - t0:.0f} s)")
    say()
    say(
        "Each aid toggled from the default `EPIEOptions(validation_every=25)`; `study()` is "
        "plain ePIE with every aid off. 'ramp removed': the last error again with a linear "
        "phase ramp removed as well (object and probe can trade one). Cost: median wall time "
        f"of a pass over {cfg.cost_rounds} rounds in which all the rows of a dataset take "
        "turns (after 2 untimed passes), relative to `EPIEOptions.study()` from the "
        "supplied/true probe."
    )
    say()
    headers = [
        "dataset",
        "start",
        "options",
        *(f"err @{p}" for p in cfg.aid_passes),
        f"@{passes} ramp removed",
        f"ratio @{passes}",
        "max Fourier err",
        "ms/pass",
        "cost vs plain",
    ]
    say(table(headers, rows))
    say()
    if star is not None and cfg.long_passes > 0:
        section_long_run(star, cfg)


def section_long_run(star: Dataset, cfg: Config) -> None:
    """Section 2b: many passes over the first half of the star (the object-amplitude bound)."""
    n = min(cfg.long_patterns, star.n)
    passes = cfg.long_passes
    marks = sorted({p for p in (25, 50, 100, 150, 200, 250, 300, passes) if p <= passes})
    region = star.region & covered_region(star.positions[:n], star.object_shape, star.frame_shape)
    variants = aid_variants()
    rows = []
    t0 = time.perf_counter()
    for name in cfg.long_rows:
        tr = run_offline(star, "auto", variants[name], passes, marks, n_patterns=n, region=region)
        fourier = tr.fourier
        finite = fourier[np.isfinite(fourier)]
        floor = float(np.min(finite)) if finite.size else math.nan
        blown = np.flatnonzero(~np.isfinite(fourier) | (fourier > 10.0 * floor))
        rows.append(
            [
                name,
                *(fmt(tr.errors[p]) for p in marks),
                fmt(floor, 4),
                fmt(float(np.max(fourier)) if fourier.size else math.nan, 4),
                str(int(blown[0]) + 1) if blown.size else "-",
            ]
        )
    say(
        f"### 2b. Long run: first {n} star patterns, auto probe, {passes} passes "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    say()
    say(
        "Object error against the full-scan reference over the central half of each patch of "
        "the half scan; 'blow-up pass': first pass with a Fourier error above 10 x the run's "
        "lowest."
    )
    say()
    headers = [
        "options",
        *(f"err @{p}" for p in marks),
        "min Fourier err",
        "max Fourier err",
        "blow-up pass",
    ]
    say(table(headers, rows))
    say()


# --------------------------------------------------------------------------- section 3: live
def covered_region(
    positions: np.ndarray, object_shape: tuple[int, int], frame_shape: tuple[int, int]
) -> np.ndarray:
    """The central half (each axis) of every patch at ``positions``: the well-lit footprint."""
    mask = np.zeros(object_shape, dtype=bool)
    n0, n1 = frame_shape
    q0, q1 = n0 // 4, n1 // 4
    for r, c in np.floor(np.asarray(positions) + 0.5).astype(int).tolist():
        mask[r + q0 : r + n0 - q0, c + q1 : c + n1 - q1] = True
    return mask


@dataclass
class LiveRun:
    """What one live run measured.

    Attributes
    ----------
    marks : list of (int, ReconstructionState)
        Patterns submitted and the state read right after.
    final : ReconstructionState
        After ``finish``.
    phase : str
        The final phase.
    finish_s : float
        Wall time from ``finish`` to the end.
    origin : str
        How the engine made its starting probe.
    """

    marks: list[tuple[int, ReconstructionState]]
    final: ReconstructionState
    phase: str
    finish_s: float
    origin: str


def run_live(
    ds: Dataset,
    probe: np.ndarray | None,
    options: LiveOptions,
    rate_hz: float,
    final_passes: int,
    fractions: Sequence[float] = (0.25, 0.5),
) -> LiveRun:
    """Deliver ``ds`` in recorded order at ``rate_hz`` into a LiveReconstruction.

    Parameters
    ----------
    ds : Dataset
    probe : ndarray or None
        Starting probe (None: the engine's auto start).
    options : LiveOptions
    rate_hz : float
        Frames per second.
    final_passes : int
        Passes of ``finish``.
    fractions : sequence of float
        Fractions of the scan after which the state is read.

    Returns
    -------
    LiveRun
    """
    live = LiveReconstruction(
        ds.object_shape, ds.frame_shape, expected_patterns=ds.n, probe=probe, options=options
    )
    stops = {max(1, math.ceil(f * ds.n)) for f in fractions}
    marks: list[tuple[int, ReconstructionState]] = []
    live.start()
    t0 = time.perf_counter()
    for k in range(ds.n):
        delay = t0 + k / rate_hz - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        live.submit(ds.frames[k], ds.positions[k])
        if k + 1 in stops:
            time.sleep(0.25)  # the snapshot after this frame (publish_period_s 0.1)
            snap = live.latest()
            marks.append((k + 1, snap.state if snap is not None else live.state()))
    t1 = time.perf_counter()
    live.finish(final_passes)
    final = live.wait(timeout=900)
    origin = live.probe_origin
    return LiveRun(marks, final, live.status.phase, time.perf_counter() - t1, origin)


def live_origin(origin: str) -> str:
    """A short probe origin for the live table (with the pattern count of a restart)."""
    head = origin.split(" (")[0]
    if "restarted at" in origin:
        head += ", restarted at " + origin.split("restarted at ")[1].rstrip(")")
    return head


def live_variants() -> dict[str, LiveOptions]:
    """The live options of section 3, by row label."""
    return {
        "default (batch 10 after 16)": LiveOptions(worker_nice=0, publish_period_s=0.1),
        "capped (min 2)": LiveOptions(
            pacing=PacingPolicy(mode="capped", min_patterns=2), worker_nice=0, publish_period_s=0.1
        ),
        "study-like (study(), batch 10 after 10)": LiveOptions(
            epie=EPIEOptions.study(validation_every=VALIDATION_EVERY),
            pacing=PacingPolicy(mode="batch", passes_per_batch=10, min_patterns=10),
            worker_nice=0,
            publish_period_s=0.1,
        ),
    }


def section_live(datasets: Sequence[tuple[Dataset, float]], cfg: Config) -> None:
    """Section 3: live reconstructions, blind and from the supplied/true probe."""
    rows = []
    t0 = time.perf_counter()
    for ds, rate in datasets:
        for name, options in live_variants().items():
            for start_label, probe in (("blind", None), (ds.probe_label, ds.probe)):
                run = run_live(ds, probe, options, rate, cfg.final_passes)
                cells = [ds.name, f"{rate:g}/s", name, start_label, live_origin(run.origin)]
                for k, st in run.marks:
                    region = ds.region & covered_region(
                        ds.positions[:k], ds.object_shape, ds.frame_shape
                    )
                    cells += [
                        f"{fmt(safe_error(st.object, ds.truth, region))} "
                        f"/ {fmt(st.validation_ratio, 2)} ({st.n_patterns}, {st.pattern_updates})"
                    ]
                fin = run.final
                cells += [
                    f"{fmt(safe_error(fin.object, ds.truth, ds.region))} "
                    f"/ {fmt(fin.validation_ratio, 2)}",
                    fmt(fin.latest_error, 4),
                    f"{run.phase}, {run.finish_s:.1f} s",
                ]
                rows.append(cells)
    say(f"## 3. Live ({time.perf_counter() - t0:.0f} s)")
    say()
    say(
        "Frames delivered in recorded order at the given rate; `worker_nice=0`. Cells: object "
        "error / validation ratio (patterns in use, pattern updates so far), the error over the "
        "central half of every patch submitted so far within the reference region, read right "
        f"after the 25 % and 50 % frame was submitted; 100 % after `finish({cfg.final_passes})`, "
        "over the whole region. Blind: probe=None (the engine's auto start). The ratio divides "
        "the held-out error by the mean pattern's error on the same held-out patterns. The "
        "100 % ratio is the one the final state reports (when the final passes put the "
        "held-out patterns back into use, the last one measured before them)."
    )
    say()
    headers = [
        "dataset",
        "rate",
        "options",
        "start",
        "probe made",
        "25 %",
        "50 %",
        "100 %",
        "Fourier err @100 %",
        "end, finish time",
    ]
    say(table(headers, rows))
    say()


# ------------------------------------------------------------------------------------- main
def package_version() -> str:
    """The repository's commit, and whether the package's files differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bluesky_ptycho"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head}" + (" with local changes to bluesky_ptycho/" if dirty else "")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="default-sized run (the default)")
    size.add_argument("--full", action="store_true", help="more seeds and passes")
    parser.add_argument(
        "--sections",
        type=int,
        nargs="+",
        choices=(1, 2, 3),
        default=[1, 2, 3],
        metavar="N",
        help="sections to run: 1 starting probes, 2 aids, 3 live (default all)",
    )
    parser.add_argument("--star", type=Path, default=STAR_FILE, help="the measured star data")
    parser.add_argument(
        "--aids-sim",
        choices=SIM_PATTERNS,
        default="fermat",
        help="scan pattern of the simulation in section 2",
    )
    parser.add_argument(
        "--aids-sim-start",
        choices=("auto", "gaussian", "mean_pattern", "optics"),
        default="gaussian",
        help="starting probe of the simulation in section 2",
    )
    parser.add_argument("--no-long-run", action="store_true", help="skip the 300-pass run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the selected sections and print their tables."""
    args = parse_args(argv)
    cfg = FULL if args.full else QUICK
    if args.no_long_run:
        cfg = dataclasses.replace(cfg, long_passes=0)
    shown = sys.argv[1:] if argv is None else list(argv)
    say("# Convergence benchmark")
    say()
    command = " ".join(["python benchmarks/convergence.py", shlex.join(shown)]).strip()
    say(f"Command: `{command}`")
    say(
        f"Size: {'full' if args.full else 'quick'}; {os.cpu_count()} CPUs; numpy "
        f"{np.__version__}; simulation seeds {list(cfg.seeds)}; package at "
        f"{package_version()}"
    )
    say()
    t_start = time.perf_counter()
    star: Dataset | None = None
    if args.star.exists():
        star = load_star(args.star)
    else:
        say(f"(no star data at {args.star}: the star rows are left out)")
    sims = [load_simulation(p, s) for s in cfg.seeds for p in SIM_PATTERNS]
    notes = ([*star.notes] if star else []) + [note for ds in sims for note in ds.notes]
    say("Datasets:")
    say()
    for note in notes:
        say(f"- {note}")
    say()
    everything = ([star] if star else []) + sims
    if 1 in args.sections:
        section_starts(everything, cfg)
    if 2 in args.sections:
        aids_sim = next(ds for ds in sims if ds.name == f"sim {args.aids_sim}")
        section_aids(star, aids_sim, args.aids_sim_start, cfg)
    if 3 in args.sections:
        live_sets: list[tuple[Dataset, float]] = []
        if star is not None:
            live_sets.append((star, cfg.star_rate_hz))
        for seed in cfg.live_sim_seeds:
            sim = next(ds for ds in sims if ds.name == "sim fermat" + (f" s{seed}" if seed else ""))
            live_sets.append((sim, cfg.sim_rate_hz))
        section_live(live_sets, cfg)
    say(f"Total wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
