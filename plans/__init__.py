"""Bluesky scan plans for ptychography (import path ``bluesky_ptycho.plans``).

Each plan moves a row-axis (``y``) and a column-axis (``x``) sample motor through a pattern of
:mod:`bluesky_ptycho.patterns`, reads the detectors and motors at every point, and writes the
``start["ptycho"]`` contract (:class:`bluesky_ptycho.setup.ScanSetup`) with the
absolute nominal positions in metres.

Examples
--------
>>> from bluesky_ptycho.plans import spirangle_ptycho
>>> setup = {"energy_eV": 8000.0, "detector_distance_m": 2.0, "detector_pixel_m": 75e-6,
...          "crop": 128, "detector_key": "eiger_image", "position_scale_m": 1e-6}
>>> RE(spirangle_ptycho([eiger], sx, sy, setup=setup, n_side=21, step=0.5))  # doctest: +SKIP
"""

from __future__ import annotations

from bluesky_ptycho.plans.ptycho import (
    fermat_spiral_ptycho,
    meander_ptycho,
    nominal_positions,
    ptycho_scan,
    random_ptycho,
    raster_ptycho,
    rel_fermat_spiral_ptycho,
    rel_meander_ptycho,
    rel_ptycho_scan,
    rel_random_ptycho,
    rel_raster_ptycho,
    rel_spirangle_ptycho,
    spirangle_ptycho,
)

__all__ = [
    "fermat_spiral_ptycho",
    "meander_ptycho",
    "nominal_positions",
    "ptycho_scan",
    "random_ptycho",
    "raster_ptycho",
    "rel_fermat_spiral_ptycho",
    "rel_meander_ptycho",
    "rel_ptycho_scan",
    "rel_random_ptycho",
    "rel_raster_ptycho",
    "rel_spirangle_ptycho",
    "spirangle_ptycho",
]
