"""A full decode of the images a recipe may pick, before the recipe is fixed.

The reader opens headers only (hsi.sources.images): an image whose header reads but whose body
is truncated or corrupt passes it. Found at build time, such an image would already be in the
fixed recipe, and its samples would be dropped at training. Checked here instead, every
candidate image is decoded once (the same `load_rgb` the build runs, and its size compared with
the header's); one that fails leaves the index as a skip with the reason (`decode: ...`), so the
recipe picks another image in its place.

`source.decode_check`:
    boxed  the images with boxes (the only ones a recipe takes as objects or backgrounds; the
           default: about 544k of ImageNet's 1.33M)
    all    every image (what `data=source` trains on as well)
    none   no check (a broken image then fails at build time, as a manifest row)

The outcome per image is cached beside the index (`decode-<key>.json`), keyed by the file's
path, size and mtime, so a read after a change decodes only new or changed files (and an
unchanged tree's index is stored already checked: no decode, no stat).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hsi.io import atomic_write_bytes
from hsi.sources.images import ImageReadError, load_rgb
from hsi.sources.record import ImageRecord, Skip, SourceIndex
from hsi.workers import ordered_map

log = logging.getLogger(__name__)

DECODE_CHECKS = ("boxed", "all", "none")
MIN_TASKS_PER_WORKER = 200  # a full decode takes milliseconds: worth a process sooner than a header


def check_mode(mode: str) -> str:
    if mode not in DECODE_CHECKS:
        raise ValueError(
            f"source.decode_check={mode!r}: must be one of {', '.join(DECODE_CHECKS)} "
            "(boxed: decode the images with boxes before the recipe is made)"
        )
    return mode


def candidates(index: SourceIndex, mode: str) -> list[ImageRecord]:
    """The records `mode` decodes."""
    if mode == "none":
        return []
    return [r for r in index.records if mode == "all" or r.has_boxes]


def decode_reason(_state: None, task: tuple[str, int, int]) -> str:
    """Worker: "" when the file decodes to the header's size, else why not (picklable)."""
    path, width, height = task
    try:
        image = load_rgb(path)
    except ImageReadError as e:
        return f"decode: {e}"
    except OSError as e:  # vanished since the listing, an I/O error
        return f"decode: {path}: {type(e).__name__}: {e}"
    if image.shape[:2] != (height, width):
        return (
            f"decode: {path} decodes to {image.shape[1]}x{image.shape[0]}, its header says "
            f"{width}x{height}"
        )
    return ""


@dataclass
class DecodeSummary:
    checked: int = 0  # candidates
    decoded: int = 0  # decoded in this run (the others came from the cache)
    failed: int = 0  # left out as skips


def _file_key(path: str, record: ImageRecord) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns, record.width, record.height)


def _load_cache(path: Path | None) -> dict:
    """{path: ((size, mtime_ns, width, height), reason)} of earlier runs."""
    if path is None or not path.is_file():
        return {}
    try:
        with open(path, encoding="ascii") as f:  # JSON, not pickle: loading a pickle runs code
            entries = json.load(f)["entries"]
        return {p: (tuple(key), reason) for p, (key, reason) in entries.items()}
    except Exception as e:  # noqa: BLE001 - a damaged cache is a miss
        log.warning("decode cache %s is unreadable (%s); decoding again", path, e)
        return {}


def check_decodes(
    index: SourceIndex,
    mode: str,
    cache_path: Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> DecodeSummary:
    """Decode `mode`'s candidates; move the undecodable ones from `index.records` to skips.

    `index` is changed in place (records stay sorted; skips are re-sorted by path and reason).
    """
    check_mode(mode)
    chosen = candidates(index, mode)
    summary = DecodeSummary(checked=len(chosen))
    if not chosen:
        return summary
    cache = _load_cache(cache_path)
    root = os.fspath(index.root)
    reasons: dict[str, str] = {}
    todo: list[tuple[ImageRecord, tuple | None]] = []
    for record in chosen:
        hit = cache.get(record.path)
        key = _file_key(os.path.join(root, record.path), record)
        if key is not None and hit is not None and hit[0] == key:
            reasons[record.path] = hit[1]
        else:
            todo.append((record, key))
    if todo:
        tasks = [(os.path.join(root, r.path), r.width, r.height) for r, _ in todo]
        busy = workers if len(tasks) >= MIN_TASKS_PER_WORKER * workers else 1
        results = ordered_map(
            decode_reason,
            tasks,
            workers=busy,
            progress=progress,
            desc="decode check",
            unit="img",
            chunk=max(1, min(64, len(tasks) // (busy * 8))),
        )
        for (record, key), reason in zip(todo, results, strict=True):
            reasons[record.path] = reason
            if key is not None:
                cache[record.path] = (key, reason)
        summary.decoded = len(todo)
    if cache_path is not None and todo:
        # Only the current candidates are kept: the file never grows past the tree.
        kept = {r.path: cache[r.path] for r in chosen if r.path in cache}
        data = {"entries": kept}
        try:
            atomic_write_bytes(cache_path, json.dumps(data, separators=(",", ":")).encode("ascii"))
        except OSError as e:
            log.warning("cannot write the decode cache %s (%s)", cache_path, e.strerror or e)
    failed = {path: why for path, why in reasons.items() if why}
    if failed:
        index.records = [r for r in index.records if r.path not in failed]
        index.skipped.extend(Skip(path, why) for path, why in failed.items())
        index.skipped.sort(key=lambda s: (s.path, s.reason))
    summary.failed = len(failed)
    return summary


__all__ = ["DECODE_CHECKS", "DecodeSummary", "candidates", "check_decodes", "check_mode"]
