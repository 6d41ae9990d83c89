"""The ``replay`` and ``reconstruct`` subcommands of ``bluesky-ptycho``.

``bluesky-ptycho replay SOURCE`` streams a recorded scan through the live pipeline
(documents -> :class:`~bluesky_ptycho.callback.PtychoCallback` -> live reconstruction): a CXI
file, a NeXus/Eiger master (``--positions`` when the master holds none), a scan directory, a
tiled run URI, or a run uid in a databroker/tiled catalog (``--catalog``). ``--rate HZ``
sends the frames at that rate (0: as fast as possible), ``--plot`` shows the live figure,
``--tango ADDRESS`` makes a running ``PtychoReconstruction`` device replay it instead, and
``--output RESULT.h5`` writes the result (NXcxi_ptycho).

``bluesky-ptycho reconstruct SCAN --passes N [--resume RESULT] --output RESULT.h5`` runs whole
ePIE passes over a recorded scan in this process, continuing from an earlier result when
``--resume`` is given. ``--parallel synchronous|averaging --workers K`` runs a parallel scheme
on K threads (``--processes``: processes); ``mpirun -n K bluesky-ptycho reconstruct SCAN --mpi``
runs it on K MPI ranks, of which only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add ``replay`` and ``reconstruct`` to the ``bluesky-ptycho`` subparsers ``sub``."""
    replay = sub.add_parser(
        "replay", help="stream a recorded scan through the live pipeline, as it happened"
    )
    replay.add_argument(
        "source",
        help="CXI file, NeXus/Eiger master, scan directory, tiled run URI, or run uid "
        "(with --catalog)",
    )
    replay.add_argument(
        "--rate", type=float, default=0.0, help="frames per second (default 0: as fast as possible)"
    )
    replay.add_argument("--plot", action="store_true", help="show the live figure")
    replay.add_argument(
        "--tango",
        metavar="DEVICE_ADDRESS",
        help="make this running PtychoReconstruction device replay SOURCE (Replay command)",
    )
    replay.add_argument("--output", metavar="RESULT.h5", help="write the result here")
    replay.add_argument("--catalog", help="databroker catalog name or tiled URI, for a run uid")
    replay.add_argument(
        "--positions", help="positions file (.npy, text, HDF5) for a master without positions"
    )
    replay.add_argument("--passes", type=int, default=20, help="final passes after the scan")
    replay.add_argument(
        "--passes-per-batch",
        type=float,
        default=10.0,
        help="passes per batch of new frames while frames arrive (0: reconstruct only after "
        "the last frame, reproducibly)",
    )
    replay.add_argument("--crop", type=int, help="frame size N used (power of two)")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--quiet", action="store_true")
    replay.set_defaults(func=run_replay)

    rec = sub.add_parser("reconstruct", help="reconstruct a recorded scan in this process")
    rec.add_argument("scan", help="CXI file or NeXus/Eiger master")
    rec.add_argument("--passes", type=int, default=50, help="ePIE passes to run now")
    rec.add_argument("--output", metavar="RESULT.h5", help="write the result here")
    rec.add_argument("--resume", metavar="RESULT", help="continue from this result file")
    rec.add_argument("--positions", help="positions file for a master without positions")
    rec.add_argument("--crop", type=int, help="frame size N used (power of two)")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--quiet", action="store_true")
    rec.add_argument(
        "--figure",
        default=None,
        help="write the final figure here (default: beside --output, as .png)",
    )
    rec.add_argument(
        "--parallel",
        choices=("sequential", "synchronous", "averaging"),
        default="sequential",
        help="sequential ePIE (default); synchronous mini-batches (the same result for any "
        "number of workers); averaging (the study's: disjoint subsets averaged every few passes)",
    )
    rec.add_argument("--workers", type=int, default=1, help="threads or processes (default 1)")
    rec.add_argument(
        "--processes",
        action="store_true",
        help="run the synchronous workers as processes on this machine instead of threads",
    )
    rec.add_argument(
        "--batch-size", type=int, default=32, help="patterns per synchronous update (default 32)"
    )
    rec.add_argument(
        "--average-every", type=int, default=5, help="passes between averagings (default 5)"
    )
    rec.add_argument(
        "--mpi",
        action="store_true",
        help="run as MPI ranks (mpirun -n K bluesky-ptycho reconstruct SCAN --mpi): K workers; "
        "only rank 0 prints and writes",
    )
    rec.set_defaults(func=run_reconstruct)


