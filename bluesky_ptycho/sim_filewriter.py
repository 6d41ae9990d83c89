"""A simulated detector file writer: a scan written to a directory file by file, as it runs.

What a beamline detector that is not driven by Bluesky leaves behind, for
:mod:`bluesky_ptycho.io.follow` to read while it is written: an Eiger-style master file with
NeXus metadata and external links to data files that appear one by one (or plain chunk files),
an encoder-position file that grows (HDF5 written in SWMR mode, or text lines), a setup file
with the ``start["ptycho"]`` fields, and at the end a stop marker.

Run it in a process of its own, as a detector would be::

    python -m bluesky_ptycho.sim_filewriter DIR --layout eiger --frames-per-file 9 --interval 0.2

Frames and positions are those of :func:`~bluesky_ptycho.simulate.simulate_dataset` of
:func:`~bluesky_ptycho.simulate.small_preset` (deterministic for a seed). Data files are written
in place (created, filled, closed), so a reader sees them half-written for a moment. With
``--log FILE`` the writer appends one JSON line per data file: its name, the scan indices it
holds and ``time.time()`` just after it was closed (the moment its frames are on disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bluesky_ptycho.setup import ScanSetup
from bluesky_ptycho.simulate import SimulatedDataset, simulate_dataset, small_preset

__all__ = [
    "FileWriterConfig",
    "main",
    "scan_setup",
    "write_data_file",
    "write_master",
    "write_scan",
    "write_setup",
]

LAYOUTS = ("eiger", "chunks")
POSITION_FORMATS = ("h5", "txt")
_HC_EV_ANGSTROM = 12398.419843320026


@dataclass(frozen=True)
class FileWriterConfig:
    """How the simulated detector writes a scan.

    Attributes
    ----------
    layout : str
        ``"eiger"``: ``scan_master.h5`` linking ``scan_data_NNNNNN.h5`` (``/entry/data/data``
        with ``image_nr_low``/``image_nr_high``); ``"chunks"``: ``chunk_NNNNN.h5`` with ``data``.
    positions : str
        ``"h5"``: ``positions.h5``, dataset ``positions`` (metres, SWMR); ``"txt"``:
        ``positions.txt``, lines ``row col`` in micrometres.
    frames_per_file : int
    interval_s : float
        Pause before each data file (the exposure time of its frames).
    stop_marker : str or None
        File written after the last data file (None: none).
    seed : int
        Seed of the simulated dataset.
    n_frames : int or None
        Write only the first frames (None: all of the scan).
    """

    layout: str = "eiger"
    positions: str = "h5"
    frames_per_file: int = 9
    interval_s: float = 0.2
    stop_marker: str | None = "scan.done"
    seed: int = 0
    n_frames: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.positions not in POSITION_FORMATS:
            raise ValueError(f"positions must be one of {POSITION_FORMATS}, got {self.positions!r}")
        if int(self.frames_per_file) < 1:
            raise ValueError(f"frames_per_file must be >= 1, got {self.frames_per_file!r}")
        if not self.interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0, got {self.interval_s!r}")


def scan_setup(ds: SimulatedDataset, config: FileWriterConfig) -> ScanSetup:
    """The setup a reader needs for the scan the writer writes."""
    g = ds.geometry
    return ScanSetup(
        energy_eV=g.energy_eV,
        detector_distance_m=g.detector_distance_m,
        detector_pixel_m=g.detector_pixel_m,
        crop=ds.intensities.shape[1],
        position_scale_m=1e-6 if config.positions == "txt" else 1.0,
        pattern=None if ds.preset is None else ds.preset.pattern,
        nominal_positions_m=ds.nominal_positions_m,
        margin_px=8 if ds.preset is None else ds.preset.margin_px,
    )


def write_setup(directory: Path, setup: ScanSetup, *, geometry_in_master: bool) -> None:
    """Write ``setup.json`` (without the geometry the master file holds, if asked)."""
    doc = setup.to_start_doc()
    if geometry_in_master:  # the master's NeXus metadata brings these
        for key in ("energy_eV", "detector_distance_m", "detector_pixel_m", "beam_center_px"):
            doc.pop(key, None)
    tmp = directory / "setup.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(directory / "setup.json")


def write_master(path: Path, ds: SimulatedDataset, n_files: int) -> None:
    """Write an Eiger-style master: NeXus geometry and links to ``n_files`` data files."""
    g = ds.geometry
    n = ds.intensities.shape[1]
    stem = path.name[: -len("_master.h5")]
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        beam = f.create_group("entry/instrument/beam")
        wl = beam.create_dataset("incident_wavelength", data=_HC_EV_ANGSTROM / g.energy_eV)
        wl.attrs["units"] = "angstrom"
        det = f.create_group("entry/instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        for name, value in (
            ("detector_distance", g.detector_distance_m),
            ("x_pixel_size", g.detector_pixel_m),
            ("y_pixel_size", g.detector_pixel_m),
        ):
            det.create_dataset(name, data=value).attrs["units"] = "m"
        det.create_dataset("beam_center_x", data=float(n // 2)).attrs["units"] = "pixel"
        det.create_dataset("beam_center_y", data=float(n // 2)).attrs["units"] = "pixel"
        data = f.create_group("entry/data")
        data.attrs["NX_class"] = "NXdata"
        for k in range(1, n_files + 1):
            data[f"data_{k:06d}"] = h5py.ExternalLink(f"{stem}_data_{k:06d}.h5", "/entry/data/data")


def write_data_file(path: Path, frames: np.ndarray, first: int, layout: str) -> None:
    """Write one data file (``layout`` ``"eiger"`` or ``"chunks"``); ``first``: its scan index."""
    with h5py.File(path, "w") as f:
        if layout == "eiger":
            ds = f.create_dataset("entry/data/data", data=frames, chunks=(1, *frames.shape[1:]))
            ds.attrs["image_nr_low"] = np.int32(first + 1)
            ds.attrs["image_nr_high"] = np.int32(first + frames.shape[0])
        else:
            f.create_dataset("data", data=frames)


class _Positions:
    """The growing encoder-position file."""

    def __init__(self, directory: Path, fmt: str) -> None:
        self.fmt = fmt
        if fmt == "h5":
            self._f = h5py.File(directory / "positions.h5", "w", libver="latest")
            self._ds = self._f.create_dataset(
                "positions", shape=(0, 2), maxshape=(None, 2), dtype="f8", chunks=(64, 2)
            )
            self._ds.attrs["units"] = "m"
            self._f.swmr_mode = True
        else:
            self._text = open(directory / "positions.txt", "a")

    def append(self, positions_m: np.ndarray) -> None:
        if self.fmt == "h5":
            n = self._ds.shape[0]
            self._ds.resize((n + positions_m.shape[0], 2))
            self._ds[n:] = positions_m
            self._ds.flush()
        else:
            for r, c in positions_m / 1e-6:
                self._text.write(f"{r:.9f} {c:.9f}\n")
            self._text.flush()

    def close(self) -> None:
        if self.fmt == "h5":
            self._f.close()
        else:
            self._text.close()


def write_scan(
    directory: str | Path,
    config: FileWriterConfig | None = None,
    *,
    log: str | Path | None = None,
) -> Path:
    """Write a simulated scan into ``directory`` as a detector would, file by file.

    Parameters
    ----------
    directory : str or Path
        Created if needed.
    config : FileWriterConfig, optional
    log : str or Path, optional
        JSON-lines file with one record per data file (``file``, ``first``, ``n``, ``closed``).

    Returns
    -------
    Path
        The directory.
    """
    cfg = config or FileWriterConfig()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ds = simulate_dataset(small_preset(), seed=cfg.seed)
    total = ds.n_patterns if cfg.n_frames is None else min(int(cfg.n_frames), ds.n_patterns)
    per = int(cfg.frames_per_file)
    n_files = -(-total // per)
    eiger = cfg.layout == "eiger"
    write_setup(out, scan_setup(ds, cfg), geometry_in_master=eiger)
    if eiger:
        write_master(out / "scan_master.h5", ds, n_files)
    positions = _Positions(out, cfg.positions)
    log_file = open(log, "a") if log is not None else None
    try:
        for k in range(n_files):
            first, stop = k * per, min((k + 1) * per, total)
            positions.append(ds.positions_m[first:stop])
            time.sleep(cfg.interval_s)
            name = f"scan_data_{k + 1:06d}.h5" if eiger else f"chunk_{k:05d}.h5"
            write_data_file(out / name, ds.intensities[first:stop], first, cfg.layout)
            closed = time.time()
            if log_file is not None:
                record = {"file": name, "first": first, "n": stop - first, "closed": closed}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
    finally:
        positions.close()
        if log_file is not None:
            log_file.close()
    if cfg.stop_marker:
        (out / cfg.stop_marker).write_text("done\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bluesky_ptycho.sim_filewriter DIR [options]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory")
    p.add_argument("--layout", choices=LAYOUTS, default="eiger")
    p.add_argument("--positions", choices=POSITION_FORMATS, default="h5")
    p.add_argument("--frames-per-file", type=int, default=9)
    p.add_argument("--interval", type=float, default=0.2, help="seconds before each data file")
    p.add_argument("--stop-marker", default="scan.done", help='"" for none')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="write only the first frames")
    p.add_argument("--log", default=None, help="JSON-lines log of the data files written")
    args = p.parse_args(argv)
    config = FileWriterConfig(
        layout=args.layout,
        positions=args.positions,
        frames_per_file=args.frames_per_file,
        interval_s=args.interval,
        stop_marker=args.stop_marker or None,
        seed=args.seed,
        n_frames=args.frames,
    )
    write_scan(args.directory, config, log=args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
