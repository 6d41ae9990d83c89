"""The device server ``kill -9``-ed mid-scan and restarted: the run is resumed, loss is counted.

Real processes: a ``bluesky-0MQ-proxy`` and a database-free device server with a
``CheckpointDirectory``. This process publishes a recorded scan's documents (event_model, the
small simulated dataset) through the proxy at a fixed rate; once the server has checkpointed
part of the scan, it gets ``SIGKILL`` while frames are still flowing; more frames are published
while it is down; it is restarted with the same property file, and the rest of the scan and
the stop follow. The device must resume the run from its checkpoint, report exactly the events
it never used as FramesLost, and end the run saved.

The other tests of this module check what the device says about the other ways data goes
missing or wrong, with the same real processes: a stop lost while the server is down (the idle
timeout ends the run), a killed proxy (FeedConnected, DISCONNECTED), a probe_init file outside
DataDirectories (one refusal whether it exists or not), a poisoned frame (QUARANTINED).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import event_model
import numpy as np
import pytest
import tango
from tango import DevState

from bluesky_ptycho.checkpoint import read_checkpoints
from bluesky_ptycho.setup import ScanSetup
from bluesky_ptycho.transport import ProxyProcess, make_publisher

if TYPE_CHECKING:
    from conftest import ServerFactory

RATE_HZ = 20.0
WAIT = 120.0  # upper bounds only
DET, SY, SX = "det_image", "sy", "sx"


def wait_for(condition: Callable[[], bool], timeout: float = WAIT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except tango.DevFailed:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def recorded_scan(
    ds: Any, probe_init: Any = None
) -> tuple[list[tuple[str, dict]], list[dict], dict]:
    """Start + descriptor, every event, and the stop of the small dataset's scan."""
    g = ds.geometry
    setup = ScanSetup(
        energy_eV=g.energy_eV,
        detector_distance_m=g.detector_distance_m,
        detector_pixel_m=g.detector_pixel_m,
        crop=ds.intensities.shape[-1],
        detector_key=DET,
        position_keys=(SY, SX),
        position_scale_m=1e-6,
        nominal_positions_m=ds.nominal_positions_m,
        pattern="raster",
        margin_px=ds.preset.margin_px,
        probe_init=probe_init,
    )
    n = ds.intensities.shape[0]
    run = event_model.compose_run(
        metadata={"ptycho": setup.to_start_doc(), "num_points": n, "plan_name": "recorded"}
    )
    number = {"source": "sim", "dtype": "number", "shape": []}
    shape = list(ds.intensities.shape[1:])
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            DET: {"source": "sim", "dtype": "array", "shape": shape},
            SY: number,
            SX: number,
        },
    )
    events = []
    for k in range(n):
        y, x = ds.positions_m[k] / 1e-6
        events.append(
            desc.compose_event(
                data={DET: ds.intensities[k], SY: float(y), SX: float(x)},
                timestamps={DET: 0.0, SY: 0.0, SX: 0.0},
                seq_num=k + 1,
            )
        )
    head = [("start", dict(run.start_doc)), ("descriptor", dict(desc.descriptor_doc))]
    return head, events, dict(run.compose_stop(exit_status="success"))


@pytest.fixture
def publisher(zmq_proxy: ProxyProcess) -> Iterator[Any]:
    pub = make_publisher(zmq_proxy.in_address)
    try:
        yield pub
    finally:
        pub.close()


def warm_up(pub: Any, dev: Any) -> None:
    """Beat the 0MQ slow joiner: throwaway runs (no start["ptycho"], ignored) until one
    document has crossed the proxy into the device."""
    for _ in range(200):
        pub("start", dict(event_model.compose_run(metadata={"plan_name": "warm-up"}).start_doc))
        if wait_for(lambda: dev.DocumentsReceived > 0, timeout=0.2):
            return
    raise AssertionError("no document crossed the proxy")


