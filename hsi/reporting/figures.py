"""Paper 000's Fig. 6 and Fig. 7 from runs, as PNG and PDF.

- Fig. 6: test accuracy against object size, one line per placement (CeO/CoO/CeR/CoR) and the
  clean accuracy as a dashed line, one panel per model (from :func:`size_table`);
- Fig. 7 left: DFR test accuracy (average and worst-group) against the epochs of the ERM model
  whose embeddings it retrains on; right: Easy/Medium/Hard test accuracy of ERM_easy, ERM and
  ERM_all.

Drawn on matplotlib's Agg canvas without pyplot; the files carry no software version or date,
so the same runs give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hsi.groups import PLACEMENTS
from hsi.io import atomic_write_bytes
from hsi.reporting.tables import CLEAN, category_tables

DPI = 120
METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}
FIG7_METHODS = ("erm_easy", "erm", "erm_all")
FIG7_LABELS = {"erm_easy": "ERM_easy", "erm": "ERM", "erm_all": "ERM_all"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """``stem.png`` and ``stem.pdf``, written atomically."""
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=METADATA[fmt])
        paths.append(atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue()))
    return paths


def plot_accuracy_vs_size(table: pd.DataFrame, title: str) -> Figure:
    """Fig. 6 from a :func:`hsi.reporting.tables.size_table` (index model, size)."""
    models = list(dict.fromkeys(table.index.get_level_values(0)))
    fig = _figure(max(4.5, 3.2 * len(models)), 3.2)
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        part = table.loc[model]
        sizes = [int(s) for s in part.index]
        for placement in PLACEMENTS:
            ax.plot(sizes, part[placement].to_numpy(), marker="o", label=placement)
        clean = part[CLEAN].iloc[0]
        if not np.isnan(clean):
            ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label=CLEAN)
        ax.set_title(model)
        ax.set_xticks(sizes)
        ax.set_xlabel("object size (px)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize="small")
    fig.suptitle(title)
    return fig


def erm_epochs(run: Mapping[str, Any]) -> int | None:
    """Epochs of the ERM model under a DFR run: its stage 1, or the ERM run it was given."""
    stage1 = run.get("stage1") or {}
    if stage1.get("epochs") is not None:
        return int(stage1["epochs"])
    checkpoint = stage1.get("checkpoint")
    if checkpoint:
        from hsi.results import read_results

        results = Path(checkpoint).parent.parent / "results.json"
        if results.is_file() and read_results(results).get("epochs") is not None:
            return int(read_results(results)["epochs"])
    erm = ((run.get("config") or {}).get("method") or {}).get("erm") or {}
    return int(erm["epochs"]) if erm.get("epochs") is not None else None


def dfr_by_epochs(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Fig. 7 left's points: index ERM epochs, DFR's Average and Worst-group (mean over seeds)."""
    dfr = [r for r in runs if r.get("algorithm") == "dfr"]
    if not dfr:
        return pd.DataFrame()
    mean, _ = category_tables(dfr, label=lambda r: str(erm_epochs(r)), include_incomplete=True)
    mean = mean[mean.index != "None"]
    mean.index = mean.index.astype(int)
    mean.index.name = "erm_epochs"
    return mean.sort_index()[["Average", "Worst-group", "seeds"]]


def erm_variants(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Fig. 7 right's bars: ERM_easy/ERM/ERM_all rows present, Easy/Medium/Hard (mean)."""
    chosen = [r for r in runs if r.get("method") in FIG7_METHODS]
    if not chosen:
        return pd.DataFrame()
    mean, _ = category_tables(chosen, label="method", include_incomplete=True)
    present = [m for m in FIG7_METHODS if m in mean.index]
    return mean.loc[present, ["Easy", "Medium", "Hard", "seeds"]]


def plot_fig7(by_epochs: pd.DataFrame, variants: pd.DataFrame, title: str) -> Figure:
    """Fig. 7: the panels whose runs are there (a missing one says so in its panel)."""
    fig = _figure(8.0, 3.2)
    left, right = fig.subplots(1, 2)
    if by_epochs.empty:
        left.text(0.5, 0.5, "no DFR runs", ha="center", va="center", transform=left.transAxes)
        left.set_xticks([])
    else:
        epochs = by_epochs.index.to_numpy()
        for column in ("Average", "Worst-group"):
            left.plot(epochs, by_epochs[column].to_numpy(), marker="o", label=f"DFR {column}")
        left.set_xticks(epochs)
        left.legend(fontsize="small")
    left.set_ylim(0, 100)
    left.set_xlabel("ERM epochs")
    left.set_ylabel("test accuracy (%)")
    left.set_title("DFR vs ERM epochs")
    if variants.empty:
        right.text(
            0.5,
            0.5,
            "no ERM_easy/ERM/ERM_all runs",
            ha="center",
            va="center",
            transform=right.transAxes,
        )
    else:
        categories = ["Easy", "Medium", "Hard"]
        x = np.arange(len(categories))
        width = 0.8 / len(variants)
        for i, method in enumerate(variants.index):
            values = variants.loc[method, categories].to_numpy(dtype=float)
            right.bar(x + i * width, values, width, label=FIG7_LABELS.get(method, method))
        right.set_xticks(x + width * (len(variants) - 1) / 2, categories)
        right.legend(fontsize="small")
    right.set_ylim(0, 100)
    right.set_title("by category")
    fig.suptitle(title)
    return fig
