"""Background-only accuracy against the bias scores: Kendall's τ-b and Spearman's ρ (paper 000,
§3.3, Fig. 3).

Per class: the background-only accuracy (hsi.analysis.background) and the centre score, the size
score and their product (hsi.scores.bias_scores, or hsi-scores' scores.csv) of one split of the
source. The paper reports weak negative correlations: a class whose objects are large and off
centre is predicted more from its background.

    correlation.csv   score, n, kendall_tau, kendall_p, spearman_rho, spearman_p
    fig3_correlation.png   the three scatter plots, each titled with τ and ρ

A correlation needs at least 3 classes and two distinct values on each side; otherwise (and when
scipy cannot compute it) the row holds NaN and a warning says why -- never an error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hsi.io import atomic_write_csv

CORRELATION_FILE = "correlation.csv"
FIGURE_FILE = "fig3_correlation.png"
SCORES = ("center_score", "size_score", "product")
SCORE_LABELS = {
    "center_score": "centre score",
    "size_score": "size score",
    "product": "centre × size",
}
MIN_POINTS = 3


class CorrelationWarning(UserWarning):
    """A correlation that cannot be computed (too few points, constant input): NaN instead."""


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Kendall's τ-b and Spearman's ρ of paired values, with two-sided p-values (scipy.stats).

    Pairs with a NaN on either side are left out. Fewer than 3 pairs or a constant side give NaN
    for all four numbers and a CorrelationWarning.
    """
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    nan = {
        "n": int(len(x)),
        "kendall_tau": math.nan,
        "kendall_p": math.nan,
        "spearman_rho": math.nan,
        "spearman_p": math.nan,
    }
    if len(x) < MIN_POINTS:
        warnings.warn(
            f"correlation of {len(x)} points: need at least {MIN_POINTS}; NaN",
            CorrelationWarning,
            stacklevel=2,
        )
        return nan
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        warnings.warn(
            "correlation with a constant input (every value equal): undefined; NaN",
            CorrelationWarning,
            stacklevel=2,
        )
        return nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        tau = stats.kendalltau(x, y, variant="b")
        rho = stats.spearmanr(x, y)
    return {
        "n": int(len(x)),
        "kendall_tau": float(tau.statistic),
        "kendall_p": float(tau.pvalue),
        "spearman_rho": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
    }


def class_scores(scores: pd.DataFrame, split: str) -> pd.DataFrame:
    """wnid, center_score, size_score, product of one split of a bias-score table."""
    missing = [c for c in ("wnid", "split", "center_score", "size_score") if c not in scores]
    if missing:
        raise ValueError(f"the score table lacks column(s) {missing}; give hsi-scores' scores.csv")
    rows = scores[scores["split"] == split]
    if rows.empty:
        found = sorted(scores["split"].unique())
        raise ValueError(f"the score table has no rows of split {split!r} (it has {found})")
    rows = rows[["wnid", "center_score", "size_score"]].copy()
    rows["wnid"] = rows["wnid"].astype(str)
    rows["product"] = rows["center_score"] * rows["size_score"]
    return rows


def joined(accuracy: pd.DataFrame, scores: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per class present in both: wnid, accuracy, center_score, size_score, product."""
    acc = accuracy[["wnid", "accuracy"]].astype({"wnid": str})
    return acc.merge(class_scores(scores, split), on="wnid", how="inner").sort_values("wnid")


def correlation_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per score of SCORES: n, kendall_tau, kendall_p, spearman_rho, spearman_p."""
    rows = [
        {"score": score, **rank_correlation(table[score], table["accuracy"])} for score in SCORES
    ]
    return pd.DataFrame(rows)


def plot_fig3(table: pd.DataFrame, correlations: pd.DataFrame, path: str | Path) -> Path:
    """The three scatters of Fig. 3: accuracy on the inpainted val images vs each score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hsi.io import atomic_write_bytes

    stats_of = correlations.set_index("score")
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.6), sharey=True)
    for ax, score in zip(axes, SCORES, strict=True):
        ax.scatter(table[score], table["accuracy"], s=12, alpha=0.7)
        row = stats_of.loc[score]
        ax.set_title(f"τ = {row['kendall_tau']:.3f}, ρ = {row['spearman_rho']:.3f}", fontsize=10)
        ax.set_xlabel(SCORE_LABELS[score])
    axes[0].set_ylabel("accuracy on inpainted val images")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_correlations(
    accuracy: pd.DataFrame, scores: pd.DataFrame, split: str, out: str | Path
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """correlation.csv and fig3_correlation.png in `out`; returns the table and the paths."""
    out = Path(out)
    table = joined(accuracy, scores, split)
    correlations = correlation_table(table)
    written = {
        "correlation": atomic_write_csv(out / CORRELATION_FILE, correlations),
        "figure": plot_fig3(table, correlations, out / FIGURE_FILE),
    }
    return correlations, written


def format_table(correlations: pd.DataFrame) -> str:
    """The correlation table as aligned text lines (what hsi-analyze prints)."""
    lines = [f"{'score':<14}{'n':>5}{'tau_b':>9}{'p':>9}{'rho':>9}{'p':>9}"]
    for row in correlations.itertuples(index=False):
        lines.append(
            f"{row.score:<14}{row.n:>5}{row.kendall_tau:>9.3f}{row.kendall_p:>9.3g}"
            f"{row.spearman_rho:>9.3f}{row.spearman_p:>9.3g}"
        )
    return "\n".join(lines)