def test_kill_9_mid_scan_resumes_the_run_and_counts_the_loss(
    tango_servers: ServerFactory,
    zmq_proxy: ProxyProcess,
    publisher: Any,
    small_dataset: Any,
    tmp_path: Path,
) -> None:
    checkpoints = tmp_path / "checkpoints"
    extra = [
        *("--checkpoint-dir", str(checkpoints), "--checkpoint-period", "0.3"),
        *("--final-passes", "5", "--publish-period", "0.2", "--start"),
    ]
    server = tango_servers.start(zmq=zmq_proxy.out_address, extra=extra)
    dev = server.proxy()
    assert wait_for(lambda: dev.state() == DevState.STANDBY, timeout=30), dev.status()
    assert dev.FeedConnected and dev.RecoveredPatterns == 0 and dev.FramesLost == 0
    warm_up(publisher, dev)

    head, events, stop = recorded_scan(small_dataset)
    n = len(events)
    first = 40  # published before and while the server is killed
    down = 12  # published while it is down
    for name, doc in head:
        publisher(name, doc)

    # the first part of the scan streams at a fixed rate; the kill lands while it does
    sent_before_kill = threading.Event()

    def stream_first() -> None:
        for k, event in enumerate(events[:first]):
            publisher("event", event)
            if k == 30:
                sent_before_kill.set()
            time.sleep(1 / RATE_HZ)

    streamer = threading.Thread(target=stream_first, daemon=True)
    streamer.start()

    def checkpointed() -> int:
        found = read_checkpoints(checkpoints)[0]
        return len(found[0].patterns) if found and found[0].object is not None else 0

    assert sent_before_kill.wait(WAIT)
    assert wait_for(lambda: checkpointed() >= 20, timeout=60), dev.status()
    assert dev.state() == DevState.RUNNING and dev.FramesLost == 0
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(30)
    assert server.proc.returncode == -signal.SIGKILL
    streamer.join(WAIT)
    for event in events[first : first + down]:  # nobody listens: these are lost
        publisher("event", event)
        time.sleep(1 / RATE_HZ)
    on_disk = checkpointed()
    assert on_disk >= 20

    # restart with the same property file (and so the same CheckpointDirectory)
    t_restart = time.monotonic()
    again = tango_servers.start(
        zmq=zmq_proxy.out_address,
        db_file=server.db_file,
        output_dir=server.output_dir,
        instance=server.instance,
        extra=extra,
    )
    dev = again.proxy()
    assert wait_for(lambda: dev.state() in (DevState.RUNNING, DevState.STANDBY), timeout=30)
    recovered = dev.RecoveredPatterns
    restart_s = time.monotonic() - t_restart
    assert recovered == on_disk, (recovered, on_disk, dev.status())
    status = dev.status()
    assert "RECOVERED" in status and f"{recovered} pattern(s) restored" in status, status
    assert dev.ScanUid in ("", head[0][1]["uid"])
    warm_up(publisher, dev)

    for event in events[first + down :]:
        publisher("event", event)
        time.sleep(1 / RATE_HZ)
    publisher("stop", stop)

    assert wait_for(lambda: dev.RunPhase == "finished", timeout=WAIT), dev.status()
    # every event after the restart arrived; the ones never used are those sent after the
    # last checkpointed pattern and before the restart (in flight at the kill, or sent while
    # the server was down)
    real_lost = n - on_disk - (n - first - down)  # on_disk: read by this test after the kill
    status = dev.status()
    print(
        f"kill -9 after {first} frames sent, {down} more while down: {recovered} recovered, "
        f"{dev.FramesLost} reported lost (real {real_lost}), {dev.PatternsInUse} in use of {n}; "
        f"restart to resumed run {restart_s:.1f} s"
    )
    assert dev.FramesLost == real_lost >= down, status
    assert dev.PatternsInUse == n - real_lost, status
    assert "LOSS" in status and f"{real_lost} event(s)" in status, status
    assert dev.ScanUid == head[0][1]["uid"]
    # the run ends saved, and its checkpoint goes
    uid8 = head[0][1]["uid"][:8]
    assert wait_for(
        lambda: any(p.name.endswith(f"{uid8}.h5") for p in server.output_dir.glob("ptycho-*.h5")),
        timeout=60,
    ), sorted(server.output_dir.iterdir())
    assert wait_for(lambda: read_checkpoints(checkpoints) == ([], []), timeout=30)
    tango_servers.stop(again)


