"""The ``bluesky-ptycho`` command: demo, serve, follow and friends.

``bluesky-ptycho demo`` runs a real Bluesky ``RunEngine`` spirangle scan of the simulated
beamline while ``PtychoCallback`` reconstructs live: a progress bar (patterns, passes, updates
per pattern, Fourier error, validation ratio), PNG snapshots at 25, 50, 75 and 100 % of the scan
(``snapshot-025pct.png`` ...), the result in HDF5 and the error against the ground truth.
``bluesky-ptycho demo --offline`` reconstructs a simulated dataset without Bluesky.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bluesky_ptycho.panel_commands import add_panel_parser
from bluesky_ptycho.replay_commands import add_parsers as add_replay_parsers
from bluesky_ptycho.study_commands import add_study_parser

__all__ = ["main"]


def _demo_offline(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from bluesky_ptycho.display import result_figure, save_figure
    from bluesky_ptycho.engine import EPIE, EPIEOptions
    from bluesky_ptycho.io.result import write_result
    from bluesky_ptycho.metrics import illuminated_region, object_error
    from bluesky_ptycho.simulate import simulate_dataset, small_preset

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    preset = small_preset()
    print(
        f"simulating {preset.n_rows} x {preset.n_cols} {preset.pattern} scan, "
        f"{preset.shape} px frames, {preset.photons_per_pattern:.0e} photons per pattern"
    )
    ds = simulate_dataset(preset)
    engine = EPIE(ds.object.shape, options=EPIEOptions(seed=args.seed))
    engine.add(ds.intensities, ds.positions_px)
    t0 = time.perf_counter()
    with tqdm(total=args.passes, unit="pass", disable=args.quiet) as bar:

        def progress(iteration: int, error: float) -> None:
            bar.set_postfix(fourier_error=f"{error:.4f}")
            bar.update(1)

        engine.iterate(args.passes, callback=progress)
    elapsed = time.perf_counter() - t0
    state = engine.state()
    region = illuminated_region(ds.probe, ds.positions_px, ds.object.shape, threshold=0.3)
    error = object_error(state.object, ds.object, region=region)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    h5 = write_result(
        out / f"demo-{stamp}.h5",
        state,
        geometry=ds.geometry,
        metadata={"demo": "offline", "object_error": float(error)},
        overwrite=True,
    )
    png = save_figure(
        result_figure(
            state,
            pixel_size_m=ds.geometry.pixel_size_m,
            title=f"offline ePIE demo: {args.passes} passes, object error {error:.3f}",
            truth=ds.object,
        ),
        out / f"demo-{stamp}.png",
    )
    updates = state.pattern_updates / max(elapsed, 1e-9)
    print(
        f"{state.n_patterns} patterns, {state.iteration} passes in {elapsed:.2f} s "
        f"({updates:.0f} pattern updates/s)"
    )
    print(f"Fourier error {state.fourier_error[-1]:.4f}; object error vs truth {error:.4f}")
    print(f"result: {h5}\nfigure: {png}")
    return 0 if np.isfinite(error) else 1


def _demo_live(args: argparse.Namespace) -> int:
    import bluesky.plan_stubs as bps
    import numpy as np
    from bluesky import RunEngine
    from tqdm import tqdm

    from bluesky_ptycho.callback import PtychoCallback
    from bluesky_ptycho.display import (
        LivePlot,
        ScanSnapshots,
        result_figure,
        save_figure,
        signal_verdict,
        updates_per_pattern,
    )
    from bluesky_ptycho.live import LiveOptions
    from bluesky_ptycho.metrics import illuminated_region, object_error
    from bluesky_ptycho.plans import spirangle_ptycho
    from bluesky_ptycho.sim_beamline import make_beamline

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    RE = RunEngine({}, context_managers=[_PauseOnCtrlC])
    beamline = make_beamline(mode="inline", seed=args.seed)
    preset = beamline.specimen.preset
    assert preset is not None  # make_beamline() builds its specimen from a preset
    setup = beamline.setup()
    total = preset.n_rows * preset.n_rows
    print(
        f"simulated beamline: {preset.shape} px detector, {preset.n_rows} x {preset.n_rows} "
        f"spirangle ({total} points, {preset.step_m * 1e9:.0f} nm step), "
        f"{args.dwell * 1e3:.0f} ms per point"
    )
    # drawn only at 25/50/75/100 % and in a thread of its own: matplotlib in the observer
    # (the reconstruction's worker thread) would hold the reconstruction up
    snapshots = ScanSnapshots(
        LivePlot(min_interval_s=0.0, pixel_size_m=setup.geometry().pixel_size_m), out, total
    )
    bar = tqdm(total=total, unit="frame", disable=args.quiet, desc="scan")

    def observe(snapshot) -> None:
        st = snapshot.state
        bar.n = snapshot.patterns_received
        err, ratio = st.latest_error, st.validation_ratio
        bar.set_postfix(
            in_use=snapshot.patterns_in_use,
            passes=st.iteration,
            upd_per_pattern=f"{updates_per_pattern(st):.0f}",
            fourier_error=f"{err:.4f}" if np.isfinite(err) else "-",
            ratio=f"{ratio:.2f}" if np.isfinite(ratio) else "-",
            refresh=False,
        )
        bar.refresh()
        snapshots.offer(st)

    cb = PtychoCallback(
        options=LiveOptions(final_passes=args.passes), output_dir=out, observers=[observe]
    )

    def dwell(detectors, step, pos_cache):
        yield from bps.one_nd_step(detectors, step, pos_cache)
        yield from bps.sleep(args.dwell)

    t0 = time.perf_counter()
    RE.subscribe(cb)
    completed = _run_or_abort(
        RE,
        spirangle_ptycho(
            [beamline.detector],
            beamline.x_motor,
            beamline.y_motor,
            setup=setup,
            n_side=preset.n_rows,
            step=preset.step_m / beamline.position_scale_m,
            per_step=dwell,
        ),
    )
    if not completed:
        live = cb.live
        if live is not None:
            live.stop()  # no final passes: the user asked to stop
        with contextlib.suppress(TimeoutError, RuntimeError):
            cb.result(timeout=30)  # the reconstruction's threads have ended
        cb.close()
        snapshots.close(timeout=10)
        bar.close()
        kept = f"partial result: {cb.result_path}" if cb.result_path else "nothing written"
        print(
            f"interrupted: scan aborted after {cb.status.frames_received} of {total} frames; "
            f"{kept}",
            file=sys.stderr,
        )
        return 130
    scan_time = time.perf_counter() - t0
    state = cb.result(timeout=600)
    bar.n = total
    bar.close()
    written = snapshots.close(timeout=60)
    spec = beamline.specimen
    region = illuminated_region(spec.probe, state.positions_px, spec.object.shape, threshold=0.3)
    error = object_error(state.object, spec.object, region=region)
    final = save_figure(
        result_figure(
            state,
            pixel_size_m=setup.geometry().pixel_size_m,
            title=f"live ePIE: {state.n_patterns} frames, {state.iteration} passes, object "
            f"error {error:.3f}, validation ratio {state.validation_ratio:.2f} "
            f"({signal_verdict(state.validation_ratio)})",
            truth=spec.object,
        ),
        out / "live-final.png",
    )
    print(
        f"scan {scan_time:.1f} s; reconstruction {state.pattern_updates} updates, "
        f"{state.iteration} passes (the last {args.passes} after the scan); rejected "
        f"{cb.status.rejected}"
    )
    ratio = state.validation_ratio
    print(
        f"Fourier error {state.latest_error:.4f}, held-out {state.validation_error:.4f}, "
        f"validation ratio {ratio:.2f} ({signal_verdict(ratio)}); object error vs truth "
        f"{error:.4f}"
    )
    print("snapshots:")
    for path in written:
        print(f"  {path}: {snapshots.summaries[path]}")
    for problem in snapshots.errors:
        print(f"snapshot failed: {problem}", file=sys.stderr)
    print(f"figure: {final}\nresult: {cb.result_path}")
    return 0 if np.isfinite(error) else 1


def _demo_tango(args: argparse.Namespace) -> int:
    """The live demo across processes: RunEngine -> 0MQ proxy -> Tango device -> a client."""
    import bluesky.plan_stubs as bps
    import tango
    from bluesky import RunEngine

    from bluesky_ptycho.plans import spirangle_ptycho
    from bluesky_ptycho.serve import ServerProcess
    from bluesky_ptycho.sim_beamline import make_beamline
    from bluesky_ptycho.transport import ProxyProcess, publish

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    server: ServerProcess | None = None
    interrupted = False
    proxy = ProxyProcess()
    try:
        proxy.start()
        print(f"0MQ proxy (pid {proxy.pid}): in {proxy.in_address}, out {proxy.out_address}")
        server = ServerProcess(
            "bluesky/ptycho/demo",
            [
                "--zmq",
                proxy.out_address,
                "--output-dir",
                str(out),
                "--final-passes",
                str(args.passes),
                "--publish-period",
                "0.5",
            ],
        )
        print(
            f"Tango device server (pid {server.pid}): {server.address}\n"
            f"  Taurus: {server.taurus_name}"
        )
        try:
            dev = server.proxy()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        dev.Start()

        def show(event) -> None:
            if event.err or event.attr_value is None:
                return
            print(
                f"  event {_EVENT_ATTRIBUTE}: PatternsReceived "
                f"{dev.PatternsReceived:4d}  Iteration {dev.Iteration:3d}  "
                f"FourierError {dev.FourierError:.4f}  ValidationRatio "
                f"{dev.ValidationRatio:5.2f}  Progress {dev.Progress:5.1f} %"
            )

        event_id = dev.subscribe_event(_EVENT_ATTRIBUTE, tango.EventType.CHANGE_EVENT, show)
        RE = RunEngine({}, context_managers=[_PauseOnCtrlC])
        beamline = make_beamline(mode="inline", seed=args.seed)
        preset = beamline.specimen.preset
        assert preset is not None  # make_beamline() builds its specimen from a preset

        def dwell(detectors, step, pos_cache):
            yield from bps.one_nd_step(detectors, step, pos_cache)
            yield from bps.sleep(args.dwell)

        with publish(RE, proxy.in_address):
            time.sleep(0.5)  # 0MQ slow joiner: let the subscription reach the proxy
            completed = _run_or_abort(
                RE,
                spirangle_ptycho(
                    [beamline.detector],
                    beamline.x_motor,
                    beamline.y_motor,
                    setup=beamline.setup(),
                    n_side=preset.n_rows,
                    step=preset.step_m / beamline.position_scale_m,
                    per_step=dwell,
                ),
            )
        if not completed:
            interrupted = True
            return 130
        print("scan done; waiting for the final passes")
        deadline = time.monotonic() + 300
        try:
            while dev.RunPhase not in ("finished", "stopped", "fault"):
                if time.monotonic() > deadline:
                    print("the reconstruction did not finish in time", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        except KeyboardInterrupt:
            interrupted = True
            return 130
        dev.unsubscribe_event(event_id)
        print(
            f"final: {dev.PatternsReceived} patterns, {dev.Iteration} passes, "
            f"FourierError {dev.FourierError:.4f}, ValidationRatio {dev.ValidationRatio:.2f} "
            f"(SignalOK {dev.SignalOK}), state {dev.State()}, status: {dev.Status()}"
        )
        return 0
    except KeyboardInterrupt:  # while starting the processes
        interrupted = True
        return 130
    finally:
        if server is not None:
            server.stop()
        proxy.stop()
        if interrupted:
            print(
                "interrupted: scan aborted; stopped the device server and the proxy",
                file=sys.stderr,
            )
        else:
            print("stopped the device server and the proxy")


_EVENT_ATTRIBUTE = "ObjectPhase"
"""The device attribute whose change events ``demo --tango`` prints (one spelling)."""


class _PauseOnCtrlC:
    """RunEngine context manager: Ctrl-C pauses the RunEngine at once, quietly.

    Bluesky's own handler prints a banner, asks for a second Ctrl-C and leaves the RunEngine
    paused; the demos instead abort the scan (:func:`_run_or_abort`) and end with one line.
    """

    def __init__(self, RE: Any) -> None:
        self._RE = RE
        self._previous: Any = None

    def __enter__(self) -> _PauseOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        # request_pause waits on the RunEngine's loop: not from inside a signal handler
        threading.Thread(target=self._pause, name="ctrl-c-pause", daemon=True).start()

    def _pause(self) -> None:
        _quiet_bluesky(True)  # "Pausing...", "Aborting...", the aborted plan's traceback
        try:
            self._RE.request_pause(defer=False)
        except Exception:  # already idle or stopping: nothing to pause
            _quiet_bluesky(False)


_SAVED_STDOUT: list[Any] = []


def _quiet_bluesky(quiet: bool) -> None:
    """Silence (or restore) bluesky's prints and logging while a scan is being aborted."""
    logging.getLogger("bluesky").setLevel(logging.CRITICAL if quiet else logging.NOTSET)
    if quiet and not _SAVED_STDOUT:
        _SAVED_STDOUT.append(sys.stdout)
        sys.stdout = io.StringIO()
    elif not quiet and _SAVED_STDOUT:
        sys.stdout = _SAVED_STDOUT.pop()


