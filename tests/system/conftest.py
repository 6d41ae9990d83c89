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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bluesky_ptycho.serve import ServerProcess
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
    """A device server subprocess (:class:`bluesky_ptycho.serve.ServerProcess`) and its files."""

    process: ServerProcess
    db_file: Path
    output_dir: Path
    instance: str = ""

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def device(self) -> str:
        return self.process.device

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def taurus_name(self) -> str:
        return self.process.taurus_name

    @property
    def argv(self) -> list[str]:
        return self.process.argv

    @property
    def log_file(self) -> Path:
        assert self.process.log_file is not None
        return self.process.log_file

    def log(self) -> str:
        return self.process.log()

    def proxy(self, timeout_ms: int = 10_000) -> Any:
        return self.process.device_proxy(timeout_ms)


class ServerFactory:
    """Starts device server processes and stops all of them, by pid, at the end."""

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
                *("--data-dir", str(self.root.parent)),  # DataDirectories: the tests' tmp dirs
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
        tango_host: str | None = None,
        attempts: int = 3,
    ) -> TangoServer:
        """Run ``python *argv(port)`` on a free port until it answers (retrying a lost port).

        With ``tango_host`` the server runs with ``TANGO_HOST`` set and is addressed through
        that database.
        """
        if work is None:
            self._count += 1
            work = self.root / f"server{self._count}"
        work.mkdir(parents=True, exist_ok=True)
        processes: list[ServerProcess] = []
        try:
            process = ServerProcess.start(
                device,
                attempts=attempts,
                timeout=START_TIMEOUT,
                started=processes,
                command=argv,
                tango_host=tango_host,
                log_file=work / f"serve-{len(self.started)}.log",
                env={"PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps tracebacks
            )
        finally:  # every try is recorded, so that stop_all ends (and checks) all of them
            for p in processes:
                self.started.append(
                    TangoServer(p, db_file or work / "none.db", output_dir or work, instance)
                )
        return next(server for server in self.started if server.process is process)

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


@dataclass
class TangoDatabase:
    """PyTango's own database server (``python -m tango.databaseds.database``), SQLite-backed."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_file: Path

    @property
    def host(self) -> str:
        """``HOST:PORT``, the value of ``TANGO_HOST`` for servers and clients."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def database(self) -> Any:
        """A ``tango.Database`` client of this database."""
        import tango

        return tango.Database("127.0.0.1", self.port)


def _start_database(work: Path, attempts: int = 3) -> TangoDatabase:
    """Start the database server on a free loopback port and wait until it answers."""
    import tango

    for attempt in range(attempts):
        port = free_port()
        log_file = work / f"databaseds-{attempt}.log"
        with log_file.open("wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tango.databaseds.database"),
                    *("--host", "127.0.0.1", "--port", str(port), "2"),
                ],
                cwd=work,  # its SQLite file, tango_database.db, lands here
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        db = TangoDatabase(proc, port, work, log_file)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if "Ready to accept request" in db.log():
                try:
                    db.database().get_info()
                    return db
                except tango.DevFailed:
                    pass
            time.sleep(0.2)
        stop_pid(proc)
        if attempt == attempts - 1 or "port" not in db.log().lower():
            raise RuntimeError(f"the Tango database server did not come up:\n{db.log()}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def tango_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TangoDatabase]:
    """A real Tango database on a free loopback port, stopped by pid at the end of the module.

    PyTango's database server keeps its tables in SQLite in a temporary directory; servers and
    clients reach it with ``TANGO_HOST=db.host`` (or ``tango://db.host/...`` names).
    """
    db = _start_database(tmp_path_factory.mktemp("tango-db"))
    try:
        yield db
    finally:
        stop_pid(db.proc)
    assert process_gone(db.proc.pid)
