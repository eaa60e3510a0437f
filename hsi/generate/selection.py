"""The selection record: the images each class gives each HSI split, and the coverage decisions.

`Selection.recipe()` turns it into the recipe rows (columns `COLUMNS`), drawing each R
background per sample; `Selection.table()` is the per-class plan (`ClassCoverage` rows).
`hsi.generate.coverage_policy.select_images` makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from hsi.generate.counts import SPLITS, RecipeCounts
from hsi.generate.draws import BackgroundPool, Drawn, assign_groups
from hsi.groups import Group
from hsi.io import item_rng
from hsi.sources.record import Box

COLUMNS = (
    "sample_id",
    "split",
    "label",
    "wnid",
    "source_label",
    "group_id",
    "group",
    "placement",
    "size",
    "position",
    "background",
    "category",
    "fg_image",
    "bg_image",
    "bg_wnid",
    "reused",
    "box_source",
)
DTYPES = {
    "label": "int64",
    "source_label": "int64",
    "group_id": "int64",
    "size": "int64",
    "reused": "bool",
}
ANNOTATION = "annotation"  # box_source of a box read from the source's annotations


@dataclass(frozen=True)
class ClassCoverage:
    """What the recipe takes from one class for one HSI split (a row of `hsi-generate plan`)."""

    wnid: str
    name: str
    role: str  # label | background (a v2 background class, never labelled)
    split: str  # HSI split: train | val | test
    source_split: str  # the source split its images come from
    boxed: int  # images of the class with an annotation box in the source split
    unboxed: int  # images without one
    detected: int  # unboxed images given a detector box (used by the recipe)
    needed: int  # distinct images the split needs from the class (of the source split's total)
    takes: int  # distinct images it takes
    repeats: int  # recipe rows that repeat an image (reuse)
    samples: int  # recipe rows of the class in the split (0: a background class, or dropped)
    action: str  # ok | reuse | drop | detect | detect+reuse | detect+drop | error | dropped: <why>


@dataclass
class Selection:
    """The images each class gives each HSI split, and every coverage decision taken."""

    seed: int
    groups: list[Group]
    counts: RecipeCounts
    labelled: list[str]  # labelled classes kept, sorted (their index is the label)
    pairs: dict[str, str] | None
    selected: dict[str, dict[str, list[Drawn]]]
    coverage: list[ClassCoverage]
    policy: str
    fallback: str = "error"
    dropped: dict[str, str] = field(default_factory=dict)  # labelled class -> why it was left out
    problems: list[str] = field(default_factory=list)  # why a build stops (empty: it goes on)
    detected: dict[str, tuple[Box, str]] = field(default_factory=dict)  # key -> (box, source)

    def check(self) -> None:
        if self.problems:
            raise ValueError(
                "the source has too few boxed images for this recipe:\n  "
                + "\n  ".join(self.problems)
            )

    def box_source(self, key: str) -> str:
        return self.detected[key][1] if key in self.detected else ANNOTATION

    def recipe(self) -> pd.DataFrame:
        """The recipe rows (raises ValueError when the selection has problems)."""
        self.check()
        rows = []
        for split in SPLITS:
            owners = set(self.pairs[w] for w in self.labelled) if self.pairs else self.labelled
            pool = BackgroundPool.of(r for w in owners for r, _ in self.selected[split][w])
            for label, wnid in enumerate(self.labelled):
                drawn = self.selected[split][wnid]
                for group, k, (fg, reused) in assign_groups(split, self.groups, self.counts, drawn):
                    sample_id = f"{split}-{wnid}-{group.name}-{k:03d}"
                    if group.background == "O":
                        bg = fg
                    else:
                        rng = item_rng(self.seed, "background", sample_id)
                        bg = (
                            pool.draw_from(self.pairs[wnid], rng)
                            if self.pairs
                            else pool.draw_other(wnid, rng)
                        )
                    rows.append(
                        (
                            sample_id,
                            split,
                            label,
                            wnid,
                            fg.label,
                            group.id,
                            group.name,
                            group.placement,
                            group.size,
                            group.position,
                            group.background,
                            group.category,
                            fg.key,
                            bg.key,
                            bg.wnid,
                            reused,
                            self.box_source(fg.key),
                        )
                    )
        return pd.DataFrame(rows, columns=list(COLUMNS)).astype(DTYPES)

    def table(self) -> pd.DataFrame:
        """One row per class and HSI split (`ClassCoverage`), sorted by (wnid, split)."""
        frame = pd.DataFrame([c.__dict__ for c in self.coverage])
        if frame.empty:
            return pd.DataFrame(columns=list(ClassCoverage.__dataclass_fields__))
        order = frame["split"].map({s: i for i, s in enumerate(SPLITS)})
        frame = frame.assign(_o=order).sort_values(["wnid", "_o"], kind="stable")
        return frame.drop(columns="_o").reset_index(drop=True)
