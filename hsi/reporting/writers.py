"""Tables to files: Markdown (pipe tables), CSV (full numbers) and LaTeX (booktabs).

Markdown and LaTeX show two decimals and print a value listed in ``table.attrs["merge"]`` (a
model's clean accuracy) and repeated index labels only once per block, as the paper lays its
tables out. CSV keeps every cell, so a spreadsheet or pandas reads it back without gaps. All
writes are atomic (hsi.io).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hsi.io import atomic_write_text

FORMATS = ("md", "csv", "tex")


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if pd.isna(value) else f"{value:.2f}"
    return str(value)


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and body cells as printed: index levels first, repeats blanked within a block."""
    names = [n if n is not None else "" for n in table.index.names]
    header = [*map(str, names), *map(str, table.columns)]
    merge = set(table.attrs.get("merge", []))
    body, previous = [], None
    for key, row in zip(table.index, table.itertuples(index=False), strict=True):
        key = key if isinstance(key, tuple) else (key,)
        first = previous is None or key[0] != previous[0]
        index_cells = [
            _cell(k) if (level == len(key) - 1 or first or key[level] != previous[level]) else ""
            for level, k in enumerate(key)
        ]
        cells = [
            "" if (column in merge and not first) else _cell(value)
            for column, value in zip(table.columns, row, strict=True)
        ]
        body.append(index_cells + cells)
        previous = key
    return header, body


def to_markdown(table: pd.DataFrame, title: str) -> str:
    header, body = display_rows(table)
    lines = [
        f"**{title}**",
        "",
        "| " + " | ".join(header) + " |",
        "|"
        + "|".join(":---" if i < table.index.nlevels else "---:" for i in range(len(header)))
        + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("±", r"$\pm$"),
    ):
        text = text.replace(char, escaped)
    return text


def to_latex(table: pd.DataFrame, title: str) -> str:
    """A booktabs tabular inside a table float, the title as caption."""
    header, body = display_rows(table)
    levels = table.index.nlevels
    spec = "l" * levels + "r" * (len(header) - levels)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{{_latex_escape(title)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(body):
        if i and levels > 1 and row[0]:
            lines.append(r"\midrule")  # a new block (model)
        lines.append(" & ".join(_latex_escape(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(float_format="%.4f", lineterminator="\n")


def write_table(table: pd.DataFrame, folder: str | Path, name: str, title: str) -> list[Path]:
    """``folder/name.{md,csv,tex}``; returns the paths written."""
    folder = Path(folder)
    texts = {"md": to_markdown(table, title), "csv": to_csv(table), "tex": to_latex(table, title)}
    return [atomic_write_text(folder / f"{name}.{ext}", texts[ext]) for ext in FORMATS]
