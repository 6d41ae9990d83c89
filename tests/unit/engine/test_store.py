"""Compact pattern storage: bytes per pattern, quantisation error, masks, reservation."""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.backend import get_backend
from bluesky_ptycho.engine import EPIE
from bluesky_ptycho.engine.store import PatternStore


def _frames(n: int, size: int, peak: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    envelope = peak * np.exp(-(yy**2 + xx**2) / (2 * (size / 10) ** 2))
    return rng.poisson(np.broadcast_to(envelope, (n, size, size))).astype(np.float32)


def test_at_most_2_1_bytes_per_detector_pixel():
    for size in (64, 128, 256):
        engine = EPIE((size + 40, size + 40))
        frames = _frames(8, size, 1e4)
        for k in range(8):  # one frame at a time, as a live scan adds them
            engine.add(frames[k], np.array([k, k], float))
        assert engine.nbytes_per_pattern / size**2 <= 2.1


def test_quantisation_error_is_far_below_poisson_noise():
    store = PatternStore(get_backend("numpy"), (64, 64))
    for peak in (10.0, 1e3, 1e6, 1e9):
        frames = _frames(3, 64, peak)
        first = len(store)
        store.append(frames, np.zeros((3, 2)), None)
        for k in range(3):
            decoded = np.fft.fftshift(store.amplitude(first + k))
            error = np.abs(decoded - np.sqrt(frames[k]))
            # rounding to the nearest code: half a code step (max / 65534), plus float32 slack
            assert error.max() <= 0.51 * np.sqrt(frames[k].max()) / 65534 + 1e-6
            # Poisson noise of sqrt(I) is about 0.5 whatever I: far above this error
            assert error.max() < 0.5


def test_masked_pixels_are_marked_and_excluded_from_the_counts():
    store = PatternStore(get_backend("numpy"), (16, 16))
    frames = np.full((2, 16, 16), 4.0, np.float32)
    mask = np.zeros((2, 16, 16), bool)
    mask[1, 8, 8] = True
    store.append(frames, np.zeros((2, 2)), mask)
    assert list(store.masked) == [False, True]
    assert store.sums[0] == 4.0 * 256
    assert store.sums[1] == 4.0 * 255
    amp = np.fft.fftshift(store.amplitude(1))
    assert amp[8, 8] == -1.0 and np.all(np.delete(amp.ravel(), 8 * 16 + 8) == 2.0)


def test_reserved_storage_is_filled_before_new_blocks():
    store = PatternStore(get_backend("numpy"), (8, 8))
    store.reserve(5)
    frames = _frames(7, 8, 100.0)
    store.append(frames[:3], np.zeros((3, 2)), None)
    store.append(frames[3:7], np.zeros((4, 2)), None)  # 2 fit, 2 spill into a new block
    assert len(store) == 7
    for k in range(7):
        np.testing.assert_allclose(
            np.fft.fftshift(store.amplitude(k)), np.sqrt(frames[k]), atol=np.sqrt(100) / 6e4
        )
    assert store.nbytes >= 7 * 8 * 8 * 2
