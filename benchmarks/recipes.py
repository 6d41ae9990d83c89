"""When does a simulated-live scheme "see" the specimen? Per recipe of the published study.

For every recipe (:mod:`bluesky_ptycho.recipes`) prints the fraction of the scan at which the
object error first falls below twice its final value, measured against the reference
scheme's final object with the global complex factor and the shift removed, in two regions:

- *scanned so far*: the part of the scanned region lit by the patterns that have arrived (what
  a user watching the live reconstruction sees);
- *whole scan*: the region the whole scan lights (the ``error_to_reference`` of
  ``study.json``).

The study saw the specimen at about a quarter of the scan. Schemes that have all data from
the start (reference, parallel) read 100 %. Also printed: the final error and the run time.

    python benchmarks/recipes.py [--data star|simulated|both] [--quick | --full]

``--quick`` (default, about 3 minutes on 2 cores): the star's first 160 patterns and the small
simulation (81 patterns), N = 200, 10 passes per step, over-optimisation 100 passes per step.
``--full``: the whole star (516 patterns) and the study's simulated 21 x 21 raster (256 px),
N = 1,000 and over-optimisation 1,000 passes per step, as the study (hours).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from bluesky_ptycho.recipes import StudyData, StudySettings, first_fraction_below, run_study
from bluesky_ptycho.simulate import simulate_dataset, small_preset, study_offline_preset


def _cases(which: str, full: bool) -> list[tuple[StudyData, StudySettings]]:
    n, per_step, overopt = (1000, 10, 1000) if full else (200, 10, 100)
    cases = []
    if which in ("star", "both"):
        star = StudyData.siemens_star()
        if not full:
            star = star.first(160)
        settings = StudySettings.measured(
            iterations=n, per_step=per_step, overoptimization_iterations_per_step=overopt
        )
        cases.append((star, settings))
    if which in ("simulated", "both"):
        if full:
            sim = StudyData.from_simulated(simulate_dataset(study_offline_preset()), "study sim")
            settings = StudySettings(iterations=n, overoptimization_iterations_per_step=overopt)
        else:
            # the study's Gaussian plateaus on this small simulation (see test_study.py)
            sim = StudyData.from_simulated(simulate_dataset(small_preset()), "small sim")
            settings = StudySettings(
                probe="auto",
                iterations=n,
                per_step=5,
                overoptimization_iterations_per_step=overopt,
            )
        cases.append((sim, settings))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("star", "simulated", "both"), default="both")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="scaled down (default)")
    size.add_argument("--full", action="store_true", help="the study's sizes (hours)")
    args = parser.parse_args(argv)
    print(f"    python {' '.join(shlex.quote(a) for a in sys.argv)}\n")
    for data, settings in _cases(args.data, args.full):
        t0 = time.perf_counter()
        result = run_study(data, settings)
        print(
            f"## {data.name}: {data.n_patterns} patterns of {data.frame_size} px, probe "
            f"{settings.probe}, N = {settings.iterations}, {settings.per_step} per step "
            f"({time.perf_counter() - t0:.0f} s)\n"
        )
        print("| scheme | below 2x final (scanned so far) | below 2x final (whole scan) "
              "| final error | seconds |")  # fmt: skip
        print("|---|---|---|---|---|")
        for name, run in result.runs.items():
            so_far = first_fraction_below(run, field="error_in_scanned_region")
            whole = first_fraction_below(run, field="error_to_reference")
            fmt = lambda v: "n/a" if v != v else f"{v:.0%}"  # noqa: E731
            print(
                f"| {name} | {fmt(so_far)} | {fmt(whole)} | {run.final_error:.4f} "
                f"| {run.seconds:.1f} |"
            )
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
