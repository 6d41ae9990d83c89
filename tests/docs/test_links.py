"""No dangling references in the documentation: relative links resolve, no DESIGN.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda p: str(p),
)
PAGES = [p for p in PAGES if "_build" not in p.parts]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # not inside code blocks
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_link_pattern_finds_links_outside_code() -> None:
    text = "see [a](x/y.md#h) and ![img](p.png)\n```\n[no](z.md)\n```\n[web](https://e.org)"
    assert _links(text) == ["x/y.md#h", "p.png", "https://e.org"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing {broken}"


def test_nothing_refers_to_a_design_document_outside_the_repository() -> None:
    hits = []
    for folder in ("bluesky_ptycho", "plans", "tango_device", "docs", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".md", ".toml", ".ipynb") or "_build" in path.parts:
                continue
            if path == Path(__file__).resolve():
                continue
            if "DESIGN.md" in path.read_text(errors="replace"):
                hits.append(str(path.relative_to(ROOT)))
    for name in ("README.md", "pyproject.toml", ".ci/run"):
        if "DESIGN.md" in (ROOT / name).read_text():
            hits.append(name)
    assert not hits, f"DESIGN.md is not in the repository; these refer to it: {hits}"


def test_every_decision_record_is_listed_in_the_decisions_index() -> None:
    folder = ROOT / "docs" / "decisions"
    listed = set(_links((folder / "index.md").read_text()))
    missing = sorted(p.name for p in folder.glob("0*.md") if p.name not in listed)
    assert not missing, f"docs/decisions/index.md does not list {missing}"
