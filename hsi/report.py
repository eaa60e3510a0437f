"""Paper-style tables from the results.json files of training runs (paper 000, Tables 1-4).

Accuracies are shown in percent, as the paper prints them. Runs of the same method (several
seeds) are pooled into one row: the mean over seeds, with the sample standard deviation
(ddof=1) in a second table and the number of seeds in a column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from hsi.groups import PLACEMENTS

# column title -> metric name in results.json (hsi.metrics)
CATEGORY_COLUMNS = {
    "Easy": "acc_easy",
    "Medium": "acc_medium",
    "Hard": "acc_hard",
    "Average": "acc",  # pooled over every test sample, as the paper's "Average"
    "Worst-group": "worst_group_acc",
}
_GROUP_KEY = re.compile(r"^group/(CeO|CoO|CeR|CoR)_(\d+)$")


def _percent(value: Any) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def check_complete(results: Mapping[str, Any], include_incomplete: bool = False) -> None:
    """Refuse a run whose ``status`` is not ``complete`` (e.g. ``diverged``) unless asked."""
    status = results.get("status")
    if status != "complete" and not include_incomplete:
        raise ValueError(
            f"run {results.get('run_dir', '?')} has status {status!r}, not 'complete': its "
            f"numbers are no result ({results.get('error', 'see its folder')}); leave it out, "
            f"or pass include_incomplete=True"
        )


def category_tables(
    runs: Iterable[Mapping[str, Any]],
    split: str = "test",
    label: str = "method",
    include_incomplete: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, std) tables: one row per ``label`` value, columns Easy/Medium/Hard/Average/Worst-group
    and ``seeds``; rows keep the order in which each label first appears. A run whose status
    is not ``complete`` is refused unless ``include_incomplete``."""
    rows, seen = [], set()
    for results in runs:
        check_complete(results, include_incomplete)
        key = (results[label], results.get("seed"))
        if key in seen:
            raise ValueError(
                f"two runs of {label}={key[0]!r} with seed {key[1]}: they are not seeds of one "
                f"setting; give each setting its own {label} (e.g. method and model, or DFR variant)"
            )
        seen.add(key)
        metrics = results[split]
        row = {title: _percent(metrics.get(key)) for title, key in CATEGORY_COLUMNS.items()}
        rows.append({label: results[label], **row})
    if not rows:
        raise ValueError("no runs to tabulate")
    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame[label]))
    grouped = frame.groupby(label, sort=False)
    mean = grouped.mean().reindex(order)
    std = grouped.std(ddof=1).reindex(order)
    mean["seeds"] = grouped.size().reindex(order)
    return mean, std


def group_table(
    results: Mapping[str, Any], split: str = "test", include_incomplete: bool = False
) -> pd.DataFrame:
    """The 12 group accuracies of one run: rows = object sizes (ascending), columns CeO CoO CeR CoR."""
    check_complete(results, include_incomplete)
    cells: dict[int, dict[str, float]] = {}
    for key, value in results[split].items():
        match = _GROUP_KEY.match(key)
        if match:
            cells.setdefault(int(match.group(2)), {})[match.group(1)] = _percent(value)
    if not cells:
        raise ValueError(f"no group accuracies in the {split} results (data without groups?)")
    table = pd.DataFrame.from_dict(cells, orient="index").reindex(columns=list(PLACEMENTS))
    table.index.name = "size"
    return table.sort_index()


def format_table(table: pd.DataFrame, title: str) -> str:
    """A titled plain-text table with two decimals (NaN shown as '-')."""
    body = table.to_string(float_format=lambda v: f"{v:.2f}", na_rep="-")
    return f"{title}\n{body}\n"
