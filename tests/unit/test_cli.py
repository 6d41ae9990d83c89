"""The ``bluesky-ptycho`` command line: help everywhere, missing extras named, Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bluesky_ptycho import cli


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(set(_subcommands()) - {"serve"}))
def test_every_subcommand_help_has_a_description_and_every_option_a_help(name, capsys) -> None:
    parser = _subcommands()[name]
    assert parser.description, f"{name} --help has no description"
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{name} {action.dest} has no help"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert parser.description.split()[0] in text
    defaults = [
        a
        for a in parser._actions
        if a.option_strings and not cli._no_default(a.default) and not isinstance(a.default, bool)
    ]
    for action in defaults:  # every number or text default is on the page
        assert f"default: {action.default}" in " ".join(text.split()) or (
            "default" in str(action.help).lower()
        ), f"{name} {action.dest}: default {action.default!r} not shown"


def test_demo_help_shows_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "(default: 60)" in text and "(default: demo-output)" in text
    assert "(default: 0.05)" in text and "(default: 0)" in text  # --seed 0 is shown too
    assert "default: False" not in text  # flags are off unless given: no noise


def _run_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter where ``import <module>`` fails as if not installed."""
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from bluesky_ptycho.cli import main\n"
        f"sys.exit(main({list(args)!r}))\n"
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("tango", ("serve", "--port", "1"), "tango"),
        ("tango", ("demo", "--tango", "--quiet", "--output", "OUT"), "tango"),
        ("bluesky", ("demo", "--quiet", "--output", "OUT"), "bluesky"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(module, args, extra, tmp_path) -> None:
    args = tuple(str(tmp_path / a) if a == "OUT" else a for a in args)
    done = _run_without(module, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"needs the '{extra}' extra" in lines[0]
    assert f"pip install 'bluesky-ptycho[{extra}]'" in lines[0]
    assert lines[0].startswith(f"bluesky-ptycho {args[0]}")


def test_the_tango_server_command_names_the_missing_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['tango'] = None\n"
        "from bluesky_ptycho.cli import tango_main\n"
        "sys.exit(tango_main(['test']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("bluesky-ptycho-tango needs the 'tango' extra")


def test_an_unrelated_missing_module_is_not_disguised() -> None:
    exc = ModuleNotFoundError("No module named 'nonesuch'", name="nonesuch")
    assert cli.missing_extra_message("bluesky-ptycho demo", exc) is None
    exc = ModuleNotFoundError("No module named 'zmq.asyncio'", name="zmq.asyncio")
    assert "'bluesky' extra" in str(cli.missing_extra_message("bluesky-ptycho serve", exc))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_in_the_live_demo_aborts_the_scan_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "bluesky_ptycho.cli", "demo", "--quiet"),
            *("--dwell", "0.3", "--output", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the scan is about to start
        assert first.startswith("simulated beamline"), first
        time.sleep(5.0)  # well into the 81 x 0.3 s scan, even on a loaded machine
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("interrupted: scan aborted after ")
    frames = int(lines[0].split("after ")[1].split(" of ")[0])
    assert 0 < frames < 81
    assert out.strip() == ""  # nothing from the RunEngine ("Pausing...", "Aborting...")
    written = list(tmp_path.glob("ptycho-*.h5"))  # the frames received, without final passes
    assert len(written) == 1 and lines[0].endswith(f"partial result: {written[0]}")
