"""Staging: where submitted frames wait, copied, until the worker moves them into the engine.

:func:`check_frames` does the cheap checks of a submit (shapes, dtypes, finite values) before
anything is kept. :class:`Staging` copies accepted frames into preallocated float32 chunks and
hands filled chunks to the worker, which feeds them to the engine with :func:`feed` and gives
the emptied chunks back for reuse. Submitting never waits for the worker and never drops a
frame: when the worker is behind, another chunk is allocated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from bluesky_ptycho import validation

__all__ = ["MAX_SPARE_CHUNKS", "Staging", "StagingChunk", "check_frames", "feed"]

logger = logging.getLogger(__name__)

MAX_SPARE_CHUNKS = 4
"""Emptied chunks kept for reuse; more are freed."""


class StagingChunk:
    """Preallocated room for ``capacity`` frames, their positions and (lazily) masks.

    Parameters
    ----------
    capacity : int
        Frames the chunk holds.
    frame_shape : (int, int)
        Shape of one frame.
    touch : bool
        Write the frame buffer once now, so that its pages are faulted in before the first
        submit rather than during it.
    """

    def __init__(self, capacity: int, frame_shape: tuple[int, int], *, touch: bool) -> None:
        self.frames = np.empty((capacity, *frame_shape), dtype=np.float32)
        if touch:  # fault the pages in now rather than during the first submit
            self.frames.fill(0.0)
        self.positions = np.empty((capacity, 2), dtype=np.float64)
        self.masks: np.ndarray | None = None
        self.has_mask = False
        self.count = 0
        self.first = 0  # submit index of the chunk's first frame
        self.skip: np.ndarray | None = None  # per frame: True = not to be fed (quarantined)

    @property
    def room(self) -> int:
        """Frames that still fit."""
        return self.frames.shape[0] - self.count

    def put(
        self, frames: np.ndarray, positions: np.ndarray, mask: np.ndarray | None, first: int
    ) -> None:
        """Copy ``frames`` (which fit) in; ``mask`` is ``(m, N, N)`` or None."""
        if self.count == 0:
            self.first = first
        k, m = self.count, frames.shape[0]
        self.frames[k : k + m] = frames
        self.positions[k : k + m] = positions
        if mask is not None:
            if self.masks is None:
                self.masks = np.zeros(self.frames.shape, dtype=bool)
            elif not self.has_mask:
                self.masks[:k] = False
            self.has_mask = True
            self.masks[k : k + m] = mask
        elif self.has_mask:
            assert self.masks is not None
            self.masks[k : k + m] = False
        self.count = k + m

    def reset(self) -> None:
        """Empty the chunk (the buffers stay allocated)."""
        self.count = 0
        self.has_mask = False
        self.skip = None


class Staging:
    """Staged frames between ``submit`` and the worker.

    Parameters
    ----------
    chunk_frames : int
        Frames per chunk.
    frame_shape : (int, int)
        Shape of one frame (the probe shape).

    Notes
    -----
    Not thread-safe: the owner calls every method with its own lock held (submitters call
    :meth:`put`, the worker :meth:`take` and :meth:`recycle`), so the work done under the lock
    is a copy into memory that is already allocated, most of the time.
    """

    def __init__(self, chunk_frames: int, frame_shape: tuple[int, int]) -> None:
        self._chunk_frames = int(chunk_frames)
        self._frame_shape = frame_shape
        self._current = StagingChunk(self._chunk_frames, frame_shape, touch=True)  # put fills it
        self._spare: list[StagingChunk] = [
            StagingChunk(self._chunk_frames, frame_shape, touch=True)
        ]
        self._full: list[StagingChunk] = []  # filled, waiting for the worker
        self._received = 0

    @property
    def received(self) -> int:
        """Frames accepted by :meth:`put` so far."""
        return self._received

    def put(self, frames: np.ndarray, positions: np.ndarray, mask: np.ndarray | None) -> int:
        """Copy checked frames in (see :func:`check_frames`); returns the first one's index.

        Frames are numbered 0, 1, ... in the order accepted.
        """
        n = int(frames.shape[0])
        first = self._received
        done = 0
        while done < n:
            if self._current.room == 0:
                self._full.append(self._current)
                self._current = self._new_chunk()
            take = min(self._current.room, n - done)
            sl = slice(done, done + take)
            self._current.put(
                frames[sl], positions[sl], None if mask is None else mask[sl], first + done
            )
            done += take
        self._received += n
        return first

    def take(self) -> list[StagingChunk]:
        """Every chunk holding frames, oldest first; they are the caller's until recycled."""
        chunks = self._full
        self._full = []
        if self._current.count:
            chunks.append(self._current)
            self._current = self._new_chunk()
        return chunks

    def recycle(self, chunks: list[StagingChunk]) -> None:
        """Take back chunks from :meth:`take` once their frames are in the engine."""
        for ch in chunks:
            ch.reset()
            if len(self._spare) < MAX_SPARE_CHUNKS:
                self._spare.append(ch)

    def _new_chunk(self) -> StagingChunk:
        if self._spare:
            return self._spare.pop()
        return StagingChunk(self._chunk_frames, self._frame_shape, touch=False)


