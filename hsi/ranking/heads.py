"""Linear heads trained from scratch on the embeddings of a ranked subset (paper 004, §3.1).

Each head is DFR's paper recipe (:func:`hsi.methods.dfr_fit.fit_dfr_paper`: a StandardScaler and
a linear layer trained full batch with SGD, a cosine schedule and an l2 penalty) fitted on the
k images per class of one subset, as the paper retrains the last layer "similar to Kirichenko et
al., 2023". Heads are saved as ``heads/<subset>.pt`` (weight, bias, scaler mean and scale) and
loaded from there on a rerun.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hsi.io import atomic_write_bytes
from hsi.methods.dfr_fit import fit_dfr_paper
from hsi.models import load_torch_file


@dataclass(frozen=True)
class Head:
    """x -> W · (x − mean) / scale + b."""

    weight: np.ndarray  # [K, D]
    bias: np.ndarray  # [K]
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]

    def logits(self, X: np.ndarray) -> np.ndarray:
        z = (np.asarray(X, np.float64) - self.mean) / self.scale
        return z @ self.weight.T + self.bias

    def predict(self, X: np.ndarray, columns: list[int] | None = None) -> np.ndarray:
        """Class indices; with ``columns`` only those logits compete (a class subset, as
        hsi.benchmark.restrict_logits) and the answer is the winning column's class."""
        logits = self.logits(X)
        if columns is None:
            return logits.argmax(axis=1)
        return np.asarray(columns, np.int64)[logits[:, list(columns)].argmax(axis=1)]


def fit_head(
    X: np.ndarray, y: np.ndarray, num_classes: int, epochs: int, lr: float, l2: float, seed: int
) -> Head:
    if lr * l2 >= len(X):
        raise ValueError(
            f"retrain.lr * retrain.l2 = {lr * l2:g} >= {len(X)} training images of a subset: each "
            f"SGD step would overshoot the l2 term; lower retrain.l2 or retrain.lr"
        )
    scaler, linear = fit_dfr_paper(
        X, y, num_classes=num_classes, epochs=epochs, lr=lr, l2=l2, seed=seed
    )
    return Head(
        weight=linear.weight.detach().double().numpy(),
        bias=linear.bias.detach().double().numpy(),
        mean=np.asarray(scaler.mean_, np.float64),
        scale=np.asarray(scaler.scale_, np.float64),
    )


def save_head(path: Path, head: Head) -> None:
    state = {
        name: torch.from_numpy(getattr(head, name)) for name in ("weight", "bias", "mean", "scale")
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_head(path: Path) -> Head:
    state = load_torch_file(path, "a saved head")
    return Head(**{name: state[name].numpy() for name in ("weight", "bias", "mean", "scale")})
