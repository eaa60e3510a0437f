"""Throughput of bias scoring: ImageNetSource header reading + bias_scores vs a full decode.

    .venv/bin/python benchmarks/bench_scores.py [--images 3000] [--max-side 160] [--root DIR]

Writes a tree of tiny JPEGs with VOC XML boxes in the ImageNet layout (into a temporary folder
unless --root is given), then prints images/minute for
  * ImageNetSource(workers=1).load() + bias_scores (headers and XML only),
  * the same with workers=2, and the ratio workers=2 / workers=1,
  * a plain loop decoding every image fully with PIL (Image.open(p).convert("RGB")),
and the ratio header-reading / full decode. The two worker counts must give identical scores.
Last, the CPU seconds of bias_scores alone on --boxes boxes held in memory (4 per image; the
scoring of a full ImageNet's ~1M train boxes must take seconds, not minutes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hsi.io import item_rng
from hsi.scores import bias_scores
from hsi.sources import imagenet
from hsi.sources.imagenet import ImageNetSource
from hsi.sources.record import ClassInfo, ImageRecord, SourceIndex
from hsi.sources.voc import voc_xml

N_CLASSES = 10


def _xml(filename: str, wnid: str, size: tuple[int, int], boxes: list[tuple[int, ...]]) -> str:
    return voc_xml(filename, size, [(wnid, box) for box in boxes])


def write_tree(root: Path, n_images: int, max_side: int = 160, seed: int = 0) -> list[Path]:
    """n_images train JPEGs (noise, 48-max_side px a side, 1-2 boxes each) plus a tenth as flat val."""
    wnids = [f"n{i:08d}" for i in range(N_CLASSES)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} class{i}\n" for i, w in enumerate(wnids))
    )
    n_val = max(1, n_images // 10)
    items = [
        ("train", wnids[i % N_CLASSES], f"{wnids[i % N_CLASSES]}_{i}") for i in range(n_images)
    ]
    items += [("val", wnids[i % N_CLASSES], f"ILSVRC2012_val_{i + 1:08d}") for i in range(n_val)]
    paths = []
    for split, wnid, image_id in items:
        rng = item_rng(seed, split, image_id)
        w, h = (int(v) for v in rng.integers(48, max_side + 1, size=2))
        sub = f"{split}/{wnid}" if split == "train" else split
        image = root / sub / f"{image_id}.JPEG"
        xml = root / "boxes" / sub / f"{image_id}.xml"
        image.parent.mkdir(parents=True, exist_ok=True)
        xml.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype="uint8")).save(image, quality=90)
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            boxes.append(
                (x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1)))
            )
        xml.write_text(_xml(image.name, wnid, (w, h), boxes))
        paths.append(image)
    return sorted(paths)


def _per_minute(n: int, seconds: float) -> float:
    return 60.0 * n / seconds


def score_boxes_in_memory(n_boxes: int, seed: int = 0) -> float:
    """CPU seconds of bias_scores on n_boxes 50x50 boxes, 4 per 100x100 image, 2 classes."""
    rng = np.random.default_rng(seed)
    n = max(1, n_boxes // 4)
    corner = rng.uniform(0, 50, size=(n, 4, 2))
    classes = [ClassInfo(0, "n00000001", "a"), ClassInfo(1, "n00000002", "b")]
    records = []
    for i in range(n):
        boxes = tuple((x, y, x + 50, y + 50) for x, y in corner[i])
        wnid, label = classes[i % 2].wnid, i % 2
        records.append(ImageRecord(f"i{i}", "train", wnid, label, f"i{i}.JPEG", 100, 100, boxes))
    index = SourceIndex(Path("/nowhere"), classes, records)
    start = time.process_time()
    scores = bias_scores(index)
    seconds = time.process_time() - start
    if int(scores["n_objects"].sum()) != 4 * n:
        raise SystemExit("bias_scores lost boxes")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="train images (val adds a tenth)")
    parser.add_argument(
        "--max-side", type=int, default=160, help="largest image side (ImageNet's are ~500)"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="folder for the tree (default: temp)"
    )
    parser.add_argument("--boxes", type=int, default=1_000_000, help="boxes scored in memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_scores_") as tmp:
        root = args.root or Path(tmp) / "imagenet"
        start = time.perf_counter()
        paths = write_tree(root, args.images, args.max_side)
        print(f"wrote {len(paths)} JPEGs in {time.perf_counter() - start:.1f} s under {root}")

        rates, tables = {}, {}
        imagenet.MIN_TASKS_PER_WORKER = 0  # measure the pool even on a small tree
        for workers in (1, 2):
            start = time.perf_counter()
            index = ImageNetSource(root, workers=workers, progress=False).load()
            tables[workers] = bias_scores(index)
            seconds = time.perf_counter() - start
            rates[workers] = _per_minute(len(index.records), seconds)
            print(
                f"headers + scores, workers={workers}: {len(index.records)} images in "
                f"{seconds:.2f} s = {rates[workers]:,.0f} images/min"
            )
        if not tables[1].equals(tables[2]):
            raise SystemExit("scores differ between workers=1 and workers=2")
        print(f"ratio workers=2 / workers=1: {rates[2] / rates[1]:.2f}")

        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                image.convert("RGB")
        seconds = time.perf_counter() - start
        decode_rate = _per_minute(len(paths), seconds)
        print(
            f"full PIL decode: {len(paths)} images in {seconds:.2f} s = {decode_rate:,.0f} images/min"
        )
        print(f"ratio headers + scores (workers=1) / full decode: {rates[1] / decode_rate:.2f}")

    seconds = score_boxes_in_memory(args.boxes)
    print(f"bias_scores alone: {args.boxes:,} boxes in {seconds:.1f} s of CPU")


if __name__ == "__main__":
    main()