def test_a_stop_sent_while_the_server_is_down_ends_the_resumed_run_by_the_idle_timeout(
    tango_servers: ServerFactory,
    zmq_proxy: ProxyProcess,
    publisher: Any,
    small_dataset: Any,
    tmp_path: Path,
) -> None:
    """The scan finishes (stop included) while the server is down: the resumed run never gets
    a stop, so IdleTimeout ends it; it is saved, and Status says MISSING STOP."""
    checkpoints = tmp_path / "checkpoints"
    extra = [
        *("--checkpoint-dir", str(checkpoints), "--checkpoint-period", "0.3"),
        *("--final-passes", "3", "--idle-timeout", "3", "--start"),
    ]
    server = tango_servers.start(zmq=zmq_proxy.out_address, extra=extra)
    dev = server.proxy()
    assert wait_for(lambda: dev.state() == DevState.STANDBY, timeout=30), dev.status()
    warm_up(publisher, dev)
    head, events, stop = recorded_scan(small_dataset)
    n, first = len(events), 30
    for name, doc in head:
        publisher(name, doc)
    for event in events[:first]:
        publisher("event", event)
        time.sleep(1 / RATE_HZ)

    def checkpointed() -> int:
        found = read_checkpoints(checkpoints)[0]
        return len(found[0].patterns) if found else 0

    assert wait_for(lambda: checkpointed() == first, timeout=60), dev.status()
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(30)
    for event in events[first:]:
        publisher("event", event)
    publisher("stop", stop)  # nobody hears it

    again = tango_servers.start(
        zmq=zmq_proxy.out_address,
        db_file=server.db_file,
        output_dir=server.output_dir,
        instance=server.instance,
        extra=extra,
    )
    dev = again.proxy()
    assert wait_for(lambda: dev.RecoveredPatterns == first, timeout=30), dev.status()
    assert wait_for(lambda: dev.RunPhase == "finished", timeout=WAIT), dev.status()
    status = dev.status()
    assert "MISSING STOP: 1 run(s)" in status, status
    assert dev.PatternsInUse == first
    # no later event of the run arrived and the stop (with num_events) was lost: the idle
    # timeout counts the shortfall against the start document's announced points as lost
    assert dev.FramesLost == n - first, status
    assert dev.Progress == pytest.approx(100.0 * first / n), dev.Progress
    assert f"{first}/{n} patterns received" in status, status
    print(f"stop lost while down: {first} of {n} patterns recovered, run ended by the idle timeout")
    uid8 = head[0][1]["uid"][:8]
    assert wait_for(
        lambda: any(p.name.endswith(f"{uid8}.h5") for p in server.output_dir.glob("ptycho-*.h5")),
        timeout=60,
    )
    assert wait_for(lambda: read_checkpoints(checkpoints) == ([], []), timeout=30)
    tango_servers.stop(again)


def test_a_lost_proxy_is_shown_in_status_and_feed_connected(
    tango_servers: ServerFactory,
) -> None:
    """The proxy killed under an armed device: FeedConnected false and DISCONNECTED in Status;
    the proxy back on the same ports: connected again."""
    proxy = ProxyProcess()
    proxy.start(timeout=30.0)
    try:
        server = tango_servers.start(zmq=proxy.out_address, extra=["--start"])
        dev = server.proxy()
        assert wait_for(lambda: dev.state() == DevState.STANDBY, timeout=30), dev.status()
        assert wait_for(lambda: dev.FeedConnected, timeout=30), dev.status()
        assert "DISCONNECTED" not in dev.status()
        ports = (int(proxy.in_address.rsplit(":", 1)[1]), int(proxy.out_address.rsplit(":", 1)[1]))
        proxy.stop()
        assert wait_for(lambda: not dev.FeedConnected, timeout=30), dev.status()
        status = dev.status()
        assert "DISCONNECTED" in status and proxy.out_address.split("//")[-1] in status, status
        assert "documents sent meanwhile are lost" in status
        assert dev.state() == DevState.ALARM, status  # not RUNNING/STANDBY as if all were well
        proxy = ProxyProcess(*ports)
        proxy.start(timeout=30.0)
        assert wait_for(lambda: dev.FeedConnected, timeout=30), dev.status()
        assert "DISCONNECTED" not in dev.status()
        assert wait_for(lambda: dev.state() == DevState.STANDBY, timeout=30), dev.status()
        tango_servers.stop(server)
    finally:
        proxy.stop()


