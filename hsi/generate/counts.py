"""How many samples the recipe holds: HSI splits, samples per class and group (paper 000, §4).

HSI train and val come from the source's train split, HSI test from its val split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from hsi.groups import Group

SPLITS = ("train", "val", "test")
SOURCE_SPLIT = {"train": "train", "val": "train", "test": "val"}  # HSI split -> source split


@dataclass(frozen=True)
class RecipeCounts:
    """Samples per class and group: train by category, val and test per group (paper's values)."""

    train_easy: int = 80
    train_medium: int = 10
    train_hard: int = 10
    val: int = 20
    test: int = 50

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"dataset.counts.{f.name} must be an integer >= 0, got {value!r}")

    def per_group(self, split: str, category: str) -> int:
        if split == "train":
            return {"easy": self.train_easy, "medium": self.train_medium, "hard": self.train_hard}[
                category
            ]
        return self.val if split == "val" else self.test

    def images_needed(self, split: str, groups: Sequence[Group]) -> int:
        """Distinct source images one class needs for `split` (test images repeat over groups)."""
        if split == "test":
            return self.test
        return sum(self.per_group(split, g.category) for g in groups)
