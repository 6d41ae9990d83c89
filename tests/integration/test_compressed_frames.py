"""Compressed detector frames, written by one process and read by another.

The writer process runs real RunEngine scans of the simulated beamline (ophyd v1 resource/datum
and ophyd-async stream_resource/stream_datum detectors) whose HDF5 files are compressed with
each supported filter, and saves the documents the RunEngine emitted. A fresh reader process,
whose code never imports ``hdf5plugin`` (only bluesky_ptycho may), feeds those documents to
``PtychoCallback``. A test process that imported ``hdf5plugin`` itself would prove nothing about
a beamline process that did not, hence the subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bluesky_ptycho.io.hdf5 import COMPRESSION_FILTERS

COMPRESSIONS = [None, *COMPRESSION_FILTERS]
FLAVOURS = ("hdf5", "stream")


def _run(code: str, *args: str, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter without HDF5_PLUGIN_PATH; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


_WRITER = """
    import pickle, sys
    from pathlib import Path

    import h5py
    from bluesky import RunEngine
    from bluesky_ptycho.plans import spirangle_ptycho
    from bluesky_ptycho.sim_beamline import make_beamline
    from bluesky_ptycho.sim_beamline_async import make_async_beamline
    from bluesky_ptycho.simulate import small_preset

    out = Path(sys.argv[1])
    RE = RunEngine({})
    for flavour in ("hdf5", "stream"):
        for compression in [None, *sys.argv[2:]]:
            name = f"{flavour}-{compression or 'none'}"
            if flavour == "stream":
                beamline = make_async_beamline(
                    directory=out / name, seed=3, compression=compression
                )
            else:
                beamline = make_beamline(
                    mode="hdf5", directory=out / name, seed=3, compression=compression
                )
            docs = []
            preset = small_preset()
            RE(
                spirangle_ptycho(
                    [beamline.detector],
                    beamline.x_motor,
                    beamline.y_motor,
                    setup=beamline.setup(),
                    n_side=preset.n_rows,
                    step=preset.step_m / beamline.position_scale_m,
                ),
                lambda n, d: docs.append((n, d)),
            )
            files = sorted((out / name).glob("*.h5"))
            assert len(files) == 1, files
            with h5py.File(files[0], "r") as f:
                plist = f["/entry/data/data"].id.get_create_plist()
                filters = [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]
            (out / f"{name}.pkl").write_bytes(pickle.dumps((docs, filters)))
    print("written")
"""

_READER = """
    import json, pickle, sys
    from pathlib import Path

    assert "hdf5plugin" not in sys.modules
    import h5py
    import numpy as np

    # without registration no compression filter is there: the package must bring them
    plugin_filters_before = [f for f in (32008, 32004, 32001, 32026, 32015)
                             if h5py.h5z.filter_avail(f)]

    from bluesky_ptycho.callback import PtychoCallback
    from bluesky_ptycho.live import LiveOptions, PacingPolicy

    out = Path(sys.argv[1])
    summary = {"filters_before": plugin_filters_before}
    for pkl in sorted(out.glob("*.pkl")):
        docs, filters = pickle.loads(pkl.read_bytes())
        frames, positions = {}, {}

        def on_frame(index, intensities, mask, pos, frames=frames, positions=positions):
            frames[index] = intensities.copy()
            positions[index] = pos.copy()

        # no passes while documents arrive, a few after the stop: the result depends only
        # on the frames and positions, so equal inputs must give bit-identical results
        options = LiveOptions(
            final_passes=3, pacing=PacingPolicy(mode="batch", passes_per_batch=0.0)
        )
        cb = PtychoCallback(options=options, on_frame=on_frame)
        for name, doc in docs:
            cb(name, doc)
        state = cb.result(timeout=300)
        keys = sorted(frames)
        np.savez(
            out / f"{pkl.stem}.npz",
            frames=np.stack([frames[k] for k in keys]) if keys else np.zeros((0,)),
            positions=np.stack([positions[k] for k in keys]) if keys else np.zeros((0,)),
            object=state.object,
            probe=state.probe,
        )
        summary[pkl.stem] = {
            "filters": [int(f) for f in filters],
            "rejected": cb.status.rejected,
            "reasons": list(cb.status.reasons),
            "used": cb.status.frames_used,
        }
        cb.close()
    summary["hdf5plugin_loaded_by_package"] = "hdf5plugin" in sys.modules
    print(json.dumps(summary))
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compressed")
    _run(_WRITER, str(out), *COMPRESSION_FILTERS)
    return out


