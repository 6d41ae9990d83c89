"""The scans a study runs on, as patterns and positions in the engine's convention.

:class:`StudyData` holds what the recipes need: frames (zero frequency at ``(N//2, N//2)``),
probe-patch corners in a fixed object frame, and the frame's shape. It is made from a
simulation (:meth:`StudyData.from_simulated`), from the measured Siemens star
(:meth:`StudyData.siemens_star`) or from any scan file the project reads
(:meth:`StudyData.from_scan`: CXI, NeXus/Eiger master), which is preprocessed and placed
exactly as a replay would.
"""

from __future__ import annotations

import bz2
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from bluesky_ptycho.simulate import SimulatedDataset

__all__ = ["STAR_FILE_NAME", "StudyData", "find_siemens_star"]

STAR_FILE_NAME = "siemens-star-small.npz.bz2"
"""The measured Siemens star in ``shared/data/`` (tike's test data, see its README)."""


@dataclass(frozen=True, eq=False)
class StudyData:
    """Patterns and positions of one scan, ready for the engine.

    Attributes
    ----------
    intensities : ndarray of float32, shape (n, N, N)
        Counts, zero spatial frequency at ``(N//2, N//2)``, in recorded order.
    positions_px : ndarray of float64, shape (n, 2)
        ``(row, col)`` of each probe patch's top-left corner in the object array.
    object_shape : (int, int)
        Shape of the object array (fixed for every scheme).
    name : str
        Where the data come from, for titles and metadata.
    mask : ndarray of bool, shape (N, N), or None
        True where a detector pixel is bad.
    truth : ndarray of complex64 or None
        The true object, for simulations.
    pixel_size_m : float or None
        Object pixel size, when known.
    metadata : dict
        Plain-JSON facts (source path, frames used, ...).
    """

    intensities: NDArray[np.float32]
    positions_px: NDArray[np.float64]
    object_shape: tuple[int, int]
    name: str = "scan"
    mask: NDArray[np.bool_] | None = None
    truth: NDArray[np.complex64] | None = None
    pixel_size_m: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = np.asarray(self.intensities, dtype=np.float32)
        pos = np.asarray(self.positions_px, dtype=np.float64)
        if frames.ndim != 3 or frames.shape[0] == 0 or frames.shape[1] != frames.shape[2]:
            raise ValueError(f"intensities must have shape (n, N, N), got {frames.shape}")
        if pos.shape != (frames.shape[0], 2):
            raise ValueError(
                f"positions_px must have shape ({frames.shape[0]}, 2), got {pos.shape}"
            )
        shape = (int(self.object_shape[0]), int(self.object_shape[1]))
        corner = np.floor(pos + 0.5)
        if corner.min() < 0 or np.any(corner.max(axis=0) + frames.shape[1] > np.asarray(shape)):
            raise ValueError(f"a probe patch falls outside the object of shape {shape}")
        object.__setattr__(self, "intensities", frames)
        object.__setattr__(self, "positions_px", pos)
        object.__setattr__(self, "object_shape", shape)

    @property
    def n_patterns(self) -> int:
        """Number of patterns."""
        return int(self.intensities.shape[0])

    @property
    def frame_size(self) -> int:
        """``N``, the side of a frame and of the probe."""
        return int(self.intensities.shape[1])

    def first(self, n: int) -> StudyData:
        """The first ``n`` patterns in recorded order (a scaled-down scan), same object frame."""
        n = int(n)
        if not 1 <= n <= self.n_patterns:
            raise ValueError(f"n must be in [1, {self.n_patterns}], got {n}")
        return StudyData(
            self.intensities[:n],
            self.positions_px[:n],
            self.object_shape,
            name=f"{self.name}, first {n} patterns",
            mask=self.mask,
            truth=self.truth,
            pixel_size_m=self.pixel_size_m,
            metadata={**self.metadata, "patterns_used": n},
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_simulated(cls, dataset: SimulatedDataset, name: str = "simulated") -> StudyData:
        """A :class:`~bluesky_ptycho.simulate.SimulatedDataset`, with its true object."""
        preset = dataset.preset
        meta: dict[str, Any] = {"source": "simulated"}
        if preset is not None:
            meta.update(pattern=preset.pattern, n_rows=preset.n_rows, n_cols=preset.n_cols)
        return cls(
            dataset.intensities,
            dataset.positions_px,
            cast("tuple[int, int]", tuple(dataset.frame.object_shape)),
            name=name,
            truth=dataset.object,
            pixel_size_m=float(dataset.geometry.pixel_size_m[0]),
            metadata=meta,
        )

    @classmethod
    def siemens_star(
        cls, path: str | os.PathLike[str] | None = None, *, margin_px: int = 4
    ) -> StudyData:
        """The measured Siemens star (``shared/data/siemens-star-small.npz.bz2``).

        Frames ``fftshift(data[0])`` (stored with zero frequency at ``[0, 0]``), positions
        ``scan[0]`` as ``(row, col)`` patch corners shifted so the smallest lies ``margin_px``
        from the edge (the conventions ``tests/integration/test_siemens_star.py`` establishes).
        516 patterns of 128 x 128 in the recorded line order.

        Parameters
        ----------
        path : str or path-like, optional
            The ``.npz.bz2`` file; default :func:`find_siemens_star`.
        margin_px : int
            Empty border of the object frame.

        Raises
        ------
        FileNotFoundError
            If the file is not there.
        """
        p = Path(path) if path is not None else find_siemens_star()
        if p is None or not p.is_file():
            raise FileNotFoundError(
                f"the measured Siemens star is not at {str(path or STAR_FILE_NAME)!r} (it lives "
                "in shared/data/ beside the repository)"
            )
        with bz2.open(p) as f:
            arrays = np.load(io.BytesIO(f.read()))
            star = cls.from_star_arrays(arrays["data"], arrays["scan"], margin_px=margin_px)
        star.metadata["source"] = str(p)
        return star

    @classmethod
    def from_star_arrays(cls, data: Any, scan: Any, *, margin_px: int = 4) -> StudyData:
        """The Siemens star from its stored arrays ``data`` (1, n, N, N) and ``scan`` (1, n, 2).

        See :meth:`siemens_star` for the conventions.
        """
        frames = np.fft.fftshift(np.asarray(data)[0], axes=(-2, -1)).astype(np.float32)
        pos = np.asarray(scan)[0].astype(np.float64)
        pos = pos - pos.min(axis=0) + margin_px
        n = frames.shape[-1]
        shape = tuple(int(v) for v in np.ceil(pos.max(axis=0)) + n + margin_px + 2)
        return cls(
            frames,
            pos,
            (shape[0], shape[1]),
            name="measured Siemens star",
            metadata={"source": "siemens-star-small", "patterns_used": int(frames.shape[0])},
        )

    @classmethod
    def from_scan(cls, path: str | os.PathLike[str], *, crop: int | None = None) -> StudyData:
        """A scan file (CXI, NeXus/Eiger master; :func:`~bluesky_ptycho.io.scan.read_scan`).

        Frames are preprocessed and positions placed in the object frame of the nominal scan
        exactly as a replay of the file would (:func:`~bluesky_ptycho.io.replay.scan_setup`).
        """
        from bluesky_ptycho.io.replay import scan_setup
        from bluesky_ptycho.io.scan import read_scan
        from bluesky_ptycho.preprocess import preprocess

        scan = read_scan(path)
        setup = scan_setup(scan, **({"crop": crop} if crop else {}))
        frame = setup.object_frame()
        config = setup.preprocess_config(raw_shape=scan.frame_shape)
        frames: list[NDArray[np.float32]] = []
        positions: list[NDArray[np.float64]] = []
        mask: NDArray[np.bool_] | None = None
        for start, raw in scan.iter_frames(64):
            out = preprocess(np.asarray(raw), config)
            frames.append(np.asarray(out.intensities, dtype=np.float32))
            positions.append(frame.to_pixels(scan.positions_m[start : start + len(raw)]))
            if out.mask is not None:
                m = np.asarray(out.mask, dtype=bool)
                m = m if m.ndim == 2 else np.asarray(m.any(axis=0), dtype=bool)
                mask = m if mask is None else (mask | m)
        geometry = setup.geometry()
        return cls(
            np.concatenate(frames),
            np.concatenate(positions),
            cast("tuple[int, int]", tuple(frame.object_shape)),
            name=Path(path).name,
            mask=mask,
            pixel_size_m=float(geometry.pixel_size_m[0]),
            metadata={"source": str(path), "patterns_used": scan.n_frames},
        )


def find_siemens_star() -> Path | None:
    """The measured star in ``shared/data/`` beside the repository or the working directory.

    Looked for at ``$BLUESKY_PTYCHO_SHARED/data``, ``../shared/data`` from the working
    directory and ``../shared/data`` from the repository this package was imported from.
    """
    candidates = []
    env = os.environ.get("BLUESKY_PTYCHO_SHARED")
    if env:
        candidates.append(Path(env) / "data" / STAR_FILE_NAME)
    candidates.append(Path.cwd().parent / "shared" / "data" / STAR_FILE_NAME)
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / STAR_FILE_NAME)
    for c in candidates:
        if c.is_file():
            return c
    return None
