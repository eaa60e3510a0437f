"""Figures of a built dataset itself (paper 000, §4): Fig. 5, one source image's object in the 12
groups, and Fig. 10, source images beside their inpainted backgrounds.

    figures/fig5_samples.{png,pdf}      rows: the sizes, small to large; columns: CeO CoO CeR CoR,
                                        each titled with its group and category (Easy/Medium/Hard)
    figures/fig10_backgrounds.{png,pdf} per image: the source image with its object boxes, then
                                        the inpainted background every group of it reuses

The images are drawn with a seed (or named), so the same dataset gives the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hsi.groups import PLACEMENTS, category
from hsi.io import item_rng
from hsi.reporting.figures import _figure, save_figure


def _pick(available: Sequence[str], ids: Sequence[str] | None, count: int, seed: int, what: str):
    available = sorted(available)
    if not available:
        raise ValueError(f"{what}: the dataset has no image to show")
    if ids:
        missing = [i for i in ids if i not in set(available)]
        if missing:
            raise ValueError(f"{what}: {missing} are not in the dataset (e.g. {available[:3]})")
        return list(ids)
    order = item_rng(seed, what).permutation(len(available))
    return [available[i] for i in order[:count]]


def fig5_rows(
    composer, image: str | None = None, split: str = "test", seed: int = 0
) -> pd.DataFrame:
    """The recipe rows of Fig. 5: one `split` image in each of the 12 groups (`image`: its
    fg_image key; None: a seeded draw among the images shown in every group), by group id."""
    recipe = composer.recipe[composer.recipe["split"] == split]
    groups = recipe["group_id"].nunique()
    complete = recipe.groupby("fg_image")["group_id"].nunique()
    choice = [image] if image else None
    key = _pick(complete[complete == groups].index, choice, 1, seed, "samples.image")[0]
    rows = recipe[recipe["fg_image"] == key].drop_duplicates("group_id")
    return rows.sort_values("group_id").reset_index(drop=True)


def fig5_samples(
    dataset: str | Path,
    stem: str | Path,
    image: str | None = None,
    split: str = "test",
    seed: int = 0,
) -> list[Path]:
    """Fig. 5 of the built `dataset` (hsi-generate's `out`): the rows of `fig5_rows`, composed."""
    from hsi.generate.compose import Composer

    composer = Composer.from_output(dataset)
    rows = fig5_rows(composer, image, split, seed)
    key = rows["fg_image"].iloc[0]
    sizes = sorted(rows["size"].unique())
    fig = _figure(1.6 * len(PLACEMENTS), 1.7 * len(sizes) + 0.3)
    axes = fig.subplots(len(sizes), len(PLACEMENTS), squeeze=False)
    for row in rows.itertuples(index=False):
        rank = sizes.index(row.size)
        placement = str(row.group).split("_")[0]
        ax = axes[rank][PLACEMENTS.index(placement)]
        ax.imshow(composer(row))
        ax.set_title(f"{row.group} ({category(placement, rank).capitalize()})", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{key} ({rows['wnid'].iloc[0]}) in the 12 groups (cf. Fig. 5)", fontsize=9)
    return save_figure(fig, stem)


def fig10_backgrounds(
    dataset: str | Path,
    stem: str | Path,
    count: int = 4,
    images: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Fig. 10: `count` source images of the built `dataset` (or the `images` keys) with their
    object boxes, beside the inpainted background the dataset made of each."""
    from omegaconf import OmegaConf
    from PIL import Image

    from hsi.generate.assets import AssetStore
    from hsi.generate.layout import DatasetFolder
    from hsi.sources import load_source

    folder = DatasetFolder(dataset)
    folder.require_built()
    recipe: pd.DataFrame = folder.read_recipe()
    store = AssetStore(folder.out)
    keys = [k for k in recipe["bg_image"].unique() if store.path("bg", k).is_file()]
    chosen = _pick(keys, images, int(count), seed, "samples.backgrounds")
    index = load_source(OmegaConf.load(folder.config_path).source)
    records = {r.key: r for r in index.records}
    fig = _figure(2 * 1.8, 1.8 * len(chosen) + 0.3)
    axes = fig.subplots(len(chosen), 2, squeeze=False)
    for (left, right), key in zip(axes, chosen, strict=True):
        record = records.get(key)
        if record is None:
            raise ValueError(
                f"samples.backgrounds: {key} is not in the dataset's source {index.root}"
            )
        with Image.open(Path(index.root) / record.path) as im:
            left.imshow(np.asarray(im.convert("RGB")))
        for x0, y0, x1, y1 in record.boxes:
            left.add_patch(_box(x0, y0, x1 - x0, y1 - y0))
        left.set_title(f"{key} (original)", fontsize=7)
        right.imshow(store.load("bg", key))
        right.set_title("inpainted background", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Originals and their inpainted backgrounds (cf. Fig. 10)", fontsize=9)
    return save_figure(fig, stem)


def _box(x: float, y: float, w: float, h: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor="yellow", linewidth=1.2)
