"""The Hard-Spurious-ImageNet recipe: one deterministic row per sample (paper 000, §4).

The recipe says, for every sample, which source image gives the core object (`fg_image`),
which gives the background (`bg_image`), and in which of the 12 groups it is pasted. Assets
(inpainted backgrounds, crops) are built per source image elsewhere; recipe + assets = dataset.

Sampling rules:
- HSI train and val come from the source's train split, from disjoint images; HSI test from the
  source's val split, each test image appearing in all 12 groups.
- Per class, one seeded permutation of its sorted boxed images, `item_rng(seed, "recipe",
  source_split, wnid)`; train takes the first slice, val the next. So the train rows do not
  depend on the val count, and nothing depends on the order of `index.records`.
- Box coverage (a source whose images are not all boxed, as ImageNet's train split): a class
  with fewer boxed images than the recipe needs is handled by the `coverage` policy: `error`
  (stop, naming the class and the numbers), `reuse` (repeat some of its images, rows marked
  `reused`), `drop` (leave the class out), `detect` (boxes for some of its unboxed images from a
  detector, then `fallback` for what is still short). `box_source` records, per sample, where
  the core object's box came from: `annotation` or the detector's name. `select_images` makes
  these decisions once, for the recipe and for `hsi-generate plan` alike.
- An R background is drawn per sample with `item_rng(seed, "background", sample_id)`, uniformly
  from the distinct images of the other classes in the same HSI split (v1), or from the paired
  class's images of that split (v2). A draw depends on the pool, never on another sample's draw.

Where: hsi.generate.counts (splits, samples per class and group), hsi.generate.draws (one
class's seeded slices, reuse, group assignment, the background pool), hsi.generate.selection
(the selected images and the rows they make), hsi.generate.coverage_policy (`select_images`).
This module keeps the entry points and re-exports the public names of those modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from hsi.generate.counts import SOURCE_SPLIT, SPLITS, RecipeCounts
from hsi.generate.coverage_policy import FALLBACKS, POLICIES, DetectFn, select_images
from hsi.generate.draws import Drawn
from hsi.generate.selection import ANNOTATION, COLUMNS, DTYPES, ClassCoverage, Selection
from hsi.sources.record import SourceIndex

__all__ = [
    "ANNOTATION",
    "COLUMNS",
    "DTYPES",
    "FALLBACKS",
    "POLICIES",
    "SOURCE_SPLIT",
    "SPLITS",
    "ClassCoverage",
    "DetectFn",
    "Drawn",
    "RecipeCounts",
    "Selection",
    "build_recipe",
    "needed_images",
    "select_images",
    "summarize",
]


def build_recipe(
    index: SourceIndex,
    *,
    seed: int,
    sizes: Sequence[int] | None = None,
    counts: RecipeCounts | None = None,
    classes: Sequence[str] | None = None,
    pairs: Mapping[str, str] | None = None,
    replacement: bool = False,
    resolution: int | None = None,
    coverage: str | None = None,
    fallback: str = "error",
    detect: DetectFn | None = None,
    detector_name: str = "detector",
) -> pd.DataFrame:
    """The recipe table: columns `COLUMNS`, rows sorted by (split, wnid, group_id, k).

    `classes` are the labelled classes (default: every class of the source, or the keys of
    `pairs`); `label` is the index in their sorted list (classes left out by `drop` excluded).
    With `pairs` (v2) the R backgrounds of class c come from class `pairs[c]`, which is not a
    label. `sizes` small to large, default `default_sizes(resolution)`. A class with too few
    boxed images is handled by `coverage` (module docstring; default `error`, which raises
    ValueError; `replacement=True` is the old spelling of `coverage="reuse"`).
    """
    return select_images(
        index,
        seed=seed,
        sizes=sizes,
        counts=counts,
        classes=classes,
        pairs=pairs,
        resolution=resolution,
        coverage=_policy(coverage, replacement),
        fallback=fallback,
        detect=detect,
        detector_name=detector_name,
    ).recipe()


def _policy(coverage: str | None, replacement: bool) -> str:
    if coverage is None:
        return "reuse" if replacement else "error"
    if replacement and coverage != "reuse":
        raise ValueError(
            f"dataset.replacement=true is the old spelling of dataset.coverage=reuse and "
            f"contradicts dataset.coverage={coverage}; remove dataset.replacement"
        )
    return coverage


def summarize(recipe: pd.DataFrame) -> pd.DataFrame:
    """Samples, classes, distinct fg images and reused rows per split x category x group."""
    table = (
        recipe.groupby(["split", "category", "group_id", "group"], sort=False)
        .agg(
            samples=("sample_id", "size"),
            classes=("wnid", "nunique"),
            fg_images=("fg_image", "nunique"),
            reused=("reused", "sum"),
        )
        .reset_index()
    )
    split_order = table["split"].map({s: i for i, s in enumerate(SPLITS)})
    table = table.assign(_order=split_order).sort_values(["_order", "group_id"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def needed_images(recipe: pd.DataFrame) -> list[str]:
    """Sorted keys of every source image the recipe uses (as core or background): these need assets."""
    return sorted(set(recipe["fg_image"]) | set(recipe["bg_image"]))
