"""Detections of a source's images, batched and cached (hsi.detectors.cache)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from hsi.detectors.base import Detection, Detector, Query
from hsi.detectors.cache import DetectionCache
from hsi.progress import Progress
from hsi.sources.images import ImageReadError, load_rgb
from hsi.sources.record import ImageRecord

log = logging.getLogger(__name__)


def detect_records(
    detector: Detector,
    records: Sequence[ImageRecord],
    source_root: Path,
    prompts: dict[int, str],
    cache_dir: Path | None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Detection]:
    """ImageRecord.key -> the detection of the record's class prompt on its image.

    Records are processed in key order, `batch_size` images per call of the detector; with
    `cache_dir`, what the cache holds for (detector.name, key, label, prompt) is not decoded
    again and every batch is committed as it is done, so a killed run resumes where it stopped.
    An image that cannot be decoded is left out of the result (logged) and not cached.
    """
    if batch_size < 1:
        raise ValueError(f"detector.batch_size={batch_size}: must be at least 1")
    missing = sorted({r.label for r in records} - set(prompts))
    if missing:
        raise ValueError(
            f"no prompt for class labels {missing[:10]}; prompts cover {len(prompts)} classes"
        )
    records = sorted({r.key: r for r in records}.values(), key=lambda r: r.key)
    item = {r.key: (r.key, r.label, prompts[r.label]) for r in records}
    cache = DetectionCache(cache_dir, detector.name) if cache_dir is not None else None
    found: dict[str, Detection] = {}
    try:
        if cache is not None:
            hits = cache.get(item.values())
            found = {r.key: hits[item[r.key]] for r in records if item[r.key] in hits}
        todo = [r for r in records if r.key not in found]
        if cache is not None and found:
            log.info("detections: %d cached in %s, %d to detect", len(found), cache.path, len(todo))
        bar = Progress(len(todo), "detect", "img", enabled=progress)
        failed = 0
        for start in range(0, len(todo), batch_size):
            batch, images = [], []
            for r in todo[start : start + batch_size]:
                try:
                    images.append(Image.fromarray(load_rgb(Path(source_root) / r.path)))
                    batch.append(r)
                except ImageReadError as err:
                    failed += 1
                    log.warning("detect: %s left out: %s", r.key, err)
            queries = [Query(r.label, prompts[r.label]) for r in batch]
            detections = detector.detect(images, queries) if batch else []
            if len(detections) != len(batch):
                raise RuntimeError(
                    f"{detector.name}: {len(detections)} detections for {len(batch)} images"
                )
            if cache is not None:
                cache.put((item[r.key], d) for r, d in zip(batch, detections, strict=True))
            found.update((r.key, d) for r, d in zip(batch, detections, strict=True))
            bar.update(len(todo[start : start + batch_size]), failed=failed)
        bar.close()
    finally:
        if cache is not None:
            cache.close()
    return {r.key: found[r.key] for r in records if r.key in found}
