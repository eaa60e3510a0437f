"""Box coverage: the `dataset.coverage` policy's detector step and `hsi-generate plan`.

Real ImageNet has boxes for about 42% of its train images, unevenly per class, while the
paper's recipe takes 640 distinct boxed train images per class (paper 000, §4; its Limitations
note that unboxed images were not used, and App. D audits the boxes against an open-vocabulary
detector). hsi.generate.coverage_policy.select_images decides, per class, what the recipe
takes; this module gives it boxes from a detector (`coverage: detect`) and writes the preflight
plan:

    plan.csv            one row per class and HSI split (hsi.generate.selection.ClassCoverage)
    plan_summary.txt    what the configured policy does, and what each other policy would do

The plan reads the index only (no image is decoded, no detector runs unless `plan.detect=true`),
through the same `select_images` as the build, so its rows are what the build will take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hsi.generate.coverage_policy import POLICIES, DetectFn, select_images
from hsi.generate.pairs import resolve_pairs
from hsi.generate.selection import Selection
from hsi.generate.spec import DatasetSpec
from hsi.io import atomic_write_bytes, atomic_write_text
from hsi.sources.record import Box, ImageRecord, SourceIndex

PLAN_FILE = "plan.csv"
SUMMARY_FILE = "plan_summary.txt"


# ----------------------------------------------------------------------------- detect
def detector_boxes(cfg: DictConfig, spec: DatasetSpec, index: SourceIndex) -> tuple[DetectFn, str]:
    """(detect function for select_images, the name recorded as `box_source`).

    Candidates are tried in the given order in batches, only as many as needed: a class short
    of 30 boxes costs about 30 detections, not one per unboxed image. Detections are cached per
    (detector, image) by hsi.detectors.detect_records, so every shard and a rerun reuse them.
    """
    from hsi.detectors import build_detector, class_prompts, detect_records

    node = OmegaConf.create(spec.detector)
    detector = build_detector(node)
    template = node.get("template")  # the detector node's own, where it has one
    prompts = class_prompts(index.classes, template) if template else class_prompts(index.classes)
    cache = cfg.get("detect_cache") or Path(str(cfg.out)) / "cache" / "detections"
    batch = int(node.get("batch_size", 8) or 8)
    progress = bool(cfg.get("progress", True))

    def detect(records: list[ImageRecord], wanted: int) -> dict[str, Box]:
        found: dict[str, Box] = {}
        start = 0
        while start < len(records) and len(found) < wanted:
            chunk = records[start : start + max(wanted - len(found), batch)]
            results = detect_records(
                detector, chunk, Path(index.root), prompts, Path(cache), batch, progress
            )
            for r in chunk:
                hit = results.get(r.key)  # an image that does not decode has no detection
                if hit is not None and hit.box is not None and hit.score >= spec.min_score:
                    found[r.key] = tuple(float(v) for v in hit.box)
            start += len(chunk)
        return found

    return detect, str(node.get("kind") or detector.name)


def make_selection(cfg: DictConfig, index: SourceIndex, run_detector: bool = True) -> Selection:
    """The images the config's recipe takes (coverage_policy.select_images with its keys).

    `run_detector=False` (a plan): `coverage: detect` plans short classes without detector
    boxes (what `coverage_fallback` would then do).
    """
    spec = DatasetSpec.from_config(cfg.dataset)
    detect, name = None, "detector"
    if spec.coverage == "detect" and run_detector:
        detect, name = detector_boxes(cfg, spec, index)
    return select_images(
        index,
        seed=int(cfg.seed),
        sizes=spec.sizes,
        counts=spec.counts,
        classes=None if spec.classes is None else list(spec.classes),
        pairs=resolve_pairs(spec, index),
        resolution=spec.resolution,
        coverage=spec.coverage,
        fallback=spec.coverage_fallback,
        detect=detect,
        detector_name=name,
    )


def detected_table(selection: Selection) -> pd.DataFrame:
    """The detector boxes the recipe uses: key, box, box_source (saved beside the recipe)."""
    rows = [(key, *box, source) for key, (box, source) in sorted(selection.detected.items())]
    return pd.DataFrame(rows, columns=["key", "xmin", "ymin", "xmax", "ymax", "box_source"])


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """The plan of one configuration: the configured selection and every policy's outcome."""

    selection: Selection
    what_if: dict[str, Selection]  # policy -> its selection (detect: without a detector run)
    seconds: float = 0.0
    detector_ran: bool = False

    def table(self) -> pd.DataFrame:
        return self.selection.table()

    def summary(self) -> str:
        sel = self.selection
        table = self.table()
        short = shortfalls(table)
        labelled = table[table["role"] == "label"]
        lines = [
            f"hsi-generate plan: {labelled['wnid'].nunique()} labelled classes, "
            f"dataset.coverage={sel.policy}; {short['wnid'].nunique()} classes short of boxed "
            f"images (train source split: {int((short['source_split'] == 'train').sum())}, "
            f"val: {int((short['source_split'] == 'val').sum())}) [{self.seconds:.1f} s, index only]",
        ]
        for split in ("train", "val", "test"):
            rows = table[table["split"] == split]
            if rows.empty:
                continue
            lines.append(
                f"  {split:5s}: needs {int(rows['needed'].sum())} distinct images, takes "
                f"{int(rows['takes'].sum())} ({int(rows['detected'].sum())} with detector boxes), "
                f"{int(rows['repeats'].sum())} repeated rows, {int(rows['samples'].sum())} samples"
            )
        lines.append(f"  this configuration: {_outcome(sel, self.detector_ran)}")
        for policy, other in self.what_if.items():
            if policy != sel.policy:
                lines.append(f"  with dataset.coverage={policy}: {_outcome(other, False)}")
        for problem in sel.problems[:20]:
            lines.append(f"  STOPS: {problem}")
        if len(sel.problems) > 20:
            lines.append(f"  ... and {len(sel.problems) - 20} more, all in {PLAN_FILE}")
        for wnid, why in sel.dropped.items():
            lines.append(f"  DROPPED {wnid}: {why}")
        return "\n".join(lines)