def _run_or_abort(RE: Any, plan: Any) -> bool:
    """Run a plan; on Ctrl-C abort it (the stop document says ``"abort"``) and return False."""
    from bluesky.utils import RunEngineInterrupted

    try:
        RE(plan)
    except (RunEngineInterrupted, KeyboardInterrupt):
        _quiet_bluesky(True)
        try:
            if RE.state != "idle":
                RE.abort("interrupted by Ctrl-C")
        finally:
            _quiet_bluesky(False)
        return False
    return True


def _follow(args: argparse.Namespace) -> int:
    """Follow a scan directory while a detector writes it; reconstruct live."""
    import threading

    from bluesky_ptycho.callback import PtychoCallback
    from bluesky_ptycho.io.follow import FollowOptions, FollowResult, follow, read_setup_file
    from bluesky_ptycho.live import LiveOptions

    try:
        setup = read_setup_file(args.setup) if args.setup else None
        options = FollowOptions(
            timeout_s=args.timeout, poll_s=args.poll, stop_marker=args.stop_marker or None
        )
    except (OSError, ValueError) as exc:
        print(f"follow: {exc}", file=sys.stderr)
        return 1
    cb = PtychoCallback(options=LiveOptions(final_passes=args.final_passes))
    cancel = threading.Event()
    outcome: dict[str, FollowResult | BaseException] = {}

    def work() -> None:
        try:
            outcome["result"] = follow(
                args.directory,
                setup=setup,
                options=options,
                callback=cb,
                output=args.output,
                cancel=cancel,
            )
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    print(
        f"following {args.directory} (ends at the scan's last frame, "
        f"{options.stop_marker or 'no stop marker'}, or {options.timeout_s:g} s without data)"
    )
    worker = threading.Thread(target=work, name="follow", daemon=True)
    worker.start()
    plot = _FollowPlot() if args.plot else None
    try:
        while worker.is_alive():
            live = cb.live
            snap = live.latest() if live is not None else None
            if plot is not None and snap is not None:
                plot.show(snap.state)
            if snap is not None and not args.quiet:
                print(
                    f"\r{snap.patterns_received} frames, {snap.patterns_in_use} in use, "
                    f"pass {snap.state.iteration}",
                    end="",
                    flush=True,
                )
            if plot is not None:
                plot.pause(0.3)
            else:
                worker.join(0.3)
    except KeyboardInterrupt:
        cancel.set()
        worker.join()
    finally:
        cb.close()
    print()
    if "error" in outcome:
        print(f"follow: {outcome['error']}", file=sys.stderr)
        return 1
    result = outcome["result"]
    assert isinstance(result, FollowResult)
    report = result.report
    print(report.message)
    for problem in report.problems:
        print(f"  problem: {problem}")
    state = result.state
    print(
        f"{state.n_patterns} patterns, {state.iteration} passes, Fourier error "
        f"{state.latest_error:.4f}, validation ratio {state.validation_ratio:.2f}"
    )
    if result.result_path is not None:
        print(f"result: {result.result_path}")
    if plot is not None:
        plot.show(state, final=True)
        if args.output:
            print(f"figure: {plot.save(Path(args.output).with_suffix('.png'))}")
    return 0


