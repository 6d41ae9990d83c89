"""bluesky_ptycho.validation: one check per kind of input, each message naming the parameter."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from bluesky_ptycho import validation as v


@pytest.mark.parametrize(
    ("check", "good", "expected"),
    [
        (v.check_finite_scalar, -2, -2.0),
        (v.check_finite_scalar, np.float32(1.5), 1.5),
        (v.check_finite_scalar, np.array(3.0), 3.0),
        (v.check_positive_scalar, 1e-9, 1e-9),
        (v.check_non_negative_scalar, 0, 0.0),
        (v.check_positive_int, np.int64(7), 7),
        (v.check_non_negative_int, 0, 0),
    ],
)
def test_scalar_checks_return_the_canonical_value(check: Any, good: Any, expected: Any) -> None:
    out = check("x", good)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("check", "bad", "phrase"),
    [
        (v.check_finite_scalar, math.nan, "a finite number"),
        (v.check_finite_scalar, math.inf, "a finite number"),
        (v.check_finite_scalar, "1.0", "a finite number"),
        (v.check_finite_scalar, True, "a finite number"),
        (v.check_finite_scalar, None, "a finite number"),
        (v.check_positive_scalar, 0.0, "a positive finite number"),
        (v.check_positive_scalar, -1, "a positive finite number"),
        (v.check_positive_scalar, -math.inf, "a positive finite number"),
        (v.check_non_negative_scalar, -1e-300, "a non-negative finite number"),
        (v.check_positive_int, 0, "a positive integer"),
        (v.check_positive_int, 4.0, "a positive integer"),
        (v.check_positive_int, False, "a positive integer"),
        (v.check_non_negative_int, -1, "a non-negative integer"),
        (v.check_non_negative_int, "3", "a non-negative integer"),
    ],
)
def test_scalar_checks_name_the_parameter_and_the_value(check: Any, bad: Any, phrase: str) -> None:
    with pytest.raises(ValueError) as info:
        check("ScanSetup.energy_eV", bad)
    text = str(info.value)
    assert text.startswith(f"ScanSetup.energy_eV must be {phrase}, got ")
    assert repr(bad) in text


def test_pair_checks_each_element_under_its_own_name() -> None:
    assert v.check_pair("center", (1, np.float64(2))) == (1.0, 2.0)
    assert v.check_pair("step_m", 2e-6, v.check_positive_scalar, scalar_ok=True) == (2e-6, 2e-6)
    with pytest.raises(ValueError, match=r"^center must be a pair \(y, x\), got 5"):
        v.check_pair("center", 5, what="(y, x)")
    with pytest.raises(ValueError, match=r"^center must be a pair \(row, col\), got \(1, 2, 3\)"):
        v.check_pair("center", (1, 2, 3))
    with pytest.raises(ValueError, match=r"^step\[1\] must be a positive finite number, got -1"):
        v.check_pair("step", (1.0, -1), v.check_positive_scalar)
    with pytest.raises(ValueError, match=r"^shape must be a pair"):
        v.check_pair("shape", "ab", v.check_positive_int)


def test_positions_are_float64_n_by_2_and_finite() -> None:
    pos = v.check_positions("positions_px", [[1, 2], [3, 4]])
    assert pos.dtype == np.float64 and pos.shape == (2, 2)
    assert v.check_positions("positions_px", (5, 6), single_ok=True).shape == (1, 2)
    with pytest.raises(ValueError, match=r"^positions_px must have shape \(n, 2\)"):
        v.check_positions("positions_px", (5, 6))
    with pytest.raises(ValueError, match=r"^positions_px must have shape \(3, 2\) for 3 frame"):
        v.check_positions("positions_px", [[1, 2], [3, 4]], n=3)
    bad = np.zeros((30, 2))
    bad[[4, 17], 1] = [np.nan, -np.inf]
    with pytest.raises(ValueError, match=r"^positions_px contains NaN or infinite .*\[4, 17\]$"):
        v.check_positions("positions_px", bad)
    with pytest.raises(ValueError, match=r"^positions_px must be numbers"):
        v.check_positions("positions_px", [["a", "b"]])


def test_extent_is_two_by_two_and_finite() -> None:
    ext = v.check_extent("extent_m", ((1, 0), (0, 2)))
    np.testing.assert_array_equal(ext, [[1, 0], [0, 2]])  # not reordered
    with pytest.raises(ValueError, match=r"^extent_m must be \(\(r0, r1\), \(c0, c1\)\)"):
        v.check_extent("extent_m", (0, 1))
    with pytest.raises(ValueError, match=r"^extent_m contains NaN or infinite"):
        v.check_extent("extent_m", ((0, np.nan), (0, 1)))


def test_frames_are_n_h_w_real_and_finite_without_a_copy() -> None:
    frames = np.ones((3, 4, 4), dtype=np.float32)
    out = v.check_frames("frames", frames, (4, 4))
    assert np.shares_memory(out, frames)
    assert v.check_frames("frames", np.ones((4, 4), np.uint32)).shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"^frames must have shape \(n, H, W\) or \(H, W\)"):
        v.check_frames("frames", np.ones(4))
    with pytest.raises(ValueError, match=r"^frames must have frames of shape \(8, 8\)"):
        v.check_frames("frames", frames, (8, 8))
    with pytest.raises(ValueError, match=r"^frames must be real numbers, got dtype complex"):
        v.check_frames("frames", frames.astype(np.complex64))
    frames[1, 0, 0] = np.nan
    frames[2, 3, 3] = np.inf
    with pytest.raises(ValueError, match=r"^frames contains NaN or infinite .*frame\(s\) \[1, 2\]"):
        v.check_frames("frames", frames)


def test_many_bad_frames_are_listed_briefly() -> None:
    frames = np.full((50, 2, 2), np.nan)
    with pytest.raises(ValueError) as info:
        v.check_frames("frames", frames)
    assert re.search(r"\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]", str(info.value))


def test_mask_is_boolean_of_the_frame_shape_or_one_per_frame() -> None:
    mask = np.zeros((4, 4), bool)
    assert v.check_mask("mask", mask, (4, 4)) is not None
    per_frame = v.check_mask("mask", mask, (4, 4), n=3)
    assert per_frame.shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"^mask must be boolean \(True = bad pixel\)"):
        v.check_mask("mask", mask.astype(np.uint8), (4, 4))
    with pytest.raises(ValueError, match=r"^mask must have shape \(4, 4\), got shape \(3, 4\)"):
        v.check_mask("mask", np.zeros((3, 4), bool), (4, 4))
    with pytest.raises(ValueError, match=r"^mask must have shape \(4, 4\) or \(2, 4, 4\)"):
        v.check_mask("mask", np.zeros((3, 4, 4), bool), (4, 4), n=2)


def test_finite_array() -> None:
    assert v.check_finite_array("probe", np.ones(3, np.complex64)).dtype == np.complex64
    with pytest.raises(ValueError, match=r"^probe contains NaN or infinite values"):
        v.check_finite_array("probe", [1.0, complex(np.nan, 0)])
    with pytest.raises(ValueError, match=r"^probe must be numbers"):
        v.check_finite_array("probe", ["x"])


def test_the_module_imports_only_numpy_and_the_standard_library() -> None:
    # loaded on its own (not through the package, whose __init__ imports the engine)
    code = (
        "import importlib.util, sys; import numpy, numpy.typing; before = set(sys.modules); "
        f"spec = importlib.util.spec_from_file_location('validation', {v.__file__!r}); "
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(m for m in new if m not in sys.stdlib_module_names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert ast.literal_eval(out) == []
