"""The image transforms of the paper (paper 000, §5 and App. F), built from torchvision.

Training (`augment="paper"`): RandomResizedCrop to the resolution with aspect ratio in
(0.75, 4/3), then a horizontal flip. Evaluation: Hard-Spurious-ImageNet samples are already
resolution x resolution, so only ToTensor and the mean/std normalisation; a source's own images
are not square, so they are resized to resolution x resolution first (`resize`).

Random transforms draw from torch's global CPU generator; `apply_seeded` fixes that generator
per draw, which makes a batch independent of the DataLoader's worker count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("paper", "none")
PAPER_CROP_RATIO = (0.75, 4 / 3)
PAPER_CROP_SCALE = (0.08, 1.0)  # torchvision's default, as in the paper's ImageNet recipe


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: int | None = None,
) -> T.Compose:
    """ToTensor + Normalize; with `resize`, first a bilinear resize to resize x resize."""
    steps: list = [T.Resize((resize, resize))] if resize else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def train_transform(
    resolution: int,
    augment: str = "paper",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: bool = False,
    crop_scale: Sequence[float] = PAPER_CROP_SCALE,
    crop_ratio: Sequence[float] = PAPER_CROP_RATIO,
) -> T.Compose:
    """`augment="paper"`: RandomResizedCrop + horizontal flip; `"none"`: the eval transform.

    `resize` (non-square sources) only matters for `"none"`: RandomResizedCrop already outputs
    resolution x resolution.
    """
    if augment == "none":
        return eval_transform(mean, std, resolution if resize else None)
    if augment != "paper":
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    return T.Compose(
        [
            T.RandomResizedCrop(resolution, scale=tuple(crop_scale), ratio=tuple(crop_ratio)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def apply_seeded(transform: Callable, image, seed: int | None):
    """`transform(image)` with torch's CPU generator set to `seed` (restored afterwards).

    Only the CPU generator is touched (not CUDA's), so a model's own randomness is left alone.
    `seed=None` draws from the generator as it is.
    """
    if seed is None:
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        return transform(image)
