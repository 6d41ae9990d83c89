"""``PatternRecord``: one preprocessed pattern with where it came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PatternRecord"]


@dataclass(frozen=True)
class PatternRecord:
    """A pattern handed to a run's reconstruction, with its provenance.

    The callback gives one to its ``on_pattern`` hook for every pattern it hands on; the
    device's checkpoints store them and give them back (:mod:`bluesky_ptycho.checkpoint`).

    Attributes
    ----------
    run_uid : str
        The run's start uid.
    descriptor : str
        The event's descriptor uid.
    seq_num : int or None
        The event's sequence number (None: it had no usable one).
    index : int
        The submit index :meth:`~bluesky_ptycho.live.LiveReconstruction.submit` returned.
    intensities : ndarray, shape (N, N)
        The preprocessed pattern (float32).
    mask : ndarray of bool, shape (N, N), or None
        Bad pixels.
    positions_px : ndarray, shape (2,)
        ``(row, col)`` top-left probe-patch corner in object pixels.
    """

    run_uid: str
    descriptor: str
    seq_num: int | None
    index: int
    intensities: np.ndarray
    mask: np.ndarray | None
    positions_px: np.ndarray