# --------------------------------------------------------------------------------------------
# replay


def run_replay(args: argparse.Namespace) -> int:
    """``bluesky-ptycho replay``; returns the exit status."""
    if args.rate < 0:
        print(f"--rate must be >= 0 frames per second, got {args.rate}", file=sys.stderr)
        return 2
    if args.tango:
        return _replay_on_device(args)

    from bluesky_ptycho.callback import PtychoCallback
    from bluesky_ptycho.engine import EPIEOptions
    from bluesky_ptycho.io.replay import replay
    from bluesky_ptycho.live import LiveOptions
    from bluesky_ptycho.live.options import PacingPolicy
    from bluesky_ptycho.setup import START_KEY, ScanSetup

    options = LiveOptions(
        epie=EPIEOptions(validation_every=25, seed=args.seed),
        pacing=PacingPolicy(passes_per_batch=args.passes_per_batch),
        final_passes=args.passes,
    )
    latest: dict[str, Any] = {}

    def observe(snapshot: Any) -> None:
        latest["snapshot"] = snapshot

    cb = PtychoCallback(options=options, observers=[observe])
    start: dict[str, Any] = {}

    def send(name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            start.update(doc)
        cb(name, doc)

    kwargs: dict[str, Any] = {}
    source = args.source
    if Path(source).is_file():
        if args.positions:
            kwargs["positions"] = args.positions
        if args.crop:
            kwargs["crop"] = args.crop
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["uid"] = replay(source, send, catalog=args.catalog, rate_hz=args.rate, **kwargs)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    t0 = time.perf_counter()
    thread = threading.Thread(target=work, name="ptycho-replay", daemon=True)
    thread.start()
    plot = _LiveFigure() if args.plot else None
    while thread.is_alive():
        if plot is not None:
            plot.show(latest.get("snapshot"))
        else:
            thread.join(0.2)
        _progress(args, latest.get("snapshot"))
    if "error" in outcome:
        cb.close()
        exc = outcome["error"]
        print(f"replay of {source!r} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    state = cb.result(timeout=None)
    cb.close()
    elapsed = time.perf_counter() - t0
    status = cb.status
    print(
        f"\nreplayed run {outcome['uid']} from {source}: {status.frames_used} frames used, "
        f"{status.rejected} rejected, {state.iteration} passes in {elapsed:.1f} s; Fourier "
        f"error {state.latest_error:.4f}, validation ratio {state.validation_ratio:.2f}"
    )
    for reason in status.reasons:
        print(f"  rejected: {reason}", file=sys.stderr)
    if plot is not None:
        plot.show(latest.get("snapshot"), final=state)
    if args.output:
        setup = ScanSetup.from_start_doc(start[START_KEY])
        scan = _scan_or_none(source, args.positions)
        path = _write(
            args.output,
            state,
            setup.geometry(),
            {
                "run_uid": str(outcome["uid"]),
                "source": str(source),
                "plan_name": start.get("plan_name"),
                "frames_used": status.frames_used,
                "rejected": status.rejected,
                START_KEY: start[START_KEY],
            },
            scan,
            options,
        )
        print(f"result: {path}")
        if plot is not None:
            print(f"figure: {plot.save(Path(args.output).with_suffix('.png'))}")
    return 0 if status.frames_used and status.rejected == 0 else 1


def _replay_on_device(args: argparse.Namespace) -> int:
    import tango

    source = args.source
    if Path(source).exists():
        source = str(Path(source).resolve())
    try:
        device = tango.DeviceProxy(args.tango)
        device.ReplayRate = float(args.rate)
        device.Replay(source)
    except tango.DevFailed as exc:
        reason = exc.args[0].desc if exc.args else str(exc)
        print(f"{args.tango}: Replay({source!r}) failed: {reason}", file=sys.stderr)
        return 1
    print(f"{args.tango} is replaying {source}; watch its attributes (Taurus, Tango clients)")
    return 0


def _scan_or_none(source: str, positions: str | None) -> Any:
    """The scan file behind a file source (its frames go into the result), else None."""
    from bluesky_ptycho.io.scan import read_scan

    if not Path(source).is_file():
        return None
    return read_scan(source, positions=positions)


def _progress(args: argparse.Namespace, snapshot: Any) -> None:
    if args.quiet or snapshot is None:
        return
    st = snapshot.state
    print(
        f"\r{snapshot.patterns_received:5d} frames, {st.iteration:4d} passes, Fourier error "
        f"{st.latest_error:.4f}",
        end="",
        flush=True,
    )


class _LiveFigure:
    """The live figure, redrawn from the main thread (GUI toolkits need that)."""

    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        from bluesky_ptycho.display import LivePlot

        self._plt = plt
        self._plot = LivePlot(min_interval_s=0.5, figure=plt.figure(figsize=(10, 6)))
        self._shown: Any = None

    def show(self, snapshot: Any, final: Any = None) -> None:
        state = final if final is not None else getattr(snapshot, "state", None)
        if state is not None and (final is not None or snapshot is not self._shown):
            self._shown = snapshot
            self._plot.update(state, force=final is not None)
        self._plt.pause(0.2)

    def save(self, path: Path) -> Path:
        return self._plot.save_png(path)


# --------------------------------------------------------------------------------------------
# reconstruct


def run_reconstruct(args: argparse.Namespace) -> int:
    """``bluesky-ptycho reconstruct``; returns the exit status."""
    from bluesky_ptycho.engine import EPIEOptions, ParallelOptions
    from bluesky_ptycho.io.offline import reconstruct_scan
    from bluesky_ptycho.io.result import read_result
    from bluesky_ptycho.io.scan import read_scan

    rank = 0
    if args.mpi:
        try:
            from mpi4py import MPI
        except ImportError:
            print(
                "reconstruct: --mpi needs mpi4py (pip install 'bluesky-ptycho[mpi]')",
                file=sys.stderr,
            )
            return 2
        rank = MPI.COMM_WORLD.Get_rank()
    quiet = args.quiet or rank != 0
    bar = None
    try:
        scan = read_scan(args.scan, positions=args.positions)
        resume = read_result(args.resume) if args.resume else None
        options = EPIEOptions(seed=args.seed)
        executor = "mpi" if args.mpi else ("processes" if args.processes else "threads")
        popts = ParallelOptions(
            batch_size=args.batch_size, average_every=args.average_every, executor=executor
        )
        kwargs = {"crop": args.crop} if args.crop else {}

        bar = None
        if not quiet:
            from tqdm import tqdm

            bar = tqdm(total=args.passes, unit="pass", desc="reconstruct")

        def progress(iteration: int, error: float) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fourier_error=f"{error:.4f}", refresh=False)

        t0 = time.perf_counter()
        out = reconstruct_scan(
            scan,
            passes=args.passes,
            options=options,
            resume=resume,
            callback=progress,
            parallel=args.parallel,
            workers=args.workers,
            parallel_options=popts,
            **kwargs,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"reconstruct: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if rank != 0:
        return 0
    state = out.state
    print(
        f"{state.n_patterns} patterns, passes {out.resumed_from} -> {state.iteration} in "
        f"{time.perf_counter() - t0:.1f} s; Fourier error {state.latest_error:.4f}"
    )
    figure = args.figure or (str(Path(args.output).with_suffix(".png")) if args.output else None)
    if figure:
        from bluesky_ptycho.display import result_figure, save_figure

        pixel = out.setup.geometry().pixel_size_m
        fig = result_figure(
            state, pixel_size_m=pixel, title=f"{args.scan}: {state.iteration} passes"
        )
        print(f"figure: {save_figure(fig, figure)}")
    if args.output:
        metadata: dict[str, Any] = {"source": str(args.scan)}
        if resume is not None:
            metadata["resumed_from"] = str(args.resume)
            if resume.run_uid:
                metadata["run_uid"] = resume.run_uid
        path = _write(args.output, state, out.setup.geometry(), metadata, scan, options)
        print(f"result: {path}")
    return 0


def _write(
    output: str, state: Any, geometry: Any, metadata: dict[str, Any], scan: Any, options: Any
) -> Path:
    from bluesky_ptycho.io.result import write_result

    metadata = {k: v for k, v in metadata.items() if v is not None}
    return write_result(
        output,
        state,
        geometry=geometry,
        metadata=metadata,
        overwrite=True,
        scan=scan,
        options=options,
    )
