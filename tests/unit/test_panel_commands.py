"""``bluesky-ptycho panel``: the subcommand's parsing (the panel itself: tests/system)."""

from __future__ import annotations

import argparse

from bluesky_ptycho.panel import DEFAULT_DEVICE
from bluesky_ptycho.panel_commands import add_panel_parser


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bluesky-ptycho")
    add_panel_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_panel_defaults_to_serves_device() -> None:
    args = parse("panel")
    assert args.device == DEFAULT_DEVICE and args.period == 0.5 and args.screenshot is None
    assert callable(args.func)


def test_panel_takes_a_device_and_screenshot_options() -> None:
    args = parse("panel", "tango-nodb://127.0.0.1:1/a/b/c", "--screenshot", "p.png", "--wait", "2")
    assert args.device == "tango-nodb://127.0.0.1:1/a/b/c"
    assert args.screenshot == "p.png" and args.wait == 2.0


def test_a_bad_device_name_is_refused_before_qt_starts(capsys) -> None:
    from bluesky_ptycho.cli import main

    assert main(["panel", "not-a-device"]) == 2
    assert "dom/fam/member" in capsys.readouterr().err


def test_the_old_docs_launcher_forwards_to_the_panel() -> None:
    import subprocess
    import sys
    from pathlib import Path

    launcher = Path(__file__).resolve().parents[2] / "docs" / "taurus" / "ptycho_panel.py"
    done = subprocess.run(
        [sys.executable, str(launcher), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "bluesky-ptycho panel" in done.stdout
