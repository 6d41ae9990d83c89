"""Process fixtures of the system tests: a real ``bluesky-0MQ-proxy`` and real Tango servers.

Every process binds 127.0.0.1 on ports picked at run time, is stopped by its pid in the fixture's
finalizer (SIGTERM, then SIGKILL), and is checked gone. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bluesky_ptycho.transport import ProxyProcess, free_port

START_TIMEOUT = 60.0  # a cold server imports bluesky, ophyd and tango: 4 to 8 s when idle
STOP_TIMEOUT = 10.0
DEVICE = "test/ptycho/1"


def process_gone(pid: int) -> bool:
    """True if no process (not even a zombie we could reap) has this pid any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # pragma: no cover - someone else's process took the pid
        return True
    return False


def stop_pid(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """Stop a child by its pid: SIGTERM, wait, SIGKILL if needed; reap it; check it is gone."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    assert proc.poll() is not None
    assert process_gone(proc.pid), f"process {proc.pid} still exists"


@dataclass
class TangoServer:
    """A ``bluesky-ptycho serve`` subprocess (``python -m bluesky_ptycho.serve``)."""

    proc: subprocess.Popen[bytes]
    port: int
    device: str
    db_file: Path
    output_dir: Path
    log_file: Path
    instance: str = ""
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"tango://127.0.0.1:{self.port}/{self.device}#dbase=no"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def proxy(self, timeout_ms: int = 10_000) -> Any:
        import tango

        dev = tango.DeviceProxy(self.address)
        dev.set_timeout_millis(timeout_ms)
        return dev


def _wait_until_answering(server: TangoServer, timeout: float) -> None:
    import tango

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {server.proc.returncode} before answering:\n{server.log()}"
            )
        try:
            server.proxy(timeout_ms=2000).ping()
            return
        except tango.DevFailed as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{server.address} not answering in {timeout} s ({last}):\n{server.log()}")


class ServerFactory:
    """Starts ``bluesky-ptycho serve`` processes and stops all of them, by pid, at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[TangoServer] = []
        self._count = 0

    def start(
        self,
        *,
        zmq: str | None = None,
        db_file: Path | None = None,
        output_dir: Path | None = None,
        instance: str | None = None,
        extra: list[str] | None = None,
    ) -> TangoServer:
        """``bluesky-ptycho serve`` on a free loopback port, answering a ping (bounded wait)."""
        self._count += 1
        work = self.root / f"server{self._count}"
        out = output_dir or (work / "out")
        out.mkdir(parents=True, exist_ok=True)
        db = db_file or (work / "properties.db")
        name = instance or f"test{self._count}"

        def argv(port: int) -> list[str]:
            return [
                *("-m", "bluesky_ptycho.serve", "--port", str(port), "--device", DEVICE),
                *("--instance", name, "--output-dir", str(out), "--db-file", str(db)),
                *(["--zmq", zmq] if zmq else []),
                *(extra or []),
            ]

        return self.launch(argv, work=work, db_file=db, output_dir=out, instance=name)

    def launch(
        self,
        argv: Callable[[int], list[str]],
        *,
        work: Path | None = None,
        device: str = DEVICE,
        db_file: Path | None = None,
        output_dir: Path | None = None,
        instance: str = "",
        attempts: int = 3,
    ) -> TangoServer:
        """Run ``python *argv(port)`` on a free port until it answers (retrying a lost port)."""
        if work is None:
            self._count += 1
            work = self.root / f"server{self._count}"
        work.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            port = free_port()
            args = [sys.executable, *argv(port)]
            log_file = work / f"serve-{attempt}.log"
            with log_file.open("wb") as log:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps tracebacks
                )
            server = TangoServer(
                proc,
                port,
                device,
                db_file or work / "none.db",
                output_dir or work,
                log_file,
                instance,
                args,
            )
            self.started.append(server)
            try:
                _wait_until_answering(server, START_TIMEOUT)
                return server
            except RuntimeError:  # exited: retry only if it lost its port to someone else
                stop_pid(proc)
                if attempt == attempts - 1 or "port" not in server.log().lower():
                    raise
            except TimeoutError:
                stop_pid(proc)
                raise
        raise AssertionError("unreachable")

    def stop(self, server: TangoServer) -> None:
        stop_pid(server.proc)

    def stop_all(self) -> None:
        errors = []
        for server in self.started:
            try:
                stop_pid(server.proc)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{server.pid}: {exc!r}")
        assert not errors, errors


@pytest.fixture(scope="module")
def zmq_proxy() -> Iterator[ProxyProcess]:
    """A ``bluesky-0MQ-proxy`` bound to loopback, stopped by pid at the end of the module."""
    proxy = ProxyProcess()
    try:
        proxy.start(timeout=30.0)
        pid = proxy.pid
        yield proxy
    finally:
        proxy.stop()
    assert not proxy.running
    assert pid is not None and process_gone(pid)


@pytest.fixture(scope="module")
def tango_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start ``bluesky-ptycho serve`` processes; all are stopped by pid at the end of the module."""
    factory = ServerFactory(tmp_path_factory.mktemp("tango"))
    try:
        yield factory
    finally:
        factory.stop_all()
    for server in factory.started:
        assert process_gone(server.pid)
