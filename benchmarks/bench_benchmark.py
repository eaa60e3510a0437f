"""What hsi-benchmark's evaluation costs: its loop against a plain torchvision loop, same data.

Both evaluate the same timm model (random weights: speed does not depend on them) on the test
split of one exported Hard-Spurious-ImageNet (`hsi-generate export`, PNG files), with the same
batch size, loader workers, channels-last inputs, inference mode and (on a GPU) bfloat16
autocast. hsi-benchmark's side is `hsi.benchmark.evaluate` over `HSIDataModule(export_dir=...)`
(the data module of `hsi-benchmark data.export_dir=<export>`), group accounting included; the
plain side is `torchvision.datasets.ImageFolder` over each <size>/<placement> folder of the
export, counting hits. Each side runs once to warm up (worker start, first-shape kernels), then
`--repeats` times; the best time counts. Prints images per second for both and the ratio
(hsi-benchmark / plain; the aim is >= 0.9).

    .venv/bin/python benchmarks/bench_benchmark.py                       builds a small dataset
    .venv/bin/python benchmarks/bench_benchmark.py --classes 10 --test 20 --model resnet10t

`--out` is a folder this script builds and exports into (reused on the next run), or any built
dataset that already holds an `export/` (`hsi-generate export out=<it>`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import timm
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import datasets

from hsi.benchmark import default_workers, evaluate, pick_device
from hsi.data.modules import HSIDataModule
from hsi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from hsi.generate.build import run_build
from hsi.generate.export import export_dir, run_export

CONF = Path(__file__).resolve().parents[1] / "conf"


def build_and_export(out: Path, classes: int, test: int, resolution: int) -> Path:
    """A synthetic Hard-Spurious-ImageNet under ``out`` exported as PNG (reused when there)."""
    overrides = [
        f"out={out}",
        f"dataset.resolution={resolution}",
        f"source.root={out.parent / (out.name + '_source')}",
        f"source.num_classes={classes}",
        f"source.val_per_class={test}",
        "source.train_per_class=40",
        "dataset.counts.train.easy=1",
        "dataset.counts.train.medium=1",
        "dataset.counts.train.hard=1",
        "dataset.counts.val=1",
        f"dataset.counts.test={test}",
        "progress=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("generate", overrides=overrides)
    if not (export_dir(cfg) / "metadata.csv").is_file():
        run_build(cfg)
        run_export(cfg)
    return export_dir(cfg)


def hsi_loader(export: Path, resolution: int, batch: int, workers: int, pin: bool):
    generate = {"out": str(export.parent), "dataset": {"resolution": resolution}}
    dm = HSIDataModule(
        generate, eval_batch_size=batch, num_workers=workers, pin_memory=pin, export_dir=export
    )
    dm.setup("test")
    return dm.test_dataloader(), dm.groups


def plain_loader(export: Path, batch: int, workers: int, pin: bool) -> DataLoader:
    transform = eval_transform(IMAGENET_MEAN, IMAGENET_STD)
    folders = sorted(p for p in (export / "test").glob("*/*") if p.is_dir())
    dataset = ConcatDataset([datasets.ImageFolder(str(f), transform=transform) for f in folders])
    return DataLoader(dataset, batch_size=batch, num_workers=workers, pin_memory=pin)


@torch.inference_mode()
def plain_eval(net, loader, device) -> int:
    hits = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(x)
        hits += int((logits.argmax(1).cpu() == y).sum())
    return hits


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/bench/hsi_benchmark"),
        help="a built dataset (its export/ is made if missing), or where to build",
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--test", type=int, default=10, help="test images per class and group")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    workers = default_workers() if args.workers is None else args.workers
    device = pick_device("auto")
    pin = device.type == "cuda"
    out = args.out.resolve()
    if (out / "export" / "metadata.csv").is_file():
        export = out / "export"
    else:
        export = build_and_export(out, args.classes, args.test, args.resolution)
    hsi, groups = hsi_loader(export, args.resolution, args.batch_size, workers, pin)
    plain = plain_loader(export, args.batch_size, workers, pin)
    assert len(hsi.dataset) == len(plain.dataset), (len(hsi.dataset), len(plain.dataset))
    classes = len({p.name for p in (export / "test").glob("*/*/*") if p.is_dir()})
    torch.manual_seed(0)
    net = timm.create_model(args.model, num_classes=classes).to(device).eval()
    net = net.to(memory_format=torch.channels_last)

    def ours():
        evaluate(net, hsi, device, groups, None, progress=False)

    def theirs():
        plain_eval(net, plain, device)

    n = len(plain.dataset)
    t_ours, t_plain = best_time(ours, args.repeats), best_time(theirs, args.repeats)
    print(
        f"{n} test images, {args.model}, batch {args.batch_size}, {workers} workers, {device}, "
        f"{os.cpu_count()} cores"
    )
    print(f"hsi-benchmark evaluate : {n / t_ours:9.1f} img/s ({t_ours:.2f} s)")
    print(f"plain ImageFolder loop : {n / t_plain:9.1f} img/s ({t_plain:.2f} s)")
    print(f"ratio (hsi / plain)    : {t_plain / t_ours:.3f}  (aim >= 0.9)")


if __name__ == "__main__":
    main()
