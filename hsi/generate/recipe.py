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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

from hsi.groups import Group, default_sizes, make_groups
from hsi.io import item_rng
from hsi.sources.record import Box, ImageRecord, SourceIndex

SPLITS = ("train", "val", "test")
SOURCE_SPLIT = {"train": "train", "val": "train", "test": "val"}  # HSI split -> source split
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

Drawn = tuple[ImageRecord, bool]  # a selected image and whether it is a repeat (replacement)
POLICIES = ("error", "reuse", "drop", "detect")  # what a class short of boxed images gets
FALLBACKS = ("error", "reuse", "drop")  # after `detect`, for a class still short
ANNOTATION = "annotation"  # box_source of a box read from the source's annotations
# detect(candidates in the order to try, how many boxes are wanted) -> {image key: box} of the
# candidates given a box above the score threshold (at least the first `wanted` such, in order)
DetectFn = Callable[[list[ImageRecord], int], Mapping[str, Box]]


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
            pool = _Pool.of(r for w in owners for r, _ in self.selected[split][w])
            for label, wnid in enumerate(self.labelled):
                drawn = self.selected[split][wnid]
                for group, k, (fg, reused) in _assign(split, self.groups, self.counts, drawn):
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


def select_images(
    index: SourceIndex,
    *,
    seed: int,
    sizes: Sequence[int] | None = None,
    counts: RecipeCounts | None = None,
    classes: Sequence[str] | None = None,
    pairs: Mapping[str, str] | None = None,
    resolution: int | None = None,
    coverage: str = "error",
    fallback: str = "error",
    detect: DetectFn | None = None,
    detector_name: str = "detector",
) -> Selection:
    """Which images every class gives every split, under the `coverage` policy.

    Reads only the index (no image): `hsi-generate plan` calls it as the build does. With
    `coverage="detect"` and no `detect` function (a plan that runs no detector), a short class
    is planned with its annotated images alone, under `fallback`.
    """
    for key, value, allowed in (
        ("coverage", coverage, POLICIES),
        ("coverage_fallback", fallback, FALLBACKS),
    ):
        if value not in allowed:
            raise ValueError(f"dataset.{key}={value!r}: must be one of {', '.join(allowed)}")
    counts = counts or RecipeCounts()
    groups = _resolve_groups(sizes, resolution)
    chosen, pairs = _resolve_classes(index, classes, pairs)
    names = {c.wnid: c.name for c in index.classes}
    needs = {s: counts.images_needed(s, groups) for s in SPLITS}

    by_class = {src: _records_by_class(index, src) for src in ("train", "val")}
    unboxed = {src: _records_by_class(index, src, boxed=False) for src in ("train", "val")}
    wanted = sorted(set(chosen) | set((pairs or {}).values()))
    picked_by: dict[tuple[str, str], dict[str, list[Drawn]]] = {}
    rows: list[dict] = []
    detected: dict[str, tuple[Box, str]] = {}
    short: dict[str, str] = {}  # class -> the part of its problem message (drop or error)
    problems = []
    for wnid in wanted:
        for src, parts in (("train", ("train", "val")), ("val", ("test",))):
            records = by_class[src].get(wnid, [])
            candidates = unboxed[src].get(wnid, [])
            boxed, found = len(records), 0
            part_needs = {p: needs[p] for p in parts}
            total = sum(part_needs.values())
            action, policy = "ok", coverage
            if boxed < total and coverage == "detect":
                action, policy = "detect", fallback
                if detect is not None and candidates:
                    order = item_rng(seed, "detect", src, wnid).permutation(len(candidates))
                    tried = [candidates[i] for i in order]
                    boxes = detect(tried, total - boxed)
                    kept = [r for r in tried if r.key in boxes][: total - boxed]
                    detected.update({r.key: (tuple(boxes[r.key]), detector_name) for r in kept})
                    records = sorted(
                        records + [replace(r, boxes=(tuple(boxes[r.key]),)) for r in kept],
                        key=lambda r: r.key,
                    )
                    found = len(kept)
            picked, problem = _select(
                records,
                part_needs,
                seed=seed,
                source_split=src,
                wnid=wnid,
                replacement=policy == "reuse",
                detected=found,
            )
            if len(records) < total:
                action = policy if action == "ok" else f"{action}+{policy}"
                if policy == "drop":
                    short[wnid] = _describe(wnid, names, pairs, chosen) + (problem or "")
                    picked, problem = {}, None
            if problem:
                problems.append(_describe(wnid, names, pairs, chosen) + problem)
            picked_by[(wnid, src)] = picked
            for part in parts:
                drawn = picked.get(part, [])
                rows.append(
                    dict(
                        wnid=wnid,
                        name=names.get(wnid, "?"),
                        role="label" if wnid in chosen else "background",
                        split=part,
                        source_split=src,
                        boxed=boxed,
                        unboxed=len(candidates),
                        detected=sum(r.key in detected for r, reused in drawn if not reused),
                        needed=part_needs[part],
                        takes=sum(not reused for _, reused in drawn),
                        repeats=sum(reused for _, reused in drawn)
                        * (len(groups) if part == "test" else 1),
                        action=action,
                    )
                )

    dropped: dict[str, str] = {}
    for wnid in chosen:
        if wnid in short:
            dropped[wnid] = "short of boxed images"
        elif pairs and pairs[wnid] in short:
            dropped[wnid] = f"its background class {pairs[wnid]} is short of boxed images"
    labelled = [w for w in chosen if w not in dropped]
    if dropped and len(labelled) < (1 if pairs else 2):
        problems.append(
            f"dataset.coverage=drop leaves {len(labelled)} of {len(chosen)} labelled classes "
            f"({', '.join(dropped)} are short); the recipe needs at least {1 if pairs else 2}: "
            "lower dataset.counts.* or use dataset.coverage=reuse"
        )
    selected: dict[str, dict[str, list[Drawn]]] = {s: {} for s in SPLITS}
    for (wnid, _src), picked in picked_by.items():
        for part, drawn in picked.items():
            selected[part][wnid] = drawn
    # Only the images of kept classes are used; a class left out gives nothing, not even R
    # backgrounds (it is listed with action `dropped: ...`).
    used = set(labelled) | ({pairs[w] for w in labelled} if pairs else set())
    coverage_rows = []
    for row in rows:
        wnid, kept = row["wnid"], row["wnid"] in used
        if not kept:
            why = dropped.get(wnid) or (
                "short of boxed images" if wnid in short else "its classes are left out"
            )
            row = {**row, "takes": 0, "repeats": 0, "detected": 0, "action": f"dropped: {why}"}
        samples = 0
        if row["role"] == "label" and kept:
            samples = sum(counts.per_group(row["split"], g.category) for g in groups)
        coverage_rows.append(ClassCoverage(**row, samples=samples))
    for part in SPLITS:
        selected[part] = {w: d for w, d in selected[part].items() if w in used}
    used_keys = {r.key for part in SPLITS for d in selected[part].values() for r, _ in d}
    return Selection(
        seed=seed,
        groups=groups,
        counts=counts,
        labelled=labelled,
        pairs={w: pairs[w] for w in labelled} if pairs else None,
        selected=selected,
        coverage=coverage_rows,
        policy=coverage,
        fallback=fallback,
        dropped=dropped,
        problems=problems,
        detected={k: v for k, v in detected.items() if k in used_keys},
    )


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


