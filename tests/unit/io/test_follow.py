"""io.follow: a scan directory read as it is written, turned into the documents of one run.

The directories are real files written with h5py (Eiger-style master + data files, chunk
files, HDF5 and text position files); the writer runs in this process here, so every case is
deterministic and fast. The live case, with the writer in another process, is in
tests/integration/test_follow.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import event_model
import h5py
import numpy as np
import pytest

from bluesky_ptycho.io.follow import (
    Follower,
    FollowOptions,
    FollowReport,
    follow,
    master_metadata,
    read_setup_file,
)
from bluesky_ptycho.live import LiveOptions
from bluesky_ptycho.setup import ScanSetup
from bluesky_ptycho.sim_filewriter import (
    FileWriterConfig,
    scan_setup,
    write_data_file,
    write_master,
    write_setup,
)

PER_FILE = 9
FAST = FollowOptions(timeout_s=0.5, poll_s=0.01, settle_s=0.2)


def _scan_dir(
    tmp_path: Path,
    ds,
    *,
    layout: str = "eiger",
    positions: str = "h5",
    files: range | list[int] | None = None,
    n_positions: int | None = None,
    marker: bool = True,
) -> Path:
    """A finished scan directory as the simulated detector leaves it (files in ``files``)."""
    d = tmp_path / "scan"
    d.mkdir()
    cfg = FileWriterConfig(layout=layout, positions=positions, frames_per_file=PER_FILE)
    eiger = layout == "eiger"
    write_setup(d, scan_setup(ds, cfg), geometry_in_master=eiger)
    n_files = ds.n_patterns // PER_FILE
    if eiger:
        write_master(d / "scan_master.h5", ds, n_files)
    for k in range(n_files) if files is None else files:
        first = k * PER_FILE
        write_data_file(
            _data_name(d, k, layout), ds.intensities[first : first + PER_FILE], first, layout
        )
    pos = ds.positions_m[: ds.n_patterns if n_positions is None else n_positions]
    if positions == "h5":
        with h5py.File(d / "positions.h5", "w") as f:
            f.create_dataset("positions", data=pos).attrs["units"] = "m"
    else:
        (d / "positions.txt").write_text("".join(f"{r / 1e-6} {c / 1e-6}\n" for r, c in pos))
    if marker:
        (d / "scan.done").write_text("done\n")
    return d


def _data_name(d: Path, k: int, layout: str) -> Path:
    return d / (f"scan_data_{k + 1:06d}.h5" if layout == "eiger" else f"chunk_{k:05d}.h5")


class _Docs:
    """A document callback that keeps everything (and validates each document)."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
        self.docs.append((name, doc))

    def names(self) -> list[str]:
        return [n for n, _ in self.docs]

    def start(self) -> dict:
        return self.docs[0][1]

    def pages(self) -> list[dict]:
        return [d for n, d in self.docs if n == "event_page"]

    def frames(self, key: str = "eiger_image") -> np.ndarray:
        return np.concatenate([p["data"][key] for p in self.pages()])

    def column(self, key: str) -> np.ndarray:
        return np.concatenate([np.asarray(p["data"][key]) for p in self.pages()])

    def seq_nums(self) -> np.ndarray:
        return np.concatenate([p["seq_num"] for p in self.pages()])


def _run(d: Path, options: FollowOptions = FAST, **kwargs) -> tuple[FollowReport, _Docs]:
    docs = _Docs()
    report = Follower(d, options=options, **kwargs).run(docs)
    return report, docs


# ------------------------------------------------------------------------------ good scans


