"""Compose one Hard-Spurious-ImageNet sample from its recipe row and the assets (paper 000, §4).

background = the inpainted asset of `bg_image`; core = the crop of `fg_image`, resized to the
group's size s (`squash`, the paper: s x s whatever the aspect; or `fit`: the longer side s,
centred in the s x s square), pasted at `placement_xy(position, s, resolution)`. `paste="rect"`
pastes the whole rectangle; `paste="alpha"` (SAM variant) only the object's mask, resized the
same way with nearest neighbour. Composition is deterministic, so an exported PNG is exactly
what `compose` returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hsi.generate.assets import AssetStore, resize_mask, resize_rgb
from hsi.generate.layout import PASTE_MODES, RESIZE_MODES, DatasetFolder
from hsi.groups import placement_xy


def fit_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) of a width x height crop scaled so its longer side is `size` (each at least 1)."""
    scale = size / max(width, height)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def paste_object(
    background: np.ndarray,
    core: np.ndarray,
    alpha: np.ndarray | None,
    size: int,
    position: str,
    resize_mode: str = "squash",
) -> np.ndarray:
    """A copy of `background` with `core` resized into the s x s square of `position`.

    With `alpha` (uint8 mask of the core crop) only the mask's pixels are pasted.
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"dataset.resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    resolution = background.shape[0]
    if background.shape[:2] != (resolution, resolution) or size > resolution:
        raise ValueError(f"cannot paste a {size} px object on a {background.shape[:2]} background")
    if alpha is not None and alpha.shape[:2] != core.shape[:2]:
        raise ValueError(f"alpha {alpha.shape[:2]} and core crop {core.shape[:2]} differ in size")
    height, width = core.shape[:2]
    if resize_mode == "squash":
        w, h = size, size
    else:
        w, h = fit_size(width, height, size)
    x, y = placement_xy(position, size, resolution)
    x += (size - w) // 2
    y += (size - h) // 2
    out = np.array(background, dtype=np.uint8, copy=True)
    obj = resize_rgb(core, w, h)
    if alpha is None:
        out[y : y + h, x : x + w] = obj
    else:
        keep = resize_mask(alpha, w, h) > 127
        out[y : y + h, x : x + w][keep] = obj[keep]
    return out


def _field(row, name: str):
    """A recipe field of a dict, a pandas row or a namedtuple (itertuples).

    Indexing comes first: on a pandas Series, getattr(row, "size") is Series.size (the number of
    fields), not the recipe's `size` column."""
    if isinstance(row, tuple) and hasattr(row, "_fields"):
        return getattr(row, name)
    return row[name]


def compose(
    row,
    store: AssetStore | str | os.PathLike,
    resolution: int,
    resize_mode: str = "squash",
    paste: str = "rect",
) -> np.ndarray:
    """The sample of one recipe row (a pandas row, a namedtuple or a mapping) as uint8 res x res x 3.

    `store` is an AssetStore or the build's output folder.
    """
    if paste not in PASTE_MODES:
        raise ValueError(f"dataset.paste must be one of {PASTE_MODES}, got {paste!r}")
    if not isinstance(store, AssetStore):
        store = AssetStore(store)
    fg, bg_key = str(_field(row, "fg_image")), str(_field(row, "bg_image"))
    background = store.load("bg", bg_key)
    if background.shape != (resolution, resolution, 3):
        raise ValueError(
            f"{store.path('bg', bg_key)}: background is {background.shape}, expected "
            f"({resolution}, {resolution}, 3); the assets were built for another dataset.resolution"
        )
    alpha = store.load("alpha", fg) if paste == "alpha" else None
    return paste_object(
        background,
        store.load("core", fg),
        alpha,
        int(_field(row, "size")),
        str(_field(row, "position")),
        resize_mode,
    )


@dataclass
class Composer:
    """Everything needed to serve a built dataset: recipe, assets and the composition settings."""

    out: Path
    recipe: pd.DataFrame
    resolution: int
    resize_mode: str = "squash"
    paste: str = "rect"
    cache_size: int = 256

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.store = AssetStore(self.out, cache_size=self.cache_size)

    @classmethod
    def from_output(cls, out: str | os.PathLike, cache_size: int = 256) -> Composer:
        """The built dataset in `out` (`hsi-generate build`), with its own settings."""
        folder = DatasetFolder(out)
        folder.require_built()
        spec = folder.spec()
        return cls(
            out=folder.out,
            recipe=folder.read_recipe(),
            resolution=spec.resolution,
            resize_mode=spec.resize_mode,
            paste=spec.paste,
            cache_size=cache_size,
        )

    def __len__(self) -> int:
        return len(self.recipe)

    def __call__(self, row) -> np.ndarray:
        return compose(row, self.store, self.resolution, self.resize_mode, self.paste)

    def sample(self, i: int) -> np.ndarray:
        """The i-th sample of the recipe."""
        return self(self.recipe.iloc[i])
