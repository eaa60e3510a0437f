"""Ranks within each class and the bot / mid / top / rnd subsets of a ranking (paper 004, §3).

Convention (the paper's): the detector's confidence that the class's object is visible is the
*opposite* of spuriousness, so images are ranked by **descending score**: rank 0 holds the highest
score (least spurious). ``bot``-k takes ranks 0..k-1 (lowest spuriousness rank = highest score),
``top``-k the last k ranks (most spurious), ``mid``-k the k ranks centred on the middle and
``rnd``-k k images drawn uniformly (seeded per class and k). Ties in score are broken by the
image key (ascending), so a ranking never depends on the order the scores were computed in.

A class with fewer than k images gives all of them to every subset; with fewer than 2k images
bot and top (and mid) share images: :func:`overlaps` reports how many.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from hsi.io import item_rng

KINDS = ("bot", "mid", "top", "rnd")
CONVENTION = (
    "rank 0 = highest detector score = least spurious; bot-k = ranks 0..k-1 (highest scores), "
    "top-k = the k highest ranks (lowest scores, most spurious)"
)


def rank_within_class(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` (columns ``key``, ``label``, ``score``) with ``rank`` (0-based, per class, by
    descending score, ties by ascending key) and ``class_size``; rows sorted by (label, rank)."""
    missing = {"key", "label", "score"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores need columns key, label, score; missing {sorted(missing)}")
    if scores["score"].isna().any():
        bad = scores.loc[scores["score"].isna(), "key"].head(3).tolist()
        raise ValueError(
            f"scores: {int(scores['score'].isna().sum())} images have no score, e.g. {bad}"
        )
    if scores["key"].duplicated().any():
        raise ValueError("scores: an image key appears twice; score each image once")
    ranked = scores.sort_values(
        ["label", "score", "key"], ascending=[True, False, True], kind="mergesort"
    ).reset_index(drop=True)
    ranked["rank"] = ranked.groupby("label").cumcount().astype(np.int64)
    ranked["class_size"] = ranked.groupby("label")["key"].transform("size").astype(np.int64)
    return ranked


def subset_ranks(kind: str, k: int, n: int, seed: int = 0, label: int = 0) -> np.ndarray:
    """The ranks (sorted) that subset ``kind``-``k`` takes from a class of ``n`` images."""
    if kind not in KINDS:
        raise ValueError(f"subset kind {kind!r} must be one of {KINDS}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = min(k, n)
    if kind == "bot":
        return np.arange(m)
    if kind == "top":
        return np.arange(n - m, n)
    if kind == "mid":
        start = (n - m) // 2
        return np.arange(start, start + m)
    return np.sort(item_rng(seed, "rank-rnd", label, k).choice(n, size=m, replace=False))


def select(ranked: pd.DataFrame, kind: str, k: int, seed: int = 0) -> pd.DataFrame:
    """The rows of ``ranked`` (from :func:`rank_within_class`) in subset ``kind``-``k``."""
    parts = []
    for label, rows in ranked.groupby("label", sort=True):
        ranks = subset_ranks(kind, k, len(rows), seed, int(label))
        parts.append(rows[rows["rank"].isin(ranks)])
    return pd.concat(parts).reset_index(drop=True) if parts else ranked.iloc[:0]


def subset_name(kind: str, k: int) -> str:
    return f"{kind}-{k}"


def subsets(
    ranked: pd.DataFrame, kinds: Sequence[str], ks: Iterable[int], seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Every ``kind``-``k`` subset, keyed by :func:`subset_name` (k outer, kind inner)."""
    return {
        subset_name(kind, int(k)): select(ranked, kind, int(k), seed) for k in ks for kind in kinds
    }


def membership(chosen: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table ``subset, kind, k, key, label, rank, score``: what each subset holds."""
    rows = []
    for name, frame in chosen.items():
        kind, _, k = name.partition("-")
        part = frame[["key", "label", "rank", "score"]].copy()
        part.insert(0, "k", int(k))
        part.insert(0, "kind", kind)
        part.insert(0, "subset", name)
        rows.append(part)
    return pd.concat(rows).reset_index(drop=True)


def overlaps(ranked: pd.DataFrame, ks: Iterable[int], seed: int = 0) -> pd.DataFrame:
    """Per k and class with fewer than 2k images: its size and the images the subsets share.

    Columns ``k, label, class_size, short`` (fewer than k images: every subset is the whole
    class) and ``bot_top, bot_mid, mid_top, bot_rnd, top_rnd`` (shared images). Empty when
    every class has at least 2k images.
    """
    rows = []
    sizes = ranked.groupby("label")["key"].size()
    for k in ks:
        k = int(k)
        for label, n in sizes.items():
            if n >= 2 * k:
                continue
            sets = {
                kind: set(subset_ranks(kind, k, int(n), seed, int(label)).tolist())
                for kind in KINDS
            }
            row = {"k": k, "label": int(label), "class_size": int(n), "short": bool(n < k)}
            for a, b in (
                ("bot", "top"),
                ("bot", "mid"),
                ("mid", "top"),
                ("bot", "rnd"),
                ("top", "rnd"),
            ):
                row[f"{a}_{b}"] = len(sets[a] & sets[b])
            rows.append(row)
    columns = [
        "k",
        "label",
        "class_size",
        "short",
        "bot_top",
        "bot_mid",
        "mid_top",
        "bot_rnd",
        "top_rnd",
    ]
    return pd.DataFrame(rows, columns=columns)
