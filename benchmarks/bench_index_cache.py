"""Index time of an unchanged ImageNet tree (from the cache) vs its first index.

    .venv/bin/python benchmarks/bench_index_cache.py [--images 30000] [--root DIR]

Writes an ImageNet-layout tree of tiny JPEGs (16x12 px, 100 classes; 42 % of train images with
a VOC XML box, like ImageNet; val flat with XML) into a temporary folder unless --root is given,
then times ImageNetSource(...).load() with a fresh cache folder twice: the first index (listing,
every header, every XML) and the second on the unchanged tree (listing + cached index), first
without the decode check and then with decode_check=boxed (its outcomes cached as well).
Prints both times (the best of --repeats runs each) and their ratio (aim: <= 0.05), and checks
that the cached index equals the read one.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from PIL import Image

from hsi.sources.imagenet import ImageNetSource
from hsi.sources.voc import voc_xml

N_CLASSES = 100
BOXED = 0.42


def write_tree(root: Path, n_images: int) -> int:
    """n_images train images + a tenth as val; returns the number of files written."""
    wnids = [f"n{i:08d}" for i in range(N_CLASSES)]
    (root / "LOC_synset_mapping.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} class{i}\n" for i, w in enumerate(wnids))
    )
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (120, 80, 40)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    files = 1
    for split in ("train", "val"):
        (root / "boxes" / split).mkdir(parents=True, exist_ok=True)
    n_val = n_images // 10
    for i in range(n_images + n_val):
        wnid = wnids[i % N_CLASSES]
        if i < n_images:
            image_id, folder, xml_dir = (
                f"{wnid}_{i}",
                root / "train" / wnid,
                root / "boxes/train" / wnid,
            )
            boxed = (i * 2654435761 % 1000) / 1000 < BOXED
        else:
            image_id, folder, xml_dir = (
                f"ILSVRC2012_val_{i - n_images + 1:08d}",
                root / "val",
                root / "boxes/val",
            )
            boxed = True
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.JPEG").write_bytes(data)
        files += 1
        if boxed:
            xml_dir.mkdir(parents=True, exist_ok=True)
            (xml_dir / f"{image_id}.xml").write_text(
                voc_xml(image_id, (16, 12), [(wnid, (2, 2, 12, 10))])
            )
            files += 1
    return files


def timed(root: Path, cache_dir: Path, decode_check: str):
    start = time.perf_counter()
    index = ImageNetSource(
        root, progress=False, cache_dir=cache_dir, decode_check=decode_check
    ).load()
    return time.perf_counter() - start, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "imagenet"
        start = time.perf_counter()
        files = write_tree(root, args.images)
        print(f"tree: {files} files under {root} (written in {time.perf_counter() - start:.1f} s)")
        for decode_check in ("none", "boxed"):
            # The best of a few runs each (as timeit does): the machine may be shared.
            firsts, seconds = [], []
            for attempt in range(args.repeats):
                cache_dir = Path(tmp) / f"cache-{decode_check}-{attempt}"
                first, a = timed(root, cache_dir, decode_check)
                firsts.append(first)
                for _ in range(args.repeats):
                    second, b = timed(root, cache_dir, decode_check)
                    seconds.append(second)
                    assert (a.records, a.skipped, a.box_errors) == (
                        b.records,
                        b.skipped,
                        b.box_errors,
                    )
            first, second = min(firsts), min(seconds)
            counts = a.counts()["train"]
            print(
                f"decode_check={decode_check}: first index {first:.2f} s, unchanged tree "
                f"{second:.3f} s, ratio {second / first:.3f} (aim <= 0.05); "
                f"{len(a.records)} records, train boxed {counts['with_boxes']}/{counts['images']}"
            )


if __name__ == "__main__":
    main()