@pytest.mark.parametrize(("layout", "positions"), [("eiger", "h5"), ("chunks", "txt")])
def test_a_complete_scan_becomes_one_run_with_every_frame_once(
    small_dataset, tmp_path, layout, positions
):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout=layout, positions=positions, marker=False)
    report, docs = _run(d)
    assert report.reason == "complete", report
    assert report.problems == ()
    assert report.frames_sent == report.frames_found == report.positions_found == 81
    assert report.files_read == 9 and report.expected == 81
    names = docs.names()
    assert names[:2] == ["start", "descriptor"] and names[-1] == "stop"
    assert set(names[2:-1]) == {"event_page"}
    assert docs.docs[-1][1]["exit_status"] == "success"
    np.testing.assert_array_equal(docs.frames(), ds.intensities)
    np.testing.assert_array_equal(docs.seq_nums(), np.arange(1, 82))
    setup = ScanSetup.from_start_doc(docs.start()["ptycho"])
    readbacks = np.stack([docs.column(k) for k in setup.position_keys], axis=1)
    np.testing.assert_allclose(setup.positions_m(readbacks), ds.positions_m, rtol=1e-9, atol=0)
    g = ds.geometry
    assert setup.energy_eV == pytest.approx(g.energy_eV, rel=1e-12)
    assert setup.detector_distance_m == g.detector_distance_m
    assert setup.detector_pixel_m == g.detector_pixel_m
    np.testing.assert_array_equal(setup.nominal_positions_m, ds.nominal_positions_m)
    assert report.uid == docs.start()["uid"]


def test_the_master_file_supplies_the_geometry(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds)
    on_disk = json.loads((d / "setup.json").read_text())
    assert "energy_eV" not in on_disk and "detector_distance_m" not in on_disk
    meta = master_metadata(d / "scan_master.h5")
    assert meta["energy_eV"] == pytest.approx(ds.geometry.energy_eV, rel=1e-12)
    assert meta["detector_distance_m"] == ds.geometry.detector_distance_m
    assert meta["beam_center_px"] == [32.0, 32.0]
    # values given by the user win over the master's
    fields = dict(on_disk, energy_eV=9000.0)
    follower = Follower(d, setup=fields, options=FAST)
    follower.poll()
    assert follower.setup is not None and follower.setup.energy_eV == 9000.0
    assert follower.setup.detector_distance_m == ds.geometry.detector_distance_m


def test_a_yaml_setup_file_is_read(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout="chunks", positions="txt")
    fields = json.loads((d / "setup.json").read_text())
    (d / "setup.json").unlink()
    import yaml

    (d / "setup.yaml").write_text(yaml.safe_dump(fields))
    assert read_setup_file(d / "setup.yaml") == fields
    report, docs = _run(d)
    assert report.frames_sent == 81 and report.problems == ()
    np.testing.assert_array_equal(docs.frames(), ds.intensities)


def test_frames_wait_for_their_positions_and_a_half_written_file_is_waited_for(
    small_dataset, tmp_path
):
    """Frames are read only once their positions exist; an unreadable file is not skipped
    while it may still be being written (it changes, or settle_s has not passed)."""
    ds = small_dataset
    d = _scan_dir(
        tmp_path, ds, layout="chunks", positions="txt", files=[], n_positions=0, marker=False
    )
    follower = Follower(d, options=FollowOptions(settle_s=60, poll_s=0.01))
    write_data_file(d / "chunk_00000.h5", ds.intensities[:9], 0, "chunks")
    assert follower.poll() == []  # no positions yet
    lines = [f"{r / 1e-6} {c / 1e-6}\n" for r, c in ds.positions_m]
    with open(d / "positions.txt", "w") as f:  # five lines and a half-written sixth
        f.write("".join(lines[:5]) + lines[5][:4])
    batches = follower.poll()
    assert [len(b) for b in batches] == [5]
    np.testing.assert_array_equal(batches[0].frames, ds.intensities[:5])
    # the next file is half-written: not HDF5 yet; a later file already exists
    (d / "chunk_00001.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    write_data_file(d / "chunk_00002.h5", ds.intensities[18:27], 18, "chunks")
    with open(d / "positions.txt", "a") as f:
        f.write(lines[5][4:] + "".join(lines[6:]))
    batches = follower.poll()
    assert sum(len(b) for b in batches) == 4  # the rest of chunk 0, then it waits
    assert follower.poll() == [] and follower.problems == ()
    write_data_file(d / "chunk_00001.h5", ds.intensities[9:18], 9, "chunks")
    batches = follower.poll()
    got = np.concatenate([b.indices for b in batches])
    np.testing.assert_array_equal(got, np.arange(9, 27))
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), ds.intensities[9:27])
    assert follower.problems == ()


