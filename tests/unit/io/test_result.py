"""HDF5 result and checkpoint files: layout, exact round trip, atomicity, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from bluesky_ptycho.engine import EPIEOptions
from bluesky_ptycho.engine.state import ReconstructionState
from bluesky_ptycho.io import result as result_mod
from bluesky_ptycho.io.cxi import ScanFile, read_cxi, write_cxi
from bluesky_ptycho.io.eiger import FramePart, LinkedFrames
from bluesky_ptycho.io.result import (
    ResultFile,
    read_checkpoint,
    read_result,
    validate_nxcxi_ptycho,
    write_checkpoint,
    write_result,
)


def make_state(seed: int = 0, n: int = 7, size: int = 16, passes: int = 3) -> ReconstructionState:
    rng = np.random.default_rng(seed)
    obj = (rng.normal(size=(40, 48)) + 1j * rng.normal(size=(40, 48))).astype(np.complex64)
    probe = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))).astype(
        np.complex64
    )
    return ReconstructionState(
        object=obj,
        probe=probe,
        positions_px=rng.uniform(0, 24, size=(n, 2)),
        iteration=passes,
        pattern_updates=passes * n,
        fourier_error=rng.uniform(0.01, 1.0, size=passes),
        updates_per_pattern=rng.integers(0, 5, size=n).astype(np.int64),
    )


def assert_states_identical(a: ReconstructionState, b: ReconstructionState) -> None:
    for name in ("object", "probe", "positions_px", "fourier_error", "updates_per_pattern"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.iteration == b.iteration
    assert a.pattern_updates == b.pattern_updates


@dataclass(frozen=True)
class FakeGeometry:
    """Stands in for bluesky_ptycho.geometry.Geometry: only to_dict() and pixel_size_m."""

    energy_eV: float = 13500.0
    detector_distance_m: float = 3.2
    detector_pixel_m: float = 75e-6
    shape: tuple[int, int] = (16, 16)

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_eV": self.energy_eV,
            "detector_distance_m": self.detector_distance_m,
            "detector_pixel_m": self.detector_pixel_m,
            "shape": self.shape,
        }

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        return (2.5e-8, 3.0e-8)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = make_state()
    path = write_result(tmp_path / "r.h5", state)
    assert path == tmp_path / "r.h5"
    rf = read_result(path)
    assert isinstance(rf, ResultFile)
    assert_states_identical(rf.state, state)
    assert rf.state.object.dtype == np.complex64
    assert rf.state.positions_px.dtype == np.float64
    assert rf.geometry is None
    assert rf.object_pixel_size_m is None
    assert rf.metadata == {}
    assert rf.kind == "result"


def test_round_trip_of_an_empty_state(tmp_path: Path) -> None:
    state = ReconstructionState(
        object=np.ones((20, 20), np.complex64),
        probe=np.zeros((8, 8), np.complex64),
        positions_px=np.zeros((0, 2)),
    )
    rf = read_result(write_result(tmp_path / "empty.h5", state))
    assert_states_identical(rf.state, state)
    assert rf.state.n_patterns == 0


def test_complex128_is_not_downcast(tmp_path: Path) -> None:
    state = make_state()
    state.object = state.object.astype(np.complex128) * (1 + 1e-12)
    rf = read_result(write_result(tmp_path / "r.h5", state))
    assert rf.state.object.dtype == np.complex128
    np.testing.assert_array_equal(rf.state.object, state.object)


def test_layout_follows_nexus_cxi_names(tmp_path: Path) -> None:
    state = make_state()
    path = write_result(tmp_path / "r.h5", state, geometry=FakeGeometry())
    with h5py.File(path, "r") as f:
        assert f.attrs["file_format"] == result_mod.FILE_FORMAT
        assert f.attrs["default"] == "entry_1"
        assert f["entry_1"].attrs["NX_class"] == "NXentry"
        assert f["entry_1/image_1"].attrs["NX_class"] == "NXdata"
        assert f["entry_1/process_1"].attrs["NX_class"] == "NXprocess"
        assert f["entry_1/instrument_1"].attrs["NX_class"] == "NXinstrument"
        assert f["entry_1/image_1/data"].dtype == np.complex64
        assert f["entry_1/image_1/data"].shape == (40, 48)
        assert f["entry_1/probe/data"].shape == (16, 16)
        assert f["entry_1/data_1/positions_px"].shape == (7, 2)
        assert int(f["entry_1/process_1/iteration"][()]) == 3
        assert int(f["entry_1/process_1/pattern_updates"][()]) == 21
        np.testing.assert_array_equal(f["entry_1/process_1/fourier_error"][()], state.fourier_error)
        np.testing.assert_array_equal(
            f["entry_1/process_1/updates_per_pattern"][()], state.updates_per_pattern
        )
        assert f["entry_1/process_1/program"].asstr()[()] == "bluesky-ptycho"


def test_provenance(tmp_path: Path) -> None:
    import bluesky_ptycho

    before = datetime.now(timezone.utc)
    rf = read_result(write_result(tmp_path / "r.h5", make_state()))
    assert rf.software == f"bluesky-ptycho {bluesky_ptycho.__version__}"
    created = datetime.fromisoformat(rf.created)
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= datetime.now(timezone.utc)


def test_version_falls_back_to_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bluesky_ptycho

    monkeypatch.delattr(bluesky_ptycho, "__version__")
    rf = read_result(write_result(tmp_path / "r.h5", make_state()))
    assert rf.software == "bluesky-ptycho unknown"


def test_geometry_is_stored_as_attributes_and_read_back(tmp_path: Path) -> None:
    geometry = FakeGeometry()
    path = write_result(tmp_path / "r.h5", make_state(), geometry=geometry)
    with h5py.File(path, "r") as f:
        attrs = f["entry_1/instrument_1"].attrs
        assert attrs["energy_eV"] == 13500.0
        assert attrs["detector_distance_m"] == 3.2
        assert attrs["detector_pixel_m"] == 75e-6
        np.testing.assert_array_equal(attrs["shape"], [16, 16])
        np.testing.assert_array_equal(attrs["object_pixel_size_m"], [2.5e-8, 3.0e-8])
    rf = read_result(path)
    assert rf.geometry == {
        "energy_eV": 13500.0,
        "detector_distance_m": 3.2,
        "detector_pixel_m": 75e-6,
        "shape": [16, 16],
    }
    assert rf.object_pixel_size_m == (2.5e-8, 3.0e-8)


def test_geometry_as_plain_mapping(tmp_path: Path) -> None:
    g = {"energy_eV": 8000.0, "detector_distance_m": 5.0, "detector_pixel_m": 55e-6, "shape": 64}
    rf = read_result(write_result(tmp_path / "r.h5", make_state(), geometry=g))
    assert rf.geometry == g
    assert rf.object_pixel_size_m is None


def test_real_geometry_round_trips(tmp_path: Path) -> None:
    geometry_mod = pytest.importorskip("bluesky_ptycho.geometry")
    g = geometry_mod.Geometry(13500.0, 3.2, 75e-6, 256)
    rf = read_result(write_result(tmp_path / "r.h5", make_state(), geometry=g))
    assert geometry_mod.Geometry.from_dict(rf.geometry) == g
    assert rf.object_pixel_size_m == pytest.approx(tuple(g.pixel_size_m), rel=1e-15)


def test_geometry_without_to_dict_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="to_dict"):
        write_result(tmp_path / "r.h5", make_state(), geometry=42)
    assert list(tmp_path.iterdir()) == []


def test_metadata_json_and_flat_attrs(tmp_path: Path) -> None:
    metadata = {
        "uid": "0b4e-42",
        "scan_id": 17,
        "exposure_s": np.float64(0.1),
        "sample": {"name": "siemens star", "thickness_nm": 500},
        "motors": ["sy", "sx"],
        "ok": True,
    }
    path = write_result(tmp_path / "r.h5", make_state(), metadata=metadata)
    with h5py.File(path, "r") as f:
        assert json.loads(f["entry_1"].attrs["metadata_json"])["uid"] == "0b4e-42"
        flat = f["entry_1/metadata"].attrs
        assert flat["uid"] == "0b4e-42"
        assert flat["scan_id"] == 17
        assert flat["exposure_s"] == 0.1
        assert "sample" not in flat  # nested: only in the JSON copy
    rf = read_result(path)
    assert rf.metadata == {
        "uid": "0b4e-42",
        "scan_id": 17,
        "exposure_s": 0.1,
        "sample": {"name": "siemens star", "thickness_nm": 500},
        "motors": ["sy", "sx"],
        "ok": True,
    }


def test_unserialisable_metadata_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="metadata"):
        write_result(tmp_path / "r.h5", make_state(), metadata={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    first = make_state(seed=1)
    write_result(path, first)
    with pytest.raises(FileExistsError, match=r"r\.h5"):
        write_result(path, make_state(seed=2))
    assert_states_identical(read_result(path).state, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]

    second = make_state(seed=2)
    write_result(path, second, overwrite=True)
    assert_states_identical(read_result(path).state, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_failed_write_leaves_old_file_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.h5"
    first = make_state(seed=1)
    write_result(path, first)

    def boom() -> str:
        raise RuntimeError("disk full")

    # Fails after the object and probe datasets are in the temporary file.
    monkeypatch.setattr(result_mod, "_software_version", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_result(path, make_state(seed=2), overwrite=True)
    assert_states_identical(read_result(path).state, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_file_is_written_under_a_temporary_name_then_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, bool]] = []
    real_replace = result_mod.os.replace

    def spy(src: Any, dst: Any) -> None:
        src = Path(src)
        seen.append((src.name, src.parent == tmp_path))
        real_replace(src, dst)

    monkeypatch.setattr(result_mod.os, "replace", spy)
    write_result(tmp_path / "r.h5", make_state(), overwrite=True)
    assert len(seen) == 1
    name, same_dir = seen[0]
    assert same_dir
    assert name.startswith(".r.h5.") and name.endswith(".tmp")


def test_checkpoint_same_layout_and_overwrites_by_default(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.h5"
    write_checkpoint(path, make_state(seed=1), geometry=FakeGeometry(), metadata={"uid": "a"})
    second = make_state(seed=2)
    write_checkpoint(path, second, geometry=FakeGeometry(), metadata={"uid": "a"})
    rf = read_checkpoint(path)
    assert rf.kind == "checkpoint"
    assert rf.metadata == {"uid": "a"}
    assert_states_identical(rf.state, second)
    # A checkpoint is a result file, readable by read_result.
    assert_states_identical(read_result(path).state, second)
    with pytest.raises(FileExistsError):
        write_checkpoint(path, second, overwrite=False)


def test_checkpoint_resumes_an_engine(tmp_path: Path) -> None:
    epie = pytest.importorskip("bluesky_ptycho.engine.epie")
    rng = np.random.default_rng(3)
    n = 16
    probe = np.zeros((n, n), np.complex64)
    probe[4:12, 4:12] = 10
    positions = np.array([[r, c] for r in (0, 6, 12) for c in (0, 6, 12)], dtype=np.float64)
    frames = rng.poisson(50, size=(len(positions), n, n)).astype(np.float32)

    engine = epie.EPIE((n + 12, n + 12), probe=probe)
    engine.add(frames, positions)
    engine.iterate(2)
    saved = engine.state()
    write_checkpoint(tmp_path / "c.h5", saved)

    resumed = epie.EPIE((n + 12, n + 12), probe=probe)
    resumed.add(frames, positions)
    resumed.load_state(read_checkpoint(tmp_path / "c.h5").state)
    assert_states_identical(resumed.state(), saved)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        read_result(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(b"this is not HDF5" * 10)
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_result(path)


def test_foreign_hdf5_names_missing_entry(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ValueError, match="/entry_1"):
        read_result(path)


def test_missing_dataset_is_named(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.h5", make_state())
    with h5py.File(path, "a") as f:
        del f["entry_1/probe/data"]
    with pytest.raises(ValueError, match="/entry_1/probe/data"):
        read_result(path)


def test_missing_group_is_named(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.h5", make_state())
    with h5py.File(path, "a") as f:
        del f["entry_1/process_1"]
    with pytest.raises(ValueError, match="/entry_1/process_1"):
        read_result(path)


def test_other_file_format_is_rejected(tmp_path: Path) -> None:
    path = write_result(tmp_path / "r.h5", make_state())
    with h5py.File(path, "a") as f:
        f.attrs["file_format"] = "something-else"
    with pytest.raises(ValueError, match="something-else"):
        read_result(path)


def test_bad_state_shape_is_rejected_before_writing(tmp_path: Path) -> None:
    state = make_state()
    state.positions_px = np.zeros((3, 3))
    with pytest.raises(ValueError, match="positions_px"):
        write_result(tmp_path / "r.h5", state)
    assert list(tmp_path.iterdir()) == []


def test_the_did_it_work_signal_and_error_trace_round_trip(tmp_path):
    state = ReconstructionState(
        object=np.ones((20, 20), np.complex64),
        probe=np.ones((8, 8), np.complex64),
        positions_px=np.zeros((3, 2)),
        error_trace=np.array([[10.0, 0.2], [20.0, 0.1]]),
        validation_error=0.12,
        validation_baseline=0.1,
    )
    path = tmp_path / "signal.h5"
    write_result(path, state)
    back = read_result(path).state
    np.testing.assert_array_equal(back.error_trace, state.error_trace)
    assert back.validation_error == pytest.approx(0.12)
    assert back.validation_ratio == pytest.approx(1.2)
    with h5py.File(path) as f:
        assert f["entry_1/process_1/validation_ratio"][()] == pytest.approx(1.2)


# ------------------------------------------------------------------ NXcxi_ptycho


def _scan(tmp_path: Path, n: int = 7, shape: tuple[int, int] = (16, 16)) -> ScanFile:
    rng = np.random.default_rng(3)
    frames = rng.poisson(50, size=(n, *shape)).astype(np.float32)
    positions = rng.uniform(-1e-6, 1e-6, size=(n, 2))
    path = write_cxi(
        tmp_path / "scan.cxi",
        frames,
        positions,
        energy_eV=13500.0,
        detector_distance_m=3.2,
        detector_pixel_m=75e-6,
        beam_center_px=(7, 9),
    )
    return read_cxi(path)


def test_a_result_with_its_scan_meets_nxcxi_ptycho(tmp_path: Path) -> None:
    scan = _scan(tmp_path)
    options = EPIEOptions(alpha=0.8, seed=4)
    path = write_result(
        tmp_path / "r.h5",
        make_state(),
        geometry=FakeGeometry(),
        metadata={"run_uid": "0b4e-42", "sample_name": "star"},
        scan=scan,
        options=options,
    )
    assert validate_nxcxi_ptycho(path) == []
    with h5py.File(path, "r") as f:
        assert int(f["cxi_version"][()]) == 160
        assert f["entry_1/definition"].asstr()[()] == "NXcxi_ptycho"
        assert f["entry_1/entry_identifier"].asstr()[()] == "0b4e-42"
        det = f["entry_1/instrument_1/detector_1"]
        assert det["distance"][()] == 3.2 and det["distance"].attrs["units"] == "m"
        assert det["x_pixel_size"][()] == 75e-6
        energy = f["entry_1/instrument_1/beam_1/incident_beam_energy"]
        assert energy[()] == pytest.approx(13500.0 * 1.602176634e-19, rel=1e-15)
        assert energy.attrs["units"] == "J"
        # the frames are the scan's, by link: no copy
        link = det.get("data", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        np.testing.assert_array_equal(det["data"][()], np.asarray(scan.intensities))
        np.testing.assert_array_equal(f["entry_1/data/data"][()], np.asarray(scan.intensities))
        np.testing.assert_array_equal(
            f["entry_1/sample_1/transformations/y"][()], -scan.positions_m[:, 0]
        )
        assert f["entry_1/process_1/parameters/alpha"][()] == 0.8
        assert f["entry_1/sample_1/name"].asstr()[()] == "star"
    rf = read_result(path)
    assert rf.run_uid == "0b4e-42" and rf.has_frames
    assert rf.options["alpha"] == 0.8 and rf.options["seed"] == 4
    # the result is itself a CXI scan: frames, positions, geometry, beam centre come back
    again = read_cxi(path)
    np.testing.assert_array_equal(np.asarray(again.intensities), np.asarray(scan.intensities))
    np.testing.assert_array_equal(again.positions_m, scan.positions_m)
    assert again.energy_eV == pytest.approx(13500.0, rel=1e-14)
    assert again.beam_center_px == (7.0, 9.0)


def test_frames_in_memory_are_embedded_and_several_files_become_one_virtual_dataset(
    tmp_path: Path,
) -> None:
    scan = _scan(tmp_path)
    frames = np.asarray(scan.intensities)
    embedded = ScanFile(frames, scan.positions_m, 13500.0, 3.2, 75e-6)
    path = write_result(tmp_path / "embedded.h5", make_state(), scan=embedded)
    assert validate_nxcxi_ptycho(path) == []
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry_1/instrument_1/detector_1/data"][()], frames)
    parts = []
    for k, (lo, hi) in enumerate(((0, 3), (3, 7))):
        with h5py.File(tmp_path / f"d{k}.h5", "w") as f:
            f["frames"] = frames[lo:hi]
        parts.append(FramePart(tmp_path / f"d{k}.h5", "/frames", hi - lo))
    linked = LinkedFrames(tuple(parts), frames.shape, frames.dtype)
    multi = ScanFile(linked, scan.positions_m, 13500.0, 3.2, 75e-6)  # type: ignore[arg-type]
    path = write_result(tmp_path / "virtual.h5", make_state(), scan=multi)
    assert validate_nxcxi_ptycho(path) == []
    with h5py.File(path, "r") as f:
        ds = f["entry_1/instrument_1/detector_1/data"]
        assert ds.is_virtual
        np.testing.assert_array_equal(ds[()], frames)


def test_validation_names_what_is_missing(tmp_path: Path) -> None:
    # without the scan the frames are missing, and without a geometry the instrument too
    bare = write_result(tmp_path / "bare.h5", make_state())
    problems = validate_nxcxi_ptycho(bare)
    assert "/entry_1/instrument_1/detector_1/data: missing" in problems
    assert "/entry_1/instrument_1/detector_1/distance: missing" in problems
    assert "/entry_1/instrument_1/beam_1/incident_beam_energy: missing" in problems
    assert any("no NXdata group with data, x, y" in p for p in problems)
    # with a geometry everything but the frames is there
    geo = write_result(tmp_path / "geo.h5", make_state(), geometry=FakeGeometry())
    assert validate_nxcxi_ptycho(geo) == [
        "/entry_1/instrument_1/detector_1/data: missing",
        "/entry_1/instrument_1/detector_1/data_1: missing",
        "/entry_1/data_1/data: missing",
        "/entry_1: no NXdata group with data, x, y, x_indices, y_indices and the signal and "
        "axes attributes",
    ]
    # a broken file: wrong definition, a missing units attribute, a dangling frame link
    scan = _scan(tmp_path)
    path = write_result(tmp_path / "r.h5", make_state(), geometry=FakeGeometry(), scan=scan)
    with h5py.File(path, "a") as f:
        del f["entry_1/definition"]
        f["entry_1/definition"] = "NXptycho"
        del f["entry_1/instrument_1/detector_1/distance"].attrs["units"]
    Path(scan.metadata["path"]).unlink()
    problems = validate_nxcxi_ptycho(path)
    assert "/entry_1/definition: is 'NXptycho', expected 'NXcxi_ptycho'" in problems
    assert "/entry_1/instrument_1/detector_1/distance: missing attribute @units" in problems
    assert "/entry_1/instrument_1/detector_1/data: missing" in problems
    assert not read_result(path).has_frames
    with pytest.raises(FileNotFoundError):
        validate_nxcxi_ptycho(tmp_path / "absent.h5")


def test_a_result_without_frames_still_round_trips_and_resumes(tmp_path: Path) -> None:
    state = make_state()
    rf = read_result(write_result(tmp_path / "r.h5", state, geometry=FakeGeometry()))
    assert_states_identical(rf.state, state)
    assert rf.has_frames is False and rf.run_uid is None and rf.options is None
    with pytest.raises(TypeError, match="scan must be a ScanFile"):
        write_result(tmp_path / "x.h5", state, scan=np.zeros((2, 4, 4)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be a dataclass or a mapping"):
        write_result(tmp_path / "x.h5", state, options=3)
    assert not (tmp_path / "x.h5").exists()
