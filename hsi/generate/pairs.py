"""Foreground/background class pairs of Hard-Spurious-ImageNet-v2 (paper 000, §4).

In v2 the R backgrounds of a foreground class always come from one paired class whose
background alone is highly predictive ("spurious"), while the foreground classes are those a
model cannot guess from the background ("core-reliant"). Both are chosen from a per-class
background-only accuracy table: high accuracy = spurious, low accuracy = core-reliant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from hsi.io import atomic_write_csv

if TYPE_CHECKING:
    from hsi.generate.spec import DatasetSpec
    from hsi.sources.record import SourceIndex

# (wnid, name) of the paper's 10 foreground classes, in the paper's order.
PAPER_V2_FOREGROUNDS: tuple[tuple[str, str], ...] = (
    ("n02088632", "bluetick"),
    ("n01669191", "box turtle"),
    ("n02085620", "Chihuahua"),
    ("n02085782", "Japanese spaniel"),
    ("n02085936", "Maltese dog"),
    ("n02086240", "Shih-Tzu"),
    ("n02086646", "Blenheim spaniel"),
    ("n02086910", "papillon"),
    ("n02087394", "Rhodesian ridgeback"),
    ("n02088238", "basset"),
)

# (wnid, name) of the spurious background classes, in the paper's order. The paper says it picks
# 10 but names 11; the pairing below follows the order of both lists, so the 11th (yellow lady's
# slipper) is listed for the record and left unused.
PAPER_V2_BACKGROUNDS: tuple[tuple[str, str], ...] = (
    ("n04251144", "snorkel"),
    ("n02860847", "bobsled"),
    ("n03733131", "maypole"),
    ("n03992509", "potter's wheel"),
    ("n03447447", "gondola"),
    ("n02817516", "bearskin"),
    ("n04540053", "volleyball"),
    ("n02802426", "basketball"),
    ("n02951358", "canoe"),
    ("n09288635", "geyser"),
    ("n12057211", "yellow lady's slipper"),
)

PAPER_V2_PAIRS: dict[str, str] = {
    fg: bg for (fg, _), (bg, _) in zip(PAPER_V2_FOREGROUNDS, PAPER_V2_BACKGROUNDS[:10], strict=True)
}

ACCURACY_COLUMNS = ("wnid", "accuracy")
PAIR_COLUMNS = ("fg_wnid", "bg_wnid")


def select_pairs(
    bg_accuracy: pd.DataFrame,
    n_fg: int = 10,
    n_bg: int = 10,
    exclude: Iterable[str] = (),
) -> dict[str, str]:
    """Pair the most core-reliant classes with the most spurious ones.

    `bg_accuracy` has one row per class with columns `wnid` and `accuracy` (a model's accuracy
    on that class's inpainted, object-free images). Spurious = the `n_bg` highest accuracies;
    core-reliant = the `n_fg` lowest among the rest; ties go to the smaller wnid. The i-th most
    core-reliant class is paired with the i-th most spurious one. Classes in `exclude` are never
    chosen. Returns {fg_wnid: bg_wnid} in pairing order.
    """
    _check_columns(bg_accuracy, ACCURACY_COLUMNS, "the accuracy table")
    if n_fg < 1 or n_bg < n_fg:
        raise ValueError(
            f"need 1 <= n_fg <= n_bg to pair every foreground; got n_fg={n_fg}, n_bg={n_bg}"
        )
    table = bg_accuracy.loc[:, list(ACCURACY_COLUMNS)].copy()
    table["wnid"] = table["wnid"].astype(str)
    duplicated = sorted(set(table.loc[table["wnid"].duplicated(), "wnid"]))
    if duplicated:
        raise ValueError(f"the accuracy table lists these classes more than once: {duplicated}")
    missing = sorted(table.loc[table["accuracy"].isna(), "wnid"])
    if missing:
        raise ValueError(f"the accuracy table has no accuracy for: {missing}")
    table = table[~table["wnid"].isin(set(exclude))]
    if len(table) < n_fg + n_bg:
        raise ValueError(
            f"need {n_fg} foreground + {n_bg} background classes but only {len(table)} "
            "classes are left after `exclude`"
        )
    spurious = table.sort_values(["accuracy", "wnid"], ascending=[False, True]).head(n_bg)
    rest = table[~table["wnid"].isin(set(spurious["wnid"]))]
    core = rest.sort_values(["accuracy", "wnid"], ascending=[True, True]).head(n_fg)
    return dict(zip(core["wnid"], spurious["wnid"].head(len(core)), strict=True))


def read_accuracy_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-class background-only accuracy table (columns wnid, accuracy; others kept)."""
    table = pd.read_csv(path, dtype={"wnid": str})
    _check_columns(table, ACCURACY_COLUMNS, str(path))
    accuracy = pd.to_numeric(table["accuracy"], errors="coerce")
    bad = table.loc[accuracy.isna() & table["accuracy"].notna(), "wnid"].tolist()
    if bad:
        raise ValueError(f"{path}: column 'accuracy' is not a number for {bad}")
    table["accuracy"] = accuracy
    return table


def write_pairs_csv(pairs: Mapping[str, str], path: str | os.PathLike) -> None:
    """Write pairs as CSV with columns fg_wnid, bg_wnid (one row per pair, in the mapping's order)."""
    frame = pd.DataFrame(list(pairs.items()), columns=list(PAIR_COLUMNS))
    atomic_write_csv(path, frame)


def read_pairs_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read a file written by `write_pairs_csv` back into {fg_wnid: bg_wnid}."""
    table = pd.read_csv(path, dtype=str)
    _check_columns(table, PAIR_COLUMNS, str(path))
    repeated = sorted(set(table.loc[table["fg_wnid"].duplicated(), "fg_wnid"]))
    if repeated:
        raise ValueError(f"{path}: each foreground class may have one pair; repeated: {repeated}")
    return dict(zip(table["fg_wnid"], table["bg_wnid"], strict=True))


def _check_columns(table: pd.DataFrame, required: Iterable[str], where: str) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing}; expected columns {list(required)}, "
            f"found {list(table.columns)}"
        )


def resolve_pairs(spec: DatasetSpec, index: SourceIndex) -> dict[str, str] | None:
    """v2 pairs {fg_wnid: bg_wnid}: from `pairs_from` (an accuracy CSV) if set, else `pairs`.

    `pairs` is null (v1), `paper` (the paper's 10 ImageNet pairs) or an explicit mapping.
    """
    if spec.pairs_from:
        if not Path(spec.pairs_from).is_file():
            raise FileNotFoundError(
                f"dataset.pairs_from={spec.pairs_from}: file not found; give a CSV with columns "
                "wnid,accuracy (per-class background-only accuracy)"
            )
        n = spec.pairs_count
        return select_pairs(read_accuracy_csv(spec.pairs_from), n_fg=n, n_bg=n)
    pairs = spec.pairs
    if pairs is None:
        return None
    if pairs == "paper":
        missing = sorted((set(PAPER_V2_PAIRS) | set(PAPER_V2_PAIRS.values())) - set(index.wnids))
        if missing:
            raise ValueError(
                f"dataset.pairs=paper names ImageNet classes this source lacks ({len(missing)}, e.g. "
                f"{missing[:3]}); on another source set dataset.pairs={{fg_wnid: bg_wnid, ...}} or "
                "dataset.pairs_from=<background-accuracy CSV>"
            )
        return dict(PAPER_V2_PAIRS)
    if isinstance(pairs, str):
        raise ValueError(
            f"dataset.pairs must be null, 'paper' or a mapping fg_wnid: bg_wnid, got {pairs!r}"
        )
    return {str(k): str(v) for k, v in dict(pairs).items()}
