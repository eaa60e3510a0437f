"""Benchmark of hsi-generate on the synthetic source (CPU; about a minute by default).

Prints:
- inpainting calls per source image (must be 1) and model loads per worker (LaMa from a tiny
  TorchScript module, so that there is a model to load: must be 1 per worker);
- the speed-up of 2 workers over 1 on the same build;
- peak RSS of a build of N and of 4N source images (each in a fresh process);
- the per-sample cost of composing a sample on the fly vs reading the exported JPEG, both
  followed by the same torchvision transforms (the paper's training augmentation), and the ratio.

    .venv/bin/python benchmarks/bench_generate.py [--classes 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESOLUTION = 64


def counts(scale: int) -> list[str]:
    """Per class: train 4*2s + 8*s = 16s, val 12s, test 2s distinct source images -> 30s."""
    return [
        f"dataset.counts.train.easy={2 * scale}",
        f"dataset.counts.train.medium={scale}",
        f"dataset.counts.train.hard={scale}",
        f"dataset.counts.val={scale}",
        f"dataset.counts.test={2 * scale}",
    ]


def overrides(workdir: Path, out: Path, classes: int, scale: int, *extra: str) -> list[str]:
    return [
        f"out={out}",
        f"source.root={workdir / 'source'}",
        f"source.num_classes={classes}",
        f"source.train_per_class={28 * 4}",  # enough for the 4N build (16 * 4 + 12 * 4)
        f"source.val_per_class={2 * 4}",
        "source.progress=false",
        f"dataset.resolution={RESOLUTION}",
        "progress=false",
        *counts(scale),
        *extra,
    ]


def make_cfg(args: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("generate", args)


# Run in a fresh interpreter: peak RSS of one build. VmHWM belongs to the new address space;
# getrusage's ru_maxrss would also count the parent's peak, which Linux carries over execve.
RSS_CHILD = """
import json, resource, sys, time
from hydra import compose, initialize_config_dir
from hsi.generate.build import run_build
with initialize_config_dir({conf!r}, version_base="1.3"):
    cfg = compose("generate", json.loads(sys.argv[1]))
start = time.perf_counter()
summary = run_build(cfg)
try:
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    peak_kib = int(status.split()[0])
except (OSError, IndexError):
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"images": summary.items, "seconds": time.perf_counter() - start, "peak_kib": peak_kib}}))
"""


def peak_rss(args: list[str]) -> dict:
    code = RSS_CHILD.format(conf=str(CONF))
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_lama(path: Path) -> Path:
    """A TorchScript module with LaMa's signature (fills the hole with grey)."""
    import torch

    class GreyFill(torch.nn.Module):
        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return image * (1 - mask) + 0.5 * mask

    torch.jit.script(GreyFill()).save(str(path))
    return path


def per_sample_seconds(load, rows, transform, repeats: int = 2) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for row in rows:
            transform(load(row))
    return (time.perf_counter() - start) / (repeats * len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    opts = parser.parse_args()

    from PIL import Image
    from torchvision import transforms

    from hsi.generate.build import run_build
    from hsi.generate.compose import Composer
    from hsi.generate.export import run_export
    from hsi.sources import load_source

    with tempfile.TemporaryDirectory() as tmp:
        workdir = opts.workdir or Path(tmp)
        k = opts.classes
        load_source(make_cfg(overrides(workdir, workdir / "unused", k, 4)).source)  # generate once

        print(f"== hsi-generate benchmark: synthetic source, {k} classes, {RESOLUTION} px ==")
        # 1. calls per image and loads per worker, with a model to load
        checkpoint = tiny_lama(workdir / "tiny-lama.pt")
        lama = run_build(
            make_cfg(
                overrides(
                    workdir,
                    workdir / "lama",
                    k,
                    1,
                    "workers=2",
                    "inpaint=lama",
                    f"inpaint.checkpoint={checkpoint}",
                )
            )
        )
        images = sum(c["images"] for c in lama.workers.values())
        calls = sum(c["inpaint_calls"] for c in lama.workers.values())
        print(
            f"inpainting calls per source image: {calls / images:.3f}  ({calls} calls, {images} images)"
        )
        for pid, c in sorted(lama.workers.items()):
            print(
                f"model loads in worker {pid}: inpainter {c['inpaint_loads']}, masker {c['mask_loads']} "
                f"({c['images']} images)"
            )

        # 2. speed-up of 2 workers over 1 (OpenCV inpainting, the default), same 4N build
        seconds = {}
        for workers in (1, 2):
            out = workdir / f"speed-w{workers}"
            start = time.perf_counter()
            summary = run_build(make_cfg(overrides(workdir, out, k, 4, f"workers={workers}")))
            seconds[workers] = time.perf_counter() - start
            print(
                f"build of {summary.items} images with {workers} worker(s): {seconds[workers]:.2f} s "
                f"({1000 * seconds[workers] / summary.items:.1f} ms/image, process start included)"
            )
        print(f"speed-up of 2 workers over 1: {seconds[1] / seconds[2]:.2f}x")

        # 3. peak RSS for N and 4N images, each in a fresh process
        for scale in (1, 4):
            r = peak_rss(overrides(workdir, workdir / f"rss-{scale}", k, scale))
            print(
                f"peak RSS, build of {r['images']} images (workers=1): {r['peak_kib'] / 1024:.0f} MiB "
                f"({r['seconds']:.1f} s)"
            )

        # 4. composing on the fly vs reading an exported JPEG, same transforms after either
        built = workdir / "speed-w1"
        run_export(
            make_cfg(overrides(workdir, built, k, 4, "export.format=jpeg", "export.quality=95"))
        )
        exported = workdir / "speed-w1" / "export"
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(RESOLUTION, ratio=(0.75, 4 / 3)),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )
        import pandas as pd

        rows = pd.read_csv(exported / "metadata.csv").to_dict("records")
        for cache in (256, 0):
            composer = Composer.from_output(built, cache_size=cache)
            on_the_fly = per_sample_seconds(
                lambda r, composer=composer: Image.fromarray(composer(r)), rows, transform
            )
            jpeg = per_sample_seconds(
                lambda r: Image.open(exported / r["path"]).convert("RGB"), rows, transform
            )
            print(
                f"per sample, asset cache {cache:>3}: compose {1e6 * on_the_fly:.0f} us, exported JPEG "
                f"{1e6 * jpeg:.0f} us, ratio compose/JPEG {on_the_fly / jpeg:.2f} ({len(rows)} samples)"
            )


if __name__ == "__main__":
    main()
