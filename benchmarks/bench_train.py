"""What Lightning costs: the same fit done by `Trainer.fit` and by a plain PyTorch loop.

Both train the same timm model from the same initial weights on the same batches (seeded
random images held in memory, so data loading costs nothing in either), with the same epochs,
batch size and optimizer (hsi-train's ERM recipe: SGD, momentum 0.9, weight decay 1e-3). The
Lightning side is hsi-train's own ERMModule (its per-step loss/accuracy logging included) under
a Trainer without logger, checkpoints, progress bar or validation. Prints seconds for both and
their ratio.

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --model resnet18 --samples 4096 --resolution 64 --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from hsi.methods.erm import ERMModule
from hsi.models import create_model

LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 1e-3


def make_loader(
    samples: int, resolution: int, classes: int, batch_size: int, seed: int
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, resolution, resolution, generator=generator)
    y = torch.randint(0, classes, (samples,), generator=generator)
    dataset = TensorDataset(x, y, torch.zeros(samples, dtype=torch.long))
    # the same shuffled order in both runs: each loader gets a generator seeded alike
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def plain_fit(model: torch.nn.Module, loader: DataLoader, epochs: int) -> float:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y, _g in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def lightning_fit(model: torch.nn.Module, loader: DataLoader, epochs: int) -> float:
    module = ERMModule(
        model=model,
        optimizer={
            "_target_": "torch.optim.SGD",
            "lr": LR,
            "momentum": MOMENTUM,
            "weight_decay": WEIGHT_DECAY,
        },
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def warm_up(model: torch.nn.Module, loader: DataLoader) -> None:
    """One step per batch shape on a throw-away copy: the first call of a shape is slow on CPU
    (kernel selection), and neither side should pay it."""
    spare = copy.deepcopy(model)
    optimizer = torch.optim.SGD(spare.parameters(), lr=LR)
    shapes = set()
    for x, y, _g in loader:
        if x.shape in shapes:
            continue
        shapes.add(x.shape)
        optimizer.zero_grad()
        F.cross_entropy(spare(x), y).backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="resnet10t", help="a timm model name (trained from scratch)"
    )
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings(
        "ignore", message=".*(srun|does not have many workers|LeafSpec|val_dataloader).*"
    )
    logging.getLogger("lightning").setLevel(logging.WARNING)  # the numbers, not Lightning's notices

    torch.manual_seed(args.seed)
    initial = create_model(args.model, args.classes)
    loader = make_loader(args.samples, args.resolution, args.classes, args.batch_size, args.seed)
    steps = args.epochs * len(loader)
    print(
        f"{args.model}, {args.samples} images {args.resolution}px, batch {args.batch_size}, "
        f"{args.epochs} epochs = {steps} steps, {torch.get_num_threads()} threads"
    )
    warm_up(initial, loader)

    plain = plain_fit(copy.deepcopy(initial), loader, args.epochs)
    loader = make_loader(args.samples, args.resolution, args.classes, args.batch_size, args.seed)
    lightning = lightning_fit(copy.deepcopy(initial), loader, args.epochs)
    print(f"plain PyTorch loop : {plain:8.2f} s  ({1000 * plain / steps:6.1f} ms/step)")
    print(f"Lightning fit      : {lightning:8.2f} s  ({1000 * lightning / steps:6.1f} ms/step)")
    print(f"ratio Lightning / plain: {lightning / plain:.3f}")


if __name__ == "__main__":
    main()
