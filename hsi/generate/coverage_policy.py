"""The `dataset.coverage` policy per class: `select_images` decides what the recipe takes.

A class with fewer boxed images than the recipe needs (paper 000, §4; its Limitations note that
unboxed images were not used) gets `error` (stop, naming the class and the numbers), `reuse`
(repeat some of its images, rows marked `reused`), `drop` (leave the class out) or `detect`
(boxes for some of its unboxed images from a detector, then `fallback` for what is still short).
It reads the index only; hsi.generate.coverage runs the detector and writes `hsi-generate plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from hsi.generate.counts import SPLITS, RecipeCounts
from hsi.generate.draws import Drawn, records_by_class, select_class
from hsi.generate.selection import ClassCoverage, Selection
from hsi.groups import Group, default_sizes, make_groups
from hsi.io import item_rng
from hsi.sources.record import Box, ImageRecord, SourceIndex

POLICIES = ("error", "reuse", "drop", "detect")  # what a class short of boxed images gets
FALLBACKS = ("error", "reuse", "drop")  # after `detect`, for a class still short
# detect(candidates in the order to try, how many boxes are wanted) -> {image key: box} of the
# candidates given a box above the score threshold (at least the first `wanted` such, in order)
DetectFn = Callable[[list[ImageRecord], int], Mapping[str, Box]]


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

    by_class = {src: records_by_class(index, src) for src in ("train", "val")}
    unboxed = {src: records_by_class(index, src, boxed=False) for src in ("train", "val")}
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
            picked, problem = select_class(
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


def _describe(
    wnid: str, names: dict[str, str], pairs: dict[str, str] | None, chosen: list[str]
) -> str:
    label = f"{wnid} ({names.get(wnid, '?')})"
    if wnid in chosen:
        return f"class {label} "
    fgs = ", ".join(f"{f} ({names.get(f, '?')})" for f, b in (pairs or {}).items() if b == wnid)
    return f"background class {label}, paired with {fgs}, "
