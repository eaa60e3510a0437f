"""Figures of the centre and size bias scores (paper 000, §3: Figs. 2, 4 and 11).

* `plot_center_vs_size`: one point per class, centre score against size score, the extreme classes
  named (Fig. 2 left).
* `plot_center_heatmap`: 2-D histogram of the relative box centres (cx/W, cy/H) with a log colour
  scale; drawn like an image, so the top of the plot is the top of the image (Fig. 2 right).
* `plot_score_histograms`: histograms over classes of both scores, one colour per split (Fig. 4, 11).

Figures are drawn on matplotlib's Agg canvas without pyplot (no global state, no display needed),
rendered to memory and written with `hsi.io.atomic_write_bytes`. The PNG carries no software
version or timestamp, so the same input gives the same bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from hsi.io import atomic_write_bytes

DPI = 120
# PNG text chunks matplotlib would otherwise fill with its version; None leaves them out.
_PNG_METADATA = {"Software": None}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return atomic_write_bytes(path, buf.getvalue())


def extreme_classes(scores: pd.DataFrame, n_per_extreme: int = 1) -> list[str]:
    """wnids of the classes with the lowest and highest centre and size scores (no repeats).

    Ties are broken by wnid, so the choice does not depend on the row order.
    """
    if scores.empty or n_per_extreme <= 0:
        return []
    chosen: list[str] = []
    for column in ("center_score", "size_score"):
        ordered = scores.sort_values([column, "wnid"], kind="mergesort")["wnid"].tolist()
        for wnid in ordered[:n_per_extreme] + ordered[::-1][:n_per_extreme]:
            if wnid not in chosen:
                chosen.append(wnid)
    return chosen


def plot_center_vs_size(
    scores: pd.DataFrame,
    path: str | os.PathLike,
    split: str = "val",
    names: Mapping[str, str] | None = None,
    n_per_extreme: int = 1,
) -> Path:
    """Scatter of centre score (x) against size score (y), one point per class of `split`.

    `scores` is `hsi.scores.bias_scores(...)`; the classes at the extremes of either score are
    annotated with their name from `names` (wnid -> name; the wnid when missing).
    """
    rows = scores[scores["split"] == split]
    names = names or {}
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(rows["center_score"], rows["size_score"], s=14, alpha=0.7, edgecolors="none")
    by_wnid = rows.set_index("wnid")
    for wnid in extreme_classes(rows, n_per_extreme):
        x, y = by_wnid.at[wnid, "center_score"], by_wnid.at[wnid, "size_score"]
        ax.annotate(
            names.get(wnid, wnid), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8
        )
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("centre score")
    ax.set_ylabel("size score")
    ax.set_title(f"Centre vs size score per class ({split}, {len(rows)} classes)")
    return _save(fig, path)


def plot_center_heatmap(offsets: np.ndarray, path: str | os.PathLike, bins: int = 50) -> Path:
    """Log-count 2-D histogram of relative box centres, `offsets` of shape (n, 2) as (cx/W, cy/H)."""
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
    # histogram2d's first axis is x; transpose so rows are y, as in an image.
    counts, _, _ = np.histogram2d(
        offsets[:, 0], offsets[:, 1], bins=bins, range=[[0.0, 1.0], [0.0, 1.0]]
    )
    counts = counts.T
    fig = _new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    if counts.max() > 0:
        image = ax.imshow(
            np.ma.masked_equal(counts, 0),
            origin="upper",
            extent=(0.0, 1.0, 1.0, 0.0),
            norm=LogNorm(vmin=1, vmax=counts.max()),
            cmap="viridis",
            interpolation="nearest",
        )
        fig.colorbar(image, ax=ax, label="boxes (log scale)")
    else:
        ax.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(1.0, 0.0)
    ax.set_xlabel("box centre x / image width")
    ax.set_ylabel("box centre y / image height")
    ax.set_title(f"Relative object centres ({len(offsets)} boxes)")
    return _save(fig, path)


def plot_score_histograms(scores: pd.DataFrame, path: str | os.PathLike, bins: int = 25) -> Path:
    """Histograms over classes of the centre and size scores, one overlaid series per split."""
    fig = _new_figure(9.0, 3.8)
    ax_center, ax_size = fig.subplots(1, 2)
    edges = {
        "center_score": np.linspace(0.5, 1.0, bins + 1),
        "size_score": np.linspace(0.0, 1.0, bins + 1),
    }
    for split in sorted(scores["split"].unique()):
        rows = scores[scores["split"] == split]
        for ax, column in ((ax_center, "center_score"), (ax_size, "size_score")):
            ax.hist(rows[column], bins=edges[column], alpha=0.55, label=f"{split} ({len(rows)})")
    for ax, column, label in (
        (ax_center, "center_score", "centre score"),
        (ax_size, "size_score", "size score"),
    ):
        ax.set_xlim(edges[column][0], edges[column][-1])
        ax.set_xlabel(label)
        ax.set_ylabel("classes")
        if len(scores):
            ax.legend(title="split", fontsize=8)
    fig.suptitle("Bias scores over classes")
    return _save(fig, path)