# --------------------------------------------------------------------------------------------
def _resolve_groups(sizes: Sequence[int] | None, resolution: int | None) -> list[Group]:
    if sizes is None:
        if resolution is None:
            raise ValueError(
                "build_recipe needs `sizes` (small to large) or `resolution` to derive them"
            )
        sizes = default_sizes(resolution)
    groups = make_groups(tuple(sizes))
    if resolution is not None and max(g.size for g in groups) > resolution:
        raise ValueError(f"sizes {tuple(sizes)} do not fit in images of {resolution} px")
    return groups


def _resolve_classes(
    index: SourceIndex, classes: Sequence[str] | None, pairs: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str] | None]:
    """Sorted labelled classes, and the pairs restricted to them (v2) or None (v1)."""
    known = set(index.wnids)
    if classes is None:
        chosen = sorted(pairs) if pairs else sorted(known)
    else:
        chosen = sorted({str(w) for w in classes})
        if len(chosen) != len(classes):
            raise ValueError(f"dataset.classes lists a class twice: {list(classes)}")
    unknown = [w for w in chosen if w not in known]
    if unknown:
        raise ValueError(f"classes not in the source's class list: {unknown}")
    if pairs is None:
        if len(chosen) < 2:
            raise ValueError(
                f"R backgrounds come from another class, so at least 2 classes are needed; got {chosen}"
            )
        return chosen, None
    unpaired = [w for w in chosen if w not in pairs]
    if unpaired:
        raise ValueError(f"dataset.pairs gives no background class for {unpaired}")
    used = {w: str(pairs[w]) for w in chosen}
    not_in_source = sorted({b for b in used.values() if b not in known})
    if not_in_source:
        raise ValueError(
            f"background classes of dataset.pairs not in the source's class list: {not_in_source}"
        )
    labelled = sorted({b for b in used.values() if b in set(chosen)})
    if labelled:
        raise ValueError(f"background classes must not be labelled classes too: {labelled}")
    return chosen, used


def _records_by_class(
    index: SourceIndex, source_split: str, boxed: bool = True
) -> dict[str, list[ImageRecord]]:
    """Boxed (or unboxed) records of a source split per class, sorted by key: independent of
    index order."""
    out: dict[str, list[ImageRecord]] = {}
    for r in index.split(source_split, with_boxes=False):
        if r.has_boxes == boxed:
            out.setdefault(r.wnid, []).append(r)
    return {w: sorted(rs, key=lambda r: r.key) for w, rs in out.items()}


def _select(
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


def _assign(
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


def _describe(
    wnid: str, names: dict[str, str], pairs: dict[str, str] | None, chosen: list[str]
) -> str:
    label = f"{wnid} ({names.get(wnid, '?')})"
    if wnid in chosen:
        return f"class {label} "
    fgs = ", ".join(f"{f} ({names.get(f, '?')})" for f, b in (pairs or {}).items() if b == wnid)
    return f"background class {label}, paired with {fgs}, "


@dataclass
class _Pool:
    """Distinct images of one HSI split sorted by (wnid, key): each class is one contiguous block."""

    records: list[ImageRecord]
    blocks: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, records) -> _Pool:
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