class _FollowPlot:
    """The live figure of ``follow --plot``: a window if matplotlib has one, else off-screen."""

    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        from bluesky_ptycho.display import LivePlot

        self._plt = plt
        self.interactive = plt.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo")
        figure = plt.figure(figsize=(12, 7.6), layout="constrained") if self.interactive else None
        self._live = LivePlot(min_interval_s=0.5, figure=figure)

    def show(self, state, *, final: bool = False) -> None:
        self._live.update(state, force=final)

    def pause(self, seconds: float) -> None:
        if self.interactive:
            self._plt.pause(seconds)
        else:
            time.sleep(seconds)

    def save(self, path: Path) -> Path:
        return self._live.save_png(path)


def _demo(args: argparse.Namespace) -> int:
    if args.tango:
        return _demo_tango(args)
    return _demo_offline(args) if args.offline else _demo_live(args)


def _serve(args: argparse.Namespace, rest: list[str]) -> int:
    from bluesky_ptycho.serve import serve_main

    return int(serve_main(rest))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bluesky-ptycho",
        description="Live ptychography for Bluesky beamlines. Each command has its own --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="simulate a scan and reconstruct it",
        description="Run a Bluesky RunEngine scan of the simulated beamline while PtychoCallback "
        "reconstructs it live; write snapshots, the final figure and the HDF5 result into "
        "--output. --offline: the engine alone, no Bluesky. --tango: across processes (0MQ "
        "proxy, Tango device server, a client printing its events); needs the tango extra.",
    )
    demo.add_argument("--output", default="demo-output", help="folder for HDF5 and PNG files")
    demo.add_argument("--passes", type=int, default=60, help="(final) ePIE passes")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and engine")
    demo.add_argument("--dwell", type=float, default=0.05, help="seconds per scan point")
    demo.add_argument("--offline", action="store_true", help="no RunEngine: engine only")
    demo.add_argument(
        "--tango", action="store_true", help="via a 0MQ proxy and a Tango device server process"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)
    follow = sub.add_parser(
        "follow", help="reconstruct a scan live from its directory while a detector writes it"
    )
    follow.add_argument("directory", help="scan directory (Eiger master + data files, or chunks)")
    follow.add_argument("--setup", help="JSON or YAML file with the start['ptycho'] fields")
    follow.add_argument(
        "--timeout", type=float, default=60.0, help="end after this many seconds without new data"
    )
    follow.add_argument("--poll", type=float, default=0.1, help="seconds between looks")
    follow.add_argument(
        "--stop-marker", default="scan.done", help='file that ends the scan ("": none)'
    )
    follow.add_argument("--output", help="write the result to this HDF5 file")
    follow.add_argument("--final-passes", type=int, default=20, help="passes after the last frame")
    follow.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="show the reconstruction live (a window, or OUTPUT.png on a headless machine)",
    )
    follow.add_argument("--quiet", action="store_true", help="no progress line")
    follow.set_defaults(func=_follow)
    add_replay_parsers(sub)  # replay, reconstruct (bluesky_ptycho.replay_commands)
    add_study_parser(sub)  # study (bluesky_ptycho.study_commands)
    add_panel_parser(sub)  # panel (bluesky_ptycho.panel_commands)
    serve = sub.add_parser(
        "serve",
        help="run the PtychoReconstruction Tango device server (database-free)",
        add_help=False,
    )
    serve.set_defaults(func=None)
    _polish(sub)
    return parser


