"""One class's draws: which of its images each HSI split takes, and the R-background pool.

Per class, one seeded permutation of its sorted boxed images, `item_rng(seed, "recipe",
source_split, wnid)`: train takes the first slice, val the next (paper 000, §4). With `reuse` a
short class repeats some of its own images per split. An R background is drawn uniformly from a
`BackgroundPool` of distinct images (another class's in v1, the paired class's in v2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hsi.generate.counts import RecipeCounts
from hsi.groups import Group
from hsi.io import item_rng
from hsi.sources.record import ImageRecord, SourceIndex

Drawn = tuple[ImageRecord, bool]  # a selected image and whether it is a repeat (replacement)


def records_by_class(
    index: SourceIndex, source_split: str, boxed: bool = True
) -> dict[str, list[ImageRecord]]:
    """Boxed (or unboxed) records of a source split per class, sorted by key: independent of
    index order."""
    out: dict[str, list[ImageRecord]] = {}
    for r in index.split(source_split, with_boxes=False):
        if r.has_boxes == boxed:
            out.setdefault(r.wnid, []).append(r)
    return {w: sorted(rs, key=lambda r: r.key) for w, rs in out.items()}


def select_class(
    records: list[ImageRecord],
    parts: dict[str, int],
    *,
    seed: int,
    source_split: str,
    wnid: str,
    replacement: bool,
    detected: int = 0,
) -> tuple[dict[str, list[Drawn]], str | None]:
    """Consecutive slices of the class's seeded permutation, one per part (train, val | test).

    When short and `replacement`, the distinct images are split between the parts in proportion
    (so train and val stay disjoint) and each part is filled up by drawing again from its own
    images; the repeats are spread over the part by a seeded shuffle, not stacked at its end.
    """
    order = item_rng(seed, "recipe", source_split, wnid).permutation(len(records))
    ordered = [records[i] for i in order]
    total = sum(parts.values())
    detail = " + ".join(f"{n} {p}" for p, n in parts.items())
    boxed = len(ordered) - detected
    found = f" (+ {detected} with a detector box)" if detected else ""
    have = f"has {boxed} boxed {source_split} images{found}; the recipe needs {total} ({detail})"
    if len(ordered) >= total:
        shares = list(parts.values())
    elif not replacement:
        return {}, (
            f"{have}: lower dataset.counts.* or set dataset.coverage=reuse|drop|detect "
            "(`hsi-generate plan` shows what each would do)"
        )
    else:
        shares = _shares(len(ordered), list(parts.values()))
        if shares is None:
            return (
                {},
                f"{have}; even with dataset.coverage=reuse each of {detail} needs a distinct image of its own",
            )
    out, start = {}, 0
    for (part, n), share in zip(parts.items(), shares, strict=True):
        own = ordered[start : start + share]
        start += share
        drawn: list[Drawn] = [(r, False) for r in own]
        if share < n:
            rng = item_rng(seed, "replacement", part, wnid)
            drawn += [(own[i], True) for i in rng.integers(0, share, size=n - share)]
            drawn = [drawn[i] for i in rng.permutation(n)]
        out[part] = drawn
    return out, None


def _shares(available: int, needs: list[int]) -> list[int] | None:
    """Split `available` distinct images over parts in proportion to `needs`, one at least each."""
    active = [i for i, n in enumerate(needs) if n > 0]
    if available < len(active):
        return None
    total = sum(needs)
    shares = [available * n // total for n in needs]
    by_remainder = sorted(active, key=lambda i: (-(available * needs[i] % total), i))
    for i in by_remainder[: available - sum(shares)]:
        shares[i] += 1
    for i in active:
        if shares[i] == 0:
            donor = max(active, key=lambda j: shares[j])
            shares[donor] -= 1
            shares[i] = 1
    return shares


def assign_groups(
    split: str, groups: Sequence[Group], counts: RecipeCounts, drawn: list[Drawn]
) -> list[tuple[Group, int, Drawn]]:
    """(group, k, image) for one class: train/val use each image once, test every image in every group."""
    out, start = [], 0
    for group in groups:
        n = counts.per_group(split, group.category)
        if split == "test":
            out += [(group, k, drawn[k]) for k in range(n)]
        else:
            out += [(group, k, drawn[start + k]) for k in range(n)]
            start += n
    return out


@dataclass
class BackgroundPool:
    """Distinct images of one HSI split sorted by (wnid, key): each class is one contiguous block."""

    records: list[ImageRecord]
    blocks: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, records) -> BackgroundPool:
        unique = sorted({r.key: r for r in records}.values(), key=lambda r: (r.wnid, r.key))
        blocks: dict[str, tuple[int, int]] = {}
        for i, r in enumerate(unique):
            start, _ = blocks.get(r.wnid, (i, i))
            blocks[r.wnid] = (start, i + 1)
        return cls(unique, blocks)

    def draw_other(self, wnid: str, rng: np.random.Generator) -> ImageRecord:
        """Uniform over the images of every class but `wnid`."""
        start, end = self.blocks.get(wnid, (0, 0))
        others = len(self.records) - (end - start)
        if others == 0:
            raise ValueError(f"no image of another class to draw an R background for {wnid}")
        i = int(rng.integers(others))
        return self.records[i if i < start else i + (end - start)]

    def draw_from(self, wnid: str, rng: np.random.Generator) -> ImageRecord:
        """Uniform over the images of class `wnid` (the paired background class in v2)."""
        start, end = self.blocks[wnid]
        return self.records[start + int(rng.integers(end - start))]
