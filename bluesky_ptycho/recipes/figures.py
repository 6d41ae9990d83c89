"""Figures of a study, laid out like the published ones; headless (Agg), no pyplot state.

- :func:`scheme_figure`: one column per kept stage; rows: scan positions arrived so far
  (coloured by subset), object amplitude, object phase, probe amplitude, probe phase, and the
  absolute difference to the reference object (after removing the global complex factor and
  the shift, as the error is measured).
- :func:`error_figure`: every scheme's error to the reference against the fraction of the scan
  and against the iterations done.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bluesky_ptycho.display import probe_phase_masked
from bluesky_ptycho.metrics import align_to_reference
from bluesky_ptycho.recipes.runner import RecipeRun, StudyResult

__all__ = ["error_figure", "scheme_figure"]

_SUBSET_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")
_ROWS = (
    "Scan positions",
    "Object amplitude",
    "Object phase",
    "Probe amplitude",
    "Probe phase",
    "|O - O_ref|",
)


def _stage_label(run: RecipeRun, stage: float, fraction: float, iteration: int) -> str:
    if math.isinf(stage):
        return f"end: {fraction:.0%} of scan, {iteration} it."
    if run.recipe.live:
        return f"{fraction:.0%} of scan, {iteration} it."
    return f"{iteration} iterations"


def scheme_figure(result: StudyResult, name: str) -> Figure:
    """The figure of one scheme at its kept stages.

    Parameters
    ----------
    result : StudyResult
    name : str
        Scheme name (a key of ``result.runs``).

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas; save it with :func:`bluesky_ptycho.display.save_figure`.
    """
    run = result.runs[name]
    data = result.data
    ref = result.reference.final.object
    region = result.region
    rows, cols = np.nonzero(region)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    shots = run.snapshots
    fig = Figure(figsize=(2.6 * len(shots), 2.5 * len(_ROWS)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(_ROWS), len(shots), squeeze=False)
    half = data.frame_size / 2.0
    centres = data.positions_px + half
    for c, shot in enumerate(shots):
        arrived = run.order[: shot.patterns]
        ax = axes[0, c]
        ax.scatter(centres[:, 1], centres[:, 0], s=2, c="lightgray")
        colours = [_SUBSET_COLOURS[k % len(_SUBSET_COLOURS)] for k in run.subset[arrived]]
        ax.scatter(centres[arrived, 1], centres[arrived, 0], s=4, c=colours)
        ax.set_xlim(0, data.object_shape[1])
        ax.set_ylim(data.object_shape[0], 0)
        ax.set_aspect("equal")
        ax.set_title(_stage_label(run, shot.stage, shot.fraction_of_scan, shot.iteration))
        obj = shot.object[box]
        axes[1, c].imshow(np.abs(obj), cmap="gray")
        axes[2, c].imshow(np.angle(obj), cmap="viridis")
        axes[3, c].imshow(np.abs(shot.probe), cmap="gray")
        axes[4, c].imshow(probe_phase_masked(shot.probe), cmap="twilight", vmin=-np.pi, vmax=np.pi)
        aligned = align_to_reference(shot.object, ref, region)
        diff = np.where(region, np.abs(aligned - ref), np.nan)[box]
        im = axes[5, c].imshow(diff, cmap="magma", vmin=0.0, vmax=0.5)
        if c == len(shots) - 1:
            fig.colorbar(im, ax=axes[5, c], shrink=0.8)
    for r, label in enumerate(_ROWS):
        axes[r, 0].set_ylabel(label)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{run.recipe.title} ({run.recipe.figure}); {data.name}")
    return fig


def error_figure(result: StudyResult) -> Figure:
    """Error to the reference of every scheme, against fraction of the scan and iterations."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_f, ax_i = fig.subplots(1, 2)
    for name, run in result.runs.items():
        err = run.series("error_to_reference")
        keep = err > 0  # the reference's own last point is 0 by definition (log axis)
        style = "--" if run.recipe.subsets > 1 else "-"
        ax_f.plot(run.series("fraction_of_scan")[keep], err[keep], style, marker=".", label=name)
        ax_i.plot(run.series("iteration")[keep], err[keep], style, marker=".", label=name)
    ax_f.set_xlabel("fraction of the scan")
    ax_i.set_xlabel("iterations")
    ax_i.set_xscale("log")
    for ax in (ax_f, ax_i):
        ax.set_yscale("log")
        ax.set_ylabel("object error to the reference")
        ax.grid(True, which="both", alpha=0.3)
    ax_i.legend(fontsize="small")
    fig.suptitle(f"Error to the reference in the scanned region; {result.data.name}")
    return fig
