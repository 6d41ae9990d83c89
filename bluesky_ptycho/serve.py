"""``bluesky-ptycho serve``: the ``PtychoReconstruction`` Tango device, without a database.

The server listens on one explicit port of one interface (``-ORBendPoint giop:tcp:HOST:PORT``,
loopback by default), so its CORBA and its event ports are both there. Its device properties
come from a Tango *property file* (``-file=PATH``), the database-free way Tango supports
properties and memorized attributes: the options given here are written into that file before
the server starts. By default the file is temporary (memorized attribute values are forgotten
when the server ends); ``--db-file`` keeps it, so written ``Alpha``, ``Beta``, ... survive a
restart.

Clients reach the device as ``tango://HOST:PORT/DEVICE#dbase=no`` and Taurus as
``tango-nodb://HOST:PORT/DEVICE``; both are printed before the server starts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ServerProcess", "device_addresses", "serve_main", "write_property_file"]

DEFAULT_DEVICE = "bluesky/ptycho/1"
DEFAULT_INSTANCE = "ptycho"
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")


def device_addresses(host: str, port: int, device: str) -> tuple[str, str]:
    """The device's full address for Tango clients and for Taurus, database-free.

    Returns
    -------
    (str, str)
        ``tango://HOST:PORT/DEVICE#dbase=no`` and ``tango-nodb://HOST:PORT/DEVICE``.
    """
    return (f"tango://{host}:{port}/{device}#dbase=no", f"tango-nodb://{host}:{port}/{device}")


def write_property_file(
    path: str | Path,
    *,
    server: str,
    instance: str,
    device_class: str,
    device: str,
    properties: dict[str, Any],
) -> Path:
    """Create (or update) a Tango property file declaring ``device`` and its properties.

    Parameters
    ----------
    path : str or Path
        The file; created when missing. An existing file keeps its other content (memorized
        attribute values included); the properties given replace those of the same name.
    server, instance, device_class, device : str
        The server ``server/instance`` runs ``device`` of class ``device_class``.
    properties : dict
        Device property name -> value (str, number or bool; a list or tuple of them for an
        array property such as ``DataDirectories``).

    Returns
    -------
    Path
        The file.
    """
    import tango

    file = Path(path)
    header = f"{server}/{instance}/DEVICE/{device_class}:"
    text = file.read_text() if file.exists() else ""
    if not any(line.strip().startswith(header) for line in text.splitlines()):
        with file.open("a") as f:
            if text and not text.endswith("\n"):
                f.write("\n")
            f.write(f'{header} "{device}"\n')
    if properties:
        db = tango.Database(str(file))
        db.put_device_property(
            device,
            {
                k: [_property_text(x) for x in v]
                if isinstance(v, (list, tuple))
                else [_property_text(v)]
                for k, v in properties.items()
                if v is not None
            },
        )
    return file


def _property_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bluesky-ptycho serve",
        description="Run the PtychoReconstruction Tango device server without a Tango database.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument(
        "--device", default=DEFAULT_DEVICE, help=f"device name (default {DEFAULT_DEVICE})"
    )
    p.add_argument(
        "--instance", default=DEFAULT_INSTANCE, help=f"server instance (default {DEFAULT_INSTANCE})"
    )
    p.add_argument(
        "--zmq",
        default=None,
        metavar="HOST:PORT",
        help="the bluesky 0MQ proxy's OUT address (device property ZmqAddress)",
    )
    p.add_argument("--zmq-prefix", default=None, help="only documents with this 0MQ prefix")
    p.add_argument("--output-dir", default=None, help="OutputDirectory: Save and run results")
    p.add_argument("--backend", default=None, help="array backend: numpy (default) or cupy")
    p.add_argument("--publish-period", type=float, default=None, help="initial publish period, s")
    p.add_argument("--final-passes", type=int, default=None, help="passes after each run")
    p.add_argument("--catalog", default=None, help="databroker catalog for Replay(uid)")
    p.add_argument(
        "--parallel",
        choices=("sequential", "synchronous"),
        default=None,
        help="engine: sequential ePIE (default) or synchronous mini-batch ePIE",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker threads of the synchronous engine"
    )
    p.add_argument(
        "--start", action="store_true", help="arm at once (AutoStart): subscribe to --zmq"
    )
    p.add_argument(
        "--data-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="DataDirectories: a directory Replay, Follow and probe_init files may come from "
        "(repeat for several; default none: file sources are refused)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="CheckpointDirectory: crash-recovery checkpoints of the open runs; a restarted "
        "server resumes them",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="IdleTimeout: seconds without documents before a run whose stop never came is "
        "finished and saved (default 300)",
    )
    p.add_argument(
        "--checkpoint-period",
        type=float,
        default=None,
        help="CheckpointPeriod: seconds between object/probe checkpoints (default 10)",
    )
    p.add_argument(
        "--db-file",
        default=None,
        help="keep properties and memorized attribute values in this Tango property file "
        "(default: a temporary file removed at exit)",
    )
    p.add_argument("-v", "--verbose", type=int, default=None, help="Tango trace level (1-5)")
    return p


class ServerProcess:
    """A ``PtychoReconstruction`` server subprocess on loopback: demos, benchmarks and tests.

    By default it runs ``bluesky-ptycho serve`` (database-free) on ``port``; ``command`` runs
    any other server command line instead (``bluesky-ptycho-tango INSTANCE`` in a Tango
    database, with ``tango_host`` set). It is stopped by its pid (SIGTERM, then SIGKILL).

    Parameters
    ----------
    device : str
        Device name ``dom/fam/member``.
    options : sequence of str
        Further ``serve`` options (``--zmq``, ``--output-dir``, ...); ignored with ``command``.
    port : int, optional
        The server's TCP port (``-ORBendPoint``); default a free one.
    command : callable, optional
        ``command(port) -> argv`` run as ``python *argv``; default
        ``-m bluesky_ptycho.serve --port PORT --device DEVICE *options``.
    tango_host : str, optional
        ``HOST:PORT`` of the Tango database the server registers in; set as ``TANGO_HOST`` in
        its environment, and clients address the device through it. None: database-free.
    log_file : path-like, optional
        Where the server's stdout and stderr go (default: discarded).
    env : mapping, optional
        Extra environment variables for the server.

    Attributes
    ----------
    address : str
        The device's address for Tango clients: ``tango://TANGO_HOST/DEVICE`` with a database,
        ``tango://127.0.0.1:PORT/DEVICE#dbase=no`` without.
    taurus_name : str
        The same for Taurus: ``tango://TANGO_HOST/DEVICE`` or ``tango-nodb://...``.
    """

    def __init__(
        self,
        device: str,
        options: Sequence[str] = (),
        port: int | None = None,
        *,
        command: Callable[[int], Sequence[str]] | None = None,
        tango_host: str | None = None,
        log_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from bluesky_ptycho.transport import free_port

        self.device = device
        self.port = free_port() if port is None else int(port)
        self.tango_host = tango_host
        if tango_host is None:
            self.address, self.taurus_name = device_addresses("127.0.0.1", self.port, device)
        else:
            self.address = self.taurus_name = f"tango://{tango_host}/{device}"
        if command is None:
            argv = ["-m", "bluesky_ptycho.serve", "--port", str(self.port), "--device", device]
            argv += list(options)
        else:
            argv = list(command(self.port))
        self.argv = [sys.executable, *argv]
        self.log_file = Path(log_file) if log_file is not None else None
        environment = {**os.environ, **(env or {})}
        if tango_host is not None:
            environment["TANGO_HOST"] = tango_host
        out = self.log_file.open("wb") if self.log_file is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        finally:
            if self.log_file is not None:
                out.close()  # type: ignore[union-attr]

    @classmethod
    def start(
        cls,
        device: str,
        *,
        attempts: int = 3,
        timeout: float = 60.0,
        started: list[ServerProcess] | None = None,
        **kwargs: Any,
    ) -> ServerProcess:
        """Start a server and wait until the device answers, on a new free port if the first
        one was taken meanwhile.

        Parameters
        ----------
        device : str
            Device name.
        attempts : int
            Tries in all; another one only when the server exited saying its port was taken.
        timeout : float
            Seconds to wait for each try to answer.
        started : list, optional
            Every process started is appended to it (before it is waited for), so that a
            caller can make sure all of them end.
        **kwargs
            As for the constructor (without ``port``).

        Returns
        -------
        ServerProcess
            Answering a ping.

        Raises
        ------
        RuntimeError
            If it exits (its log, when kept, is in the message), or does not answer in time
            (it is stopped then).
        """
        for attempt in range(attempts):
            server = cls(device, **kwargs)
            if started is not None:
                started.append(server)
            try:
                server.wait(timeout)
                return server
            except RuntimeError:
                server.stop()
                lost_port = "port" in server.log().lower() and server.proc.returncode != 0
                if attempt == attempts - 1 or not lost_port:
                    raise
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def log(self) -> str:
        """What the server has written so far ("" without a log file)."""
        if self.log_file is None:
            return ""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def device_proxy(self, timeout_ms: int = 10_000) -> Any:
        """A ``tango.DeviceProxy`` to the device (no waiting)."""
        import tango

        dev = tango.DeviceProxy(self.address)
        dev.set_timeout_millis(timeout_ms)
        return dev

    def wait(self, timeout: float = 60.0) -> None:
        """Wait until the device answers a ping.

        Raises
        ------
        RuntimeError
            If the server exits first, or after ``timeout`` seconds.
        """
        import tango

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the device server for {self.address} exited with {self.proc.returncode} "
                    f"before answering\n{self.log()}"
                )
            try:
                self.device_proxy(timeout_ms=2000).ping()
                return
            except tango.DevFailed as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.address} did not answer in {timeout} s ({last})\n{self.log()}"
                )
            time.sleep(0.2)

    def proxy(self, timeout: float = 60.0) -> Any:
        """A ``DeviceProxy`` once the device answers a ping; ``RuntimeError`` otherwise."""
        self.wait(timeout)
        return self.device_proxy()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by its pid: SIGTERM, then SIGKILL if it has not ended in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)

    @property
    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self.proc.poll() is None


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``bluesky-ptycho serve``: print the device's address, then run the server until killed.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 after a normal shutdown, 2 for bad arguments.
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not _DEVICE_NAME.match(args.device):
        print(f"error: --device {args.device!r} is not domain/family/member", file=sys.stderr)
        return 2
    if args.port is not None and not 0 < args.port < 65536:
        print(f"error: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    if args.output_dir is not None:
        out = Path(args.output_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        args.output_dir = str(out)
    if args.checkpoint_dir is not None:
        cp = Path(args.checkpoint_dir).expanduser().resolve()
        cp.mkdir(parents=True, exist_ok=True)
        args.checkpoint_dir = str(cp)
    if args.checkpoint_period is not None and not args.checkpoint_period > 0:
        print(f"error: --checkpoint-period {args.checkpoint_period} must be > 0", file=sys.stderr)
        return 2
    if args.data_dir is not None:
        args.data_dir = [str(Path(d).expanduser().resolve()) for d in args.data_dir]

    import logging

    from tango.server import run

    from bluesky_ptycho.tango_device import SERVER_NAME, PtychoReconstruction
    from bluesky_ptycho.transport import free_port

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    port = args.port if args.port is not None else free_port(args.host)
    properties = {
        "ZmqAddress": args.zmq,
        "ZmqPrefix": args.zmq_prefix,
        "OutputDirectory": args.output_dir,
        "Backend": args.backend,
        "PublishPeriod": args.publish_period,
        "FinalPasses": args.final_passes,
        "Catalog": args.catalog,
        "Parallel": args.parallel,
        "Workers": args.workers,
        "AutoStart": True if args.start else None,
        "DataDirectories": args.data_dir,
        "CheckpointDirectory": args.checkpoint_dir,
        "CheckpointPeriod": args.checkpoint_period,
        "IdleTimeout": args.idle_timeout,
    }
    tmp: str | None = None
    if args.db_file is None:
        tmp = tempfile.mkdtemp(prefix="bluesky-ptycho-serve-")
        db_file = Path(tmp) / "properties.db"
    else:
        db_file = Path(args.db_file).expanduser().resolve()
    try:
        write_property_file(
            db_file,
            server=SERVER_NAME,
            instance=args.instance,
            device_class="PtychoReconstruction",
            device=args.device,
            properties={k: v for k, v in properties.items() if v is not None},
        )
        tango_address, taurus_address = device_addresses(args.host, port, args.device)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {args.host}, not only on loopback", file=sys.stderr)
        print(
            f"PtychoReconstruction {args.device} (server {SERVER_NAME}/{args.instance}), "
            "database-free\n"
            f"  Tango client: {tango_address}\n"
            f"  Taurus:       {taurus_address}\n"
            f"  properties:   {db_file}",
            flush=True,
        )
        tango_args = [
            SERVER_NAME,
            args.instance,
            "-ORBendPoint",
            f"giop:tcp:{args.host}:{port}",
            f"-file={db_file}",
        ]
        if args.verbose:
            tango_args.append(f"-v{args.verbose}")

        def ready() -> None:
            print(f"ready: {tango_address}", flush=True)

        run((PtychoReconstruction,), args=tango_args, post_init_callback=ready)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