_COMMON_HELP = {
    "--seed": "random seed",
    "--quiet": "no progress output",
    "--output": "where to write the results",
    "--crop": "frame size N used (power of two)",
}
"""Help for options that subcommands commonly leave without one."""


def _no_default(value: object) -> bool:
    """None, False or SUPPRESS: nothing worth showing (0 and 0.0 are shown)."""
    return value is None or value is False or value == argparse.SUPPRESS


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None or False or its help already names one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if _no_default(action.default) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _polish(sub: argparse._SubParsersAction) -> None:
    """Every subcommand's ``--help``: a description, a help line and the default of each option.

    Subcommands added by other modules (``replay``, ``study``...) get the same treatment, so
    their options need only ``help=`` for the words; the default is shown automatically.
    """
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, parser in sub.choices.items():
        if name == "serve":  # the server's own parser (bluesky_ptycho.serve) answers --help
            continue
        parser.formatter_class = _HelpFormatter
        if not parser.description and helps.get(name):
            text = str(helps[name])
            parser.description = text[:1].upper() + text[1:] + "."
        for action in parser._actions:
            if action.help is not None or isinstance(action, argparse._HelpAction):
                continue
            option = max(action.option_strings, key=len, default=action.dest)
            if option in _COMMON_HELP:
                action.help = _COMMON_HELP[option]
            elif not _no_default(action.default):
                action.help = option.lstrip("-").replace("-", " ") + " (default: %(default)s)"
            else:
                action.help = option.lstrip("-").replace("-", " ")


