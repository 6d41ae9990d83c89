"""Simulated-live recipes that reproduce the published study ("Live iterative ptychography").

The study's schemes are small declarative :class:`Recipe` objects (:mod:`.schedule`): which
patterns arrive when, how many ePIE passes follow, how the data are split between parallel
reconstructions. :func:`run_study` (:mod:`.runner`) plays them through the same
:class:`~bluesky_ptycho.engine.EPIE` live data go through and measures every step against the
reference reconstruction; :mod:`.outputs` writes the HDF5 snapshots, ``study.json`` and the
figures (:mod:`.figures`). ``bluesky-ptycho study`` is the command line.
"""

from bluesky_ptycho.recipes.data import StudyData, find_siemens_star
from bluesky_ptycho.recipes.runner import (
    RecipeRun,
    Record,
    Snapshot,
    StudyResult,
    average_objects,
    first_fraction_below,
    run_recipe,
    run_study,
)
from bluesky_ptycho.recipes.schedule import (
    SCHEME_NAMES,
    Recipe,
    StudySettings,
    arrival_order,
    spirangle_order,
    study_recipes,
)

__all__ = [
    "SCHEME_NAMES",
    "Recipe",
    "RecipeRun",
    "Record",
    "Snapshot",
    "StudyData",
    "StudyResult",
    "StudySettings",
    "arrival_order",
    "average_objects",
    "find_siemens_star",
    "first_fraction_below",
    "run_recipe",
    "run_study",
    "spirangle_order",
    "study_recipes",
]
