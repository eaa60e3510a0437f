"""The frozen pretrained model of paper 004 and its pre-logit embeddings of a list of images.

Embeddings come from :mod:`hsi.embeddings` (``forward_features`` + ``forward_head(pre_logits)``,
eval mode) and are cached once per model on disk by :class:`hsi.embeddings.EmbeddingCache`, keyed
by the weight file's content and by the images (root, keys, resolution, normalisation), so every
subset's head, k and task reuses them. Images go through the project's eval transform: a squash
resize to ``resolution`` x ``resolution``, then the model's mean/std normalisation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from hsi.data.datasets import SourceDataset
from hsi.data.transforms import eval_transform
from hsi.embeddings import EmbeddingCache, extract_embeddings
from hsi.models import cached_weights, embed, model_input_config
from hsi.sources.record import ImageRecord


@dataclass
class Frozen:
    """A frozen network with the weight file that identifies it and its input settings."""

    net: nn.Module
    weights: Path  # the file whose content keys the embedding cache
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    device: torch.device

    def transform(self):
        return eval_transform(self.mean, self.std, resize=self.resolution)


def load_frozen(
    model_cfg: DictConfig, num_classes: int, resolution: int, device: torch.device
) -> Frozen:
    """The model of ``model_cfg`` (``model.checkpoint`` may be an hsi-train run folder), frozen.

    Its own head is not used (heads are trained on its embeddings), so a head of another class
    count is simply replaced. Retraining needs pretrained weights: a checkpoint, a weight file or
    timm weights in the local cache.
    """
    from hsi.benchmark import model_config

    node = model_config(model_cfg)
    if node.get("checkpoint"):
        weights = Path(node["checkpoint"])
    elif node.get("weights"):
        weights = Path(str(node["weights"]))
    elif node.get("pretrained"):
        weights = cached_weights(str(node["name"]))
    else:
        raise ValueError(
            f"model {node.get('name')}: paper 004 retrains the head of a *pretrained* model; set "
            f"model.checkpoint=<hsi-train run>, model.weights=<file> or model.pretrained=true"
        )
    net = instantiate(node)(num_classes=num_classes)
    net = net.to(device).eval().requires_grad_(False)
    input_cfg = model_input_config(net)
    return Frozen(
        net=net,
        weights=weights,
        resolution=int(resolution),
        mean=tuple(float(v) for v in input_cfg["mean"]),
        std=tuple(float(v) for v in input_cfg["std"]),
        name=str(node["name"]),
        device=device,
    )


def images_key(tag: str, root: Path, records: Sequence[ImageRecord], frozen: Frozen) -> str:
    """Names a list of images as the model sees them: a file-name-safe ``<tag>-<digest>``."""
    what = {
        "root": str(Path(root).resolve()),
        "keys": [r.key for r in records],
        "labels": [r.label for r in records],
        "resolution": frozen.resolution,
        "mean": frozen.mean,
        "std": frozen.std,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return f"{tag}-{digest}"


def embeddings(
    frozen: Frozen,
    records: Sequence[ImageRecord],
    root: Path,
    cache: EmbeddingCache,
    tag: str,
    batch_size: int = 64,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X [N, D], y [N])`` of ``records`` in their order, from the cache or computed once."""
    if not records:
        raise ValueError(f"no images to embed for {tag!r}")

    def compute():
        dataset = SourceDataset(records, root, frozen.transform())
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
        return extract_embeddings(frozen.net, loader, frozen.device)

    X, y, _ = cache.get_or_compute(
        frozen.weights, tag, images_key(tag, root, records, frozen), compute
    )
    return X, y


@torch.no_grad()
def embed_tensors(frozen: Frozen, x: torch.Tensor) -> np.ndarray:
    """Embeddings of already transformed inputs [N, C, H, W] (e.g. noisy ones)."""
    frozen.net.eval()
    return embed(frozen.net, x.to(frozen.device)).float().cpu().numpy()
