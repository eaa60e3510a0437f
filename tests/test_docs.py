"""The docs stay in step with the code: every test docs/reliability.md names exists, every module
docs/papers.md and docs/architecture.md name exists, and nothing cites files the repo lacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def named_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) pairs of `tests/x.py::test_y` and the `::test_z` shorthands after it."""
    pairs = []
    for cell in re.findall(r"`[^`]*::[^`]*`(?:,\s*`::[^`]*`)*", text):
        current = None
        for ref in re.findall(r"`([^`]*)`", cell):
            path, _, name = ref.partition("::")
            current = path or current
            pairs.append((current, name.split("[")[0]))
    return pairs


def test_every_test_named_in_reliability_exists():
    pairs = named_tests((DOCS / "reliability.md").read_text())
    assert len(pairs) > 40  # the page lists every kind of bad input, with its test
    missing = []
    for path, name in pairs:
        source = ROOT / path
        if not source.is_file() or not re.search(
            rf"^def {re.escape(name)}\(", source.read_text(), re.M
        ):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


@pytest.mark.parametrize("page", ["papers.md", "architecture.md"])
def test_every_module_named_in_the_docs_exists(page):
    text = (DOCS / page).read_text()
    paths = set(re.findall(r"`(hsi/[\w/]+(?:\.py)?/?)`", text))
    assert paths
    missing = [p for p in sorted(paths) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"docs/{page} names modules that do not exist: {missing}"


def test_the_project_cites_only_what_it_ships():
    """Code, configs and docs cite the papers and docs/, never notes that are not in the repo."""
    offenders = []
    for path in [
        *ROOT.glob("hsi/**/*.py"),
        *ROOT.glob("conf/**/*.yaml"),
        *DOCS.glob("*.md"),
        ROOT / "README.md",
        *ROOT.glob("experiments/*.md"),
    ]:
        text = path.read_text()
        if re.search(r"SPEC\s*§|SPEC\.md|DESIGN\.md", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