# ------------------------------------------------------------------------------ the end


def test_a_stop_marker_ends_the_follow_early_with_what_exists(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, files=range(3), n_positions=27)
    t0 = time.monotonic()
    report, docs = _run(d, FollowOptions(timeout_s=30, poll_s=0.01))
    assert time.monotonic() - t0 < 10  # not the timeout
    assert report.reason == "stop marker"
    assert report.frames_sent == 27
    np.testing.assert_array_equal(docs.frames(), ds.intensities[:27])
    assert docs.docs[-1][1]["exit_status"] == "success"
    # linked files that never appeared, and the scan's shortfall, are reported by name
    missing = [p for p in report.problems if "never appeared" in p or "missing" in p]
    assert any("scan_data_000004.h5" in p for p in missing), report.problems


def test_a_timeout_ends_the_follow_with_a_clear_message(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout="chunks", files=range(2), n_positions=18, marker=False)
    t0 = time.monotonic()
    report, docs = _run(d, FollowOptions(timeout_s=0.5, poll_s=0.02))
    assert 0.5 <= time.monotonic() - t0 < 10
    assert report.reason == "timeout"
    assert report.frames_sent == 18
    assert "no new data for 0.5 s" in report.message
    assert "18 of 81 frames used" in report.message
    assert any("scan incomplete: 18 of 81" in p for p in report.problems)
    stop = docs.docs[-1][1]
    assert stop["exit_status"] == "abort" and "no new data for 0.5 s" in stop["reason"]


def test_follow_of_a_directory_without_frames_says_what_it_found(small_dataset, tmp_path):
    d = _scan_dir(tmp_path, small_dataset, files=[], marker=False)
    with pytest.raises(TimeoutError, match=r"no frame could be read \(timeout; setup found, 9 "):
        follow(d, options=FAST, live_options=LiveOptions(final_passes=0))
    with pytest.raises(TimeoutError, match="setup not found, 0 data file"):
        follow(tmp_path / "absent", options=FAST)


def test_a_missing_or_bad_setup_is_one_clear_error(small_dataset, tmp_path):
    d = _scan_dir(tmp_path, small_dataset, layout="chunks")
    (d / "setup.json").unlink()
    with pytest.raises(ValueError, match=r"no setup for .*--setup FILE.json\|yaml"):
        _run(d)
    (d / "setup.json").write_text('{"crop": 64,')
    with pytest.raises(ValueError, match=r"setup file .*setup.json: cannot parse it"):
        _run(d)
    (d / "setup.json").write_text(json.dumps({"crop": 64}))
    with pytest.raises(ValueError, match=r"lacks required key\(s\) \['energy_eV'"):
        _run(d)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("layout", ["eiger", "chunks"])
