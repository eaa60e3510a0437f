"""Task ``score``: every image of the source scored by an open-vocabulary detector queried with
its class's name, then ranked within its class (paper 004, §2).

The score is the detector's highest class-query box confidence (hsi.detectors: sigmoid of the
logit, no threshold) and its box; detections are cached per (detector, image) by
:func:`hsi.detectors.detect_records`, so a rerun decodes nothing already scored. ``scores.csv``
holds one row per image of the train and val splits with its rank (:mod:`hsi.ranking.rank`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hsi.io import item_rng
from hsi.ranking.rank import rank_within_class
from hsi.sources.record import ImageRecord, SourceIndex

SPLITS = ("train", "val")
BOX_COLUMNS = ("box_xmin", "box_ymin", "box_xmax", "box_ymax")


def split_records(
    index: SourceIndex, split: str, per_class: int | None, seed: int
) -> list[ImageRecord]:
    """The images of ``split`` (boxed or not); with ``per_class``, a seeded draw of that many per
    class (the same images for the same seed), in the source's order."""
    records = index.split(split, with_boxes=False)
    if per_class is None:
        return records
    by_class: dict[str, list[ImageRecord]] = {}
    for r in records:
        by_class.setdefault(r.wnid, []).append(r)
    keep: set[str] = set()
    for wnid, rs in sorted(by_class.items()):
        order = item_rng(seed, "rank-images", split, wnid).permutation(len(rs))
        keep.update(rs[i].key for i in order[: int(per_class)])
    return [r for r in records if r.key in keep]


def score_frame(records: Sequence[ImageRecord], detections: dict) -> pd.DataFrame:
    """One row per record: identity, size, score and box (NaN without one), not yet ranked."""
    rows = []
    for r in records:
        det = detections[r.key]
        box = det.box if det.box is not None else (np.nan,) * 4
        rows.append(
            {
                "key": r.key,
                "split": r.split,
                "image_id": r.image_id,
                "wnid": r.wnid,
                "label": r.label,
                "path": r.path,
                "width": r.width,
                "height": r.height,
                "score": float(det.score),
                **dict(zip(BOX_COLUMNS, (float(v) for v in box), strict=True)),
            }
        )
    return pd.DataFrame(rows)


def score_source(
    detector,
    index: SourceIndex,
    per_class: dict[str, int | None],
    seed: int,
    template: str,
    cache_dir: Path | None,
    batch_size: int,
    progress: bool = False,
) -> pd.DataFrame:
    """scores.csv's frame: the train and val images scored and ranked within (split, class)."""
    from hsi.detectors import detect_records, detector_prompts

    prompts = detector_prompts(detector, index.classes, template)
    frames = []
    for split in SPLITS:
        records = split_records(index, split, per_class.get(split), seed)
        if not records:
            raise ValueError(f"source at {index.root} has no {split} images to rank")
        detections = detect_records(
            detector, records, Path(index.root), prompts, cache_dir, batch_size, progress
        )
        frames.append(rank_within_class(score_frame(records, detections)))
    return pd.concat(frames).reset_index(drop=True)


def box_share(record: ImageRecord, boxes: Sequence | None = None) -> float:
    """The ground-truth boxes' summed area over the image's (NaN without a box): how much of
    the image the class's objects fill. `boxes` replaces the record's own when given."""
    boxes = record.boxes if boxes is None else boxes
    if not boxes:
        return float("nan")
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
    return float(area) / float(record.width * record.height)


def size_correlation(
    frame: pd.DataFrame, index: SourceIndex, hidden: Mapping[str, Sequence] | None = None
) -> pd.DataFrame:
    """Per split and class: Spearman ρ of the detector score and the ground-truth box share.

    A check that the ranking follows the object's visibility (a higher score for a larger
    object). On ImageNet the boxed images count; the synthetic source also knows the true boxes
    of the train images it wrote without a box file (`hidden`, from
    hsi.sources.synthetic.read_hidden_boxes), so there every image counts.
    Columns ``split, label, wnid, images, spearman``.
    """
    from scipy.stats import spearmanr

    by_key = {r.key: r for r in index.records}
    hidden = hidden or {}
    shares = frame["key"].map(lambda k: box_share(by_key[k], hidden.get(k)))
    rows = []
    for (split, label), rows_ in frame.assign(share=shares).groupby(["split", "label"], sort=True):
        boxed = rows_.dropna(subset=["share"])
        rho = (
            float(spearmanr(boxed["score"], boxed["share"]).statistic)
            if len(boxed) > 2
            else float("nan")
        )
        rows.append(
            {
                "split": split,
                "label": int(label),
                "wnid": rows_["wnid"].iloc[0],
                "images": len(boxed),
                "spearman": rho,
            }
        )
    return pd.DataFrame(rows)


def read_scores(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"scores={path}: no scores.csv; run the `score` task first (tasks=[score,...]) or "
            f"point scores= at an earlier run's scores.csv"
        )
    frame = pd.read_csv(path, dtype={"wnid": str, "key": str, "image_id": str})
    missing = {"key", "split", "label", "score", "rank", "path"} - set(frame.columns)
    if missing:
        raise ValueError(f"scores={path} lacks columns {sorted(missing)}; rerun the score task")
    return frame


def records_of(frame: pd.DataFrame, index: SourceIndex) -> list[ImageRecord]:
    """The source's records of the rows of ``frame``, in the frame's order."""
    by_key = {r.key: r for r in index.records}
    missing = [k for k in frame["key"] if k not in by_key]
    if missing:
        raise ValueError(
            f"scores name {len(missing)} images the source lacks (e.g. {missing[:2]}); score this "
            f"source again (tasks=[score,...])"
        )
    return [by_key[k] for k in frame["key"]]
