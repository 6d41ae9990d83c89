"""What the operator's panel computes, without Qt (``bluesky_ptycho.panel``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bluesky_ptycho.panel import (
    COMMAND_STATES,
    DEFAULT_DEVICE,
    RatioTrace,
    allowed_commands,
    beam_centres,
    colour_levels,
    image_frame,
    log_ticks,
    taurus_device_name,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("bl/ptycho/1", "tango://bl/ptycho/1"),
        ("tango://dbhost:10000/bl/ptycho/1", "tango://dbhost:10000/bl/ptycho/1"),
        ("tango-nodb://127.0.0.1:4545/bl/ptycho/1", "tango-nodb://127.0.0.1:4545/bl/ptycho/1"),
        ("tango://127.0.0.1:4545/bl/ptycho/1#dbase=no", "tango-nodb://127.0.0.1:4545/bl/ptycho/1"),
        (" bl/ptycho/1/ ", "tango://bl/ptycho/1"),
    ],
)
def test_taurus_device_name_accepts_what_an_operator_has_at_hand(given: str, expected: str) -> None:
    assert taurus_device_name(given) == expected


@pytest.mark.parametrize("bad", ["", "bl/ptycho", "epics://x/y/z", "tango://"])
def test_taurus_device_name_refuses_what_is_not_a_device(bad: str) -> None:
    with pytest.raises(ValueError):
        taurus_device_name(bad)


def test_the_default_device_is_the_one_serve_creates() -> None:
    from bluesky_ptycho.serve import DEFAULT_DEVICE as SERVE_DEFAULT

    assert DEFAULT_DEVICE == SERVE_DEFAULT


def test_allowed_commands_follow_the_device_rules() -> None:
    assert allowed_commands("ON") == {"Start", "Reset", "Save", "Replay"}
    assert allowed_commands("RUNNING") == {"Stop", "Save"}
    assert allowed_commands("STANDBY") == {"Stop", "Save"}
    assert allowed_commands("FAULT") == {"Stop", "Reset", "Save"}
    assert allowed_commands("UNKNOWN") == frozenset()
    assert set(COMMAND_STATES) == {"Start", "Stop", "Reset", "Save", "Replay"}


def test_image_frame_in_micrometres_with_the_pixel_size() -> None:
    frame = image_frame((100, 200), (5e-8, 1e-7))
    assert frame.unit == "µm" and frame.scale == pytest.approx((0.05, 0.1))
    assert (frame.x0, frame.y0) == (0.0, 0.0)
    assert frame.width == pytest.approx(20.0) and frame.height == pytest.approx(5.0)
    probe = image_frame((64, 64), (5e-8, 5e-8), centred=True)
    assert probe.x0 == pytest.approx(-1.6) and probe.y0 == pytest.approx(-1.6)


@pytest.mark.parametrize("pixel", [(math.nan, math.nan), (0.0, 1e-8), (), (1e-8,)])
def test_image_frame_falls_back_to_pixels(pixel: tuple[float, ...]) -> None:
    frame = image_frame((10, 20), pixel)
    assert frame.unit == "px" and frame.width == 20 and frame.height == 10


def test_beam_centres_are_patch_corners_plus_half_the_probe() -> None:
    frame = image_frame((100, 100), (1e-7, 1e-7))
    x, y = beam_centres([[0.0, 10.0], [20.0, 0.0]], (8, 8), frame)
    # corner (row 0, col 10) + 4 px + half a pixel -> col 14.5, row 4.5, times 0.1 um
    np.testing.assert_allclose(x, [1.45, 0.45])
    np.testing.assert_allclose(y, [0.45, 2.45])
    ex, ey = beam_centres(np.zeros((0, 2)), (8, 8), frame)
    assert ex.size == 0 and ey.size == 0


def test_colour_levels_are_finite_and_distinct() -> None:
    assert colour_levels([[0.0, 2.0], [np.nan, 1.0]]) == (0.0, 2.0)
    assert colour_levels(np.zeros((0, 0))) == (0.0, 1.0)
    assert colour_levels([[np.nan]]) == (0.0, 1.0)
    assert colour_levels([[3.0, 3.0]]) == (2.5, 3.5)


def test_ratio_trace_restarts_for_a_new_run_and_skips_nan() -> None:
    trace = RatioTrace()
    trace.add("a", 10.0, math.nan)
    trace.add("a", 11.0, 0.9)
    trace.add("a", 12.5, 0.4)
    assert trace.times == [1.0, 2.5] and trace.ratios == [0.9, 0.4]
    trace.add("b", 20.0, 0.8)
    assert trace.uid == "b" and trace.times == [0.0] and trace.ratios == [0.8]
    trace.add("", 21.0, 0.5)  # no run shown (after Reset): nothing to trace
    assert trace.ratios == []


def test_log_ticks_are_one_two_five_and_bracket_the_values() -> None:
    assert log_ticks([0.0026, 0.03]) == [0.002, 0.005, 0.01, 0.02, 0.05]
    assert log_ticks([3.0]) == [2.0, 5.0]
    assert log_ticks([1.0, 1.0]) == [1.0]
    assert log_ticks([np.nan, -1.0, 0.0]) == []
