"""Embeddings of a frozen network: extraction and an on-disk cache keyed by checkpoint and data.

DFR (paper 000, §5) refits the last layer on them; the same cache serves any later consumer
of a model's pre-logit features (a model-zoo benchmark, rankings). Embeddings are
``forward_features`` + ``forward_head(pre_logits=True)`` in eval mode with eval transforms,
cached at ``<root>/<sha256(checkpoint)[:16]>/<split>-<data key>.npz``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hsi.generate.spec import without_runtime_keys
from hsi.io import atomic_write_bytes, atomic_write_text, sha256_file
from hsi.models import embed, evaluating, split_batch

Embeddings = tuple[np.ndarray, np.ndarray, np.ndarray]  # X float32 [N, D], y int64 [N], g int64 [N]


def _network(model: nn.Module) -> nn.Module:
    """The timm network inside a training module (``.model``), or the network itself."""
    if hasattr(model, "forward_features"):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "forward_features"):
        return inner
    raise TypeError(
        f"{type(model).__name__} has no forward_features/forward_head (a timm model is expected)"
    )


def extract_embeddings(
    model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu"
) -> Embeddings:
    """Pre-logit embeddings of every sample of ``loader`` (in its order), in eval mode, no grad.

    Returns ``(X float32 [N, D], y int64 [N], g int64 [N])``; ``g`` is 0 where batches carry no
    group id. The model is handed back in its former mode and device.
    """
    net = _network(model)
    xs, ys, gs = [], [], []
    with evaluating(net, device):
        for batch in loader:
            x, y, g = split_batch(batch)
            if y is None:
                raise ValueError("the embedding loader must yield (x, y, group_id) batches")
            xs.append(embed(net, x.to(device)).float().cpu())
            ys.append(y.cpu())
            gs.append(torch.zeros_like(y) if g is None else g.cpu())
    return (
        torch.cat(xs).numpy().astype(np.float32),
        torch.cat(ys).numpy().astype(np.int64),
        torch.cat(gs).numpy().astype(np.int64),
    )


class EmbeddingCache:
    """Embeddings on disk at ``root/<sha256(checkpoint)[:16]>/<split>-<data_key>.npz``.

    The key is the checkpoint file's content, not its path, so a retrained model never reuses
    stale embeddings and a copied checkpoint reuses them. ``data_key`` names the data (e.g. the
    dataset name and resolution): letters, digits, ``.``, ``_``, ``-`` and ``=``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._hashes: dict[tuple[str, int, int], str] = {}

    def checkpoint_key(self, checkpoint_path: str | Path) -> str:
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"DFR checkpoint {path} does not exist; point method.erm_checkpoint at an ERM run's .ckpt"
            )
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in self._hashes:  # hashing a large checkpoint once per process is enough
            self._hashes[memo] = sha256_file(path)[:16]
        return self._hashes[memo]

    def path(self, checkpoint_path: str | Path, split: str, data_key: str) -> Path:
        for name, value in (("split", split), ("data_key", data_key)):
            if not re.fullmatch(r"[A-Za-z0-9._=-]+", value):
                raise ValueError(
                    f"{name}={value!r} must be a plain file-name part (letters, digits, . _ - =)"
                )
        return self.root / self.checkpoint_key(checkpoint_path) / f"{split}-{data_key}.npz"

    def get_or_compute(
        self,
        checkpoint_path: str | Path,
        split: str,
        data_key: str,
        compute_fn: Callable[[], Embeddings],
    ) -> Embeddings:
        """The cached ``(X, y, g)``, or ``compute_fn()``'s, saved atomically first."""
        path = self.path(checkpoint_path, split, data_key)
        if path.is_file():
            return _load_embeddings(path)
        X, y, g = compute_fn()
        X, y, g = np.asarray(X, np.float32), np.asarray(y, np.int64), np.asarray(g, np.int64)
        if not (X.ndim == 2 and len(X) == len(y) == len(g)):
            raise ValueError(
                f"compute_fn returned X {X.shape}, y {y.shape}, g {g.shape}; expected [N, D], [N], [N]"
            )
        buffer = io.BytesIO()
        np.savez(buffer, X=X, y=y, g=g)
        atomic_write_bytes(path, buffer.getvalue())
        origin = path.parent / "checkpoint.txt"  # which file the hash stands for, for people
        if not origin.exists():
            atomic_write_text(origin, f"{Path(checkpoint_path).resolve()}\n")
        return X, y, g


def _load_embeddings(path: Path) -> Embeddings:
    try:
        with np.load(path) as data:
            return data["X"], data["y"], data["g"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"embedding cache file {path} is unreadable ({err}); delete it to extract again"
        ) from err


def embedding_loader(
    X: np.ndarray, y: np.ndarray, g: np.ndarray, batch_size: int = 4096
) -> DataLoader:
    """Batches ``(embedding, y, group_id)`` in order, for ``trainer.test(dfr_module, loader)``."""
    dataset = TensorDataset(
        torch.as_tensor(X, dtype=torch.float32),
        torch.as_tensor(y).long(),
        torch.as_tensor(g).long(),
    )
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


# Data-module keys that change how data is served, not what the samples are: left out of the
# embedding cache's data key, so a sweep over them reuses the embeddings.
# (`sampling` is replaced by whether the train split is cut to the Easy groups: sampling=easy
# serves other train samples, balanced only draws the same ones differently.)
_SERVING_KEYS = (
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "sampling",
    "augment",
    "seed",
    "pin_memory",
    "persistent_workers",
)


def data_key(cfg: DictConfig) -> str:
    """Names the data a split's embeddings come from: the data config without serving keys."""
    node = OmegaConf.to_container(cfg.data, resolve=True)
    easy_only = node.get("sampling") == "easy"
    for key in _SERVING_KEYS:
        node.pop(key, None)
    if easy_only:
        node["train_easy_only"] = True
    # how a build or a source read runs (workers, shards, progress) is not what it holds
    for sub in ("generate", "source"):
        if isinstance(node.get(sub), dict):
            node[sub] = without_runtime_keys(node[sub])
    digest = hashlib.sha256(json.dumps(node, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    name = (node.get("generate") or {}).get("dataset", {}).get("name") or "source"
    return f"{name}-{digest}"
