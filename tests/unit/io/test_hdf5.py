"""bluesky_ptycho.io.hdf5: filters registered, failures classified by cause with the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from bluesky_ptycho.io.hdf5 import (
    COMPRESSION_FILTERS,
    FrameReadError,
    ReadCause,
    compression_options,
    get_dataset,
    open_hdf5,
    opened,
    read_frame,
)

FRAMES = np.arange(5 * 16 * 16, dtype=np.float32).reshape(5, 16, 16)


def _write(path, compression=None, data=FRAMES):
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "/entry/data/data",
            data=data,
            chunks=(1, *data.shape[1:]),
            **compression_options(compression),
        )
    return path


def _cause(fn) -> FrameReadError:
    with pytest.raises(FrameReadError) as info:
        fn()
    return info.value


@pytest.mark.parametrize("compression", [None, *COMPRESSION_FILTERS])
def test_every_supported_compression_round_trips(tmp_path, compression):
    path = _write(tmp_path / "f.h5", compression)
    with opened(path) as f:
        ds = get_dataset(f, "/entry/data/data")
        np.testing.assert_array_equal(read_frame(ds, 3), FRAMES[3])
        np.testing.assert_array_equal(read_frame(ds, slice(1, 4)), FRAMES[1:4])
        n_filters = ds.id.get_create_plist().get_nfilters()
    assert n_filters == (0 if compression is None else 1)


def test_unknown_compression_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown compression 'gzip9'.*bitshuffle-lz4"):
        compression_options("gzip9")


def test_missing_file(tmp_path):
    err = _cause(lambda: open_hdf5(tmp_path / "gone.h5"))
    assert err.cause is ReadCause.FILE_MISSING
    assert "gone.h5" in str(err) and "Fix:" in str(err)


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not hdf5 at all\n" * 100)
    assert _cause(lambda: open_hdf5(path)).cause is ReadCause.NOT_HDF5


def test_empty_file_is_one_still_being_written(tmp_path):
    path = tmp_path / "new.h5"
    path.write_bytes(b"")
    assert _cause(lambda: open_hdf5(path)).cause is ReadCause.BEING_WRITTEN


def test_truncated_file(tmp_path):
    path = _write(tmp_path / "t.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _cause(lambda: open_hdf5(path))
    assert err.cause is ReadCause.TRUNCATED
    assert "truncated" in str(err) and "re-acquire" in str(err)


def test_dataset_missing(tmp_path):
    path = _write(tmp_path / "d.h5")
    with opened(path) as f:
        err = _cause(lambda: get_dataset(f, "/entry/data/frames"))
        assert err.cause is ReadCause.DATASET_MISSING
        assert "/entry/data/frames is nothing" in str(err)
        err = _cause(lambda: get_dataset(f, "/entry/data"))
        assert "is group, not a dataset" in str(err)


def test_frame_beyond_the_end_is_said_with_the_count(tmp_path):
    path = _write(tmp_path / "short.h5")
    with opened(path) as f:
        ds = get_dataset(f, "/entry/data/data")
        err = _cause(lambda: read_frame(ds, 7, retries=0))
    assert err.cause is ReadCause.BEING_WRITTEN and err.cause.transient
    assert "frame 7" in str(err) and "holds 5 frame(s)" in str(err)


_GROWING_WRITER = """
    import sys
    import h5py
    with h5py.File(sys.argv[1], "w", libver="latest") as f:
        ds = f.create_dataset("/entry/data/data", shape=(1, 4, 4), maxshape=(None, 4, 4),
                              chunks=(1, 4, 4), dtype="f4", fillvalue=1.0)
        f.swmr_mode = True
        ds.flush()
        print("ready", flush=True)
        sys.stdin.readline()
        ds.resize(2, axis=0)
        ds[1] = 2.0
        ds.flush()
        sys.stdin.readline()
"""


def test_a_frame_another_process_flushes_while_waiting_is_read(tmp_path):
    path = tmp_path / "growing.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_GROWING_WRITER), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        with opened(path) as f:
            assert f.swmr_mode
            ds = get_dataset(f, "/entry/data/data")
            assert ds.shape[0] == 1
            writer.stdin.write("go\n")
            writer.stdin.flush()
            np.testing.assert_array_equal(read_frame(ds, 1, retries=200, wait_s=0.05), 2.0)
    finally:
        writer.stdin.write("done\n")
        writer.stdin.close()
        writer.wait(timeout=30)


_NO_PLUGIN = """
    import json, sys
    sys.modules["hdf5plugin"] = None  # not installed
    from bluesky_ptycho.io.hdf5 import FrameReadError, get_dataset, opened, read_frame
    out = {}
    for path in sys.argv[1:]:
        try:
            with opened(path) as f:
                read_frame(get_dataset(f, "/entry/data/data"), 0)
            out[path] = "read"
        except FrameReadError as exc:
            out[path] = [exc.cause.name, str(exc)]
    print(json.dumps(out))
"""


def test_missing_filter_plugin_names_the_filter_and_the_fix(tmp_path):
    plain = str(_write(tmp_path / "plain.h5"))
    packed = str(_write(tmp_path / "packed.h5", "bitshuffle-lz4"))
    zstd = str(_write(tmp_path / "zstd.h5", "zstd"))
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_PLUGIN), plain, packed, zstd],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out[plain] == "read"
    cause, text = out[packed]
    assert cause == "FILTER_MISSING"
    for part in (
        "bitshuffle/LZ4",
        "32008",
        "not importable",
        "pip install hdf5plugin",
        "HDF5_PLUGIN_PATH",
    ):
        assert part in text, part
    assert out[zstd][0] == "FILTER_MISSING" and "Zstd" in out[zstd][1]
