"""Tests for bluesky_ptycho.plans: real RunEngine, ophyd.sim motors, documents collected."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from ophyd.sim import SynAxis, SynGauss

from bluesky_ptycho import patterns
from bluesky_ptycho import plans as P
from bluesky_ptycho.setup import ScanSetup

SCALE = 1e-6  # motors in micrometres

Docs = list[tuple[str, dict[str, Any]]]


def _setup(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "energy_eV": 8000.0,
        "detector_distance_m": 2.0,
        "detector_pixel_m": 75e-6,
        "crop": 64,
        "beam_center_px": (40.0, 41.0),
        "flip_rows": True,
        "detector_key": "det",
        "position_scale_m": SCALE,
    }
    base.update(overrides)
    return base


@pytest.fixture
def RE() -> RunEngine:
    return RunEngine({})


@pytest.fixture
def docs(RE: RunEngine) -> Docs:
    collected: Docs = []
    RE.subscribe(lambda name, doc: collected.append((name, doc)))
    return collected


@pytest.fixture
def sy() -> SynAxis:
    return SynAxis(name="sy")


@pytest.fixture
def sx() -> SynAxis:
    return SynAxis(name="sx")


@pytest.fixture
def det(sx: SynAxis) -> SynGauss:
    return SynGauss("det", sx, "sx", center=0.0, Imax=1.0, sigma=1.0)


def _start(docs: Docs) -> dict[str, Any]:
    starts = [d for n, d in docs if n == "start"]
    assert len(starts) == 1
    return starts[0]


def _events(docs: Docs) -> list[dict[str, Any]]:
    return [d for n, d in docs if n == "event"]


def _readbacks(docs: Docs, keys: list[str]) -> np.ndarray:
    return np.array([[ev["data"][k] for k in keys] for ev in _events(docs)], dtype=float)


# (pattern, plan keyword arguments, the same scan from bluesky_ptycho.patterns in motor units)
CASES: list[tuple[str, dict[str, Any], Callable[[], np.ndarray]]] = [
    (
        "raster",
        {"n_rows": 3, "n_cols": 4, "step": 0.5, "center": (1.0, -2.0)},
        lambda: patterns.raster(3, 4, 0.5, center=(1.0, -2.0)),
    ),
    (
        "meander",
        {"n_rows": 4, "n_cols": 3, "step": (0.25, 0.5), "center": (-1.0, 2.0)},
        lambda: patterns.meander(4, 3, (0.25, 0.5), center=(-1.0, 2.0)),
    ),
    (
        "random",
        {"n_side": 4, "step": 0.4, "seed": 7, "center": (0.5, 0.5)},
        lambda: patterns.random_grid(4, 4, 0.4, seed=7, center=(0.5, 0.5)),
    ),
    (
        "spirangle",
        {"n_side": 4, "step": 0.3, "direction": "inward", "center": (2.0, 3.0)},
        lambda: patterns.spirangle(4, 0.3, direction="inward", center=(2.0, 3.0)),
    ),
    (
        "fermat",
        {"num_points": 20, "step": 0.5, "center": (-0.5, 1.5)},
        lambda: patterns.fermat_spiral(20, 0.5, center=(-0.5, 1.5)),
    ),
    (
        "fermat",
        {"extent": ((-1.0, 1.0), (2.0, 4.0)), "step": 0.5},
        lambda: patterns.fermat_spiral_extent(((-1.0, 1.0), (2.0, 4.0)), 0.5),
    ),
]
CASE_IDS = ["raster", "meander", "random", "spirangle", "fermat-n", "fermat-extent"]


# --------------------------------------------------------------------------------------------
# absolute scans
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "kwargs", "reference"), CASES, ids=CASE_IDS)
def test_absolute_scan_writes_the_contract(
    RE: RunEngine,
    docs: Docs,
    sx: SynAxis,
    sy: SynAxis,
    det: SynGauss,
    pattern: str,
    kwargs: dict[str, Any],
    reference: Callable[[], np.ndarray],
) -> None:
    expected = reference()
    assert 9 <= len(expected) <= 25  # keep the scans small
    RE(P.ptycho_scan([det], sx, sy, setup=_setup(), pattern=pattern, **kwargs))
    start = _start(docs)
    events = _events(docs)

    # the contract round-trips through ScanSetup and holds the pattern in metres
    setup = ScanSetup.from_start_doc(start["ptycho"])
    assert setup.pattern == pattern
    assert setup.num_points == len(expected) == len(events) == start["num_points"]
    np.testing.assert_allclose(setup.nominal_positions_m, expected * SCALE, rtol=0, atol=1e-15)
    assert setup.position_scale_m == SCALE
    assert setup.detector_key == "det"
    assert setup.beam_center_px == (40.0, 41.0)
    assert setup.flip_rows and not setup.flip_cols
    assert setup.extent_m is None

    # position keys are the readback keys that appear in the events, (row, col)
    assert setup.position_keys == ("sy", "sx")
    for key in setup.position_keys:
        assert all(key in ev["data"] for ev in events)
    descriptor = next(d for n, d in docs if n == "descriptor")
    assert set(setup.position_keys) <= set(descriptor["data_keys"])
    assert "det" in descriptor["data_keys"]

    # the motors visited the nominal positions, in order (SynAxis readback = setpoint)
    readback = _readbacks(docs, list(setup.position_keys))
    np.testing.assert_allclose(readback, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(readback * SCALE, setup.nominal_positions_m, rtol=0, atol=1e-15)
    assert [ev["seq_num"] for ev in events] == list(range(1, len(expected) + 1))

    # plain JSON, unchanged by a round trip
    assert json.loads(json.dumps(start)) == start


@pytest.mark.parametrize(("pattern", "kwargs", "reference"), CASES, ids=CASE_IDS)
def test_bluesky_metadata(
    RE: RunEngine,
    docs: Docs,
    sx: SynAxis,
    sy: SynAxis,
    det: SynGauss,
    pattern: str,
    kwargs: dict[str, Any],
    reference: Callable[[], np.ndarray],
) -> None:
    expected = reference()
    RE(P.ptycho_scan([det], sx, sy, setup=_setup(), pattern=pattern, **kwargs))
    start = _start(docs)
    n = len(expected)
    assert start["plan_name"] == "ptycho_scan"
    assert start["num_points"] == n
    assert start["num_intervals"] == n - 1
    assert start["motors"] == ["sy", "sx"]
    assert start["detectors"] == ["det"]
    assert start["plan_args"]["detectors"] == [repr(det)]
    assert start["plan_args"]["x_motor"] == repr(sx)
    assert start["plan_args"]["y_motor"] == repr(sy)
    assert start["plan_args"]["pattern"] == pattern
    assert start["plan_args"]["relative"] is False
    dims = start["hints"]["dimensions"]
    assert [fields for fields, _ in dims] == [["sy"], ["sx"]]
    assert {stream for _, stream in dims} == {"primary"}
    np.testing.assert_allclose(
        start["extents"],
        [
            [expected[:, 0].min(), expected[:, 0].max()],
            [expected[:, 1].min(), expected[:, 1].max()],
        ],
    )
    if pattern == "fermat":
        assert "shape" not in start
    else:
        rows = kwargs.get("n_rows", kwargs.get("n_side"))
        cols = kwargs.get("n_cols", kwargs.get("n_side"))
        assert start["shape"] == [rows, cols]
    # plan_pattern names a function that reproduces the positions from the JSON arguments
    module = __import__(start["plan_pattern_module"], fromlist=[start["plan_pattern"]])
    assert module is P.ptycho
    replay = getattr(module, start["plan_pattern"])(**start["plan_pattern_args"])
    np.testing.assert_allclose(replay, _readbacks(docs, ["sy", "sx"]), rtol=0, atol=1e-12)
    assert start["plan_pattern_args"]["pattern"] == pattern


def test_nominal_positions_preview_matches_patterns() -> None:
    np.testing.assert_array_equal(
        P.nominal_positions("spirangle", 2.0, n_side=3, center=(1.0, 1.0)),
        patterns.spirangle(3, 2.0, center=(1.0, 1.0)),
    )
    np.testing.assert_array_equal(
        P.nominal_positions("raster", 1.0, n_side=3), patterns.raster(3, 3, 1.0)
    )
    np.testing.assert_array_equal(
        P.nominal_positions("random", 1.0, n_rows=2, n_cols=5, seed=3),
        patterns.random_grid(2, 5, 1.0, seed=3),
    )
    assert P.nominal_positions("fermat", 1.0, num_points=11).shape == (11, 2)


def test_default_pattern_is_spirangle_and_center_defaults_to_origin(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    sx.set(3.0).wait()
    sy.set(-4.0).wait()
    RE(P.ptycho_scan([det], sx, sy, setup=_setup(), n_side=3, step=1.0))
    start = _start(docs)
    assert start["ptycho"]["scan"]["pattern"] == "spirangle"
    np.testing.assert_allclose(_readbacks(docs, ["sy", "sx"]), patterns.spirangle(3, 1.0))
    # absolute scans leave the motors at the last point
    np.testing.assert_allclose([sy.position, sx.position], patterns.spirangle(3, 1.0)[-1])


# --------------------------------------------------------------------------------------------
# relative scans
# --------------------------------------------------------------------------------------------

REL_CASES: list[tuple[Callable[..., Any], dict[str, Any], Callable[[], np.ndarray]]] = [
    (
        P.rel_spirangle_ptycho,
        {"n_side": 3, "step": 0.5},
        lambda: patterns.spirangle(3, 0.5),
    ),
    (
        P.rel_raster_ptycho,
        {"n_rows": 3, "n_cols": 3, "step": 1.0, "center": (0.5, -0.5)},
        lambda: patterns.raster(3, 3, 1.0, center=(0.5, -0.5)),
    ),
    (
        P.rel_meander_ptycho,
        {"n_rows": 2, "n_cols": 5, "step": 1.0},
        lambda: patterns.meander(2, 5, 1.0),
    ),
    (
        P.rel_random_ptycho,
        {"n_side": 3, "step": 1.0, "seed": 2},
        lambda: patterns.random_grid(3, 3, 1.0, seed=2),
    ),
    (
        P.rel_fermat_spiral_ptycho,
        {"num_points": 12, "step": 1.0},
        lambda: patterns.fermat_spiral(12, 1.0),
    ),
    (
        P.rel_fermat_spiral_ptycho,
        {"extent": ((-1.0, 1.0), (-1.5, 1.5)), "step": 0.7},
        lambda: patterns.fermat_spiral_extent(((-1.0, 1.0), (-1.5, 1.5)), 0.7),
    ),
]
REL_IDS = ["spirangle", "raster", "meander", "random", "fermat-n", "fermat-extent"]


@pytest.mark.parametrize(("plan", "kwargs", "reference"), REL_CASES, ids=REL_IDS)
def test_relative_scan_writes_absolute_positions_and_returns(
    RE: RunEngine,
    docs: Docs,
    sx: SynAxis,
    sy: SynAxis,
    det: SynGauss,
    plan: Callable[..., Any],
    kwargs: dict[str, Any],
    reference: Callable[[], np.ndarray],
) -> None:
    origin = np.array([-7.25, 12.5])  # (y, x)
    sy.set(origin[0]).wait()
    sx.set(origin[1]).wait()
    expected = reference() + origin
    assert 9 <= len(expected) <= 25

    RE(plan([det], sx, sy, setup=_setup(), **kwargs))
    start = _start(docs)
    setup = ScanSetup.from_start_doc(start["ptycho"])
    np.testing.assert_allclose(setup.nominal_positions_m, expected * SCALE, rtol=1e-12, atol=0)
    readback = _readbacks(docs, list(setup.position_keys))
    np.testing.assert_allclose(readback, expected, rtol=0, atol=1e-12)
    assert len(_events(docs)) == start["num_points"] == setup.num_points
    assert start["plan_name"] == plan.__name__
    assert start["plan_args"]["relative"] is True
    replay = P.nominal_positions(**start["plan_pattern_args"])
    np.testing.assert_allclose(replay, readback, rtol=0, atol=1e-12)
    # back where they started
    np.testing.assert_allclose([sy.position, sx.position], origin, rtol=0, atol=1e-12)
    json.dumps(start)


def test_relative_via_flag_matches_rel_variant(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    sy.set(1.0).wait()
    sx.set(2.0).wait()
    kwargs = {"setup": _setup(), "pattern": "raster", "n_side": 3, "step": 0.5}
    RE(P.ptycho_scan([det], sx, sy, relative=True, **kwargs))
    RE(P.rel_ptycho_scan([det], sx, sy, **kwargs))
    starts = [d for n, d in docs if n == "start"]
    assert len(starts) == 2
    first, second = (s["ptycho"]["scan"]["nominal_positions_m"] for s in starts)
    np.testing.assert_allclose(first, second, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        np.asarray(first) / SCALE, patterns.raster(3, 3, 0.5, center=(1.0, 2.0))
    )
    np.testing.assert_allclose([sy.position, sx.position], [1.0, 2.0], rtol=0, atol=1e-12)


def test_relative_scan_returns_motors_after_a_failure(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    sy.set(0.5).wait()
    sx.set(-0.5).wait()
    calls = []

    def failing_step(detectors: Any, step: Any, pos_cache: Any) -> Any:
        calls.append(dict(step))
        yield from bps.one_nd_step(detectors, step, pos_cache)
        if len(calls) == 3:
            raise RuntimeError("beam lost")

    with pytest.raises(RuntimeError, match="beam lost"):
        RE(
            P.rel_spirangle_ptycho(
                [det], sx, sy, setup=_setup(), n_side=3, step=1.0, per_step=failing_step
            )
        )
    assert len(_events(docs)) == 3
    np.testing.assert_allclose([sy.position, sx.position], [0.5, -0.5], rtol=0, atol=1e-12)


def test_relative_scan_with_unusable_position_emits_nothing(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    sx.set(math.nan).wait()
    plan = P.rel_raster_ptycho([det], sx, sy, setup=_setup(), n_side=3, step=1.0)
    with pytest.raises(ValueError, match="sx"):
        RE(plan)
    assert docs == []


# --------------------------------------------------------------------------------------------
# shortcuts
# --------------------------------------------------------------------------------------------

SHORTCUTS = [
    ("fermat_spiral_ptycho", "fermat", False, {"num_points": 9, "step": 1.0}),
    ("spirangle_ptycho", "spirangle", False, {"n_side": 3, "step": 1.0}),
    ("raster_ptycho", "raster", False, {"n_side": 3, "step": 1.0}),
    ("meander_ptycho", "meander", False, {"n_rows": 3, "n_cols": 3, "step": 1.0}),
    ("random_ptycho", "random", False, {"n_side": 3, "step": 1.0}),
    ("rel_fermat_spiral_ptycho", "fermat", True, {"num_points": 9, "step": 1.0}),
    ("rel_spirangle_ptycho", "spirangle", True, {"n_side": 3, "step": 1.0}),
    ("rel_raster_ptycho", "raster", True, {"n_side": 3, "step": 1.0}),
    ("rel_meander_ptycho", "meander", True, {"n_rows": 3, "n_cols": 3, "step": 1.0}),
    ("rel_random_ptycho", "random", True, {"n_side": 3, "step": 1.0}),
]


@pytest.mark.parametrize(("name", "pattern", "relative", "kwargs"), SHORTCUTS)
def test_shortcuts(
    RE: RunEngine,
    docs: Docs,
    sx: SynAxis,
    sy: SynAxis,
    det: SynGauss,
    name: str,
    pattern: str,
    relative: bool,
    kwargs: dict[str, Any],
) -> None:
    plan = getattr(P, name)
    assert name in P.__all__
    assert plan.__name__ == name
    params = inspect.signature(plan).parameters
    assert "pattern" not in params
    assert {"setup", "step", "center", "per_step", "md"} <= set(params)
    assert ("relative" in params) is not relative
    with pytest.raises(TypeError):
        plan([det], sx, sy, setup=_setup(), pattern="raster", **kwargs)

    sy.set(10.0).wait()
    sx.set(20.0).wait()
    RE(plan([det], sx, sy, setup=_setup(), **kwargs))
    start = _start(docs)
    assert start["plan_name"] == name
    assert start["ptycho"]["scan"]["pattern"] == pattern
    first = np.asarray(start["ptycho"]["scan"]["nominal_positions_m"])[0] / SCALE
    offset = np.array([10.0, 20.0]) if relative else np.zeros(2)
    expected_first = P.nominal_positions(pattern, **kwargs)[0]
    np.testing.assert_allclose(first, expected_first + offset, atol=1e-9)
    last = (10.0, 20.0) if relative else tuple(_readbacks(docs, ["sy", "sx"])[-1])
    np.testing.assert_allclose([sy.position, sx.position], last, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# setup and md
# --------------------------------------------------------------------------------------------


def test_setup_as_scansetup_is_completed_by_the_plan(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    template = ScanSetup(
        energy_eV=9000.0,
        detector_distance_m=1.5,
        detector_pixel_m=55e-6,
        crop=32,
        detector_key="det",
        position_keys=("enc_y", "enc_x"),
        position_scale_m=1e-3,
        extent_m=((0.0, 1e-5), (0.0, 1e-5)),
        num_points=1000,
        pattern="nonsense",
    )
    RE(P.raster_ptycho([det], sx, sy, setup=template, n_side=3, step=0.01))
    setup = ScanSetup.from_start_doc(_start(docs)["ptycho"])
    assert setup.position_keys == ("sy", "sx")
    assert setup.pattern == "raster"
    assert setup.num_points == 9
    assert setup.extent_m is None
    assert setup.energy_eV == 9000.0
    np.testing.assert_allclose(setup.nominal_positions_m, patterns.raster(3, 3, 0.01) * 1e-3)


def test_setup_in_start_document_form(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    form = {
        "energy_eV": 8000.0,
        "detector_distance_m": 2.0,
        "detector_pixel_m": 75e-6,
        "crop": 64,
        "orientation": {"transpose": True, "flip_rows": False, "flip_cols": True},
        "detector_key": "det",
        "position_scale_m": 1e-9,
    }
    RE(P.spirangle_ptycho([det], sx, sy, setup=form, n_side=3, step=100.0))
    setup = ScanSetup.from_start_doc(_start(docs)["ptycho"])
    assert setup.transpose and setup.flip_cols and not setup.flip_rows
    np.testing.assert_allclose(setup.nominal_positions_m, patterns.spirangle(3, 100.0) * 1e-9)


def test_user_md_merges_over_the_plans(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    md = {
        "sample": "siemens star",
        "plan_name": "my_scan",
        "hints": {"gridding": "scatter"},
        "ptycho": {
            "mask": [[1, 2], [3, 4]],
            "position_keys": ["enc_y", "enc_x"],
            "scan": {"note": "first light"},
        },
    }
    RE(P.raster_ptycho([det], sx, sy, setup=_setup(), n_side=3, step=1.0, md=md))
    start = _start(docs)
    assert start["sample"] == "siemens star"
    assert start["plan_name"] == "my_scan"
    assert start["hints"]["gridding"] == "scatter"
    assert start["hints"]["dimensions"] == [[["sy"], "primary"], [["sx"], "primary"]]
    ptycho = start["ptycho"]
    assert ptycho["mask"] == [[1, 2], [3, 4]]
    assert ptycho["position_keys"] == ["enc_y", "enc_x"]
    assert ptycho["scan"]["note"] == "first light"
    assert ptycho["scan"]["num_points"] == 9
    assert len(ptycho["scan"]["nominal_positions_m"]) == 9
    assert ptycho["energy_eV"] == 8000.0
    ScanSetup.from_start_doc(ptycho)
    assert md["ptycho"]["scan"] == {"note": "first light"}  # caller's dict untouched


def test_per_step_is_used(
    RE: RunEngine, docs: Docs, sx: SynAxis, sy: SynAxis, det: SynGauss
) -> None:
    seen: list[tuple[float, float]] = []

    def per_step(detectors: Any, step: Any, pos_cache: Any) -> Any:
        seen.append((step[sy], step[sx]))
        yield from bps.one_nd_step(detectors, step, pos_cache)

    RE(
        P.meander_ptycho(
            [det], sx, sy, setup=_setup(), n_rows=3, n_cols=3, step=1.0, per_step=per_step
        )
    )
    np.testing.assert_array_equal(seen, patterns.meander(3, 3, 1.0))  # commanded: exact
    assert len(_events(docs)) == 9
    assert "per_step" in _start(docs)["plan_args"]["per_step"]


def test_ophyd_async_motor_readback_keys(RE: RunEngine, docs: Docs) -> None:
    from ophyd_async.core import init_devices
    from ophyd_async.sim import SimMotor

    with init_devices():
        ay = SimMotor(name="ay")
        ax = SimMotor(name="ax")
    RE(P.spirangle_ptycho([], ax, ay, setup=_setup(), n_side=3, step=1.0))
    start = _start(docs)
    keys = start["ptycho"]["position_keys"]
    assert keys == [ay.user_readback.name, ax.user_readback.name]
    events = _events(docs)
    assert len(events) == 9
    np.testing.assert_allclose(_readbacks(docs, keys), patterns.spirangle(3, 1.0))


# --------------------------------------------------------------------------------------------
# bad arguments: ValueError at call time, no documents
# --------------------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"pattern": "zigzag", "n_side": 3}, "zigzag"),
    ({"pattern": "spirangle"}, "n_side"),
    ({"pattern": "spirangle", "n_side": 3, "num_points": 9}, "num_points"),
    ({"pattern": "spirangle", "n_side": 3, "direction": "sideways"}, "direction"),
    ({"pattern": "spirangle", "n_side": 3, "step": (1.0, 2.0)}, "step"),
    ({"pattern": "raster", "n_rows": 3}, "n_cols"),
    ({"pattern": "raster", "n_cols": 3}, "n_rows"),
    ({"pattern": "raster", "n_side": 3, "n_rows": 3}, "n_side"),
    ({"pattern": "raster", "n_side": 3, "direction": "inward"}, "direction"),
    ({"pattern": "raster", "n_side": 3, "seed": 5}, "seed"),
    ({"pattern": "meander", "n_side": 0}, "n_side"),
    ({"pattern": "meander", "n_side": 2.5}, "n_side"),
    ({"pattern": "random", "n_side": 3, "seed": "x"}, "seed"),
    ({"pattern": "fermat"}, "num_points"),
    ({"pattern": "fermat", "num_points": 9, "extent": ((0, 1), (0, 1))}, "extent"),
    ({"pattern": "fermat", "extent": ((0, 1), (0, 1)), "center": (0, 0)}, "center"),
    ({"pattern": "fermat", "extent": ((0, 1),)}, "extent"),
    ({"pattern": "fermat", "num_points": 9, "n_rows": 3}, "n_rows"),
    ({"pattern": "raster", "n_side": 3, "step": -1.0}, "step"),
    ({"pattern": "raster", "n_side": 3, "step": math.inf}, "step"),
    ({"pattern": "raster", "n_side": 3, "center": (1.0,)}, "center"),
    ({"pattern": "raster", "n_side": 3, "center": (1.0, math.nan)}, "center"),
    ({"pattern": "raster", "n_side": 3, "setup": "nope"}, "setup"),
    ({"pattern": "raster", "n_side": 3, "setup": _setup(crop=100)}, "crop"),
    ({"pattern": "raster", "n_side": 3, "setup": _setup(colour="red")}, "colour"),
    (
        {"pattern": "raster", "n_side": 3, "setup": {"energy_eV": 8000.0, "crop": 64}},
        "detector_distance_m",
    ),
    ({"pattern": "raster", "n_side": 3, "setup": _setup(position_scale_m=0)}, "position_scale"),
    ({"pattern": "raster", "n_side": 3, "setup": _setup(beam_center_px=5)}, "beam_center_px"),
    ({"pattern": "raster", "n_side": 3, "md": {"ptycho": {"crop": 3}}}, "crop"),
    ({"pattern": "raster", "n_side": 3, "md": {"ptycho": "x"}}, "ptycho"),
    ({"pattern": "raster", "n_side": 3, "md": ["x"]}, "md"),
    ({"pattern": "raster", "n_side": 3, "per_step": lambda detectors: None}, "per_step"),
    ({"pattern": "raster", "n_side": 3, "per_step": 3}, "per_step"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_before_any_document(
    RE: RunEngine,
    docs: Docs,
    sx: SynAxis,
    sy: SynAxis,
    det: SynGauss,
    kwargs: dict[str, Any],
    match: str,
) -> None:
    call = {"setup": _setup(), "step": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        P.ptycho_scan([det], sx, sy, **call)  # raised at call time, nothing yielded
    with pytest.raises(ValueError, match=match):
        RE(P.ptycho_scan([det], sx, sy, **call))
    assert docs == []


def test_bad_devices(sx: SynAxis, sy: SynAxis, det: SynGauss) -> None:
    with pytest.raises(ValueError, match="detectors"):
        P.raster_ptycho(det, sx, sy, setup=_setup(), n_side=3, step=1.0)
    with pytest.raises(ValueError, match="different"):
        P.raster_ptycho([det], sx, sx, setup=_setup(), n_side=3, step=1.0)
    with pytest.raises(ValueError, match="y_motor"):
        P.raster_ptycho([det], sx, "sy", setup=_setup(), n_side=3, step=1.0)
    with pytest.raises(ValueError, match="n_side"):
        P.nominal_positions("spirangle", 1.0)
