"""Map-style datasets (HSI samples, a source's own images) and the seeded epoch sampler.

Every item is `(x, label, group_id)`. An index may be a plain int or `(int, draw_seed)`; the
sampler hands out the pairs, so each draw's augmentation is fixed by (seed, epoch, position)
and a batch is the same whatever the number of DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from hsi.data.transforms import apply_seeded
from hsi.generate.assets import AssetStore
from hsi.generate.compose import compose
from hsi.generate.layout import EXPORT_METADATA_FILE
from hsi.io import item_rng, stable_seed
from hsi.sources.images import load_rgb
from hsi.sources.record import ImageRecord

Index = int | tuple[int, int]


def _unpack(item: Index) -> tuple[int, int | None]:
    if isinstance(item, tuple):
        return int(item[0]), int(item[1])
    return int(item), None


class PixelCache:
    """Composed samples kept in memory, up to `max_bytes`, keyed by sample_id.

    Composing (decode two PNGs, resize, paste) costs about as much as a training step of a small
    model at 64 px, and a sample's pixels are the same in every epoch (augmentation comes after),
    so later epochs read them from here. Entries are read-only arrays; once the budget is spent,
    further samples are composed each time. It lives in the process that reads the data: with
    DataLoader workers it helps only when they persist (`persistent_workers=true`).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.used = 0
        self._pixels: dict[str, np.ndarray] = {}

    def get(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        pixels = self._pixels.get(key)
        if pixels is None:
            pixels = make()
            if self.used + pixels.nbytes <= self.max_bytes:
                pixels.setflags(write=False)
                self._pixels[key] = pixels
                self.used += pixels.nbytes
        return pixels

    def __len__(self) -> int:
        return len(self._pixels)


class HSIDataset(Dataset):
    """Hard-Spurious-ImageNet samples of some recipe rows, composed from the assets on the fly.

    `store` is the build's output folder (or an AssetStore). With `from_export=True`, `store` is
    an export folder instead and the rows need the `path` column of its metadata table; the
    images are then read from those files (PNG: the same pixels as composing).
    """

    def __init__(
        self,
        recipe_rows: pd.DataFrame,
        store: AssetStore | str | os.PathLike,
        resolution: int,
        resize_mode: str = "squash",
        paste: str = "rect",
        transform: Callable | None = None,
        from_export: bool = False,
        cache: PixelCache | None = None,
    ) -> None:
        rows = recipe_rows.reset_index(drop=True)
        self.cache = cache
        self.resolution = int(resolution)
        self.resize_mode = resize_mode
        self.paste = paste
        self.transform = transform
        self.from_export = from_export
        # Columns as arrays, not a list of row dicts: a full ImageNet recipe has ~1M rows.
        self.sample_ids = rows["sample_id"].astype(str).to_numpy()
        self.labels = rows["label"].to_numpy(dtype=np.int64)
        self.group_ids = rows["group_id"].to_numpy(dtype=np.int64)
        if from_export:
            if "path" not in rows.columns:
                raise ValueError(
                    f"from_export=True needs the `path` column of the export's {EXPORT_METADATA_FILE}"
                )
            self.root = Path(store)
            self.paths = rows["path"].astype(str).to_numpy()
        else:
            self.store = store if isinstance(store, AssetStore) else AssetStore(store)
            self.fg_images = rows["fg_image"].astype(str).to_numpy()
            self.bg_images = rows["bg_image"].astype(str).to_numpy()
            self.sizes = rows["size"].to_numpy(dtype=np.int64)
            self.positions = rows["position"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """The uint8 resolution x resolution x 3 pixels of sample i, before any transform."""
        if self.cache is not None:
            return self.cache.get(self.sample_ids[i], lambda: self._image(i))
        return self._image(i)

    def _image(self, i: int) -> np.ndarray:
        if self.from_export:
            pixels = load_rgb(self.root / self.paths[i])
            if pixels.shape[:2] != (self.resolution, self.resolution):
                raise ValueError(
                    f"{self.root / self.paths[i]} is {pixels.shape[1]}x{pixels.shape[0]}, expected "
                    f"{self.resolution}x{self.resolution}: the export belongs to another dataset.resolution"
                )
            return pixels
        row = {
            "fg_image": self.fg_images[i],
            "bg_image": self.bg_images[i],
            "size": self.sizes[i],
            "position": self.positions[i],
        }
        return compose(row, self.store, self.resolution, self.resize_mode, self.paste)

    def __getitem__(self, item: Index):
        i, draw_seed = _unpack(item)
        image = Image.fromarray(self.image(i))
        x = apply_seeded(self.transform, image, draw_seed) if self.transform else image
        return x, int(self.labels[i]), int(self.group_ids[i])


class SourceDataset(Dataset):
    """A source's own images for plain classification: `(x, label, 0)`, one group."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        root: str | os.PathLike,
        transform: Callable | None = None,
    ):
        self.root = Path(root)
        self.paths = [r.path for r in records]
        self.labels = np.array([r.label for r in records], dtype=np.int64)
        self.group_ids = np.zeros(len(records), dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: Index):
        i, draw_seed = _unpack(item)
        image = Image.fromarray(load_rgb(self.root / self.paths[i]))
        x = apply_seeded(self.transform, image, draw_seed) if self.transform else image
        return x, int(self.labels[i]), 0


class EpochSampler(Sampler):
    """Training order of one epoch as `(index, draw_seed)` pairs, a function of (seed, epoch) only.

    - `weights=None`: a seeded permutation of the indices, each repeated `repeats[i]` times
      (default once; JTT's upsampling passes its multiplicities);
    - `weights`: `num_samples` draws with replacement by torch's WeightedRandomSampler, its
      generator seeded from (seed, epoch).

    The epoch is set by Lightning through `set_epoch`; without it each new iteration counts one.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        weights: Sequence[float] | np.ndarray | None = None,
        num_samples: int | None = None,
        repeats: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if weights is not None and repeats is not None:
            raise ValueError("EpochSampler takes weights or repeats, not both")
        self.size = int(size)
        self.seed = int(seed)
        self.weights = (
            None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        )
        if self.weights is not None and len(self.weights) != self.size:
            raise ValueError(f"{len(self.weights)} weights for {self.size} items")
        self.repeats = None
        if repeats is not None:
            self.repeats = np.asarray(repeats, dtype=np.int64)
            if self.repeats.shape != (self.size,) or (self.repeats < 0).any():
                raise ValueError(
                    f"repeats must be {self.size} integers >= 0, got shape {self.repeats.shape}"
                )
        self.num_samples = int(num_samples) if num_samples is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.weights is not None:
            return self.num_samples if self.num_samples is not None else self.size
        return int(self.repeats.sum()) if self.repeats is not None else self.size

    def indices(self, epoch: int) -> np.ndarray:
        """The dataset indices drawn in `epoch`, in order."""
        if self.weights is not None:
            generator = torch.Generator().manual_seed(stable_seed(self.seed, "balanced", epoch))
            sampler = WeightedRandomSampler(
                self.weights, len(self), replacement=True, generator=generator
            )
            return np.fromiter(iter(sampler), dtype=np.int64, count=len(self))
        pool = (
            np.arange(self.size)
            if self.repeats is None
            else np.repeat(np.arange(self.size), self.repeats)
        )
        return item_rng(self.seed, "order", epoch).permutation(pool)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1  # a later set_epoch() overrides this
        order = self.indices(epoch)
        draw_seeds = item_rng(self.seed, "augment", epoch).integers(0, 2**63, size=len(order))
        return iter(list(zip(order.tolist(), draw_seeds.tolist(), strict=True)))
