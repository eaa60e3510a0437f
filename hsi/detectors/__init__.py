"""Object detectors that give each (image, class) a confidence and a box: open-vocabulary
detectors through transformers (OWL-ViT, OWLv2, Grounding DINO; paper 004, §2 and paper 000,
App. D) and `cam_box`, a Grad-CAM box of a classifier trained here, which needs no downloaded
weights. Used for box coverage of unboxed images, the box audit and spuriousness rankings.

    detector = build_detector(cfg.detector)              # conf/detector/<kind>.yaml
    prompts = detector_prompts(detector, index.classes)  # unique, within the text model's limit
    found = detect_records(detector, records, index.root, prompts, cache_dir)  # key -> Detection
"""

from __future__ import annotations

from collections.abc import Mapping

from hsi.detectors.audit import BoxAudit, box_audit, write_audit
from hsi.detectors.base import Detection, Detector, Query, box_iou
from hsi.detectors.prompts import DEFAULT_TEMPLATE, class_prompts, detector_prompts
from hsi.detectors.run import detect_records
from hsi.sources.record import Box, ClassInfo, ImageRecord

KINDS = ("cam", "owlvit", "owlv2", "grounding_dino")


def build_detector(cfg) -> Detector:
    """The detector of a conf/detector/<kind>.yaml node (a DictConfig or a mapping).

    An absent local folder or checkpoint raises ValueError naming the key and the folder.
    """
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if not isinstance(node, Mapping):
        raise ValueError(f"detector: expected a config node, got {type(cfg).__name__}")
    kind = str(node.get("kind"))
    device = str(node.get("device") or "auto")
    if kind == "cam":
        from hsi.detectors.cam import CamBoxDetector

        return CamBoxDetector(
            node.get("checkpoint"),
            model=node.get("model"),
            resolution=node.get("resolution"),
            threshold=float(node.get("threshold", 0.2)),
            method=str(node.get("method", "gradcam")),
            target_layer=node.get("target_layer"),
            device=device,
        )
    if kind in ("owlvit", "owlv2", "grounding_dino"):
        from hsi.detectors.hf import OpenVocabDetector

        return OpenVocabDetector(kind, node.get("path"), device=device)
    raise ValueError(f"detector.kind={kind!r}: expected one of {list(KINDS)}")


__all__ = [
    "BoxAudit",
    "box_audit",
    "write_audit",
    "DEFAULT_TEMPLATE",
    "KINDS",
    "Box",
    "ClassInfo",
    "Detection",
    "Detector",
    "ImageRecord",
    "Query",
    "box_iou",
    "build_detector",
    "class_prompts",
    "detect_records",
    "detector_prompts",
]