def check_frames(
    frames: Any, positions_px: Any, mask: Any, frame_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Check a submit and bring it to ``(n, N, N)`` frames, ``(n, 2)`` positions, masks.

    Parameters
    ----------
    frames : array, shape (n, N, N) or (N, N)
        Real numbers.
    positions_px : array, shape (n, 2) or (2,)
        Finite numbers.
    mask : bool array, shape (N, N) or (n, N, N), or None
    frame_shape : (int, int)
        ``(N, N)``.

    Returns
    -------
    frames : ndarray, shape (n, N, N)
        A view of the input where possible (not yet copied).
    positions : ndarray of float64, shape (n, 2)
    mask : bool ndarray, shape (n, N, N), or None

    Raises
    ------
    ValueError
        Wrong frame shape or dtype, positions not ``(n, 2)`` or not finite, NaN/inf in a
        frame, a bad mask (the checks of :mod:`bluesky_ptycho.validation`, so the message
        names ``frames``, ``positions_px`` or ``mask``).
    """
    f = validation.check_frames("frames", frames, frame_shape)
    n = int(f.shape[0])
    pos = validation.check_positions("positions_px", positions_px, n, single_ok=True)
    m = None if mask is None else validation.check_mask("mask", mask, frame_shape, n)
    return f, pos, m


class _Adds(Protocol):
    def add(self, intensities: Any, positions_px: Any, mask: Any = None) -> Any: ...


def feed(
    engine: _Adds,
    chunks: list[StagingChunk],
    reject: Callable[[str], None],
    *,
    name: str = "live",
) -> int:
    """Add the frames of ``chunks`` to ``engine``; returns how many it took.

    Each chunk goes in as one batch; if the engine refuses the batch, its frames are retried
    one by one and each frame refused again is reported to ``reject`` with its submit index.
    Frames a chunk marks in ``skip`` (quarantined) are left out.

    Parameters
    ----------
    engine : object with ``add(intensities, positions_px, mask)``
        E.g. :class:`~bluesky_ptycho.engine.EPIE`.
    chunks : list of StagingChunk
        From :meth:`Staging.take`; left as they are (recycle them afterwards).
    reject : callable
        Called with ``"frame <index>: <reason>"`` for every frame refused.
    name : str
        Used in log messages.
    """
    added = 0
    for ch in chunks:
        n = ch.count
        frames, pos = ch.frames[:n], ch.positions[:n]
        masks = ch.masks[:n] if ch.has_mask and ch.masks is not None else None
        numbers = np.arange(ch.first, ch.first + n)
        if ch.skip is not None and ch.skip[:n].any():
            keep = ~ch.skip[:n]
            frames, pos, numbers = frames[keep], pos[keep], numbers[keep]
            masks = None if masks is None else masks[keep]
            n = int(keep.sum())
            if n == 0:
                continue
        try:
            engine.add(frames, pos, masks)
            added += n
        except Exception as batch_exc:
            if not isinstance(batch_exc, ValueError):
                logger.exception("%s: engine.add failed; retrying frame by frame", name)
            for i in range(n):
                try:
                    engine.add(frames[i], pos[i], None if masks is None else masks[i])
                    added += 1
                except Exception as exc:
                    reject(f"frame {int(numbers[i])}: {exc}")
    return added
