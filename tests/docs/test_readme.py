"""Every example of the README runs as it is; its module table names every module.

Fenced ``python`` and ``bash`` blocks run in order, per ``##`` section, in one scratch
directory per section: python blocks each as a script of their own (copy-paste), bash blocks
with the environment's ``bin/`` first on ``PATH``. A block right after the comment
``<!-- readme-test: skip (why) -->`` is not run.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    code: str
    line: int
    skip: bool


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, with their ``##`` section."""
    blocks: list[Block] = []
    section = "(top)"
    lines = text.splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        match = FENCE.match(line)
        if match and match.group(2):
            indent, language = match.group(1), match.group(2)
            body: list[str] = []
            start = i + 1
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                i += 1
            blocks.append(
                Block(section, language, "\n".join(body) + "\n", start, bool(SKIP.search(previous)))
            )
        if line.strip():
            previous = line
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUN = [b for b in BLOCKS if not b.skip and b.language in ("python", "bash", "sh")]
SECTIONS = list(dict.fromkeys(b.section for b in RUN))


def test_the_parser_sees_the_fences_and_the_skip_marks() -> None:
    text = (
        "## A\n\n<!-- readme-test: skip (slow) -->\n```bash\necho no\n```\n\n"
        "```python\nprint(1)\n```\n\n- item:\n\n  ```python\n  x = 2\n  ```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.language, b.skip, b.code) for b in blocks] == [
        ("bash", True, "echo no\n"),
        ("python", False, "print(1)\n"),
        ("python", False, "x = 2\n"),
    ]


def test_the_first_two_commands_are_the_demo_and_the_tests() -> None:
    first, second = BLOCKS[0], BLOCKS[1]
    assert first.code.strip().endswith(".venv/bin/bluesky-ptycho demo")
    assert second.code.strip() == (
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && '
        ".venv/bin/python -m pytest -q"
    )


@pytest.mark.parametrize(
    "section",
    [
        "For the beamline scientist: reconstruct during your scans",
        "For the controls engineer: the Tango device, 0MQ, Taurus",
        "For the analyst: replay, reconstruct, study",
    ],
)
def test_every_user_has_an_example_that_runs(section: str) -> None:
    assert section in SECTIONS, f"no runnable example in README section {section!r}"


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_examples_run(section: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for block in (b for b in RUN if b.section == section):
        if block.language == "python":
            script = tmp_path / f"readme_line_{block.line}.py"
            script.write_text(block.code)
            argv = [sys.executable, str(script)]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", block.code]
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, (
            f"README line {block.line} ({block.language}) failed:\n{done.stdout}\n{done.stderr}"
        )


def _modules() -> list[str]:
    """``bluesky_ptycho.X`` for every public top-level module and package."""
    import bluesky_ptycho

    names = {
        f"bluesky_ptycho.{m.name}"
        for m in pkgutil.iter_modules(bluesky_ptycho.__path__)
        if not m.name.startswith("_")
    }
    names |= {"bluesky_ptycho.plans", "bluesky_ptycho.tango_device"}  # mapped directories
    import bluesky_ptycho.io as io_package

    names |= {
        f"bluesky_ptycho.io.{m.name}"
        for m in pkgutil.iter_modules(io_package.__path__)
        if not m.name.startswith("_")
    }
    return sorted(names)


def test_the_module_table_names_every_module() -> None:
    text = README.read_text()
    table = text[text.index("## What is here") :]
    table = table[: table.index("\n\n", table.index("| module |"))]
    named = set()
    for row in table.splitlines()[2:]:
        cell = row.split("|")[1]
        parts = re.findall(r"`([\w.]+)`", cell)
        base = ""
        for part in parts:
            if part.startswith("."):
                named.add(base + part)
            else:
                named.add(part)
                base = part.rsplit(".", 1)[0]
    # bluesky_ptycho.io itself is the package of its modules' rows
    missing = [m for m in _modules() if m not in named and m != "bluesky_ptycho.io"]
    assert not missing, f"README's module table lacks {missing}"
