"""Parallel ePIE schemes: how several workers share one reconstruction.

Two schemes, chosen by ``reconstruct(..., parallel=...)``:

- ``"averaging"`` (the study's): the patterns are split into ``K`` disjoint subsets, each worker
  runs a sequential ePIE on its subset, and every few passes object and probe are replaced by
  their average (:func:`average_states`). The result depends on ``K``.
- ``"synchronous"``: a mini-batch ePIE whose batches are fixed by the seed, whatever ``K``;
  the workers split each batch into fixed chunks and the chunks' partial sums are combined in
  chunk order, so 1, 2 or 4 workers give the same object to float32 rounding.

This module holds the averaging of engine states; the schemes' drivers live beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bluesky_ptycho.engine.forward import integer_positions
from bluesky_ptycho.engine.state import ReconstructionState

__all__ = ["average_states", "illumination"]

_UNLIT = 1e-3
"""Below this fraction of the maximum summed illumination, the object average blends into the
plain (weights-only) mean, so unlit pixels keep a defined value."""


def illumination(
    probe: np.ndarray, positions_px: np.ndarray, object_shape: tuple[int, int]
) -> np.ndarray:
    """``sum_j |P(r - r_j)|**2``: how strongly each object pixel was lit by a set of patterns.

    Parameters
    ----------
    probe : ndarray (N, N)
    positions_px : ndarray (n, 2)
        Top-left patch corners (rounded as the engine rounds them).
    object_shape : (int, int)

    Returns
    -------
    ndarray, float64, shape ``object_shape``
    """
    p2 = np.abs(np.asarray(probe, dtype=np.complex128)) ** 2
    n0, n1 = p2.shape
    out = np.zeros(object_shape, dtype=np.float64)
    for r, c in integer_positions(positions_px).tolist():
        out[r : r + n0, c : c + n1] += p2
    return out


def _as_state(s: Any) -> ReconstructionState:
    if isinstance(s, ReconstructionState):
        return s
    state = getattr(s, "state", None)
    if callable(state):  # an EPIE engine
        return state(validation=False)
    raise TypeError(f"expected ReconstructionState or EPIE, got {type(s).__name__}")


def average_states(
    states: Sequence[Any], weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Average object and probe of several reconstructions of disjoint subsets of one scan.

    The study's averaging step (disjoint subsets reconstructed separately, then merged).

    Parameters
    ----------
    states : sequence of ReconstructionState or EPIE
        One per subset, all with the same object and probe shapes and in the same object frame;
        each state's ``positions_px`` are the patterns of its subset.
    weights : sequence of float, optional
        One non-negative weight per state. Default: the number of patterns of each subset.

    Returns
    -------
    object, probe : ndarray complex64
        The object is averaged pixel by pixel with each subset weighted by how strongly it lit
        that pixel, ``sum_s w_s I_s O_s / sum_s w_s I_s`` with ``I_s`` the subset's
        :func:`illumination` (its own probe at its own positions): a subset says nothing about
        object pixels it never lit (there its object is still the start), so a plain mean would
        pull every region a subset did not see back towards the start by a factor of ``K``.
        This is the same weighting ePIE itself gives an object pixel (the update is
        ``conj(P) dpsi``) and that the "parallel ePIE" literature uses to merge subsets. Where
        the summed illumination falls below 1e-3 of its maximum the average blends linearly
        into the plain ``w``-weighted mean (exactly that mean where nothing was lit). The
        probe, lit by every pattern, is the plain ``w``-weighted mean.

    Notes
    -----
    Probes are averaged as complex fields, without removing a relative global phase: the
    subsets start from one object and probe and are merged every few passes, so their phases do
    not drift apart. Merging independent reconstructions would need the phase ramp and offset
    removed first (:mod:`bluesky_ptycho.metrics`).
    """
    sts = [_as_state(s) for s in states]
    if not sts:
        raise ValueError("average_states needs at least one state")
    shape = sts[0].object.shape
    pshape = sts[0].probe.shape
    for s in sts[1:]:
        if s.object.shape != shape or s.probe.shape != pshape:
            raise ValueError(
                f"states differ in shape: object {s.object.shape} vs {shape}, "
                f"probe {s.probe.shape} vs {pshape}"
            )
    if weights is None:
        w = np.array([max(s.n_patterns, 0) for s in sts], dtype=np.float64)
        if not w.sum() > 0:
            w = np.ones(len(sts))
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != len(sts):
            raise ValueError(f"need one weight per state: {w.size} weights, {len(sts)} states")
        if np.any(~np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {w.tolist()}")
    num = np.zeros(shape, dtype=np.complex128)
    den = np.zeros(shape, dtype=np.float64)
    plain = np.zeros(shape, dtype=np.complex128)
    probe = np.zeros(pshape, dtype=np.complex128)
    for s, ws in zip(sts, w.tolist(), strict=True):
        lit = illumination(s.probe, s.positions_px, shape) * ws
        obj = np.asarray(s.object, dtype=np.complex128)
        num += lit * obj
        den += lit
        plain += ws * obj
        probe += ws * np.asarray(s.probe, dtype=np.complex128)
    total = float(w.sum())
    delta = _UNLIT * float(den.max()) if den.size else 0.0
    if not delta > 0:
        obj = plain / total
    else:
        blend = delta * np.clip(1.0 - den / delta, 0.0, 1.0)  # 0 wherever lit enough
        obj = (num + (blend / total) * plain) / (den + blend)
    return obj.astype(np.complex64), (probe / total).astype(np.complex64)
