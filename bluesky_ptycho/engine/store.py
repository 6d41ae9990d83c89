"""Compact storage of measured patterns for the engine.

Each pattern is kept as its measured *amplitude* ``sqrt(I)``, already moved to the FFT layout
(zero frequency at ``(0, 0)``), quantised linearly to ``uint16`` with one scale per pattern:
2 bytes per detector pixel. The largest code, 65535, marks a bad pixel, so a mask costs nothing.

Why this is lossless in practice: the absolute quantisation error is at most
``max(sqrt(I)) / 131068``, while Poisson noise gives every pixel an amplitude standard deviation
of about 0.5 whatever its counts; the error stays below the noise for any pattern whose brightest
pixel has fewer than about 4e9 counts. Decoding is one integer-to-float conversion and one
multiply, far cheaper than ``float16`` conversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_ptycho.backend import Backend
from bluesky_ptycho.engine.forward import integer_positions

__all__ = ["PatternStore"]

BAD_CODE = 65535
_MAX_CODE = 65534


class _Grow:
    """A NumPy array that grows by doubling (amortised O(1) appends)."""

    def __init__(self, shape_tail: tuple[int, ...], dtype: Any) -> None:
        self.data = np.zeros((16, *shape_tail), dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + values.shape[0]
        if need > self.data.shape[0]:
            cap = max(need, 2 * self.data.shape[0])
            new = np.zeros((cap, *self.data.shape[1:]), dtype=self.data.dtype)
            new[: self.size] = self.data[: self.size]
            self.data = new
        self.data[self.size : need] = values
        self.size = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.size]


class PatternStore:
    """Amplitudes (on the backend's device) plus host-side bookkeeping for each pattern."""

    def __init__(self, backend: Backend, frame_shape: tuple[int, int]) -> None:
        self.backend = backend
        self.frame_shape = frame_shape
        self._blocks: list[Any] = []
        self._room = 0  # unused rows at the end of the last block (see reserve)
        self._block = _Grow((), np.int32)
        self._offset = _Grow((), np.int32)
        self._pos = _Grow((2,), np.float64)
        self._corner = _Grow((2,), np.int64)
        self._masked = _Grow((), np.bool_)
        self._sum = _Grow((), np.float64)
        self._scale = _Grow((), np.float32)
        self._updates = _Grow((), np.int64)

    def __len__(self) -> int:
        return self._pos.size

    @property
    def positions(self) -> np.ndarray:
        return self._pos.view

    @property
    def corners(self) -> np.ndarray:
        return self._corner.view

    @property
    def updates(self) -> np.ndarray:
        return self._updates.view

    @property
    def masked(self) -> np.ndarray:
        return self._masked.view

    @property
    def sums(self) -> np.ndarray:
        """Measured counts of each pattern over its good pixels."""
        return self._sum.view

    @property
    def nbytes(self) -> int:
        """Bytes held: amplitude blocks plus per-pattern bookkeeping."""
        amp = sum(int(b.size) * _itemsize(b) for b in self._blocks)
        amp -= self._room * self.frame_shape[0] * self.frame_shape[1] * 2
        per = 4 + 4 + 16 + 16 + 1 + 8 + 8 + 4
        return amp + per * len(self)

    def append(self, frames: np.ndarray, positions: np.ndarray, mask: np.ndarray | None) -> Any:
        """Store validated frames ``(n, N, N)`` with positions ``(n, 2)``; return new indices."""
        n = frames.shape[0]
        amp = np.sqrt(np.clip(frames.astype(np.float32, copy=False), 0.0, None))
        if mask is not None:
            amp = np.where(mask, np.float32(0.0), amp)
        peak = np.max(amp, axis=(1, 2)).astype(np.float64)
        scale = np.where(peak > 0, peak / _MAX_CODE, 1.0)
        codes = np.rint(amp / scale[:, None, None].astype(np.float32)).astype(np.uint16)
        decoded = codes.astype(np.float64) * scale[:, None, None]
        sums = np.sum(decoded * decoded, axis=(1, 2))
        if mask is not None:
            codes[mask] = BAD_CODE
            masked = np.any(mask, axis=(1, 2))
        else:
            masked = np.zeros(n, dtype=bool)
        codes = np.ascontiguousarray(np.fft.ifftshift(codes, axes=(-2, -1)))
        start = len(self)
        fit = min(n, self._room)
        if fit:  # fill the reserved block first
            block_id = len(self._blocks) - 1
            first = int(self._blocks[block_id].shape[0]) - self._room
            self._blocks[block_id][first : first + fit, ...] = self._to_device(codes[:fit])
            self._room -= fit
            self._block.extend(np.full(fit, block_id, dtype=np.int32))
            self._offset.extend(np.arange(first, first + fit, dtype=np.int32))
        if n > fit:
            self._blocks.append(self._to_device(np.ascontiguousarray(codes[fit:])))
            self._block.extend(np.full(n - fit, len(self._blocks) - 1, dtype=np.int32))
            self._offset.extend(np.arange(n - fit, dtype=np.int32))
        self._pos.extend(positions)
        self._corner.extend(integer_positions(positions))
        self._masked.extend(masked)
        self._sum.extend(sums)
        self._scale.extend(scale.astype(np.float32))
        self._updates.extend(np.zeros(n, dtype=np.int64))
        return np.arange(start, start + n, dtype=np.int64)

    def reserve(self, n: int) -> None:
        """Preallocate one block for ``n`` more patterns; appends fill it until it is full."""
        if n <= self._room:
            return
        xp = self.backend.xp
        self._blocks.append(xp.zeros((n, *self.frame_shape), dtype=xp.uint16))
        self._room = n

    def _to_device(self, codes: np.ndarray) -> Any:
        return codes if self.backend.is_numpy else self.backend.xp.asarray(codes)

    @property
    def scales(self) -> np.ndarray:
        """Per-pattern amplitude of one ``uint16`` code step."""
        return self._scale.view

    def codes(self, j: int) -> Any:
        """The stored ``uint16`` codes of pattern ``j`` (FFT layout; :data:`BAD_CODE` = bad)."""
        return self._blocks[int(self._block.data[j])][int(self._offset.data[j]), ...]

    def amplitude(self, j: int) -> np.ndarray:
        """Decoded amplitude of pattern ``j`` on the host, FFT layout, bad pixels as -1."""
        from bluesky_ptycho.backend import to_numpy

        q = to_numpy(self.codes(j))
        return np.where(q == BAD_CODE, -1.0, q * np.float64(self._scale.data[j])).astype(np.float32)

    def set_positions(self, positions: np.ndarray) -> None:
        self._pos.data[: len(self)] = positions
        self._corner.data[: len(self)] = integer_positions(positions)

    def count_updates(self, indices: np.ndarray) -> None:
        np.add.at(self._updates.data, indices, 1)


def _itemsize(a: Any) -> int:
    itemsize = getattr(a.dtype, "itemsize", None)
    if itemsize is None:  # array-api-strict dtypes wrap a NumPy dtype
        itemsize = np.dtype(getattr(a.dtype, "_np_dtype", np.float32)).itemsize
    return int(itemsize)
