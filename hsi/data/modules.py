"""LightningDataModules: Hard-Spurious-ImageNet (`data=hsi|hsi_v2|hsi_sam`) and a source's own
images (`data=source`, for source pretraining).

`prepare_data` writes to disk and keeps no state (it runs on one process only); `setup` reads
what is on disk and builds the datasets. Training batches come from an EpochSampler, so the same
seed gives the same batches for any number of workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from hsi.data.datasets import EpochSampler, HSIDataset, PixelCache, SourceDataset
from hsi.data.sharding import EvalShard, TrainShard, trainer_ranks
from hsi.data.transforms import (
    AUGMENTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_CROP_SCALE,
    eval_transform,
    train_transform,
)
from hsi.generate.layout import DatasetFolder, DatasetSpec, read_export_recipe
from hsi.generate.recipe import SPLITS
from hsi.groups import Group, make_groups
from hsi.io import item_rng
from hsi.sources import load_source

SAMPLINGS = ("standard", "easy", "balanced")


def _plain_config(cfg: DictConfig | Mapping) -> DictConfig:
    """A resolved, detached copy (interpolations such as `${.dataset.name}` already applied)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return OmegaConf.create(dict(cfg))


def build_is_complete(generate: DictConfig) -> bool:
    """True when `generate.out` holds this very configuration and a manifest row for every image.

    A quick check (hsi.generate.layout.DatasetFolder.is_complete); images recorded as failed
    count as done: rebuilding would fail again; they are dropped (and counted) by
    HSIDataModule.setup. `hsi-generate validate` is the deep check.
    """
    return DatasetFolder(generate.out).is_complete(generate)


def failed_images(out: str | Path, recipe: pd.DataFrame) -> dict[str, str]:
    """{source image key: reason} of the recipe's images without assets, from the manifests."""
    return DatasetFolder(out).failed_images(recipe)


