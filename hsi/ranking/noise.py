"""Noise sensitivity (paper 004, §3.2, Fig. 4): Gaussian noise of a fixed ℓ2 norm added to the
object (foreground) or to everything else (background).

With a mask m (1 inside the object's box), n ~ N(0, 1) per pixel and channel and
f(v) = v / ‖v‖₂ (the ℓ2 norm over the whole image, every channel):

    x_fg = x + α · f(n ⊙ m)          x_bg = x + α · f(n ⊙ (1 − m))

so ‖x_fg − x‖₂ = α and x_fg = x outside the box (and the converse for x_bg). The noise is added
in the **model's input space, after the mean/std normalisation** (the tensor the network reads),
at the model's input resolution; the box is scaled from the source image to that resolution.
The noise of an image is seeded by (seed, image key), so every head sees the same noisy images.

run_noise is ``hsi-rank``'s ``noise`` task: every head of a Study on the noisy val images (noise.csv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from hsi.io import atomic_write_csv, item_rng
from hsi.ranking.features import embed_tensors
from hsi.ranking.score import BOX_COLUMNS, records_of
from hsi.ranking.study import Study
from hsi.sources.images import load_rgb
from hsi.sources.record import Box, ImageRecord

REGIONS = ("fg", "bg")


def box_mask(box: Box, width: int, height: int, resolution: int) -> np.ndarray:
    """Bool [resolution, resolution]: pixels whose centre lies in ``box`` (source pixels) once the
    image is resized to resolution x resolution (the eval transform's squash resize)."""
    sx, sy = resolution / float(width), resolution / float(height)
    centres = np.arange(resolution) + 0.5
    xmin, ymin, xmax, ymax = box
    cols = (centres >= xmin * sx) & (centres < xmax * sx)
    rows = (centres >= ymin * sy) & (centres < ymax * sy)
    return rows[:, None] & cols[None, :]


def union_mask(boxes, width: int, height: int, resolution: int) -> np.ndarray:
    """The union of :func:`box_mask` over ``boxes`` (every ground-truth box of an image)."""
    mask = np.zeros((resolution, resolution), dtype=bool)
    for box in boxes:
        mask |= box_mask(box, width, height, resolution)
    return mask


def noise_delta(
    shape: tuple[int, ...], mask: np.ndarray, alpha: float, rng: np.random.Generator
) -> np.ndarray | None:
    """α · f(n ⊙ mask) as float64 of ``shape`` [C, H, W] (mask [H, W] broadcast over channels);
    None when the mask is empty (no pixel to perturb)."""
    n = rng.standard_normal(shape)
    v = n * mask[None].astype(np.float64)
    norm = float(np.sqrt(np.sum(v * v)))
    if norm == 0.0:
        return None
    return alpha * v / norm


def perturb(
    x: torch.Tensor, mask: np.ndarray, alpha: float, region: str, seed: int, key: str
) -> torch.Tensor | None:
    """``x`` [C, H, W] (normalised input) plus noise of norm ``alpha`` on ``region`` (fg: inside
    ``mask``, bg: outside); None when that region is empty."""
    if region not in REGIONS:
        raise ValueError(f"noise region {region!r} must be one of {REGIONS}")
    if mask.shape != tuple(x.shape[-2:]):
        raise ValueError(f"mask {mask.shape} does not match the input {tuple(x.shape)}")
    where = mask if region == "fg" else ~mask
    # the same n for fg and bg of an image: only the mask differs
    delta = noise_delta(tuple(x.shape), where, float(alpha), item_rng(seed, "rank-noise", key))
    if delta is None:
        return None
    return (x.double() + torch.from_numpy(delta)).to(x.dtype)


# --------------------------------------------------------------------------- the task
def noise_mask(
    row: pd.Series, record: ImageRecord, source: str, resolution: int
) -> np.ndarray | None:
    """The foreground mask of one val image: the detector's box or the ground-truth boxes."""
    if source == "detector":
        box = tuple(float(row[c]) for c in BOX_COLUMNS)
        if any(np.isnan(box)):
            return None
        return box_mask(box, record.width, record.height, resolution)
    if source == "gt":
        if not record.boxes:
            return None
        return union_mask(record.boxes, record.width, record.height, resolution)
    raise ValueError(f"noise.mask={source!r} must be detector or gt")


def spread_ranks(frame: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """At most ``per_class`` images of each class, at evenly spaced ranks (first and last kept)."""
    parts = []
    for _, rows in frame.groupby("label", sort=True):
        rows = rows.sort_values("rank")
        take = np.unique(
            np.linspace(0, len(rows) - 1, min(len(rows), per_class)).round().astype(int)
        )
        parts.append(rows.iloc[take])
    return pd.concat(parts).reset_index(drop=True)


def run_noise(study: Study) -> dict:
    """Fig. 4: each head's accuracy on val images with fg / bg noise of each α (and clean)."""
    cfg = study.cfg.noise
    heads = study.heads()
    frozen = study.frozen
    val = study.split("val")
    if cfg.per_class is not None:
        val = spread_ranks(val, int(cfg.per_class))
    records = records_of(val, study.index)
    transform = frozen.transform()
    alphas = [float(a) for a in cfg.alphas]
    settings = [("clean", 0.0)] + [(region, a) for a in alphas for region in REGIONS]
    correct = {(name, r, a): 0 for name in heads for r, a in settings}
    counted = {(r, a): 0 for r, a in settings}
    skipped = {(r, a): 0 for r, a in settings}
    batch: dict[tuple[str, float], list] = {s: [] for s in settings}
    labels: dict[tuple[str, float], list] = {s: [] for s in settings}

    def flush(setting):
        if not batch[setting]:
            return
        X = embed_tensors(frozen, torch.stack(batch[setting]))
        y = np.asarray(labels[setting])
        for name, head in heads.items():
            correct[(name, *setting)] += int((head.predict(X) == y).sum())
        counted[setting] += len(y)
        batch[setting].clear()
        labels[setting].clear()

    for (_, row), record in zip(val.iterrows(), records, strict=True):
        mask = noise_mask(row, record, str(cfg.mask), frozen.resolution)
        x = transform(Image.fromarray(load_rgb(Path(study.index.root) / record.path)))
        for setting in settings:
            region, alpha = setting
            if region == "clean":
                noisy = x if mask is not None else None
            else:
                noisy = (
                    None
                    if mask is None
                    else perturb(x, mask, alpha, region, int(study.cfg.seed), record.key)
                )
            if noisy is None:
                skipped[setting] += 1
                continue
            batch[setting].append(noisy)
            labels[setting].append(record.label)
            if len(batch[setting]) >= int(study.cfg.batch_size):
                flush(setting)
    for setting in settings:
        flush(setting)
    rows = [
        {
            "head": name,
            "region": r,
            "alpha": a,
            "acc": correct[(name, r, a)] / counted[(r, a)] if counted[(r, a)] else float("nan"),
            "images": counted[(r, a)],
            "skipped": skipped[(r, a)],
        }
        for name in heads
        for r, a in settings
    ]
    table = pd.DataFrame(rows)
    table["mask"] = str(cfg.mask)
    atomic_write_csv(study.out / "noise.csv", table)
    return {"table": table}