@pytest.mark.slow
def test_compressed_frames_from_another_process_reconstruct_as_uncompressed(written):
    summary = json.loads(_run(_READER, str(written)).strip().splitlines()[-1])
    # the reading process had no filter until bluesky_ptycho registered them
    assert summary["filters_before"] == []
    assert summary["hdf5plugin_loaded_by_package"] is True
    for flavour in FLAVOURS:
        ref = np.load(written / f"{flavour}-none.npz")
        assert ref["frames"].shape[0] == 81
        for compression in COMPRESSIONS:
            name = f"{flavour}-{compression or 'none'}"
            info = summary[name]
            expected = [] if compression is None else [COMPRESSION_FILTERS[compression]]
            assert info["filters"] == expected, name  # the file really was compressed
            assert info["rejected"] == 0, info["reasons"]
            assert info["used"] == 81, name
            got = np.load(written / f"{name}.npz")
            for key in ("frames", "positions", "object", "probe"):
                np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name} {key}")
    # both document flavours see the same frames and positions
    a, b = np.load(written / "hdf5-none.npz"), np.load(written / "stream-none.npz")
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["positions"], b["positions"])


_BLOCKED_READER = """
    import json, logging, pickle, sys
    from pathlib import Path

    sys.modules["hdf5plugin"] = None  # as if it were not installed: import fails

    from bluesky_ptycho.callback import PtychoCallback
    from bluesky_ptycho.live import LiveOptions

    class Count(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    counter = Count()
    logging.getLogger("bluesky_ptycho").addHandler(counter)
    out = Path(sys.argv[1])
    summary = {}
    for flavour in ("hdf5", "stream"):
        # one run whose first half of the frames comes from the uncompressed file and the
        # second half from the bitshuffle/LZ4 one: the documents are spliced accordingly
        plain, _ = pickle.loads((out / f"{flavour}-none.pkl").read_bytes())
        packed, _ = pickle.loads((out / f"{flavour}-bitshuffle-lz4.pkl").read_bytes())
        counter.lines.clear()
        cb = PtychoCallback(options=LiveOptions(final_passes=1))
        events = [d for n, d in plain if n == "event"]
        half = len(events) // 2
        head = [(n, d) for n, d in plain if n not in ("event", "stop", "stream_datum", "datum")]
        kept = {d["seq_num"] for d in events[:half]}
        docs = list(head)
        for name, doc in plain:
            if name == "event" and doc["seq_num"] not in kept:
                continue
            if name == "stream_datum" and doc["seq_nums"]["start"] not in kept:
                continue
            if name in ("datum", "stream_datum", "event"):
                docs.append((name, doc))
        # the compressed run's assets and events, re-addressed to the plain run
        start = plain[0][1]["uid"]
        desc = next(d for n, d in plain if n == "descriptor" and d["name"] == "primary")
        packed_desc = next(d for n, d in packed if n == "descriptor" and d["name"] == "primary")
        for name, doc in packed:
            doc = dict(doc)
            if name == "resource" or name == "stream_resource":
                doc["run_start"] = start
            elif name == "stream_datum":
                if doc["seq_nums"]["start"] <= half:
                    continue
                doc["descriptor"] = desc["uid"]
            elif name == "event":
                if doc["seq_num"] <= half:
                    continue
                doc["descriptor"] = desc["uid"]
            elif name != "datum":
                continue
            docs.append((name, doc))
        docs.append(next((n, d) for n, d in plain if n == "stop"))
        for name, doc in docs:
            cb(name, doc)
        cb.result(timeout=300)
        st = cb.status
        summary[flavour] = {
            "used": st.frames_used,
            "received": st.frames_received,
            "rejected": st.rejected,
            "reasons": list(st.reasons),
            "causes": [(r.cause, r.count, r.first_seq_num, r.last_seq_num)
                       for r in st.rejections],
            "log_lines": [line for line in counter.lines if "filter" in line],
            "message": st.message,
        }
        cb.close()
    print(json.dumps(summary))
"""


