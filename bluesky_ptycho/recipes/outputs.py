"""What a study writes into its output directory.

- ``study.h5``: per scheme a group with the recipe (attributes), the records
  (``fraction_of_scan``, ``patterns``, ``iteration``, ``error_to_reference``,
  ``error_in_scanned_region``), the arrival ``order`` and each pattern's ``subset``, and
  ``snapshots/NN`` with ``object`` and ``probe`` at each kept stage; ``/data`` holds the
  positions, the compared region and the settings.
- ``study.json``: per scheme name the lists ``fraction_of_scan`` and ``error_to_reference``
  (the reference's own list ends at 0), plus ``iteration``, ``error_in_scanned_region``, the
  recipe and the fraction of the scan at which the error first fell below twice its final
  value.
- ``<scheme>.png``: :func:`~bluesky_ptycho.recipes.figures.scheme_figure`;
  ``error.png``: :func:`~bluesky_ptycho.recipes.figures.error_figure`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import h5py

from bluesky_ptycho.display import save_figure
from bluesky_ptycho.recipes.figures import error_figure, scheme_figure
from bluesky_ptycho.recipes.runner import StudyResult, first_fraction_below

__all__ = ["study_json", "write_study"]


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def study_json(result: StudyResult) -> dict[str, Any]:
    """The content of ``study.json`` (plain JSON; NaN written as null)."""
    out: dict[str, Any] = {}
    for name, run in result.runs.items():
        out[name] = {
            "fraction_of_scan": [float(v) for v in run.series("fraction_of_scan")],
            "error_to_reference": [_finite_or_none(v) for v in run.series("error_to_reference")],
            "error_in_scanned_region": [
                _finite_or_none(v) for v in run.series("error_in_scanned_region")
            ],
            "iteration": [int(r.iteration) for r in run.records],
            "fraction_below_twice_final": _finite_or_none(first_fraction_below(run)),
            "recipe": run.recipe.as_dict(),
            "probe_origin": run.probe_origin,
            "seconds": round(run.seconds, 3),
        }
    return out


def write_study(
    result: StudyResult, directory: str | os.PathLike[str], *, figures: bool = True
) -> dict[str, Path]:
    """Write the HDF5 snapshots, ``study.json`` and the figures into ``directory``.

    Returns
    -------
    dict of str to Path
        ``"hdf5"``, ``"json"``, ``"error_figure"`` and one entry per scheme figure
        (``"figure:<name>"``).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    h5 = out / "study.h5"
    with h5py.File(h5, "w") as f:
        d = f.create_group("data")
        d.attrs["name"] = result.data.name
        d.attrs["settings"] = json.dumps(result.settings.as_dict())
        d.attrs["metadata"] = json.dumps(result.data.metadata)
        d.create_dataset("positions_px", data=result.data.positions_px)
        d.create_dataset("region", data=result.region)
        for name, run in result.runs.items():
            g = f.create_group(name)
            g.attrs["recipe"] = json.dumps(run.recipe.as_dict())
            g.attrs["probe_origin"] = run.probe_origin
            for field in (
                "fraction_of_scan",
                "patterns",
                "iteration",
                "error_to_reference",
                "error_in_scanned_region",
            ):
                g.create_dataset(field, data=run.series(field))
            g.create_dataset("order", data=run.order)
            g.create_dataset("subset", data=run.subset)
            snaps = g.create_group("snapshots")
            for i, shot in enumerate(run.snapshots):
                s = snaps.create_group(f"{i:02d}")
                s.attrs["stage"] = "end" if math.isinf(shot.stage) else shot.stage
                s.attrs["fraction_of_scan"] = shot.fraction_of_scan
                s.attrs["patterns"] = shot.patterns
                s.attrs["iteration"] = shot.iteration
                s.create_dataset("object", data=shot.object, compression="gzip")
                s.create_dataset("probe", data=shot.probe, compression="gzip")
    paths["hdf5"] = h5
    js = out / "study.json"
    js.write_text(json.dumps(study_json(result), indent=1, allow_nan=False))
    paths["json"] = js
    if figures:
        paths["error_figure"] = save_figure(error_figure(result), out / "error.png")
        for name in result.runs:
            paths[f"figure:{name}"] = save_figure(scheme_figure(result, name), out / f"{name}.png")
    return paths
