"""The simulated beamline under a real RunEngine: inline, resource/datum and stream documents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from area_detector_handlers.handlers import AreaDetectorHDF5Handler
from bluesky import RunEngine
from event_model import Filler

from bluesky_ptycho.preprocess import preprocess
from bluesky_ptycho.setup import ScanSetup
from bluesky_ptycho.sim_beamline import (
    DATA_PATH,
    DetectorLayout,
    JitteryAxis,
    SimBeamline,
    SimulatedSpecimen,
    make_beamline,
)
from bluesky_ptycho.sim_beamline_async import JitteryAsyncAxis, make_async_beamline
from bluesky_ptycho.simulate import simulate_dataset, small_preset

Docs = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def RE() -> RunEngine:
    return RunEngine({})


def _subgrid(bl: SimBeamline) -> np.ndarray:
    """16 of the small preset's 81 raster points (every other row and column), motor units."""
    k = np.arange(bl.specimen.nominal_positions_m.shape[0])
    keep = np.isin(k // 9, (1, 3, 5, 7)) & np.isin(k % 9, (1, 3, 5, 7))
    return bl.setpoints()[keep]


def _run(RE: RunEngine, bl: SimBeamline, setpoints: np.ndarray, *subscribers: Any) -> Docs:
    docs: Docs = []
    tokens = [RE.subscribe(lambda name, doc: docs.append((name, doc)))]
    tokens += [RE.subscribe(s) for s in subscribers]
    setup = bl.setup(nominal_positions_m=setpoints * bl.position_scale_m)
    try:
        RE(
            bp.list_scan(
                [bl.detector],
                bl.y_motor,
                setpoints[:, 0].tolist(),
                bl.x_motor,
                setpoints[:, 1].tolist(),
                md={"ptycho": setup.to_start_doc()},
            )
        )
    finally:
        for token in tokens:
            RE.unsubscribe(token)
    return docs


def _events(docs: Docs) -> list[dict[str, Any]]:
    return [doc for name, doc in docs if name == "event"]


def _readbacks_m(bl: SimBeamline, event: dict[str, Any]) -> tuple[float, float]:
    y_key, x_key = bl.position_keys
    return (event["data"][y_key] * bl.position_scale_m, event["data"][x_key] * bl.position_scale_m)


def _fds_open_on(path: Path) -> list[str]:
    """File descriptors of this process open on ``path`` (Linux /proc)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to list open files")
    out = []
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(fd_dir / fd) == str(path):
                out.append(fd)
        except OSError:
            continue
    return out


# --------------------------------------------------------------------------------------------
# specimen
# --------------------------------------------------------------------------------------------


def test_specimen_reproduces_simulate_dataset() -> None:
    specimen = SimulatedSpecimen.from_preset(small_preset(), seed=3)
    clean = simulate_dataset(small_preset(), seed=3, noise=False)
    noisy = simulate_dataset(small_preset(), seed=3)
    assert np.array_equal(specimen.object, clean.object)
    assert np.array_equal(specimen.probe, clean.probe)
    assert specimen.frame == clean.frame
    some = [0, 40, 80]
    got = np.stack([specimen.pattern_at(clean.nominal_positions_m[k], noise=False) for k in some])
    np.testing.assert_allclose(got, clean.intensities[some], rtol=1e-6, atol=1e-6)
    # the noise sequence is simulate_dataset's: the same counts at the nominal positions
    frames = np.stack([specimen.pattern_at(p) for p in clean.nominal_positions_m])
    assert frames.dtype == np.float32
    assert np.array_equal(frames, noisy.intensities)
    specimen.reset_noise()
    assert np.array_equal(specimen.pattern_at(clean.nominal_positions_m[0]), noisy.intensities[0])


def test_specimen_rejects_positions_off_the_object() -> None:
    specimen = SimulatedSpecimen.from_preset(small_preset())
    with pytest.raises(ValueError, match="leaves the simulated object"):
        specimen.pattern_at((1e-4, 0.0))


def test_setup_describes_the_specimen() -> None:
    bl = make_beamline(seed=1)
    setup = bl.setup()
    assert isinstance(setup, ScanSetup)
    assert setup.detector_key == "eiger_image"
    assert setup.position_keys == ("sy", "sx")
    assert setup.position_scale_m == 1e-6
    assert setup.crop == 64
    assert setup.beam_center_px == (32.0, 32.0)
    assert (setup.transpose, setup.flip_rows, setup.flip_cols) == (False, False, False)
    assert setup.geometry() == bl.specimen.geometry
    assert setup.object_frame() == bl.specimen.frame
    assert setup.expected_points == 81
    # plain JSON round trip
    assert ScanSetup.from_start_doc(setup.to_start_doc()) == setup


@pytest.mark.parametrize(
    "layout",
    [
        DetectorLayout(),
        DetectorLayout(raw_shape=(100, 90), beam_center_px=(40, 55)),
        DetectorLayout(raw_shape=(100, 90), beam_center_px=(40, 55), transpose=True),
        DetectorLayout(raw_shape=(97, 120), beam_center_px=(60, 33), flip_rows=True),
        DetectorLayout(
            raw_shape=(80, 130),
            beam_center_px=(45, 70),
            transpose=True,
            flip_rows=True,
            flip_cols=True,
        ),
    ],
)
def test_raw_frames_preprocess_back_to_the_pattern(layout: DetectorLayout) -> None:
    specimen = SimulatedSpecimen.from_preset(small_preset(), layout=layout, noise=False)
    position = specimen.nominal_positions_m[10]
    pattern = specimen.pattern_at(position)
    raw = specimen.raw_frame_at(position)
    assert raw.shape == specimen.raw_shape
    assert raw.sum() == pytest.approx(pattern.sum(), rel=1e-6)
    setup = specimen.setup()
    engine_frame = preprocess(raw, setup.preprocess_config(raw.shape)).intensities[0]
    assert np.array_equal(engine_frame, pattern)


def test_layout_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        SimulatedSpecimen.from_preset(
            small_preset(), layout=DetectorLayout(raw_shape=(70, 70), beam_center_px=(10, 35))
        )


# --------------------------------------------------------------------------------------------
# motors
# --------------------------------------------------------------------------------------------


def test_jittery_axis_readback_is_setpoint_plus_jitter() -> None:
    axis = JitteryAxis(name="sy", jitter=0.01, seed=5)
    targets = np.linspace(-1.0, 1.0, 200)
    errors = []
    for target in targets:
        axis.set(float(target)).wait(timeout=5)
        errors.append(axis.position - target)
        assert axis.setpoint.get() == target
    errors = np.asarray(errors)
    assert np.all(errors != 0.0)
    assert np.std(errors) == pytest.approx(0.01, rel=0.15)
    assert abs(np.mean(errors)) < 0.003
    assert list(axis.read()) == ["sy", "sy_setpoint"]
    still = JitteryAxis(name="sx", jitter=0.0)
    still.set(0.25).wait(timeout=5)
    assert still.position == 0.25


# --------------------------------------------------------------------------------------------
# ophyd v1: inline frames
# --------------------------------------------------------------------------------------------


def test_inline_frames_are_the_patterns_at_the_readbacks(RE: RunEngine) -> None:
    bl = make_beamline(mode="inline", noise=False, seed=2)
    setpoints = _subgrid(bl)
    docs = _run(RE, bl, setpoints)
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    key = descriptor["data_keys"]["eiger_image"]
    assert key["dtype"] == "array"
    assert key["shape"] == [64, 64]
    assert key["dtype_numpy"] == "<f4"
    assert "external" not in key
    assert {"sy", "sx", "sy_setpoint", "sx_setpoint"} <= set(descriptor["data_keys"])

    events = _events(docs)
    assert len(events) == len(setpoints) == 16
    for event, setpoint in zip(events, setpoints, strict=True):
        frame = event["data"]["eiger_image"]
        assert isinstance(frame, np.ndarray) and frame.shape == (64, 64)
        readback_m = _readbacks_m(bl, event)
        assert np.array_equal(frame, bl.specimen.pattern_at(readback_m))
        # the readbacks, not the setpoints, decide the frame
        assert event["data"]["sy_setpoint"] == setpoint[0]
        assert not np.array_equal(frame, bl.specimen.pattern_at(setpoint * bl.position_scale_m))

    # readbacks differ from setpoints by about the jitter (2 nm rms, in micrometres)
    diffs = np.array(
        [
            [e["data"]["sy"] - e["data"]["sy_setpoint"], e["data"]["sx"] - e["data"]["sx_setpoint"]]
            for e in events
        ]
    )
    assert np.all(diffs != 0.0)
    assert np.all(np.abs(diffs) < 6 * 0.002)
    assert 0.0005 < np.sqrt(np.mean(np.unique(diffs) ** 2)) < 0.006


def test_inline_noisy_frames_follow_the_seeded_sequence(RE: RunEngine) -> None:
    bl = make_beamline(mode="inline", seed=4)
    setpoints = _subgrid(bl)[:9]
    events = _events(_run(RE, bl, setpoints))
    twin = SimulatedSpecimen.from_preset(small_preset(), seed=4)
    frames = np.stack([e["data"]["eiger_image"] for e in events])
    expected = np.stack([twin.pattern_at(_readbacks_m(bl, e)) for e in events])
    assert np.array_equal(frames, expected)
    assert np.all(frames == np.round(frames))  # photon counts
    clean = np.stack([twin.pattern_at(_readbacks_m(bl, e), noise=False) for e in events])
    assert not np.array_equal(frames, clean)


def test_inline_raw_frames_with_a_layout(RE: RunEngine) -> None:
    layout = DetectorLayout(raw_shape=(96, 80), beam_center_px=(50, 41), transpose=True)
    bl = make_beamline(mode="inline", noise=False, layout=layout)
    setpoints = _subgrid(bl)[:2]
    docs = _run(RE, bl, setpoints)
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    assert descriptor["data_keys"]["eiger_image"]["shape"] == [96, 80]
    (start,) = [doc for name, doc in docs if name == "start"]
    setup = ScanSetup.from_start_doc(start["ptycho"])
    assert setup.beam_center_px == (50.0, 41.0) and setup.transpose
    for event in _events(docs):
        raw = event["data"]["eiger_image"]
        frame = preprocess(raw, setup.preprocess_config(raw.shape)).intensities[0]
        assert np.array_equal(frame, bl.specimen.pattern_at(_readbacks_m(bl, event)))


# --------------------------------------------------------------------------------------------
# ophyd v1: resource / datum (AD_HDF5)
# --------------------------------------------------------------------------------------------


def test_hdf5_resource_datum_fill_to_the_inline_frames(RE: RunEngine, tmp_path: Path) -> None:
    inline = make_beamline(mode="inline", noise=False, seed=6)
    bl = make_beamline(mode="hdf5", directory=tmp_path, noise=False, seed=6)
    setpoints = _subgrid(bl)
    inline_events = _events(_run(RE, inline, setpoints))

    handlers: dict[Any, Any] = {}
    filler = Filler({"AD_HDF5": AreaDetectorHDF5Handler}, inplace=False, handler_cache=handlers)
    live: list[np.ndarray] = []

    def fill_live(name: str, doc: dict[str, Any]) -> None:
        # fill each event as it arrives, while the file is still being written
        name, doc = filler(name, doc)
        if name == "event":
            live.append(np.asarray(doc["data"]["eiger_image"]))

    docs = _run(RE, bl, setpoints, fill_live)
    names = [name for name, _ in docs]
    assert names.count("resource") == 1 and names.count("datum") == 16
    (resource,) = [doc for name, doc in docs if name == "resource"]
    (start,) = [doc for name, doc in docs if name == "start"]
    assert resource["spec"] == "AD_HDF5"
    assert resource["resource_kwargs"] == {"frame_per_point": 1}
    assert resource["run_start"] == start["uid"]
    path = Path(resource["root"]) / resource["resource_path"]
    assert path.parent == tmp_path.resolve() and path.suffix == ".h5"
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    key = descriptor["data_keys"]["eiger_image"]
    assert key["external"] == "FILESTORE:" and key["shape"] == [1, 64, 64]

    datums: dict[str, dict[str, Any]] = {}
    for name, doc in docs:  # each datum comes before the event that refers to it
        if name == "datum":
            datums[doc["datum_id"]] = doc
        elif name == "event":
            assert doc["data"]["eiger_image"] in datums
    events = _events(docs)
    for i, event in enumerate(events):
        datum_id = event["data"]["eiger_image"]
        assert datum_id == f"{resource['uid']}/{i}"
        assert datums[datum_id]["datum_kwargs"] == {"point_number": i}
        assert datums[datum_id]["resource"] == resource["uid"]
        assert event["filled"] == {"eiger_image": False}
        assert event["data"]["sy"] == inline_events[i]["data"]["sy"]  # same jitter sequence

    assert len(live) == 16
    for frame, event, inline_event in zip(live, events, inline_events, strict=True):
        assert frame.shape == (1, 64, 64)
        assert np.array_equal(frame[0], inline_event["data"]["eiger_image"])
        assert np.array_equal(frame[0], bl.specimen.pattern_at(_readbacks_m(bl, event)))

    # after the run: the file is closed and holds exactly the 16 frames
    assert not bl.detector.is_open
    for handler in handlers.values():
        handler.close()
    filler.close()
    assert _fds_open_on(path) == []
    with h5py.File(path, "r") as f:
        data = f[DATA_PATH][()]
    assert data.shape == (16, 64, 64) and data.dtype == np.float32
    assert np.array_equal(data, np.stack(live)[:, 0])


def test_hdf5_mode_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="directory"):
        make_beamline(mode="hdf5")
    with pytest.raises(ValueError, match="mode"):
        make_beamline(mode="tiff")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# ophyd-async: stream_resource / stream_datum
# --------------------------------------------------------------------------------------------


def test_async_stream_documents_and_frames(RE: RunEngine, tmp_path: Path) -> None:
    inline = make_beamline(mode="inline", noise=False, seed=8)
    bl = make_async_beamline(directory=tmp_path, noise=False, seed=8)
    assert isinstance(bl.y_motor, JitteryAsyncAxis)
    setpoints = _subgrid(bl)
    inline_events = _events(_run(RE, inline, setpoints))

    live: dict[int, np.ndarray] = {}
    resources: dict[str, dict[str, Any]] = {}

    def read_live(name: str, doc: dict[str, Any]) -> None:
        # a consumer reads the slice as soon as the stream_datum arrives
        if name == "stream_resource":
            resources[doc["uid"]] = doc
        elif name == "stream_datum":
            resource = resources[doc["stream_resource"]]
            path = urlparse(resource["uri"]).path
            with h5py.File(path, "r", swmr=True) as f:
                block = f[resource["parameters"]["dataset"]][
                    doc["indices"]["start"] : doc["indices"]["stop"]
                ]
            for seq_num, frame in zip(
                range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]), block, strict=True
            ):
                live[seq_num] = frame

    docs = _run(RE, bl, setpoints, read_live)
    names = [name for name, _ in docs]
    assert names.count("stream_resource") == 1 and names.count("stream_datum") == 16
    assert "resource" not in names and "datum" not in names

    (resource,) = [doc for name, doc in docs if name == "stream_resource"]
    (start,) = [doc for name, doc in docs if name == "start"]
    assert resource["data_key"] == "eiger"
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["run_start"] == start["uid"]
    uri = urlparse(resource["uri"])
    assert uri.scheme == "file" and uri.netloc == "localhost"
    path = Path(uri.path)
    assert path.is_absolute() and path.parent == tmp_path.resolve()
    assert resource["parameters"]["dataset"] == "/entry/data/data"
    assert tuple(resource["parameters"]["chunk_shape"]) == (1, 64, 64)

    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    key = descriptor["data_keys"]["eiger"]
    assert key["external"] == "STREAM:"
    assert key["shape"] == [1, 64, 64] and key["dtype_numpy"] == "<f4"
    assert ScanSetup.from_start_doc(start["ptycho"]).detector_key == "eiger"

    # each stream_datum comes before the event with the same seq_num
    seen: set[int] = set()
    expected_index = 0
    for name, doc in docs:
        if name == "stream_datum":
            assert doc["descriptor"] == descriptor["uid"]
            assert doc["indices"] == {"start": expected_index, "stop": expected_index + 1}
            expected_index += 1
            seen.update(range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"]))
        elif name == "event":
            assert doc["seq_num"] in seen
            assert "eiger" not in doc["data"]

    events = _events(docs)
    assert [e["seq_num"] for e in events] == list(range(1, 17))
    assert not bl.detector.is_open
    assert _fds_open_on(path) == []
    with h5py.File(path, "r") as f:
        data = f[DATA_PATH][()]
    assert data.shape == (16, 64, 64)
    for (_name, doc), event in zip(
        [(n, d) for n, d in docs if n == "stream_datum"], events, strict=True
    ):
        assert doc["seq_nums"]["start"] == event["seq_num"]
        frame = data[doc["indices"]["start"] : doc["indices"]["stop"]][0]
        assert np.array_equal(frame, live[event["seq_num"]])
        assert np.array_equal(frame, bl.specimen.pattern_at(_readbacks_m(bl, event)))
    for event, inline_event in zip(events, inline_events, strict=True):
        # same seeds, same jitter: the same positions and frames as the v1 beamline
        assert event["data"]["sy"] == inline_event["data"]["sy"]
        assert event["data"]["sx"] == inline_event["data"]["sx"]
        frame = data[event["seq_num"] - 1]
        assert np.array_equal(frame, inline_event["data"]["eiger_image"])


def test_beamline_setup_takes_any_scan_setup_field() -> None:
    beamline = make_beamline(seed=0)
    default = beamline.setup()
    assert default.position_scale_m == beamline.position_scale_m
    setup = beamline.setup(position_scale_m=1e-3, detector_key="other", margin_px=4)
    assert setup.position_scale_m == 1e-3
    assert setup.detector_key == "other" and setup.margin_px == 4
    assert setup.position_keys == default.position_keys