def test_a_truncated_data_file_is_reported_and_the_good_frames_kept(
    small_dataset, tmp_path, layout
):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout=layout, positions="txt" if layout == "chunks" else "h5")
    bad = _data_name(d, 2, layout)
    size = bad.stat().st_size
    with open(bad, "r+b") as f:
        f.truncate(size // 2)
    report, docs = _run(d)
    assert report.frames_sent == 72, report.problems
    problems = [p for p in report.problems if bad.name in p]
    assert len(problems) == 1, report.problems
    assert "unreadable (truncated or half-written?)" in problems[0]
    assert "9 frame(s) skipped" in problems[0]
    # every other frame is used, paired with its own position
    keep = np.r_[0:18, 27:81]
    np.testing.assert_array_equal(docs.frames(), ds.intensities[keep])
    np.testing.assert_array_equal(docs.seq_nums(), keep + 1)
    setup = ScanSetup.from_start_doc(docs.start()["ptycho"])
    readbacks = np.stack([docs.column(k) for k in setup.position_keys], axis=1)
    np.testing.assert_allclose(setup.positions_m(readbacks), ds.positions_m[keep], rtol=1e-9)


def test_a_data_file_with_another_detector_shape_is_skipped(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds)
    write_data_file(d / "scan_data_000004.h5", ds.intensities[27:36, :32, :48], 27, "eiger")
    report, docs = _run(d)
    assert report.reason == "stop marker" or report.reason == "complete"
    assert report.frames_sent == 72
    (problem,) = [p for p in report.problems if "scan_data_000004.h5" in p]
    assert "frames of shape (32, 48) differ from the detector's (64, 64)" in problem
    keep = np.r_[0:27, 36:81]
    np.testing.assert_array_equal(docs.frames(), ds.intensities[keep])


@pytest.mark.parametrize("layout", ["eiger", "chunks"])
def test_a_missing_data_file_is_reported_once_the_writer_has_moved_on(
    small_dataset, tmp_path, layout
):
    """Linked from the master (Eiger), or a gap in the chunk numbering: its frames are
    missing, the later files keep their place in the scan."""
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout=layout, files=[0, 1, 2, 3, 5, 6, 7, 8], marker=False)
    report, docs = _run(d)
    assert report.reason == "complete"  # the scan's indices are all accounted for
    assert report.frames_sent == 72
    (problem,) = report.problems
    assert f"{_data_name(d, 4, layout).name}: missing" in problem
    np.testing.assert_array_equal(docs.seq_nums(), np.r_[1:37, 46:82])


@pytest.mark.parametrize(("n_files", "n_positions"), [(9, 75), (8, 81)])
def test_frames_and_positions_of_different_lengths_are_reported(
    small_dataset, tmp_path, n_files, n_positions
):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout="chunks", files=range(n_files), n_positions=n_positions)
    report, docs = _run(d)
    n_frames = n_files * PER_FILE
    used = min(n_frames, n_positions)
    assert report.frames_sent == used
    np.testing.assert_array_equal(docs.frames(), ds.intensities[:used])
    if n_frames > n_positions:
        expected = (
            "81 frames but 75 positions: the last 6 frame(s) have no position and were not used"
        )
    else:
        expected = "81 positions but 72 frames: the last 9 position(s) have no frame"
    assert report.problems == (expected,)


def test_a_bad_position_line_skips_its_frame_only(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout="chunks", positions="txt", marker=False)
    lines = (d / "positions.txt").read_text().splitlines(keepends=True)
    lines[10] = "12.5 oops\n"
    (d / "positions.txt").write_text("".join(lines))
    report, docs = _run(d)
    assert report.reason == "complete" and report.frames_sent == 80
    (problem,) = report.problems
    assert "positions.txt line 11: '12.5 oops' is not two numbers" in problem
    assert "frame 10 skipped" in problem
    np.testing.assert_array_equal(docs.seq_nums(), np.r_[1:11, 12:82])


def test_follow_counts_the_problems_as_rejections(small_dataset, tmp_path):
    ds = small_dataset
    d = _scan_dir(tmp_path, ds, layout="chunks", files=[0, 1, 3, 4, 5, 6, 7, 8])
    result = follow(d, options=FAST, live_options=LiveOptions(final_passes=1))
    assert result.state.n_patterns == 72
    assert result.report.problems and result.rejected == len(result.report.problems)


def test_follow_options_are_checked():
    with pytest.raises(ValueError, match="poll_s must be positive"):
        FollowOptions(poll_s=0)
    with pytest.raises(ValueError, match="timeout_s must be finite and >= 0"):
        FollowOptions(timeout_s=float("nan"))
    with pytest.raises(ValueError, match="frames_per_read must be >= 1"):
        FollowOptions(frames_per_read=0)
    with pytest.raises(TypeError, match="options must be a FollowOptions"):
        Follower(".", options={"timeout_s": 1})
