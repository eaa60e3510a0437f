"""Centre and size bias scores of every class (paper 000, "Corner Cases", §3.1-3.2).

Coordinates are normalised by the image width W and height H, so a box centre
(cx, cy) becomes (cx/W, cy/H) in [0, 1]^2 and the image centre is (0.5, 0.5).

* Centre score of an object: ``1 - ||(0.5, 0.5) - (cx/W, cy/H)||_inf``. An object centred in the
  image scores 1, one whose centre lies on the image border scores 0.5; the range is [0.5, 1].
* Size score of an object: ``(w * h) / (W * H)`` with ``w = xmax - xmin`` and ``h = ymax - ymin``
  (boxes are continuous, in pixels of the decoded image): the fraction of the image it covers.
* Score of a class in a split: the mean over the objects of each image, then the mean over the
  images of the class that have at least one box. Averaging per image first keeps an image with
  many small objects (a flock of birds) from outweighing the rest of its class.

Everything is computed on flat numpy arrays (one row per box) and grouped with pandas, so an index
with a million boxes is scored in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from hsi.io import atomic_write_csv
from hsi.sources.record import ImageRecord, SourceIndex

SCORE_COLUMNS = ["wnid", "split", "center_score", "size_score", "n_images", "n_objects"]
SKIPPED_COLUMNS = ["path", "reason"]
COUNTS_COLUMNS = ["split", "images", "with_boxes", "without_boxes"]
BOX_ERROR_PREFIX = "box dropped: "

# Boxes may touch the image border; this much float slack past it is still "inside".
_EDGE_TOLERANCE = 1e-6


def _box_table(records: Sequence[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
    """All boxes as one (n_boxes, 4) float array plus, per box, the position of its record.

    Raises a ValueError naming the image when a box is not a proper box inside its image: the
    sources clip, swap and drop bad boxes (recording them in ``SourceIndex.box_errors``), so such a
    box means the index was built by something that skipped that normalisation.
    """
    n_per_record = np.fromiter((len(r.boxes) for r in records), dtype=np.int64, count=len(records))
    n_boxes = int(n_per_record.sum())
    flat = np.fromiter(
        chain.from_iterable(chain.from_iterable(r.boxes for r in records)),
        dtype=np.float64,
        count=4 * n_boxes,
    )
    boxes = flat.reshape(n_boxes, 4)
    owner = np.repeat(np.arange(len(records)), n_per_record)
    sizes = np.array([(r.width, r.height) for r in records], dtype=np.float64).reshape(-1, 2)
    _check_boxes(records, boxes, owner, sizes)
    return boxes, owner


def _check_boxes(
    records: Sequence[ImageRecord], boxes: np.ndarray, owner: np.ndarray, sizes: np.ndarray
) -> None:
    has_boxes = np.bincount(owner, minlength=len(records)) > 0
    bad_size = np.flatnonzero(has_boxes & ~np.all(sizes > 0, axis=1))
    if bad_size.size:
        r = records[bad_size[0]]
        raise ValueError(
            f"{r.path}: image size {r.width}x{r.height} is not positive; the source reader must "
            "record the size of the decoded image"
        )
    w, h = sizes[owner, 0], sizes[owner, 1]
    tol_w, tol_h = _EDGE_TOLERANCE * w, _EDGE_TOLERANCE * h
    xmin, ymin, xmax, ymax = boxes.T
    ok = (
        np.isfinite(boxes).all(axis=1)
        & (xmin < xmax)
        & (ymin < ymax)
        & (xmin >= -tol_w)
        & (ymin >= -tol_h)
        & (xmax <= w + tol_w)
        & (ymax <= h + tol_h)
    )
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        r = records[owner[i]]
        raise ValueError(
            f"{r.path}: box {tuple(boxes[i])} is empty or outside the {r.width}x{r.height} image; "
            "the source reader should have swapped, clipped or dropped it (dropped boxes belong in "
            "SourceIndex.box_errors)"
        )


def _object_score_arrays(
    boxes: np.ndarray, widths: np.ndarray, heights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-box centre and size scores; widths/heights are those of each box's image."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / widths
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 / heights
    center = 1.0 - np.maximum(np.abs(0.5 - cx), np.abs(0.5 - cy))
    size = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (widths * heights)
    return center, size


def object_scores(record: ImageRecord) -> list[tuple[float, float]]:
    """(centre score, size score) of every box of one image, in box order."""
    if not record.boxes:
        return []
    boxes, owner = _box_table([record])
    w = np.full(len(owner), float(record.width))
    h = np.full(len(owner), float(record.height))
    center, size = _object_score_arrays(boxes, w, h)
    return [(float(c), float(s)) for c, s in zip(center, size, strict=True)]


def bias_scores(index: SourceIndex) -> pd.DataFrame:
    """Centre and size score per (class, split) with at least one boxed image.

    Columns: wnid, split, center_score, size_score, n_images (images with at least one box),
    n_objects (boxes); rows sorted by (split, wnid). Per class: mean over the objects of each image,
    then mean over images.
    """
    records = [r for r in index.records if r.boxes]
    if not records:
        return pd.DataFrame(
            {
                "wnid": pd.Series(dtype=object),
                "split": pd.Series(dtype=object),
                "center_score": pd.Series(dtype=np.float64),
                "size_score": pd.Series(dtype=np.float64),
                "n_images": pd.Series(dtype=np.int64),
                "n_objects": pd.Series(dtype=np.int64),
            }
        )[SCORE_COLUMNS]
    boxes, owner = _box_table(records)
    widths = np.array([r.width for r in records], dtype=np.float64)
    heights = np.array([r.height for r in records], dtype=np.float64)
    center, size = _object_score_arrays(boxes, widths[owner], heights[owner])

    per_object = pd.DataFrame({"image": owner, "center_score": center, "size_score": size})
    per_image = per_object.groupby("image", sort=True).agg(
        center_score=("center_score", "mean"),
        size_score=("size_score", "mean"),
        n_objects=("center_score", "size"),
    )
    per_image["wnid"] = [records[i].wnid for i in per_image.index]
    per_image["split"] = [records[i].split for i in per_image.index]
    per_class = (
        per_image.groupby(["split", "wnid"], sort=True)
        .agg(
            center_score=("center_score", "mean"),
            size_score=("size_score", "mean"),
            n_images=("center_score", "size"),
            n_objects=("n_objects", "sum"),
        )
        .reset_index()
    )
    per_class["n_images"] = per_class["n_images"].astype(np.int64)
    per_class["n_objects"] = per_class["n_objects"].astype(np.int64)
    return per_class[SCORE_COLUMNS].reset_index(drop=True)


def center_offsets(index: SourceIndex, split: str | None = None) -> np.ndarray:
    """Relative box centres (cx/W, cy/H), shape (n_boxes, 2), of one split or (None) of all."""
    records = [r for r in index.records if r.boxes and (split is None or r.split == split)]
    if not records:
        return np.empty((0, 2), dtype=np.float64)
    boxes, owner = _box_table(records)
    widths = np.array([r.width for r in records], dtype=np.float64)[owner]
    heights = np.array([r.height for r in records], dtype=np.float64)[owner]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / widths
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 / heights
    return np.stack([cx, cy], axis=1)


def skipped_table(index: SourceIndex) -> pd.DataFrame:
    """Every input left out: skipped images, then single dropped boxes (reason "box dropped: ...")."""
    rows = [(s.path, s.reason) for s in index.skipped]
    rows += [
        (s.path, s.reason if s.reason.startswith(BOX_ERROR_PREFIX) else BOX_ERROR_PREFIX + s.reason)
        for s in index.box_errors
    ]
    return pd.DataFrame(rows, columns=SKIPPED_COLUMNS)


def counts_table(index: SourceIndex) -> pd.DataFrame:
    """Per split (sorted): images, images with boxes, images without boxes."""
    counts = index.counts()
    rows = [(split, *(counts[split][c] for c in COUNTS_COLUMNS[1:])) for split in sorted(counts)]
    return pd.DataFrame(rows, columns=COUNTS_COLUMNS)


def write_score_tables(
    index: SourceIndex, out: str | os.PathLike, scores: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Write scores.csv, skipped.csv and counts.csv into `out` (atomically); return their paths.

    `scores` is `bias_scores(index)` when the caller already has it.
    """
    out = Path(out)
    scores = bias_scores(index) if scores is None else scores
    return {
        "scores": atomic_write_csv(out / "scores.csv", scores),
        "skipped": atomic_write_csv(out / "skipped.csv", skipped_table(index)),
        "counts": atomic_write_csv(out / "counts.csv", counts_table(index)),
    }
