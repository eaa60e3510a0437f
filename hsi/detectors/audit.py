"""Box audit (paper 000, App. D): how well a detector's boxes agree with the source's own.

On the images that have both a ground-truth box and a detector box for their class query, the
IoU of the two (an image with several ground-truth boxes -- several objects of its class -- takes
the one the detector's box overlaps most; a query the detector found no box for counts as IoU 0);
per class the mean IoU; overall the mean over classes (the paper: 0.8675 on ImageNet val with
Grounding DINO, 139 classes below 0.8) and over images; the classes below `threshold`; a
histogram of the per-class mIoU (its Fig. 11).

    audit_images.csv   key, split, wnid, label, score, iou
    audit_classes.csv  label, wnid, name, images, miou, below
    audit.png          the histogram, with the threshold marked
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hsi.detectors.base import Detection, box_iou
from hsi.io import atomic_write_bytes, atomic_write_csv
from hsi.sources.record import ClassInfo, ImageRecord

IMAGES_FILE = "audit_images.csv"
CLASSES_FILE = "audit_classes.csv"
FIGURE_FILE = "audit.png"


@dataclass
class BoxAudit:
    images: pd.DataFrame  # one row per audited image
    classes: pd.DataFrame  # one row per class with at least one audited image
    threshold: float
    detector: str = ""

    @property
    def miou(self) -> float:
        """Mean over classes of the per-class mean IoU (the paper's overall mIoU)."""
        return float(self.classes["miou"].mean()) if len(self.classes) else math.nan

    @property
    def miou_images(self) -> float:
        return float(self.images["iou"].mean()) if len(self.images) else math.nan

    @property
    def below(self) -> list[str]:
        return self.classes.loc[self.classes["below"], "wnid"].tolist()

    def summary(self) -> str:
        """One line: overall mIoU, images, classes below the threshold."""
        if not len(self.images):
            return (
                f"box audit ({self.detector}): no image has both a ground-truth and a detected box"
            )
        below = self.below
        shown = ", ".join(below[:5]) + (", ..." if len(below) > 5 else "")
        return (
            f"box audit ({self.detector}): mIoU {self.miou:.4f} over {len(self.classes)} classes "
            f"({self.miou_images:.4f} over {len(self.images)} images, "
            f"{int(self.images['no_box'].sum())} without a detected box); "
            f"{len(below)} classes below {self.threshold:g}" + (f": {shown}" if below else "")
        )


def image_iou(detection: Detection, truths: Sequence) -> float:
    """IoU of the detected box with the ground-truth box it overlaps most (0 without a box)."""
    if detection.box is None or not truths:
        return 0.0
    return max(box_iou(detection.box, t) for t in truths)


def box_audit(
    records: Sequence[ImageRecord],
    detections: Mapping[str, Detection],
    classes: Sequence[ClassInfo] = (),
    threshold: float = 0.8,
    detector: str = "",
) -> BoxAudit:
    """The audit over the records that have ground-truth boxes and a detection (module doc)."""
    names = {c.index: c.name for c in classes}
    rows = [
        {
            "key": r.key,
            "split": r.split,
            "wnid": r.wnid,
            "label": r.label,
            "score": detections[r.key].score,
            "no_box": detections[r.key].box is None,
            "iou": image_iou(detections[r.key], r.boxes),
        }
        for r in sorted(records, key=lambda r: r.key)
        if r.has_boxes and r.key in detections
    ]
    columns = ["key", "split", "wnid", "label", "score", "no_box", "iou"]
    images = pd.DataFrame(rows, columns=columns)
    per_class = (
        images.groupby(["label", "wnid"], sort=True)
        .agg(images=("iou", "size"), miou=("iou", "mean"))
        .reset_index()
    )
    per_class.insert(2, "name", [names.get(int(k), "") for k in per_class["label"]])
    per_class["below"] = per_class["miou"] < threshold
    return BoxAudit(images, per_class, float(threshold), detector)


def plot_audit(audit: BoxAudit, path: str | Path, bins: int = 20) -> Path:
    """Histogram of the per-class mIoU with the threshold and the overall mIoU marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(audit.classes["miou"].to_numpy(), bins=np.linspace(0, 1, bins + 1), color="tab:blue")
    ax.axvline(audit.threshold, color="tab:red", ls="--", label=f"threshold {audit.threshold:g}")
    if len(audit.classes):
        ax.axvline(audit.miou, color="black", ls=":", label=f"mIoU {audit.miou:.3f}")
    ax.set_xlabel("per-class mIoU (detector vs ground-truth boxes)")
    ax.set_ylabel("classes")
    name = f" ({audit.detector})" if audit.detector else ""
    title = f"box audit{name}: {len(audit.below)} of {len(audit.classes)} classes below"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_audit(audit: BoxAudit, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {
        "images": atomic_write_csv(out / IMAGES_FILE, audit.images),
        "classes": atomic_write_csv(out / CLASSES_FILE, audit.classes),
        "figure": plot_audit(audit, out / FIGURE_FILE),
    }


def read_audit(out: str | Path, threshold: float = 0.8, detector: str = "") -> BoxAudit:
    """The audit that `write_audit` wrote to `out` (its summary line, without rerunning it)."""
    out = Path(out)
    images = pd.read_csv(out / IMAGES_FILE)
    classes = pd.read_csv(out / CLASSES_FILE)
    return BoxAudit(images, classes, threshold, detector)