def test_a_probe_init_file_outside_the_data_directories_is_refused_alike(
    tango_servers: ServerFactory,
    zmq_proxy: ProxyProcess,
    publisher: Any,
    small_dataset: Any,
) -> None:
    """start["ptycho"]["probe_init"] naming a file outside DataDirectories: that run is ignored
    with one message whether the file exists or not (the device passes DataDirectories to the
    callback as its probe directories)."""
    import shutil
    import tempfile

    from bluesky_ptycho.engine.state import ReconstructionState
    from bluesky_ptycho.io.result import write_result

    outside = Path(tempfile.mkdtemp(prefix="ptycho-probe-outside-"))
    try:
        n = small_dataset.intensities.shape[-1]
        write_result(
            outside / "real.h5",
            ReconstructionState(
                object=np.ones((n, n), np.complex64),
                probe=np.ones((n, n), np.complex64),
                positions_px=np.zeros((0, 2)),
            ),
        )
        server = tango_servers.start(zmq=zmq_proxy.out_address, extra=["--start"])
        dev = server.proxy()
        assert wait_for(lambda: dev.state() == DevState.STANDBY, timeout=30), dev.status()
        warm_up(publisher, dev)
        lines = {}
        for name in ("real.h5", "missing.h5"):
            head, events, stop = recorded_scan(small_dataset, probe_init=str(outside / name))
            for doc_name, doc in head:
                publisher(doc_name, doc)
            publisher("event", events[0])
            publisher("stop", stop)

            def refusal(name: str = name) -> str:
                found = [x for x in dev.status().splitlines() if name in x and "probe_init" in x]
                return found[-1] if found else ""

            assert wait_for(lambda: bool(refusal()), timeout=30), dev.status()
            lines[name] = refusal().replace(name, "NAME").split("probe_init", 1)[1]
        print(f"probe_init refusal: {lines}")
        assert lines["real.h5"] == lines["missing.h5"], lines
        assert "exist" not in lines["real.h5"]
        assert dev.PatternsReceived == 0 and dev.ScanUid == ""  # both runs ignored
        tango_servers.stop(server)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_a_poisoned_frame_is_quarantined_and_said_so(
    tango_servers: ServerFactory,
    zmq_proxy: ProxyProcess,
    publisher: Any,
    small_dataset: Any,
) -> None:
    """One frame x1000 in a scan through the proxy: PatternsQuarantined and a QUARANTINED line
    in Status say so; the run ends with the other frames."""
    server = tango_servers.start(
        zmq=zmq_proxy.out_address, extra=["--start", "--final-passes", "3"]
    )
    dev = server.proxy()
    assert wait_for(lambda: dev.state() == DevState.STANDBY, timeout=30), dev.status()
    warm_up(publisher, dev)
    head, events, stop = recorded_scan(small_dataset)
    n, bad = len(events), 40
    events[bad]["data"][DET] = np.asarray(events[bad]["data"][DET]) * 1000.0
    for name, doc in head:
        publisher(name, doc)
    for event in events:
        publisher("event", event)
        time.sleep(1 / (4 * RATE_HZ))
    publisher("stop", stop)
    assert wait_for(lambda: dev.RunPhase == "finished", timeout=WAIT), dev.status()
    status = dev.status()
    assert dev.PatternsQuarantined == 1, status
    assert "QUARANTINED: 1 frame(s)" in status and "times the median" in status, status
    assert dev.PatternsInUse == n - 1 and dev.FramesLost == 0, status
    tango_servers.stop(server)