def shortfalls(table: pd.DataFrame) -> pd.DataFrame:
    """Per class and source split short of annotated images: boxed, unboxed, needed, missing."""
    per = table.groupby(["wnid", "source_split"], sort=True).agg(
        boxed=("boxed", "first"), unboxed=("unboxed", "first"), needed=("needed", "sum")
    )
    per = per.assign(missing=per["needed"] - per["boxed"]).reset_index()
    return per[per["missing"] > 0].reset_index(drop=True)


def _outcome(sel: Selection, detector_ran: bool = True) -> str:
    table = sel.table()
    parts = []
    if sel.policy == "detect" and not detector_ran:
        short = shortfalls(table)
        parts.append(
            f"needs detector boxes for {int(short['missing'].sum())} images, from "
            f"{int(short['unboxed'].sum())} unboxed ones of the {short['wnid'].nunique()} short "
            f"classes, then dataset.coverage_fallback={sel.fallback} for a class still short"
        )
    if sel.problems:
        return ", ".join([*parts, f"the build stops ({len(sel.problems)} problems)"])
    parts.append(f"builds {len(sel.labelled)} classes")
    repeats = int(table["repeats"].sum())
    if repeats:
        parts.append(f"{repeats} repeated rows")
    detected = int(table["detected"].sum())
    if detected:
        parts.append(f"{detected} images with detector boxes")
    if sel.dropped:
        parts.append(f"{len(sel.dropped)} dropped ({', '.join(list(sel.dropped)[:5])})")
    return ", ".join(parts)


def make_plan(cfg: DictConfig, index: SourceIndex, run_detector: bool = False) -> Plan:
    """The configured selection and, for comparison, each policy's (no detector run for those)."""
    import time

    start = time.perf_counter()
    selection = make_selection(cfg, index, run_detector=run_detector)
    what_if = {}
    for policy in POLICIES:
        node = OmegaConf.to_container(cfg.dataset, resolve=True)
        node.update(coverage=policy, replacement=None)
        if policy == "detect" and not node.get("detector"):
            node["detector"] = {"kind": "(any)"}  # planned without running one
        other = OmegaConf.merge(cfg, {"dataset": node})
        what_if[policy] = make_selection(other, index, run_detector=False)
    return Plan(selection, what_if, time.perf_counter() - start, run_detector)


def write_plan(plan: Plan, folder: str | Path) -> list[Path]:
    """plan.csv and plan_summary.txt in `folder`, written atomically."""
    folder = Path(folder)
    csv = plan.table().to_csv(index=False, lineterminator="\n").encode("utf-8")
    return [
        atomic_write_bytes(folder / PLAN_FILE, csv),
        atomic_write_text(folder / SUMMARY_FILE, plan.summary() + "\n"),
    ]


def run_plan(cfg: DictConfig, index: SourceIndex | None = None) -> tuple[Plan, Sequence[Path]]:
    """`hsi-generate plan`: read the source's index, plan, write into `plan.dir` (or `out`)."""
    from hsi.sources import load_source

    DatasetSpec.from_config(cfg.dataset)  # a bad key fails before the source is read
    if index is None:
        index = load_source(cfg.source)
    node = cfg.get("plan") or {}
    plan = make_plan(cfg, index, run_detector=bool(node.get("detect", False)))
    return plan, write_plan(plan, node.get("dir") or cfg.out)
