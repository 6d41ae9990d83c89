"""Setup mistakes and hostile start documents are refused by name before anything is allocated.

Each case is what a user (or a hostile sender) actually does: a 2048 crop in a small start
document, motors in micrometres declared as millimetres, a step given in metres to a plan that
takes motor units. Real plans on a real RunEngine with ophyd motors; real start documents into a
real PtychoCallback.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
from bluesky import RunEngine
from ophyd.sim import SynAxis, SynGauss

from bluesky_ptycho import patterns
from bluesky_ptycho import plans as P
from bluesky_ptycho.callback import PtychoCallback
from bluesky_ptycho.setup import Limits, ScanSetup

# The study's geometry: 13.5 keV, 3.2 m, 75 µm pixels, 256 px frames: 15.3 nm object pixels.
STUDY: dict[str, Any] = {
    "energy_eV": 13_500.0,
    "detector_distance_m": 3.2,
    "detector_pixel_m": 75e-6,
    "crop": 256,
}
UM = 1e-6  # motors in micrometres


@pytest.fixture
def RE() -> RunEngine:
    return RunEngine({})


@pytest.fixture
def motors() -> tuple[SynAxis, SynAxis, SynGauss]:
    sx, sy = SynAxis(name="sx"), SynAxis(name="sy")
    return sx, sy, SynGauss("det", sx, "sx", center=0.0, Imax=1.0, sigma=1.0)


def _hostile_start_doc() -> dict[str, Any]:
    """A small start document asking for crop 2048 and a 1 m x 1 m scan."""
    ptycho = {
        **STUDY,
        "crop": 2048,
        "position_scale_m": 1.0,
        "scan": {"pattern": "raster", "num_points": 4, "extent_m": [[0.0, 1.0], [0.0, 1.0]]},
        "detector_key": "eiger_image",
        "position_keys": ["sy", "sx"],
    }
    return {"uid": "hostile-run", "time": 0.0, "plan_name": "x", "ptycho": ptycho}


# ------------------------------------------------------------------------------- Limits itself
def test_defaults_let_the_study_scans_through() -> None:
    limits = Limits()
    assert limits.max_crop >= 1024
    assert limits.max_object_pixels >= 4000 * 4000
    assert limits.max_frames >= 11_245  # the study's live scan
    # crop 1024 passes
    ScanSetup(**{**STUDY, "crop": 1024}, extent_m=((0.0, 5e-6), (0.0, 5e-6)))
    # an object of about 4,000 x 4,000 px (a 57 µm scan at 15.3 nm per pixel) passes
    setup = ScanSetup(**STUDY, extent_m=((0.0, 57e-6), (0.0, 57e-6)), num_points=11_245)
    rows, cols = setup.object_frame().object_shape
    assert 3_900 < rows < 4_100 and rows * cols <= limits.max_object_pixels


@pytest.mark.parametrize("field", ["max_crop", "max_object_pixels", "max_frames"])
def test_limits_must_be_positive_integers(field: str) -> None:
    with pytest.raises(ValueError, match=rf"^Limits\.{field} must be a positive integer"):
        Limits(**{field: 0})


def test_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Limits().max_crop = 4096  # type: ignore[misc]


# -------------------------------------------------------------------------- hostile documents
def test_a_small_start_document_asking_for_crop_2048_is_refused_by_name() -> None:
    doc = _hostile_start_doc()
    assert len(json.dumps(doc)) < 2000
    with pytest.raises(ValueError, match=r"^ScanSetup\.crop 2048 exceeds Limits\.max_crop 1024"):
        ScanSetup.from_start_doc(doc["ptycho"])


def test_larger_limits_are_given_by_the_receiver_not_the_document() -> None:
    ptycho = _hostile_start_doc()["ptycho"]
    ptycho["scan"]["extent_m"] = [[0.0, 1e-6], [0.0, 1e-6]]
    ptycho["limits"] = {"max_crop": 4096}  # ignored: a document cannot raise its own limits
    with pytest.raises(ValueError, match="max_crop"):
        ScanSetup.from_start_doc(ptycho)
    setup = ScanSetup.from_start_doc(ptycho, limits=Limits(max_crop=2048))
    assert setup.crop == 2048 and setup.limits.max_crop == 2048


def test_a_huge_object_is_refused_even_with_a_small_crop() -> None:
    ptycho = _hostile_start_doc()["ptycho"]
    ptycho["crop"] = 256
    with pytest.raises(ValueError) as info:
        ScanSetup.from_start_doc(ptycho)
    text = str(info.value)
    assert "Limits.max_object_pixels 33,554,432" in text
    assert "position_scale_m=1 (motors read in metres)" in text
    assert re.search(r"an object frame of 65,33\d,\d{3} x 65,33\d,\d{3} px", text)


def test_too_many_frames_are_refused_before_the_positions_are_converted() -> None:
    ptycho = _hostile_start_doc()["ptycho"]
    ptycho["crop"] = 256
    ptycho["scan"] = {"num_points": 10**9, "extent_m": [[0.0, 1e-6], [0.0, 1e-6]]}
    with pytest.raises(ValueError, match=r"num_points 1000000000 exceeds Limits\.max_frames"):
        ScanSetup.from_start_doc(ptycho)
    ptycho["scan"] = {"nominal_positions_m": [[0.0, 0.0]] * 70_000}
    with pytest.raises(ValueError, match=r"has 70000 positions, more than Limits\.max_frames"):
        ScanSetup.from_start_doc(ptycho)


def test_the_callback_ignores_the_hostile_run_with_the_reason() -> None:
    cb = PtychoCallback()
    cb("start", _hostile_start_doc())  # no exception reaches the RunEngine side
    reasons = " ".join(cb.status.reasons)
    assert "run ignored" in reasons and "Limits.max_crop" in reasons


# ------------------------------------------------------------------------ units, in real plans
def _study_setup(**overrides: Any) -> dict[str, Any]:
    return {**STUDY, "detector_key": "det", "position_scale_m": UM, **overrides}


def test_micrometre_motors_declared_as_millimetres_are_refused_naming_the_unit(
    RE: RunEngine, motors: tuple[SynAxis, SynAxis, SynGauss]
) -> None:
    sx, sy, det = motors
    docs: list[str] = []
    RE.subscribe(lambda name, doc: docs.append(name))
    # a 50 x 50 raster with a 10 nm step (0.49 µm wide), but position_scale_m says millimetres
    setup = _study_setup(position_scale_m=1e-3)
    with pytest.raises(ValueError) as info:  # raised when the plan is made
        RE(P.raster_ptycho([det], sx, sy, setup=setup, n_side=50, step=0.01))
    text = str(info.value)
    assert "position_scale_m=0.001 (motors read in millimetres)" in text
    assert "are they in micrometres (position_scale_m=1e-06" in text
    assert re.search(r"object frame of 32,\d{3} x 32,\d{3} px", text)  # as in the report
    assert docs == []  # refused before any document


def test_a_step_in_metres_to_micrometre_motors_is_refused_as_one_spot(
    RE: RunEngine, motors: tuple[SynAxis, SynAxis, SynGauss]
) -> None:
    sx, sy, det = motors
    # step=1e-6 meant "1 µm" but the plan takes motor units: 1 pm apart
    with pytest.raises(ValueError) as info:
        RE(P.raster_ptycho([det], sx, sy, setup=_study_setup(), n_side=10, step=1e-6))
    text = str(info.value)
    assert "every frame would sit on one spot" in text
    assert "position_scale_m=1e-06 (motors read in micrometres)" in text
    assert "motor units, not metres" in text


def test_the_same_scan_in_the_right_unit_runs(
    RE: RunEngine, motors: tuple[SynAxis, SynAxis, SynGauss]
) -> None:
    sx, sy, det = motors
    docs: list[tuple[str, dict[str, Any]]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    # the scan above in the right unit runs and writes a start document the callback accepts
    RE(P.raster_ptycho([det], sx, sy, setup=_study_setup(), n_side=50, step=0.01))
    start = next(doc for name, doc in docs if name == "start")
    setup = ScanSetup.from_start_doc(start["ptycho"])
    assert setup.object_frame().object_shape[0] < 400


def test_a_one_spot_extent_is_refused_when_the_number_of_points_is_known() -> None:
    with pytest.raises(ValueError, match="every frame would sit on one spot"):
        ScanSetup(**STUDY, extent_m=((0.0, 1e-11), (0.0, 1e-11)), num_points=100)
    # a single point is a legitimate (if useless) scan
    ScanSetup(**STUDY, extent_m=((0.0, 0.0), (0.0, 0.0)), num_points=1)


def test_the_nominal_scan_is_checked_again_when_a_plan_fills_it_in() -> None:
    bare = ScanSetup(**STUDY, position_scale_m=1e-3)  # nothing to check yet
    positions = patterns.raster(50, 50, 0.01)  # micrometre motor values
    with pytest.raises(ValueError, match="position_scale_m"):
        replace(bare, nominal_positions_m=positions * bare.position_scale_m)
    ok = replace(bare, position_scale_m=UM, nominal_positions_m=positions * UM)
    assert ok.object_frame().object_shape == (33 + 256 + 16, 33 + 256 + 16)
