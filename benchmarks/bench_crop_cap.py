"""Bytes per source image of a build, core crops at full resolution vs capped (dataset.crop_cap).

    .venv/bin/python benchmarks/bench_crop_cap.py [--images-per-class 10] [--resolution 224]

Writes an ImageNet-layout tree of photo-like 500x375 JPEGs (a smooth field plus fine grain, one
box covering 35-80 % of each side, as ImageNet's typical object), then runs `hsi-generate build`
(box masks, OpenCV) twice on the same recipe, with dataset.crop_cap=null (the crop as cut from
the source) and dataset.crop_cap=auto (its shorter side at the largest pasted size, 112 px at
224), and prints the bytes per source image the build reports (bg, core, total) and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from hsi.generate.build import run_build
from hsi.sources.voc import voc_xml

CONF = Path(__file__).resolve().parents[1] / "conf"
N_CLASSES = 3


def photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """A smooth colour field (upsampled coarse noise) with fine grain: compresses like a photo."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=float)
    grain = rng.normal(0, 12, size=field.shape)
    return Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))


def write_tree(root: Path, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    wnids = [f"n{i:08d}" for i in range(N_CLASSES)]
    root.mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} class{i}\n" for i, w in enumerate(wnids))
    )
    for split in ("train", "val"):
        (root / "boxes" / split).mkdir(parents=True)
    (root / "val").mkdir()
    n = 0
    for wnid in wnids:
        (root / "train" / wnid).mkdir(parents=True)
        photo(rng).save(root / "train" / wnid / f"{wnid}_0.JPEG", quality=90)  # unboxed
        for _ in range(per_class):
            n += 1
            image_id = f"ILSVRC2012_val_{n:08d}"
            photo(rng).save(root / "val" / f"{image_id}.JPEG", quality=90)
            w, h = rng.uniform(0.35, 0.8, size=2) * (500, 375)
            x0, y0 = rng.uniform(0, 500 - w), rng.uniform(0, 375 - h)
            box = (round(x0), round(y0), round(x0 + w), round(y0 + h))
            (root / "boxes" / "val" / f"{image_id}.xml").write_text(
                voc_xml(image_id, (500, 375), [(wnid, box)])
            )


def build(root: Path, out: Path, cache: Path, resolution: int, per_class: int, crop_cap: str):
    overrides = [
        f"out={out}",
        "source=imagenet",
        f"source.root={root}",
        f"source.cache_dir={cache}",
        "source.progress=false",
        "progress=false",
        f"dataset.resolution={resolution}",
        "dataset.counts.train.easy=0",
        "dataset.counts.train.medium=0",
        "dataset.counts.train.hard=0",
        "dataset.counts.val=0",
        f"dataset.counts.test={per_class}",
        f"dataset.crop_cap={crop_cap}",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("generate", overrides)
    return run_build(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imagenet"
        write_tree(root, args.images_per_class)
        per_image = {}
        for cap in ("null", "auto"):
            s = build(
                root,
                Path(tmp) / cap,
                Path(tmp) / "cache",
                args.resolution,
                args.images_per_class,
                cap,
            )
            ok = s.done + s.skipped
            kinds = ", ".join(f"{k} {v / ok / 1024:.1f} KiB" for k, v in s.asset_bytes.items())
            print(
                f"crop_cap={cap}: {ok} source images, {s.bytes_per_image / 1024:.1f} KiB per image ({kinds})"
            )
            per_image[cap] = s
        before, after = per_image["null"], per_image["auto"]
        print(
            f"per source image: {before.bytes_per_image / 1024:.1f} KiB -> {after.bytes_per_image / 1024:.1f} KiB "
            f"({after.bytes_per_image / before.bytes_per_image:.2f}x); core crops alone "
            f"{before.asset_bytes['core'] / after.asset_bytes['core']:.1f}x smaller"
        )


if __name__ == "__main__":
    main()
