"""The papers' tables as pandas frames, from runs (results.json contents); accuracies in percent.

- :func:`size_table`: Tables 1/2/5/6/7 of paper 000 -- rows model x object size, columns the four
  placements CeO/CoO/CeR/CoR, and the model's clean accuracy on the source's val images;
- :func:`category_tables`: Tables 3/8 -- rows methods, columns Easy/Medium/Hard/Average/
  Worst-group, mean and sample standard deviation (ddof=1) over seeds, with the seed count;
- :func:`group_table`: Table 4 -- one run's 3 x 4 groups (rows sizes, columns placements).

Every function refuses incomplete runs unless ``include_incomplete=True`` and refuses to pool runs
of different settings into one row (hsi.reporting.runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from hsi.groups import PLACEMENTS
from hsi.reporting.runs import check_complete, check_poolable

# column title -> metric name in results.json (hsi.metrics)
CATEGORY_COLUMNS = {
    "Easy": "acc_easy",
    "Medium": "acc_medium",
    "Hard": "acc_hard",
    "Average": "acc",  # pooled over every test sample, as the paper's "Average"
    "Worst-group": "worst_group_acc",
}
CLEAN = "Clean"
GROUP_KEY = re.compile(r"^group/(CeO|CoO|CeR|CoR)_(\d+)$")

Label = str | Callable[[Mapping[str, Any]], str]


def _percent(value: Any) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def _label_of(label: Label) -> Callable[[Mapping[str, Any]], str]:
    return label if callable(label) else (lambda run: run[label])


def pooled_rows(
    runs: Iterable[Mapping[str, Any]], label: Label, include_incomplete: bool = False
) -> dict[str, list[Mapping[str, Any]]]:
    """Runs grouped by row label (first-seen order), each group checked as seeds of one setting."""
    rows: dict[str, list[Mapping[str, Any]]] = {}
    name = _label_of(label)
    for run in check_complete(list(runs), include_incomplete):
        rows.setdefault(str(name(run)), []).append(run)
    if not rows:
        raise ValueError("no runs to tabulate")
    for row, members in rows.items():
        check_poolable(members, row)
    return rows


def category_tables(
    runs: Iterable[Mapping[str, Any]],
    split: str = "test",
    label: Label = "method",
    include_incomplete: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, std) tables: one row per ``label`` value, columns Easy/Medium/Hard/Average/Worst-group
    and ``seeds`` (in ``mean``); rows keep the order in which each label first appears.

    ``label``: a results key (``"method"``) or a function of the run. One seed: std is NaN.
    """
    rows = pooled_rows(runs, label, include_incomplete)
    records = [
        {
            "row": row,
            **{title: _percent(run[split].get(key)) for title, key in CATEGORY_COLUMNS.items()},
        }
        for row, members in rows.items()
        for run in members
    ]
    frame = pd.DataFrame(records)
    grouped = frame.groupby("row", sort=False)
    order = list(rows)
    mean = grouped.mean().reindex(order)
    std = grouped.std(ddof=1).reindex(order)
    mean["seeds"] = grouped.size().reindex(order)
    name = label if isinstance(label, str) else "setting"
    mean.index.name = std.index.name = name
    return mean, std


def group_table(results: Mapping[str, Any], split: str = "test") -> pd.DataFrame:
    """The 12 group accuracies of one run: rows = object sizes (ascending), columns CeO CoO CeR CoR."""
    cells: dict[int, dict[str, float]] = {}
    for key, value in results[split].items():
        match = GROUP_KEY.match(key)
        if match:
            cells.setdefault(int(match.group(2)), {})[match.group(1)] = _percent(value)
    if not cells:
        raise ValueError(f"no group accuracies in the {split} results (data without groups?)")
    table = pd.DataFrame.from_dict(cells, orient="index").reindex(columns=list(PLACEMENTS))
    table.index.name = "size"
    return table.sort_index()


def mean_group_table(
    runs: Sequence[Mapping[str, Any]], split: str = "test"
) -> tuple[pd.DataFrame, int]:
    """Table 4 of runs that are seeds of one setting: the mean group table, and the seed count."""
    tables = [group_table(run, split) for run in runs]
    mean = pd.concat(tables).groupby(level=0).mean().reindex(columns=list(PLACEMENTS))
    mean.index.name = "size"
    return mean, len(tables)


def clean_accuracy(run: Mapping[str, Any]) -> float:
    """Percent accuracy on the source's val images (hsi-benchmark's ``clean``), NaN if absent."""
    return _percent((run.get("clean") or {}).get("acc"))


def size_table(
    runs: Iterable[Mapping[str, Any]],
    split: str = "test",
    label: Label = "model",
    include_incomplete: bool = False,
) -> pd.DataFrame:
    """Tables 1/2/5/6/7: index (model, size), columns Clean, CeO, CoO, CeR, CoR (percent).

    Seeds of one setting are averaged; Clean repeats on every size row of its model (the
    Markdown and LaTeX writers print it once per model).
    """
    rows = pooled_rows(runs, label, include_incomplete)
    parts = []
    for row, members in rows.items():
        groups, _ = mean_group_table(members, split)
        clean = sum(clean_accuracy(r) for r in members) / len(members)
        part = groups.copy()
        part.insert(0, CLEAN, clean)
        part.index = pd.MultiIndex.from_product([[row], part.index], names=["model", "size"])
        parts.append(part)
    table = pd.concat(parts)
    table.attrs["merge"] = [CLEAN]  # shown once per model
    return table


def format_table(table: pd.DataFrame, title: str) -> str:
    """A titled plain-text table with two decimals (NaN shown as '-')."""
    body = table.to_string(float_format=lambda v: f"{v:.2f}", na_rep="-")
    return f"{title}\n{body}\n"


def mean_std_table(mean: pd.DataFrame, std: pd.DataFrame) -> pd.DataFrame:
    """Cells "74.84 ± 1.20" (just the mean with one seed) and the seed count, for printing."""
    shown = pd.DataFrame(index=mean.index)
    for column in CATEGORY_COLUMNS:
        shown[column] = [
            "-" if pd.isna(m) else (f"{m:.2f}" if pd.isna(s) else f"{m:.2f} ± {s:.2f}")
            for m, s in zip(mean[column], std[column], strict=True)
        ]
    shown["seeds"] = mean["seeds"].astype(int)
    return shown
