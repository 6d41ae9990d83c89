"""Tests for bluesky_ptycho.geometry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bluesky_ptycho.geometry import HC_EV_M, Geometry, ObjectFrame, wavelength_m
from bluesky_ptycho.patterns import raster

STUDY = {"energy_eV": 13500.0, "detector_distance_m": 3.2, "detector_pixel_m": 75e-6}


@pytest.fixture
def geom() -> Geometry:
    return Geometry(shape=256, **STUDY)


def test_wavelength_13p5_kev(geom: Geometry) -> None:
    # 12.398419843320026 keV·Å / 13.5 keV = 0.91840147 Å
    assert geom.wavelength_m == pytest.approx(0.918401469875557e-10, rel=1e-12)
    assert wavelength_m(13500.0) == geom.wavelength_m
    assert HC_EV_M / 1000.0 == pytest.approx(12.398419843320026e-10)


def test_study_pixel_size_is_15p31_nm(geom: Geometry) -> None:
    row, col = geom.pixel_size_m
    assert row == col
    assert float(f"{row * 1e9:.4g}") == 15.31
    assert geom.square_pixel_size_m == pytest.approx(15.3067e-9, rel=1e-5)


def test_shape_int_and_tuple_equivalent(geom: Geometry) -> None:
    g2 = Geometry(shape=(256, 256), **STUDY)
    assert geom.frame_shape == (256, 256)
    assert g2 == geom
    assert Geometry(shape=np.int64(128), **STUDY).frame_shape == (128, 128)


def test_rectangular_frame_pixel_sizes() -> None:
    g = Geometry(shape=(128, 256), **STUDY)
    row, col = g.pixel_size_m
    assert row == pytest.approx(2 * col)
    assert col == pytest.approx(Geometry(shape=256, **STUDY).square_pixel_size_m)
    with pytest.raises(ValueError, match="not square"):
        _ = g.square_pixel_size_m


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("energy_eV", 0.0),
        ("energy_eV", -1.0),
        ("energy_eV", math.nan),
        ("detector_distance_m", math.inf),
        ("detector_distance_m", "3.2"),
        ("detector_pixel_m", 0),
        ("detector_pixel_m", True),
        ("shape", 0),
        ("shape", -256),
        ("shape", 256.5),
        ("shape", (256, 0)),
        ("shape", (256, 256, 256)),
    ],
)
def test_invalid_geometry_names_field(field: str, value: object) -> None:
    kwargs = {**STUDY, "shape": 256, field: value}
    with pytest.raises(ValueError, match=field):
        Geometry(**kwargs)  # type: ignore[arg-type]


def test_geometry_dict_round_trip(geom: Geometry) -> None:
    d = geom.to_dict()
    # plain JSON types only
    assert json.loads(json.dumps(d)) == d
    assert d["shape"] == [256, 256]
    assert Geometry.from_dict(json.loads(json.dumps(d))) == geom
    rect = Geometry(shape=(128, 64), **STUDY)
    assert Geometry.from_dict(rect.to_dict()) == rect


def test_geometry_from_start_document_dict(geom: Geometry) -> None:
    ptycho = {**STUDY, "crop": 256, "beam_center_px": [514, 1030], "detector_key": "eiger"}
    assert Geometry.from_dict(ptycho) == geom
    with pytest.raises(ValueError, match="energy_eV"):
        Geometry.from_dict({"detector_distance_m": 3.2, "detector_pixel_m": 75e-6, "shape": 8})
    with pytest.raises(ValueError, match="shape"):
        Geometry.from_dict(STUDY)


# --- object frame -----------------------------------------------------------------------------


def test_object_shape_for_study_raster(geom: Geometry) -> None:
    pos = raster(21, 21, 50e-9)
    frame = geom.object_frame(pos, margin_px=8)
    # extent 20 * 50 nm = 1000 nm = 65.33 px -> 66; + 256 probe + 2 * 8 margin
    assert 1000e-9 / geom.square_pixel_size_m == pytest.approx(65.33, abs=0.01)
    assert frame.object_shape == (338, 338)
    assert frame.probe_shape == (256, 256)
    assert frame.pixel_size_m == geom.pixel_size_m
    px = frame.to_pixels(pos)
    np.testing.assert_allclose(px.min(axis=0), [8.0, 8.0], atol=1e-9)
    np.testing.assert_allclose(px.max(axis=0), [8.0 + 65.3313, 8.0 + 65.3313], atol=1e-3)


def test_object_shape_margin_zero_and_rect_scan(geom: Geometry) -> None:
    p = geom.square_pixel_size_m
    # exactly 10 px along rows, 3.5 px along columns
    pos = np.array([[0.0, 0.0], [10 * p, 3.5 * p]])
    frame = geom.object_frame(pos, margin_px=0)
    assert frame.object_shape == (10 + 256, 4 + 256)
    assert frame.origin_m == (0.0, 0.0)


def test_single_position_frame(geom: Geometry) -> None:
    frame = geom.object_frame([[1e-6, -2e-6]], margin_px=3)
    assert frame.object_shape == (262, 262)
    np.testing.assert_allclose(frame.to_pixels([[1e-6, -2e-6]]), [[3.0, 3.0]])


def test_round_trip_pixels_metres(geom: Geometry) -> None:
    pos = raster(5, 7, (40e-9, 30e-9), center=(2e-6, -1e-6))
    frame = geom.object_frame(pos)
    rng = np.random.default_rng(1)
    measured = pos + rng.normal(scale=3e-9, size=pos.shape)
    px = frame.to_pixels(measured)
    assert px.dtype == np.float64
    assert px.shape == measured.shape
    np.testing.assert_allclose(frame.to_metres(px), measured, rtol=0, atol=1e-18)
    # linear, no sign flip: +1 pixel along rows is +pixel_size metres along rows
    delta = frame.to_metres([[1.0, 0.0]]) - frame.to_metres([[0.0, 0.0]])
    np.testing.assert_allclose(delta, [[geom.pixel_size_m[0], 0.0]], rtol=1e-9)


def test_nominal_positions_inside_and_outside_margin(geom: Geometry) -> None:
    pos = raster(21, 21, 50e-9)
    frame = geom.object_frame(pos, margin_px=8)
    assert frame.contains(frame.to_pixels(pos)).all()
    p = geom.square_pixel_size_m
    lo = pos.min(axis=0)
    hi = pos.max(axis=0)
    probes = np.array(
        [
            lo - 7.9 * p,  # within the margin: still inside
            lo - 8.6 * p,  # beyond the margin on the low side
            hi + np.array([7.0 * p, 0.0]),  # within the margin on the high side
            hi + np.array([0.0, 12.0 * p]),  # beyond the margin on the high side (cols)
            [lo[0] - 20 * p, 0.0],  # beyond on rows only
        ]
    )
    inside = frame.contains(frame.to_pixels(probes))
    assert inside.tolist() == [True, False, True, False, False]


def test_contains_rounding_boundary() -> None:
    frame = ObjectFrame((1e-8, 1e-8), (0.0, 0.0), (20, 30), (16, 16))
    px = np.array([[0.0, 0.0], [-0.49, 0.0], [-0.5, 0.0], [4.49, 14.0], [4.5, 14.0], [4.0, 14.6]])
    assert frame.contains(px).tolist() == [True, True, True, True, False, False]


def test_object_frame_from_extent_matches_positions(geom: Geometry) -> None:
    pos = raster(21, 11, (50e-9, 80e-9), center=(1e-6, 3e-6))
    from_pos = geom.object_frame(pos)
    ext = [[pos[:, 0].max(), pos[:, 0].min()], [pos[:, 1].min(), pos[:, 1].max()]]
    assert geom.object_frame_from_extent(ext) == from_pos
    assert geom.object_frame(extent_m=ext) == from_pos


def test_object_frame_bad_inputs(geom: Geometry) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        geom.object_frame()
    with pytest.raises(ValueError, match="exactly one"):
        geom.object_frame([[0.0, 0.0]], extent_m=[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="nominal_positions_m"):
        geom.object_frame(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="nominal_positions_m"):
        geom.object_frame([[0.0, np.nan]])
    with pytest.raises(ValueError, match="nominal_positions_m"):
        geom.object_frame(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="margin_px"):
        geom.object_frame([[0.0, 0.0]], margin_px=-1)
    with pytest.raises(ValueError, match="extent_m"):
        geom.object_frame_from_extent([0.0, 1.0])


def test_object_frame_validation() -> None:
    with pytest.raises(ValueError, match="pixel_size_m"):
        ObjectFrame((0.0, 1e-8), (0.0, 0.0), (32, 32), (16, 16))
    with pytest.raises(ValueError, match="origin_m"):
        ObjectFrame((1e-8, 1e-8), (math.nan, 0.0), (32, 32), (16, 16))
    with pytest.raises(ValueError, match="object_shape"):
        ObjectFrame((1e-8, 1e-8), (0.0, 0.0), (8, 32), (16, 16))
    with pytest.raises(ValueError, match="positions_px"):
        ObjectFrame((1e-8, 1e-8), (0.0, 0.0), (32, 32), (16, 16)).contains([1.0, 2.0, 3.0])


def test_object_frame_dict_round_trip(geom: Geometry) -> None:
    frame = geom.object_frame(raster(3, 4, 100e-9, center=(5e-6, -5e-6)))
    d = frame.to_dict()
    assert json.loads(json.dumps(d)) == d
    back = ObjectFrame.from_dict(json.loads(json.dumps(d)))
    assert back == frame
    assert isinstance(back.object_shape, tuple)
    with pytest.raises(ValueError, match="origin_m"):
        ObjectFrame.from_dict({k: v for k, v in d.items() if k != "origin_m"})


def test_axes_m_put_beam_centre_at_position(geom: Geometry) -> None:
    pos = raster(3, 3, 200e-9)
    frame = geom.object_frame(pos)
    rows, cols = frame.axes_m()
    assert rows.shape == (frame.object_shape[0],)
    assert cols.shape == (frame.object_shape[1],)
    # beam centre of the patch for pos[4] is object pixel corner + N // 2
    corner = np.floor(frame.to_pixels(pos[4]) + 0.5).astype(int)
    centre = corner + 128
    p = geom.square_pixel_size_m
    assert abs(rows[centre[0]] - pos[4, 0]) <= 0.5 * p
    assert abs(cols[centre[1]] - pos[4, 1]) <= 0.5 * p
