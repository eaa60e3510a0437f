"""The report as one static HTML page, `index.html` beside README.md: every table, every figure
of the report folder (Figs. 5/6/7/10), and the images of other stages (Grad-CAM grids, Fig. 3,
the bias-score figures) copied into `figures/extra/`, so the folder can be moved or served as is.
"""

from __future__ import annotations

import glob
import html
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hsi.io import atomic_write_text
from hsi.reporting.writers import display_rows

HTML_FILE = "index.html"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; }
"""


def collect_images(patterns: Iterable[str], folder: Path) -> list[Path]:
    """Copy the image files matching `patterns` into `<folder>/figures/extra/` (a pattern that
    matches nothing: that stage did not run); return the copies, in pattern order."""
    extra = folder / "figures" / "extra"
    copies: list[Path] = []
    for pattern in patterns:
        for found in sorted(glob.glob(str(pattern))):
            source = Path(found)
            if source.suffix.lower() not in IMAGE_SUFFIXES or not source.is_file():
                continue
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source.parent.name}_{source.name}")
            target = extra / name
            if target not in copies:
                extra.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                copies.append(target)
    return copies


def table_html(name: str, title: str, table) -> str:
    header, body = display_rows(table)
    levels = table.index.nlevels
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td{'' if i < levels else ' class=num'}>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in body
    )
    return (
        f'<section id="table-{html.escape(name)}"><h3>{html.escape(title)}</h3>'
        f'<table data-table="{html.escape(name)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def figure_html(path: Path, folder: Path) -> str:
    rel = path.relative_to(folder).as_posix()
    return (
        f'<figure><img src="{html.escape(rel)}" alt="{html.escape(path.stem)}">'
        f"<figcaption>{html.escape(rel)}</figcaption></figure>"
    )


def _natural(path: Path) -> list:
    """fig5 before fig10: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def write_html(
    folder: Path,
    tables: Mapping[str, tuple[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    title: str = "Report",
) -> Path:
    """`<folder>/index.html`: the tables, then every image under `<folder>/figures/`."""
    figures = (
        sorted(
            (p for p in (folder / "figures").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural,
        )
        if (folder / "figures").is_dir()
        else []
    )
    own = [p for p in figures if p.parent == folder / "figures"]
    other = [p for p in figures if p.parent != folder / "figures"]
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Tables</h2>",
        *(table_html(name, t, frame) for name, (t, frame) in tables.items()),
    ]
    if own:
        parts += ["<h2>Figures</h2>", *(figure_html(p, folder) for p in own)]
    if other:
        parts += ["<h2>Figures of the other stages</h2>", *(figure_html(p, folder) for p in other)]
    parts += ["<h2>Runs</h2>", "<ul>"]
    parts += [
        f"<li>{html.escape(str(r.get('method')))} {html.escape(str(r.get('model')))} "
        f"data={html.escape(str(r.get('data')))} seed={html.escape(str(r.get('seed')))}: "
        f"<code>{html.escape(str(r.get('run_dir')))}</code></li>"
        for r in runs
    ]
    parts += ["</ul>", "</body></html>"]
    return atomic_write_text(folder / HTML_FILE, "\n".join(parts) + "\n")
