"""``bluesky-ptycho reconstruct SCAN --parallel ... --workers K [--mpi]`` on a CXI file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bluesky_ptycho.cli import main
from bluesky_ptycho.io.cxi import write_cxi
from bluesky_ptycho.io.result import read_result

F32_TOL = 1e-5


@pytest.fixture(scope="module")
def cxi_file(small_dataset, tmp_path_factory) -> Path:
    ds = small_dataset
    g = ds.geometry
    return write_cxi(
        tmp_path_factory.mktemp("cxi") / "small.cxi",
        ds.intensities,
        ds.positions_m,
        energy_eV=g.energy_eV,
        detector_distance_m=g.detector_distance_m,
        detector_pixel_m=g.detector_pixel_m,
    )


def _args(cxi: Path, out: Path) -> list[str]:
    return ["reconstruct", str(cxi), "--passes", "4", "--batch-size", "16", "--output", str(out)]


def test_synchronous_threads_and_processes_write_the_same_result(cxi_file, tmp_path):
    outs = {name: tmp_path / f"{name}.h5" for name in ("one", "threads", "processes", "seq")}
    sync = ["--parallel", "synchronous", "--quiet"]
    assert main([*_args(cxi_file, outs["one"]), *sync, "--workers", "1"]) == 0
    assert main([*_args(cxi_file, outs["threads"]), *sync, "--workers", "2"]) == 0
    assert main([*_args(cxi_file, outs["processes"]), *sync, "--workers", "2", "--processes"]) == 0
    assert main([*_args(cxi_file, outs["seq"]), "--quiet"]) == 0
    one = read_result(outs["one"]).state
    for name in ("threads", "processes"):
        got = read_result(outs[name]).state
        np.testing.assert_allclose(got.object, one.object, rtol=F32_TOL, atol=F32_TOL)
    assert one.iteration == 4
    # the flag reached the engine: the sequential ePIE is another result
    assert np.abs(read_result(outs["seq"]).state.object - one.object).max() > 1e-3


def test_averaging_from_the_command_line(cxi_file, tmp_path):
    out = tmp_path / "avg.h5"
    args = [*_args(cxi_file, out), "--parallel", "averaging", "--workers", "2", "--quiet"]
    assert main([*args, "--average-every", "2"]) == 0
    state = read_result(out).state
    assert state.iteration == 4 and state.fourier_error.shape == (4,)
    assert np.all(np.isfinite(state.object))


def test_mpirun_two_ranks_only_rank_0_prints_and_writes(cxi_file, tmp_path):
    pytest.importorskip("mpi4py", reason="the mpi extra is not installed")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )
    if mpiexec is None:
        pytest.skip("no mpiexec (the mpi extra installs MPICH's)")
    out = tmp_path / "mpi.h5"
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "bluesky_ptycho.cli"]
    cmd += [*_args(cxi_file, out), "--parallel", "synchronous", "--mpi"]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("result:") == 1 and proc.stdout.count("patterns, passes") == 1
    one = tmp_path / "one.h5"
    assert main([*_args(cxi_file, one), "--parallel", "synchronous", "--quiet"]) == 0
    got, want = read_result(out).state, read_result(one).state
    np.testing.assert_allclose(got.object, want.object, rtol=F32_TOL, atol=F32_TOL)
    np.testing.assert_allclose(got.fourier_error, want.fourier_error, rtol=1e-4)
