"""What a detector returns, what it is asked, and the box arithmetic every user of them shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

from hsi.sources.record import Box


@dataclass(frozen=True)
class Detection:
    """The best box of one class query on one image.

    `score` is the highest class-query confidence over the detector's boxes, in [0, 1] (the
    sigmoid of the box's logit, no threshold applied: paper 004, §2); `box` is that box,
    (xmin, ymin, xmax, ymax) in pixels of the decoded source image, or None when the detector
    gives none (an empty box after clipping to the image).
    """

    score: float
    box: Box | None


@dataclass(frozen=True)
class Query:
    label: int  # class index (ImageRecord.label)
    prompt: str  # text query, e.g. "a photo of a tench"


@runtime_checkable
class Detector(Protocol):
    # Stable identity for caching: kind + weights identity (folder + file sizes/mtimes) + settings.
    name: str

    def detect(self, images: list[Image.Image], queries: list[Query]) -> list[Detection]:
        """One query per image (same length); RGB images at source resolution."""
        ...


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def clip_box(box: Box, width: int, height: int) -> Box | None:
    """The box clipped to a width x height image; None when nothing of it is left."""
    x0, y0 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
    x1, y1 = min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return (float(x0), float(y0), float(x1), float(y1))


def cxcywh_to_box(cx: float, cy: float, w: float, h: float, sx: float, sy: float) -> Box:
    """A normalised (centre x, centre y, width, height) box scaled by (sx, sy) to corner pixels."""
    return ((cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy)
