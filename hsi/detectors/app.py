"""The tasks of `hsi-detect` (conf/detect.yaml): a detector's boxes for a source, and its audit.

    boxes   detections.csv: per image of the chosen splits and classes, the class query's score
            and box (source pixels), the prompt and how many ground-truth boxes the image has;
            prompts.csv: the query of every class
    audit   audit_images.csv, audit_classes.csv, audit.png and the one-line summary (paper 000,
            App. D) on the chosen images that have ground-truth boxes

Both go through one detection cache (`cache`), so `audit` after `boxes` detects nothing again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hsi.detectors import build_detector, detect_records, detector_prompts
from hsi.detectors.audit import box_audit, write_audit
from hsi.io import atomic_write_csv
from hsi.sources import load_source
from hsi.sources.record import ImageRecord, SourceIndex
from hsi.tasks import requested_tasks

log = logging.getLogger(__name__)

TASKS = ("boxes", "audit")
DETECTIONS_FILE = "detections.csv"
PROMPTS_FILE = "prompts.csv"


def _list(value) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in ([value] if isinstance(value, str) else value)]


def chosen_records(index: SourceIndex, cfg: DictConfig) -> list[ImageRecord]:
    """Records of `splits` and `classes`, at most `per_class` per (split, class) in key order."""
    splits = _list(cfg.splits) or sorted({r.split for r in index.records})
    unknown = sorted(set(splits) - {r.split for r in index.records})
    if unknown:
        raise ValueError(f"splits={splits}: the source has no {unknown} images")
    classes = _list(cfg.classes)
    if classes is not None:
        missing = sorted(set(classes) - set(index.wnids))
        if missing:
            raise ValueError(
                f"classes: {missing} are not wnids of the source (e.g. {index.wnids[:3]})"
            )
    chosen, taken = [], {}
    for r in sorted(index.records, key=lambda r: r.key):
        if r.split not in splits or (classes is not None and r.wnid not in classes):
            continue
        n = taken.get((r.split, r.wnid), 0)
        if cfg.per_class is not None and n >= int(cfg.per_class):
            continue
        taken[(r.split, r.wnid)] = n + 1
        chosen.append(r)
    return chosen


def detections_frame(records, found, prompts) -> pd.DataFrame:
    rows = []
    for r in records:
        d = found.get(r.key)
        if d is None:
            continue
        box = d.box if d.box is not None else (float("nan"),) * 4
        rows.append(
            {
                "key": r.key,
                "split": r.split,
                "image_id": r.image_id,
                "wnid": r.wnid,
                "label": r.label,
                "prompt": prompts[r.label],
                "score": d.score,
                "xmin": box[0],
                "ymin": box[1],
                "xmax": box[2],
                "ymax": box[3],
                "gt_boxes": len(r.boxes),
            }
        )
    columns = ["key", "split", "image_id", "wnid", "label", "prompt", "score"]
    return pd.DataFrame(rows, columns=[*columns, "xmin", "ymin", "xmax", "ymax", "gt_boxes"])


def run_tasks(cfg: DictConfig) -> dict:
    tasks = requested_tasks(cfg.tasks, TASKS)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    detector = build_detector(cfg.detector)  # first: a missing model folder fails at once
    index = load_source(cfg.source)
    records = chosen_records(index, cfg)
    if "boxes" not in tasks:  # audit alone: only images that can be audited
        records = [r for r in records if r.has_boxes]
    template = str(OmegaConf.select(cfg, "detector.template", default="a photo of a {}"))
    prompts = detector_prompts(detector, index.classes, template)
    cache = Path(str(cfg.cache)) if cfg.cache else None
    found = detect_records(
        detector,
        records,
        index.root,
        prompts,
        cache,
        batch_size=int(OmegaConf.select(cfg, "detector.batch_size", default=8)),
        progress=bool(cfg.progress),
    )
    done: dict = {"detector": detector.name, "records": records, "detections": found}
    name = f"{cfg.detector.kind}"
    print(f"{name}: {len(found)} of {len(records)} images detected ({detector.name})")
    if "boxes" in tasks:
        atomic_write_csv(
            out / PROMPTS_FILE,
            pd.DataFrame(
                [
                    {"label": c.index, "wnid": c.wnid, "name": c.name, "prompt": prompts[c.index]}
                    for c in index.classes
                ]
            ),
        )
        frame = detections_frame(records, found, prompts)
        done["boxes"] = atomic_write_csv(out / DETECTIONS_FILE, frame)
        print(f"  -> {done['boxes']} ({len(frame)} rows), {out / PROMPTS_FILE}")
    if "audit" in tasks:
        audit = box_audit(records, found, index.classes, float(cfg.audit.threshold), name)
        done["audit"] = audit
        done["audit_files"] = write_audit(audit, out)
        print(audit.summary())
        print(f"  -> {', '.join(str(p) for p in done['audit_files'].values())}")
    return done
