"""The one record type for "an image with its class and its boxes", used by every later step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# (xmin, ymin, xmax, ymax) in pixels of the decoded image; continuous, so width = xmax - xmin.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageRecord:
    image_id: (
        str  # file stem: "n01440764_10026" or "ILSVRC2012_val_00000001"; unique within a split
    )
    split: str  # "train" | "val" (the source's own splits)
    wnid: str
    label: int  # index of wnid in the sorted synset list
    path: str  # POSIX path relative to the source root
    width: int  # of the decoded image (not of any annotation's <size>)
    height: int
    boxes: tuple[Box, ...] = ()  # every box is an object of this image's class (ImageNet CLS-LOC)

    @property
    def has_boxes(self) -> bool:
        return len(self.boxes) > 0

    @property
    def key(self) -> str:
        """Stable id across splits, used to seed per-item randomness and to name assets."""
        return f"{self.split}/{self.image_id}"


@dataclass(frozen=True)
class Skip:
    """An input left out, with the reason; `path` is relative to the source root."""

    path: str
    reason: str


@dataclass(frozen=True)
class ClassInfo:
    index: int
    wnid: str
    name: str  # first synonym of LOC_synset_mapping.txt ("tench")
    synonyms: tuple[str, ...] = ()  # every synonym, the first included


@dataclass
class SourceIndex:
    """What a reader found: classes, records sorted by (split, image_id), and every skip."""

    root: Path
    classes: list[ClassInfo]
    records: list[ImageRecord]
    skipped: list[Skip] = field(default_factory=list)
    box_errors: list[Skip] = field(default_factory=list)  # single boxes dropped, image kept

    def split(self, split: str, with_boxes: bool = True) -> list[ImageRecord]:
        return [r for r in self.records if r.split == split and (r.has_boxes or not with_boxes)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split: images, images with boxes, images without boxes."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            c = out.setdefault(r.split, {"images": 0, "with_boxes": 0, "without_boxes": 0})
            c["images"] += 1
            c["with_boxes" if r.has_boxes else "without_boxes"] += 1
        return out

    @property
    def wnids(self) -> list[str]:
        return [c.wnid for c in self.classes]