_EXTRAS = {
    "bluesky": "bluesky",
    "ophyd": "bluesky",
    "ophyd_async": "bluesky",
    "event_model": "bluesky",
    "area_detector_handlers": "bluesky",
    "zmq": "bluesky",
    "msgpack": "bluesky",
    "msgpack_numpy": "bluesky",
    "tango": "tango",
    "databroker": "databroker",
    "tiled": "databroker",
    "mpi4py": "mpi",
    "cupy": "gpu",
    "taurus": "gui",
    "PyQt5": "gui",
}
"""Top-level module -> the ``pip install 'bluesky-ptycho[EXTRA]'`` extra that provides it."""


def missing_extra_message(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line hint for a module an optional extra provides; None for any other module.

    Parameters
    ----------
    command : str
        The command as the user typed it (``"bluesky-ptycho demo --tango"``).
    exc : ModuleNotFoundError
        The import error.

    Returns
    -------
    str or None
        ``"<command> needs the 'tango' extra (module 'tango' is not installed): pip install
        'bluesky-ptycho[tango]'"``, or None when the module is not one of an extra.
    """
    module = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(module)
    if extra is None:
        return None
    return (
        f"{command} needs the {extra!r} extra (module {module!r} is not installed): "
        f"pip install 'bluesky-ptycho[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
    )


def tango_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bluesky-ptycho-tango`` console script (the Tango server command).

    Runs :func:`bluesky_ptycho.tango_device.main`; without the ``tango`` extra it says so in
    one line and returns 2 instead of a bare ``ModuleNotFoundError``.
    """
    try:
        from bluesky_ptycho.tango_device import main as server_main
    except ModuleNotFoundError as exc:
        message = missing_extra_message("bluesky-ptycho-tango", exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    return server_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bluesky-ptycho`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["bluesky-ptycho", *argv[:1], *(a for a in argv[1:] if a == "--tango")])
    try:
        if argv[:1] == ["serve"]:  # the server parses its own options (bluesky_ptycho.serve)
            return _serve(argparse.Namespace(), argv[1:])
        args = _parser().parse_args(argv)
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        message = missing_extra_message(command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
