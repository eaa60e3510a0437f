"""Noise sensitivity (paper 004, §4.2, Fig. 4): Gaussian noise of a fixed ℓ2 norm added to the
object (foreground) or to everything else (background).

With a mask m (1 inside the object's box), n ~ N(0, 1) per pixel and channel and
f(v) = v / ‖v‖₂ (the ℓ2 norm over the whole image, every channel):

    x_fg = x + α · f(n ⊙ m)          x_bg = x + α · f(n ⊙ (1 − m))

so ‖x_fg − x‖₂ = α and x_fg = x outside the box (and the converse for x_bg). The noise is added
in the **model's input space, after the mean/std normalisation** (the tensor the network reads),
at the model's input resolution; the box is scaled from the source image to that resolution.
The noise of an image is seeded by (seed, image key), so every head sees the same noisy images.
"""

from __future__ import annotations

import numpy as np
import torch

from hsi.io import item_rng
from hsi.sources.record import Box

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