class _Loaders:
    """DataLoader construction shared by both modules."""

    seed: int
    batch_size: int
    eval_batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool

    def _loader(
        self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,  # order comes from the sampler (train) or is the dataset's (eval)
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            # Workers' base seed from a private generator: iterating never consumes the global
            # RNG, so model initialisation and dropout do not depend on num_workers either.
            generator=torch.Generator().manual_seed(self.seed),
        )

    # The four loaders of both modules: each module says how it builds a split's dataset
    # (`dataset`) and how the train split is drawn (`train_sampler`). Under DDP the Trainer's
    # loaders hold this rank's shard (hsi/data/sharding.py); train_eval_dataloader, used
    # outside the Trainer, always holds the whole split.
    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train_transforms=True)
        sampler = self.train_sampler(dataset)
        rank, world_size = trainer_ranks(self)
        if world_size > 1:
            sampler = TrainShard(sampler, rank, world_size)
        return self._loader(dataset, self.batch_size, sampler)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        rank, world_size = trainer_ranks(self)
        shard = EvalShard(dataset, rank, world_size) if world_size > 1 else None
        return self._loader(dataset, self.eval_batch_size, shard)

    def train_eval_dataloader(self) -> DataLoader:
        """The train split with eval transforms in a fixed order (JTT's error-set pass)."""
        return self._loader(self.dataset("train"), self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


class HSIDataModule(_Loaders, L.LightningDataModule):
    """Hard-Spurious-ImageNet from a generation config (conf/generate.yaml's keys).

    sampling: `standard` = the train split as built (the paper's long tail); `easy` = Easy
    groups only (ERM_easy); `balanced` = equal expected draws per group (ERM_all), len(train)
    draws with replacement, weight 1/n_group. After `setup`: `num_classes`, `class_names`
    (wnids in label order), `groups`, `recipe` (rows served), `dropped` (rows left out because
    an asset failed).
    """

    def __init__(
        self,
        generate: DictConfig | Mapping,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        sampling: str = "standard",
        augment: str = "paper",
        seed: int = 0,
        pin_memory: bool = False,
        drop_failed: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        export_dir: str | None = None,
        persistent_workers: bool = False,
        cache_mb: float = 0,
    ) -> None:
        super().__init__()
        _check_choice("sampling", sampling, SAMPLINGS)
        _check_choice("augment", augment, AUGMENTS)
        self.generate = _plain_config(generate)
        self.out = Path(self.generate.out)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.sampling = sampling
        self.augment = augment
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.drop_failed = bool(drop_failed)
        self.mean, self.std = tuple(mean), tuple(std)
        self.export_dir = Path(export_dir) if export_dir else None
        self.persistent_workers = bool(persistent_workers)
        if cache_mb < 0:
            raise ValueError(f"data.cache_mb must be >= 0 (0: no cache), got {cache_mb}")
        # one cache for every split's datasets (sample ids are unique across splits)
        self.pixel_cache = PixelCache(int(cache_mb * 2**20)) if cache_mb else None
        self.spec = DatasetSpec.from_config(self.generate.dataset)
        self.resolution = self.spec.resolution
        self.train_repeats: np.ndarray | None = None
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None
        self.groups: list[Group] | None = None
        self.recipe: pd.DataFrame | None = None  # rows served, after dropping failed ones
        self.dropped: pd.DataFrame | None = None  # rows left out because an asset failed
        self._rows: dict[str, pd.DataFrame] = {}

    # ------------------------------------------------------------------ disk
    def prepare_data(self) -> None:
        """Build the assets that are missing (a complete build is a quick check, nothing more)."""
        if self.export_dir is not None or build_is_complete(self.generate):
            return
        from hsi.generate.build import run_build

        summary = run_build(self.generate)
        print(summary.report())

    def setup(self, stage: str | None = None) -> None:
        if self.export_dir is not None:
            recipe = read_export_recipe(self.export_dir)
            failed: dict[str, str] = {}
        else:
            folder = DatasetFolder(self.out)
            recipe = folder.read_recipe()
            failed = failed_images(self.out, recipe)
        self.class_names = _class_names(recipe)
        self.num_classes = len(self.class_names)
        self.groups = _groups(recipe)
        bad = recipe["fg_image"].isin(failed) | recipe["bg_image"].isin(failed)
        self.dropped = recipe[bad].reset_index(drop=True)
        if bad.any():
            examples = "; ".join(f"{k}: {failed[k]}" for k in sorted(failed)[:3])
            message = (
                f"{int(bad.sum())} of {len(recipe)} samples use source images whose assets "
                f"failed ({len(failed)} images, e.g. {examples}); see {folder.manifest_dir}"
            )
            if not self.drop_failed:
                raise RuntimeError(
                    message + "; fix them and rerun `hsi-generate build`, or set drop_failed=true"
                )
            warnings.warn(message + "; these samples are left out", stacklevel=2)
        self.recipe = recipe[~bad].reset_index(drop=True)
        for split in SPLITS:
            rows = self.recipe[self.recipe["split"] == split]
            if split == "train" and self.sampling == "easy":
                rows = rows[rows["category"] == "easy"]
            self._rows[split] = rows.reset_index(drop=True)

    # ------------------------------------------------------------------ datasets
    def dataset(self, split: str, train_transforms: bool = False) -> HSIDataset:
        """The samples of `split` (train: after the `easy` filter) with train or eval transforms."""
        if split not in self._rows:
            raise RuntimeError(f"no split {split!r}: call setup() first (splits: {SPLITS})")
        if train_transforms:
            transform = train_transform(self.resolution, self.augment, self.mean, self.std)
        else:
            transform = eval_transform(self.mean, self.std)
        return HSIDataset(
            self._rows[split],
            self.export_dir if self.export_dir is not None else self.out,
            self.resolution,
            resize_mode=self.spec.resize_mode,
            paste=self.spec.paste,
            transform=transform,
            from_export=self.export_dir is not None,
            cache=self.pixel_cache,
        )

    def upsample_train(self, repeats: Sequence[int] | np.ndarray) -> int:
        """JTT's upsampling (paper 000, §5): train sample ``i`` (train_eval_dataloader's order)
        appears ``repeats[i]`` times in every epoch, in the seeded order of the train sampler.

        Only for the train split as built (``sampling=standard``). Returns the epoch size.
        """
        if self.sampling != "standard":
            raise ValueError(
                f"JTT's upsampling needs data.sampling=standard (the train split as built), "
                f"got data.sampling={self.sampling}"
            )
        repeats = np.asarray(repeats, dtype=np.int64)
        size = len(self._rows.get("train", ()))
        if repeats.shape != (size,) or (repeats < 0).any():
            raise ValueError(
                f"upsample_train takes one count >= 0 per train sample ({size}); got shape "
                f"{repeats.shape}"
            )
        self.train_repeats = repeats
        return int(repeats.sum())

    def train_sampler(self, dataset: HSIDataset) -> EpochSampler:
        if self.sampling == "balanced":
            counts = np.bincount(dataset.group_ids)
            weights = 1.0 / counts[dataset.group_ids]
            return EpochSampler(len(dataset), self.seed, weights=weights, num_samples=len(dataset))
        return EpochSampler(len(dataset), self.seed, repeats=self.train_repeats)


def _class_names(recipe: pd.DataFrame) -> list[str]:
    """wnids in label order; labels must be 0..K-1, one wnid each."""
    pairs = recipe[["label", "wnid"]].drop_duplicates().sort_values("label")
    if pairs["label"].tolist() != list(range(len(pairs))) or pairs["wnid"].duplicated().any():
        raise ValueError(
            "the recipe's labels must be 0..K-1 with one wnid each; rebuild the dataset"
        )
    return pairs["wnid"].tolist()


def _groups(recipe: pd.DataFrame) -> list[Group]:
    """The 12 groups of the recipe's sizes, checked against its group_id/group columns."""
    groups = make_groups(sorted(int(s) for s in recipe["size"].unique()))
    names = {g.id: g.name for g in groups}
    seen = recipe[["group_id", "group"]].drop_duplicates()
    wrong = [
        (int(i), n)
        for i, n in zip(seen["group_id"], seen["group"], strict=True)
        if names.get(int(i)) != n
    ]
    if wrong:
        raise ValueError(
            f"the recipe's group ids {wrong[:3]} do not match hsi.groups.make_groups; rebuild the dataset"
        )
    return groups


class SourceDataModule(_Loaders, L.LightningDataModule):
    """Plain classification on a source's own images (source pretraining): batches `(x, y, 0)`.

    train = the source's train split (every image, boxed or not), val = its val split. With
    `val_fraction`, val is that fraction of each class's train images instead (the same images
    for every seed) and test is the source's val split; otherwise test is the val split.
    """

    def __init__(
        self,
        source: DictConfig | Mapping,
        resolution: int = 64,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: str = "paper",
        seed: int = 0,
        val_fraction: float | None = None,
        pin_memory: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        persistent_workers: bool = False,
        crop_scale: Sequence[float] = PAPER_CROP_SCALE,
    ) -> None:
        super().__init__()
        _check_choice("augment", augment, AUGMENTS)
        if val_fraction is not None and not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1) or be null, got {val_fraction}")
        crop_scale = tuple(float(v) for v in crop_scale)
        if len(crop_scale) != 2 or not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(
                f"data.crop_scale={list(crop_scale)} must be [low, high] with 0 < low <= high <= 1"
            )
        self.crop_scale = crop_scale
        self.source = _plain_config(source)
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.augment = augment
        self.seed = int(seed)
        self.val_fraction = None if val_fraction is None else float(val_fraction)
        self.pin_memory = bool(pin_memory)
        self.mean, self.std = tuple(mean), tuple(std)
        self.persistent_workers = bool(persistent_workers)
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None
        self.groups = None  # a single group: every batch's group_id is 0
        self._records: dict[str, list] = {}
        self._index = None

    def _load_index(self):
        """The source, read once per process (Lightning calls prepare_data and setup again)."""
        if self._index is None:
            self._index = load_source(self.source)
        return self._index

    def prepare_data(self) -> None:
        """Loading a source generates it if it is the synthetic one and missing."""
        self._load_index()

    def setup(self, stage: str | None = None) -> None:
        if self._records:
            return  # set up before (fit, then test): the source is read once per job
        index = self._load_index()
        self.root = Path(index.root)
        self.class_names = index.wnids
        self.num_classes = len(self.class_names)
        train, val = index.split("train", with_boxes=False), index.split("val", with_boxes=False)
        if self.val_fraction is None:
            self._records = {"train": train, "val": val, "test": val}
        else:
            held = _held_out(train, self.val_fraction)
            self._records = {
                "train": [r for r in train if r.key not in held],
                "val": [r for r in train if r.key in held],
                "test": val,
            }
        empty = [s for s in ("train", "val") if not self._records[s]]
        if empty:
            raise ValueError(f"source at {self.root} has no images in split(s) {empty}")

    def dataset(self, split: str, train_transforms: bool = False) -> SourceDataset:
        if split not in self._records:
            raise RuntimeError(f"no split {split!r}: call setup() first (splits: train, val, test)")
        if train_transforms:
            transform = train_transform(
                self.resolution,
                self.augment,
                self.mean,
                self.std,
                resize=True,
                crop_scale=self.crop_scale,
            )
        else:
            transform = eval_transform(self.mean, self.std, resize=self.resolution)
        return SourceDataset(self._records[split], self.root, transform)

    def train_sampler(self, dataset: Dataset) -> EpochSampler:
        return EpochSampler(len(dataset), self.seed)


def _held_out(records: list, fraction: float) -> set[str]:
    """Keys of round(fraction * n) train images per class, from a fixed per-class permutation."""
    by_class: dict[str, list] = {}
    for r in records:
        by_class.setdefault(r.wnid, []).append(r)
    held: set[str] = set()
    for wnid, rs in sorted(by_class.items()):
        rs = sorted(rs, key=lambda r: r.key)
        order = item_rng("source-val", wnid).permutation(len(rs))
        held.update(rs[i].key for i in order[: round(fraction * len(rs))])
    return held
