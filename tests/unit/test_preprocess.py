"""Tests of bluesky_ptycho.preprocess: crop, orientation, masks, binning, config round trips."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

import numpy as np
import pytest

from bluesky_ptycho.preprocess import (
    Orientation,
    PreprocessConfig,
    PreprocessedFrames,
    apply_orientation,
    bin_frames,
    crop_centered,
    detector_flag,
    flagged_pixels,
    is_power_of_two,
    orientation_from_dict,
    oriented_beam_center,
    preprocess,
    to_amplitude,
)

ORIENTATIONS = [
    dict(zip(("transpose", "flip_rows", "flip_cols"), combo, strict=True))
    for combo in itertools.product([False, True], repeat=3)
]


def _ids(o: dict[str, bool]) -> str:
    return "-".join(k for k, v in o.items() if v) or "none"


def numpy_orient(frame: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool):
    """The documented order (docs/explanation/architecture.md) in plain NumPy on one frame."""
    if transpose:
        frame = np.transpose(frame)
    if flip_rows:
        frame = np.flipud(frame)
    if flip_cols:
        frame = np.fliplr(frame)
    return frame


def reference(raw: np.ndarray, n: int, beam: tuple[int, int], orient: dict[str, bool]):
    """Independent reference: orient the raw frame with NumPy, find where the beam pixel went
    (by tracking pixel indices), and cut the window with zero padding."""
    h, w = raw.shape
    index = np.arange(h * w).reshape(h, w)
    o_raw = numpy_orient(raw, **orient)
    o_index = numpy_orient(index, **orient)
    r, c = np.argwhere(o_index == beam[0] * w + beam[1])[0]
    pad = n + 2
    padded = np.pad(o_raw.astype(np.float64), pad, constant_values=0)
    inside = np.pad(np.ones(o_raw.shape, dtype=bool), pad, constant_values=False)
    r0, c0 = r - n // 2 + pad, c - n // 2 + pad
    return padded[r0 : r0 + n, c0 : c0 + n], ~inside[r0 : r0 + n, c0 : c0 + n]


def asym_frame(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=shape).astype(np.uint16)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def test_is_power_of_two() -> None:
    assert [n for n in range(-4, 70) if is_power_of_two(n)] == [1, 2, 4, 8, 16, 32, 64]
    assert is_power_of_two(np.int64(256))
    assert not is_power_of_two(4.0)
    assert not is_power_of_two(True)
    assert not is_power_of_two("4")


def test_to_amplitude() -> None:
    i = np.array([[4.0, -1.0], [np.nan, 2.25]])
    a = to_amplitude(i)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.array([[2.0, 0.0], [0.0, 1.5]], dtype=np.float32))


# ------------------------------------------------------------------------------------------
# orientation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orient", ORIENTATIONS, ids=_ids)
def test_apply_orientation_matches_numpy_order(orient: dict[str, bool]) -> None:
    frame = asym_frame((5, 7))
    expected = numpy_orient(frame, **orient)
    np.testing.assert_array_equal(apply_orientation(frame, **orient), expected)
    stack = np.stack([frame, frame + 1, frame * 2])
    out = apply_orientation(stack, **orient)
    for k in range(3):
        np.testing.assert_array_equal(out[k], numpy_orient(stack[k], **orient))


def test_orientation_order_is_transpose_then_flips() -> None:
    frame = asym_frame((4, 6))
    # transpose-then-flipud differs from flipud-then-transpose on a non-square frame
    got = apply_orientation(frame, transpose=True, flip_rows=True)
    np.testing.assert_array_equal(got, np.flipud(frame.T))
    assert not np.array_equal(np.flipud(frame.T), np.fliplr(frame.T))


@pytest.mark.parametrize("orient", ORIENTATIONS, ids=_ids)
def test_oriented_beam_center_tracks_pixel(orient: dict[str, bool]) -> None:
    raw = np.zeros((9, 14))
    raw[2, 11] = 1
    r, c = oriented_beam_center((2, 11), raw.shape, **orient)
    assert apply_orientation(raw, **orient)[r, c] == 1


def test_orientation_from_dict() -> None:
    o = orientation_from_dict({"transpose": False, "flip_rows": True, "flip_cols": False})
    assert o == Orientation(flip_rows=True)
    assert orientation_from_dict(None) == Orientation()
    assert orientation_from_dict({"flip_cols": True}).to_dict() == {
        "transpose": False,
        "flip_rows": False,
        "flip_cols": True,
    }
    with pytest.raises(ValueError, match="flip_rows"):
        orientation_from_dict({"flip_rows": "false"})
    with pytest.raises(ValueError, match="unknown"):
        orientation_from_dict({"rotate": True})


# ------------------------------------------------------------------------------------------
# crop and zero frequency
# ------------------------------------------------------------------------------------------
def test_crop_centered_places_center_and_pads() -> None:
    frame = np.arange(100, dtype=np.int32).reshape(10, 10)
    out = crop_centered(frame, 4, (1, 9))
    assert out.shape == (4, 4)
    assert out[2, 2] == frame[1, 9]
    np.testing.assert_array_equal(out[0], 0)  # row -1 is outside
    np.testing.assert_array_equal(out[:, 3], 0)  # column 10 is outside
    np.testing.assert_array_equal(out[1:, :3], frame[0:3, 7:10])
    m = crop_centered(np.zeros((10, 10), dtype=bool), 4, (1, 9), fill_value=True)
    assert m[0].all() and m[:, 3].all() and not m[1:, :3].any()
    # the beam centre is rounded to the nearest pixel, halves up (not to even)
    assert crop_centered(frame, 2, (4.5, 6.5))[1, 1] == frame[5, 7]
    assert crop_centered(frame, 2, (2.49, 3.51))[1, 1] == frame[2, 4]
    # default centre is (H//2, W//2)
    assert crop_centered(frame, 2)[1, 1] == frame[5, 5]


@pytest.mark.parametrize("raw_shape", [(64, 64), (63, 71), (65, 130), (100, 37)])
@pytest.mark.parametrize("beam", [None, (20.0, 30.0), (40.4, 21.5), (3.0, 35.7), (60.0, 2.0)])
@pytest.mark.parametrize("binning", [1, 2, 4])
@pytest.mark.parametrize("orient", ORIENTATIONS, ids=_ids)
def test_bright_pixel_at_beam_centre_lands_at_center(raw_shape, beam, binning, orient) -> None:
    h, w = raw_shape
    n = 16
    expected_pixel = (
        (h // 2, w // 2) if beam is None else tuple(int(np.floor(v + 0.5)) for v in beam)
    )
    raw = np.ones(raw_shape, dtype=np.uint32)
    raw[expected_pixel] = 1000
    cfg = PreprocessConfig(crop=n, beam_center_px=beam, binning=binning, **orient)
    out = preprocess(raw, cfg)
    m = n // binning
    assert out.intensities.shape == (1, m, m)
    assert np.unravel_index(np.argmax(out.intensities[0]), (m, m)) == (m // 2, m // 2)
    # the centre bin holds the bright pixel plus its b*b - 1 neighbours (value 1), unless some
    # of them fall outside the raw frame: then they are zero padding and the bin is masked
    centre = out.intensities[0, m // 2, m // 2]
    full = 1000 + binning**2 - 1
    centre_masked = out.mask is not None and bool(out.mask[0, m // 2, m // 2])
    assert (centre == full) != centre_masked
    assert 1000 <= centre <= full


@pytest.mark.parametrize("orient", ORIENTATIONS, ids=_ids)
@pytest.mark.parametrize("beam", [(20, 30), (2, 5), (45, 48)])
def test_preprocess_matches_numpy_reference(orient: dict[str, bool], beam) -> None:
    raw = asym_frame((47, 50), seed=3)
    n = 16
    out = preprocess(raw, PreprocessConfig(crop=n, beam_center_px=beam, **orient))
    ref, padded = reference(raw, n, beam, orient)
    np.testing.assert_array_equal(out.intensities[0], ref.astype(np.float32))
    if padded.any():
        np.testing.assert_array_equal(out.mask[0], padded)
    else:
        assert out.mask is None


def test_flip_negates_frequency_about_center() -> None:
    """A row flip maps frequency f to -f: output row i holds unflipped row N - i, and row 0
    (frequency -N/2 after the flip) holds the detector's +N/2 row."""
    raw = asym_frame((60, 60), seed=5)
    n, beam = 16, (30, 25)
    plain = preprocess(raw, PreprocessConfig(crop=n, beam_center_px=beam)).intensities[0]
    flipped = preprocess(
        raw, PreprocessConfig(crop=n, beam_center_px=beam, flip_rows=True)
    ).intensities[0]
    for i in range(1, n):
        np.testing.assert_array_equal(flipped[i], plain[n - i])
    np.testing.assert_array_equal(
        flipped[0], raw[beam[0] + n // 2, beam[1] - n // 2 : beam[1] + n // 2]
    )
    cols = preprocess(
        raw, PreprocessConfig(crop=n, beam_center_px=beam, flip_cols=True)
    ).intensities[0]
    for j in range(1, n):
        np.testing.assert_array_equal(cols[:, j], plain[:, n - j])


# ------------------------------------------------------------------------------------------
# binning
# ------------------------------------------------------------------------------------------
def test_bin_frames_sums_blocks() -> None:
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    b = bin_frames(a, 2)
    np.testing.assert_array_equal(
        b, [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    )
    m = np.zeros((2, 4, 4), dtype=bool)
    m[1, 3, 0] = True
    np.testing.assert_array_equal(bin_frames(m, 2), [[[0, 0], [0, 0]], [[0, 0], [1, 0]]])
    with pytest.raises(ValueError, match="binning"):
        bin_frames(a, 3)


@pytest.mark.parametrize("binning", [2, 4, 8])
def test_binning_conserves_counts_and_centres_bins(binning: int) -> None:
    n, beam = 32, (40, 37)
    rng = np.random.default_rng(1)
    raw = np.zeros((80, 90), dtype=np.uint32)
    # counts only well inside the window, so nothing is lost at its edges
    raw[beam[0] - 8 : beam[0] + 8, beam[1] - 8 : beam[1] + 8] = rng.integers(0, 500, (16, 16))
    cfg1 = PreprocessConfig(crop=n, beam_center_px=beam)
    cfgb = PreprocessConfig(crop=n, beam_center_px=beam, binning=binning)
    fine = preprocess(raw, cfg1).intensities
    coarse = preprocess(raw, cfgb).intensities
    assert coarse.shape == (1, n // binning, n // binning)
    assert coarse.sum() == pytest.approx(raw.sum()) == pytest.approx(fine.sum())
    # coarse pixel M//2 sums detector offsets -b//2 .. b - b//2 - 1 around the beam centre
    m = n // binning
    lo, hi = -(binning // 2), binning - binning // 2
    block = raw[beam[0] + lo : beam[0] + hi, beam[1] + lo : beam[1] + hi]
    assert coarse[0, m // 2, m // 2] == block.sum()
    # a single pixel at offset (dr, dc) lands in coarse pixel M//2 + floor((d + b//2) / b)
    for dr, dc in [(0, 0), (-1, 0), (3, -5), (-(binning // 2), binning - binning // 2 - 1)]:
        one = np.zeros_like(raw)
        one[beam[0] + dr, beam[1] + dc] = 7
        out = preprocess(one, cfgb).intensities[0]
        k = (m // 2 + (dr + binning // 2) // binning, m // 2 + (dc + binning // 2) // binning)
        assert out[k] == 7 and out.sum() == 7


def test_binning_matches_bin_frames_of_shifted_fine_window() -> None:
    raw = asym_frame((70, 70), seed=9)
    n, b, beam = 16, 4, (33, 36)
    got = preprocess(raw, PreprocessConfig(crop=n, beam_center_px=beam, binning=b)).intensities
    fine = crop_centered(raw.astype(np.float32), n, (beam[0] - b // 2, beam[1] - b // 2))
    np.testing.assert_array_equal(got[0], bin_frames(fine, b))


# ------------------------------------------------------------------------------------------
# masks, clipping, dtypes
# ------------------------------------------------------------------------------------------
def test_bad_pixel_mask_follows_orientation_and_zeroes_intensity() -> None:
    raw = np.full((40, 40), 5, dtype=np.uint16)
    bad = np.zeros((40, 40), dtype=bool)
    bad[22, 17] = True  # beam (20, 20): offset (+2, -3)
    cfg = PreprocessConfig(crop=16, beam_center_px=(20, 20), mask=bad, transpose=True)
    out = preprocess(raw, cfg)
    expected = np.zeros((16, 16), dtype=bool)
    expected[8 - 3, 8 + 2] = True  # transposed offset (-3, +2)
    np.testing.assert_array_equal(out.mask[0], expected)
    assert out.intensities[0, 5, 10] == 0
    assert (out.intensities[0][~expected] == 5).all()


def test_saturation_nan_and_padding_are_masked() -> None:
    raw = np.full((2, 32, 32), 10.0, dtype=np.float32)
    raw[0, 16, 16] = 100.0  # saturated (at the threshold)
    raw[0, 16, 17] = 99.0  # just below
    raw[1, 15, 15] = np.nan
    raw[1, 14, 14] = np.inf
    cfg = PreprocessConfig(crop=8, beam_center_px=(3, 16), saturation=100.0)
    out = preprocess(raw, cfg)
    mask, inten = out.mask, out.intensities
    assert np.isfinite(inten).all()
    # rows -1 (window rows 0) is outside the frame: padding masked in both frames
    assert mask[:, 0, :].all() and (inten[:, 0, :] == 0).all()
    # frame 0: raw (16, 16) is outside this window; move the beam for saturation checks
    cfg2 = PreprocessConfig(crop=8, beam_center_px=(16, 16), saturation=100.0)
    out2 = preprocess(raw, cfg2)
    assert out2.mask[0, 4, 4] and out2.intensities[0, 4, 4] == 0
    assert not out2.mask[0, 4, 5] and out2.intensities[0, 4, 5] == 99.0
    assert out2.mask[1, 3, 3] and out2.mask[1, 2, 2]
    assert out2.mask.sum() == 3
    assert (out2.intensities[out2.mask] == 0).all()


def test_mask_nonfinite_false_zeroes_without_masking() -> None:
    raw = np.ones((8, 8), dtype=np.float64)
    raw[4, 4] = np.nan
    out = preprocess(raw, PreprocessConfig(crop=8, mask_nonfinite=False))
    assert out.mask is None
    assert out.intensities[0, 4, 4] == 0


def test_binned_pixel_masked_if_any_constituent() -> None:
    raw = np.full((32, 32), 3, dtype=np.int32)
    bad = np.zeros((32, 32), dtype=bool)
    bad[16, 16] = True  # the beam centre itself
    out = preprocess(raw, PreprocessConfig(crop=16, mask=bad, binning=4))
    assert out.mask.shape == (1, 4, 4)
    assert out.mask.sum() == 1 and out.mask[0, 2, 2]
    assert out.intensities[0, 2, 2] == 3 * 15  # bad constituent contributes 0
    assert out.intensities[0, 1, 1] == 3 * 16


def test_negative_counts_are_clipped_not_masked() -> None:
    raw = np.full((16, 16), -4, dtype=np.int32)
    raw[8, 8] = 9
    out = preprocess(raw, PreprocessConfig(crop=16))
    assert out.mask is None
    assert out.intensities.min() == 0
    assert out.intensities[0, 8, 8] == 9


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.float32, np.float64])
def test_dtypes(dtype) -> None:
    top = 65534 if dtype == np.uint16 else 123456  # 65535 is the uint16 flag value
    raw = np.zeros((20, 20), dtype=dtype)
    raw[10, 10] = top
    out = preprocess(raw, PreprocessConfig(crop=8))
    assert isinstance(out, PreprocessedFrames)
    assert out.intensities.dtype == np.float32
    assert out.intensities.flags.c_contiguous
    assert out.intensities[0, 4, 4] == top
    assert out.intensities.sum() == top


@pytest.mark.parametrize(
    ("dtype", "flag"),
    [(np.uint16, 2**16 - 1), (np.uint32, 2**32 - 1), (np.int32, 2**31 - 1), (np.uint64, 2**64 - 1)],
)
def test_detector_flag_values_are_masked(dtype, flag) -> None:
    """Eiger writes the dtype's largest value for bad pixels: masked, not counted (issue 10)."""
    raw = np.full((16, 16), 7, dtype=dtype)
    raw[8, 8] = flag
    raw[3, 5] = flag
    out = preprocess(raw, PreprocessConfig(crop=16))
    assert out.mask is not None and out.mask[0, 8, 8] and out.mask[0, 3, 5]
    assert int(out.mask.sum()) == 2
    assert out.intensities[0, 8, 8] == 0 and out.intensities.max() == 7
    kept = preprocess(raw, PreprocessConfig(crop=16, mask_flags=False))
    assert kept.mask is None and kept.intensities[0, 8, 8] == np.float32(flag)


def test_float_and_8_bit_frames_have_no_flag_value() -> None:
    assert detector_flag(np.float32) is None and detector_flag(np.uint8) is None
    raw = np.zeros((8, 8), np.float32)
    raw[4, 4] = 65535.0
    assert preprocess(raw, PreprocessConfig(crop=8)).mask is None


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (np.uint64, 2**63),  # above max_count: a flag although not the dtype's largest value
        (np.int64, 2**40),
        (np.uint64, 2**32),
        (np.float64, 1e30),
        (np.float32, 2.0**33),
    ],
)
def test_counts_above_max_count_are_masked_as_flags(dtype, value) -> None:
    raw = np.full((16, 16), 5, dtype=dtype)
    raw[2, 9] = value
    out = preprocess(raw, PreprocessConfig(crop=16))
    assert out.mask is not None and out.mask[0, 2, 9] and int(out.mask.sum()) == 1
    assert out.intensities.max() == 5
    # a larger bound keeps the value; None switches the bound off
    kept = preprocess(raw, PreprocessConfig(crop=16, max_count=None))
    assert kept.mask is None and kept.intensities[0, 2, 9] == np.float32(value)
    assert preprocess(raw, PreprocessConfig(crop=16, max_count=2.0 * value)).mask is None
    # mask_flags=False switches every flag off
    assert preprocess(raw, PreprocessConfig(crop=16, mask_flags=False)).mask is None


def test_max_count_is_a_bound_not_a_flag() -> None:
    raw = np.full((8, 8), 3, dtype=np.uint32)
    raw[1, 1] = 2**32 - 2  # the largest ordinary uint32 count is kept
    out = preprocess(raw, PreprocessConfig(crop=8))
    assert out.mask is None and out.intensities[0, 1, 1] == np.float32(2**32 - 2)
    low = preprocess(raw, PreprocessConfig(crop=8, max_count=1000))
    assert low.mask is not None and low.mask[0, 1, 1] and int(low.mask.sum()) == 1


def test_configured_flag_values_replace_the_dtype_maximum() -> None:
    raw = np.full((8, 8), 4, dtype=np.uint32)
    raw[0, 0] = 2**32 - 1
    raw[1, 1] = 2**32 - 2
    raw[2, 2] = 9
    cfg = PreprocessConfig(crop=8, flag_values=(2**32 - 2, 9))
    out = preprocess(raw, cfg)
    assert out.mask is not None
    assert out.mask[0, 1, 1] and out.mask[0, 2, 2] and int(out.mask.sum()) == 2
    # 2**32-1 is no longer a flag, and not above max_count either: kept as counts
    assert not out.mask[0, 0, 0] and out.intensities[0, 0, 0] == np.float32(2**32 - 1)
    # flag values in float frames, and values that cannot occur in the dtype are ignored
    f = np.full((8, 8), 2.0, np.float32)
    f[3, 3] = 9.0
    assert int(preprocess(f, cfg).mask.sum()) == 1
    u16 = np.full((8, 8), 9, np.uint16)
    assert preprocess(u16, PreprocessConfig(crop=8, flag_values=(2**32 - 2,))).mask is None
    # an empty tuple: no flag value at all (max_count still applies)
    none = preprocess(raw, PreprocessConfig(crop=8, flag_values=()))
    assert none.mask is None


def test_flagged_pixels_combines_values_and_bound() -> None:
    a = np.array([[1, 65535], [70000, 2]], dtype=np.uint32)
    cfg = PreprocessConfig(flag_values=(65535,), max_count=65536)
    got = flagged_pixels(a, cfg)
    assert got is not None and got.tolist() == [[False, True], [True, False]]
    assert flagged_pixels(np.ones((2, 2), np.float32), PreprocessConfig(max_count=None)) is None


def test_flag_options_round_trip_and_from_start() -> None:
    cfg = PreprocessConfig(crop=8, flag_values=(7, 65535), max_count=1e6, mask_flags=True)
    assert PreprocessConfig.from_json(cfg.to_json()) == cfg
    assert PreprocessConfig.from_json(PreprocessConfig(max_count=None).to_json()).max_count is None
    assert cfg != PreprocessConfig(crop=8, flag_values=(7,), max_count=1e6)
    start = PreprocessConfig.from_ptycho_start(
        {"crop": 8, "flag_values": [2**32 - 2], "max_count": 1e9, "mask_flags": True}
    )
    assert start.flag_values == (2**32 - 2,) and start.max_count == 1e9
    default = PreprocessConfig.from_ptycho_start({"crop": 8})
    assert default.flag_values is None and default.max_count == float(2**32 - 1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"flag_values": "65535"}, "flag_values"),
        ({"flag_values": (1.5,)}, "flag_values"),
        ({"flag_values": 65535}, "flag_values"),
        ({"max_count": 0}, "max_count"),
        ({"max_count": float("nan")}, "max_count"),
        ({"max_count": "1e9"}, "max_count"),
    ],
)
def test_bad_flag_options_raise(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        PreprocessConfig(**kwargs)


def test_saturation_compared_in_raw_precision() -> None:
    # float32 cannot tell 2**32 - 2 from 2**32 - 1; the comparison must use the raw values
    raw = np.zeros((4, 4), dtype=np.uint32)
    raw[1, 1] = 2**32 - 2
    raw[2, 2] = 2**32 - 1
    out = preprocess(raw, PreprocessConfig(crop=4, saturation=2**32 - 1))
    assert out.mask[0].sum() == 1 and out.mask[0, 2, 2]


def test_stack_equals_frame_by_frame() -> None:
    rng = np.random.default_rng(2)
    stack = rng.integers(-5, 2000, size=(6, 50, 45)).astype(np.int32)
    stack[2, 25, 20] = 10**6
    bad = rng.random((50, 45)) < 0.02
    cfg = PreprocessConfig(
        crop=32,
        beam_center_px=(24.6, 21.2),
        flip_cols=True,
        transpose=True,
        binning=2,
        mask=bad,
        saturation=5000,
    )
    whole = preprocess(stack, cfg)
    assert whole.intensities.shape == (6, 16, 16) and len(whole) == 6
    for k in range(6):
        one = preprocess(stack[k], cfg)
        assert one.intensities.shape == (1, 16, 16)
        np.testing.assert_array_equal(whole.intensities[k], one.intensities[0])
        np.testing.assert_array_equal(whole.mask[k], one.mask[0])


def test_no_crop_keeps_size_and_amplitudes() -> None:
    raw = np.arange(64, dtype=np.float32).reshape(8, 8)
    out = preprocess(raw, PreprocessConfig())
    np.testing.assert_array_equal(out.intensities[0], raw)
    assert out.mask is None
    np.testing.assert_allclose(out.amplitudes()[0], np.sqrt(raw))


def test_mask_shape_must_match_raw_frame() -> None:
    cfg = PreprocessConfig(crop=8, mask=np.zeros((20, 30), dtype=bool))
    with pytest.raises(ValueError, match=r"\(20, 30\).*\(20, 31\)"):
        preprocess(np.zeros((20, 31)), cfg)
    assert cfg.output_size((20, 30)) == 8


def test_bad_frames_raise() -> None:
    cfg = PreprocessConfig(crop=4)
    with pytest.raises(ValueError, match="dtype"):
        preprocess(np.zeros((8, 8), dtype=np.complex64), cfg)
    with pytest.raises(ValueError, match="shape"):
        preprocess(np.zeros((2, 2, 8, 8)), cfg)
    with pytest.raises(ValueError, match="square"):
        preprocess(np.zeros((8, 16)), PreprocessConfig())


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------
def full_config() -> PreprocessConfig:
    bad = np.zeros((30, 40), dtype=bool)
    bad[[1, 5, 29], [0, 39, 7]] = True
    return PreprocessConfig(
        crop=16,
        beam_center_px=(14.25, 20.5),
        transpose=True,
        flip_rows=False,
        flip_cols=True,
        binning=2,
        mask=bad,
        saturation=4.0e6,
        mask_nonfinite=False,
    )


def test_json_round_trip() -> None:
    cfg = full_config()
    text = cfg.to_json()
    back = PreprocessConfig.from_json(text)
    assert back == cfg and hash(back) == hash(cfg)
    np.testing.assert_array_equal(back.mask, cfg.mask)
    d = json.loads(text)
    assert d["mask"]["shape"] == [30, 40]
    assert sorted(d["mask"]["bad_pixels"]) == [[1, 0], [5, 39], [29, 7]]
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    default = PreprocessConfig()
    assert PreprocessConfig.from_json(default.to_json()) == default
    # equality really looks at the mask
    other = cfg.mask.copy()
    other[0, 0] = True
    assert dataclasses.replace(cfg, mask=other) != cfg
    assert dataclasses.replace(cfg, mask=cfg.mask.copy()) == cfg
    changed = PreprocessConfig.from_dict({**cfg.to_dict(), "mask": None})
    assert changed != cfg


def test_mask_equality_and_immutability() -> None:
    m = np.zeros((4, 4), dtype=bool)
    a = PreprocessConfig(mask=m)
    m[0, 0] = True  # the config keeps its own copy
    assert not a.mask.any()
    b = PreprocessConfig(mask=m)
    assert a != b
    assert a == PreprocessConfig(mask=np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        a.mask[0, 0] = True


def test_from_ptycho_start() -> None:
    ptycho = {
        "energy_eV": 13500.0,
        "crop": 64,
        "beam_center_px": [100, 120.5],
        "orientation": {"transpose": False, "flip_rows": True, "flip_cols": False},
        "detector_key": "eiger_image",
        "mask": [[3, 4], [10, 11]],
        "probe_init": None,
    }
    cfg = PreprocessConfig.from_ptycho_start(ptycho, raw_shape=(200, 250), saturation=1e6)
    assert cfg.crop == 64 and cfg.beam_center_px == (100.0, 120.5)
    assert cfg.flip_rows and not cfg.transpose and not cfg.flip_cols
    assert cfg.mask.shape == (200, 250) and cfg.mask.sum() == 2 and cfg.mask[10, 11]
    assert cfg.saturation == 1e6 and cfg.binning == 1
    with pytest.raises(ValueError, match="raw_shape"):
        PreprocessConfig.from_ptycho_start(ptycho)
    with pytest.raises(ValueError, match="outside"):
        PreprocessConfig.from_ptycho_start(ptycho, raw_shape=(5, 250))
    plain = PreprocessConfig.from_ptycho_start({**ptycho, "mask": None, "orientation": None})
    assert plain.mask is None and plain.orientation == Orientation()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"crop": 100}, "crop"),
        ({"crop": 0}, "crop"),
        ({"crop": 64.0}, "crop"),
        ({"binning": 3}, "binning"),
        ({"crop": 4, "binning": 8}, "binning"),
        ({"beam_center_px": (1.0, 2.0, 3.0)}, "beam_center_px"),
        ({"beam_center_px": (np.nan, 2.0)}, "beam_center_px"),
        ({"beam_center_px": "12"}, "beam_center_px"),
        ({"transpose": "false"}, "transpose"),
        ({"flip_cols": 1}, "flip_cols"),
        ({"mask": np.zeros(5, dtype=bool)}, "mask"),
        ({"mask": np.full((3, 3), 0.5)}, "mask"),
        ({"saturation": -1.0}, "saturation"),
        ({"saturation": float("inf")}, "saturation"),
        ({"mask_nonfinite": None}, "mask_nonfinite"),
    ],
)
def test_bad_configs_raise(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        PreprocessConfig(**kwargs)


def test_bad_dicts_raise() -> None:
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"crop": 8, "cropp": 16})
    with pytest.raises(ValueError, match="mask"):
        PreprocessConfig.from_dict({"mask": [[1, 2]]})
    with pytest.raises(ValueError, match="JSON"):
        PreprocessConfig.from_json("{crop: 8")


# ------------------------------------------------------------------------------------------
# speed
# ------------------------------------------------------------------------------------------
def test_large_stack_is_fast() -> None:
    stack = np.full((100, 1024, 1024), 7, dtype=np.uint32)
    bad = np.zeros((1024, 1024), dtype=bool)
    bad[500:520, 600] = True
    cfg = PreprocessConfig(
        crop=256, beam_center_px=(510.0, 530.0), flip_rows=True, mask=bad, saturation=2**20
    )
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        out = preprocess(stack, cfg)
        best = min(best, time.perf_counter() - t0)
    assert out.intensities.shape == (100, 256, 256)
    assert out.mask.sum() == 100 * 20
    assert best < 0.5, f"preprocess took {best:.3f} s"