@pytest.mark.slow
def test_missing_filter_plugin_is_one_error_with_a_count_and_plain_frames_are_kept(written):
    summary = json.loads(_run(_BLOCKED_READER, str(written)).strip().splitlines()[-1])
    for flavour in FLAVOURS:
        info = summary[flavour]
        assert info["received"] == 81, info
        assert info["used"] == 40, info  # every uncompressed frame
        assert info["rejected"] == 41, info["reasons"]
        assert info["causes"] == [["FILTER_MISSING", 41, 41, 81]], info["causes"]
        (reason,) = info["reasons"]
        for text in ("bitshuffle/LZ4", "32008", "pip install hdf5plugin", "HDF5_PLUGIN_PATH"):
            assert text in reason, (text, reason)
        assert "41 items, seq_num 41..81" in reason
        # said once, re-counted at 10 items and summed up at the end: not once per frame
        assert 1 <= len(info["log_lines"]) <= 4, info["log_lines"]
        assert "41 items" in info["log_lines"][-1]
        assert "HDF5 compression filter not available" in info["message"]


_CXI_COMPRESSOR = """
    import sys
    import h5py
    import hdf5plugin

    src, dst = sys.argv[1], sys.argv[2]
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for name in f:
            f.copy(name, g)
        det = "/entry_1/instrument_1/detector_1/data"
        frames = f[det][()]
        del g[det]
        g.create_dataset(
            det, data=frames, chunks=(1, *frames.shape[1:]), **hdf5plugin.Bitshuffle(cname="lz4")
        )
"""

_CXI_READER = """
    import json, sys
    import numpy as np
    from bluesky_ptycho.io.cxi import read_cxi

    plain, packed = (read_cxi(p) for p in sys.argv[1:3])
    a = np.asarray(plain.intensities)
    b = np.asarray(packed.intensities)
    chunks = np.concatenate([c for _, c in packed.iter_frames(7)])
    print(json.dumps({
        "equal": bool(np.array_equal(a, b) and np.array_equal(a, chunks)),
        "positions": bool(np.array_equal(plain.positions_m, packed.positions_m)),
        "n": int(a.shape[0]),
        "hdf5plugin_loaded_by_package": "hdf5plugin" in sys.modules,
    }))
"""


def test_bitshuffle_cxi_file_reads_as_the_plain_one_in_a_fresh_process(small_dataset, tmp_path):
    from bluesky_ptycho.io.cxi import write_cxi

    ds = small_dataset
    plain = tmp_path / "plain.cxi"
    write_cxi(
        plain,
        ds.intensities,
        ds.positions_m,
        energy_eV=ds.geometry.energy_eV,
        detector_distance_m=ds.geometry.detector_distance_m,
        detector_pixel_m=ds.geometry.detector_pixel_m,
    )
    packed = tmp_path / "packed.cxi"
    _run(_CXI_COMPRESSOR, str(plain), str(packed))
    out = json.loads(_run(_CXI_READER, str(plain), str(packed)).strip().splitlines()[-1])
    assert out == {
        "equal": True,
        "positions": True,
        "n": len(ds.intensities),
        "hdf5plugin_loaded_by_package": True,
    }
