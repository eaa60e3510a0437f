"""Data modules: Hydra configs, build-once prepare_data, batches, sampling, transforms, determinism.

One tiny Hard-Spurious-ImageNet is built for the module: the synthetic source with 3 classes,
64 px samples (sizes 16/24/32), per class and group 3 train samples per Easy group and 1 per
Medium/Hard group, 1 val and 2 test samples.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import hsi.data.modules as modules
import hsi.generate.build as build
from hsi.data import EpochSampler, HSIDataModule, SourceDataModule, build_is_complete
from hsi.generate.compose import compose as compose_sample
from hsi.generate.export import run_export
from hsi.generate.layout import read_recipe
from hsi.sources.images import load_rgb

CONF = Path(__file__).resolve().parents[1] / "conf"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 32, 2
EASY, MEDIUM, HARD, VAL, TEST = 3, 1, 1, 1, 2
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Groups at sizes 16/24/32, size-major (CeO, CoO, CeR, CoR): Easy = CeO/CoO at 24 and 32.
EASY_IDS = {4, 5, 8, 9}
WNIDS = [f"n{90000000 + k:08d}" for k in range(CLASSES)]  # the synthetic source's class ids


def compose_config(name: str, overrides: list[str]):
    """conf/data/<name>.yaml under `data`, with a top-level `seed` as the training config has."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=None, overrides=[f"+data={name}", "+seed=0", *overrides])


def source_overrides(prefix: str, root: Path) -> list[str]:
    return [
        f"{prefix}.root={root}",
        f"{prefix}.num_classes={CLASSES}",
        f"{prefix}.train_per_class={TRAIN_PER_CLASS}",
        f"{prefix}.val_per_class={VAL_PER_CLASS}",
        f"{prefix}.progress=false",
    ]


def hsi_overrides(tmp: Path, out: str = "hsi", source: str = "synthetic") -> list[str]:
    return [
        f"data.generate.out={tmp / out}",
        "data.generate.progress=false",
        "data.generate.dataset.resolution=64",
        f"data.generate.dataset.counts.train.easy={EASY}",
        f"data.generate.dataset.counts.train.medium={MEDIUM}",
        f"data.generate.dataset.counts.train.hard={HARD}",
        f"data.generate.dataset.counts.val={VAL}",
        f"data.generate.dataset.counts.test={TEST}",
        "data.generate.dataset.coverage=reuse",  # ~42% of the synthetic train images are boxed
        "data.batch_size=16",
        *source_overrides("data.generate.source", tmp / source),
    ]


def make_module(cfg, **changes) -> HSIDataModule:
    node = OmegaConf.merge(cfg.data, changes)
    return instantiate(node)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(config, output folder, seconds of the first prepare_data) of the tiny dataset."""
    tmp = tmp_path_factory.mktemp("data")
    cfg = compose_config("hsi", hsi_overrides(tmp))
    dm = instantiate(cfg.data)
    assert isinstance(dm, HSIDataModule)
    assert not build_is_complete(dm.generate)
    start = time.perf_counter()
    dm.prepare_data()
    return cfg, tmp / "hsi", time.perf_counter() - start


@pytest.fixture(scope="module")
def dm(built) -> HSIDataModule:
    module = make_module(built[0])
    module.setup("fit")
    return module


def full_epoch(loader):
    xs, ys, gs = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys), torch.cat(gs)


# ----------------------------------------------------------------------------- configs
def test_data_configs_give_the_generation_configs_of_hsi_generate(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, dataset in (("hsi", "v1"), ("hsi_v2", "v2"), ("hsi_sam", "sam")):
            data = compose(config_name=None, overrides=[f"+data={name}", "+seed=5"]).data
            cli = compose(config_name="generate", overrides=[f"dataset={dataset}"])
            assert data._target_ == "hsi.data.HSIDataModule" and data.seed == 5
            for key in (
                "seed",
                "source",
                "mask",
                "inpaint",
                "dataset",
                "out",
                "shard",
                "num_shards",
            ):
                assert data.generate[key] == cli[key], (name, key)
            assert data.generate.out == f"outputs/hsi/{name}"
        source = compose(config_name=None, overrides=["+data=source", "+seed=2"]).data
        assert source._target_ == "hsi.data.SourceDataModule" and source.seed == 2
        assert source.source == compose(config_name="generate").source
        # The command line of the training app can reach every generation key.
        low = compose(
            config_name=None,
            overrides=["+data=hsi", "+seed=0", "data.generate.dataset.resolution=64"],
        )
        assert low.data.generate.dataset.resolution == 64


def test_bad_choices_are_refused(built):
    cfg = built[0]
    with pytest.raises(ValueError, match="sampling must be one of"):
        HSIDataModule(cfg.data.generate, sampling="uniform")
    with pytest.raises(ValueError, match="augment must be one of"):
        HSIDataModule(cfg.data.generate, augment="strong")
    with pytest.raises(ValueError, match="val_fraction must lie in"):
        SourceDataModule(cfg.data.generate.source, val_fraction=1.5)
    for crop_scale in ([0.0, 1.0], [0.5, 0.4], [0.3]):
        with pytest.raises(ValueError, match=r"data\.crop_scale="):
            SourceDataModule(cfg.data.generate.source, crop_scale=crop_scale)


# ----------------------------------------------------------------------------- prepare_data
def test_prepare_data_builds_then_is_a_no_op(built, monkeypatch):
    cfg, out, _ = built
    assert (out / "recipe.csv").is_file() and (out / "config.yaml").is_file()
    manifest = out / "manifest" / "shard-0-of-1.csv"
    stamp = manifest.stat().st_mtime_ns

    def no_build(_cfg):
        raise AssertionError("a complete dataset must not be built again")

    monkeypatch.setattr(build, "run_build", no_build)
    make_module(cfg).prepare_data()
    assert manifest.stat().st_mtime_ns == stamp
    # A different dataset in the same folder is not "complete": the build would run (and refuse).
    other = make_module(cfg, generate={"dataset": {"counts": {"test": TEST + 1}}})
    assert not build_is_complete(other.generate)


def test_setup_attributes_and_split_sizes(dm):
    assert dm.num_classes == CLASSES
    assert dm.class_names == WNIDS
    names = [g.name for g in dm.groups]
    assert names == [f"{p}_{s}" for s in (16, 24, 32) for p in ("CeO", "CoO", "CeR", "CoR")]
    assert [g.id for g in dm.groups] == list(range(12))
    per_class_train = 4 * EASY + 4 * MEDIUM + 4 * HARD  # 4 Easy, 4 Medium, 4 Hard groups
    assert len(dm.dataset("train")) == CLASSES * per_class_train
    assert len(dm.dataset("val")) == CLASSES * 12 * VAL
    assert len(dm.dataset("test")) == CLASSES * 12 * TEST
    assert len(dm.dropped) == 0


# ----------------------------------------------------------------------------- batches
def test_train_batches_shapes_dtypes_and_ranges(dm):
    x, y, g = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 64, 64)
    assert y.dtype == torch.int64 and g.dtype == torch.int64 and y.shape == g.shape == (16,)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD  # per channel, after normalisation
    for c in range(3):
        assert x[:, c].min() >= low[c] - 1e-5 and x[:, c].max() <= high[c] + 1e-5
    assert ((y >= 0) & (y < CLASSES)).all() and ((g >= 0) & (g < 12)).all()
    # One standard epoch serves every train sample exactly once.
    _, ys, gs = full_epoch(dm.train_dataloader())
    train = dm.recipe[dm.recipe["split"] == "train"]
    got = sorted(zip(ys.tolist(), gs.tolist(), strict=True))
    assert got == sorted(zip(train["label"].tolist(), train["group_id"].tolist(), strict=True))


def test_eval_batches_are_the_composed_pixels_normalised(dm, built):
    out = built[1]
    x, y, g = full_epoch(dm.val_dataloader())
    val = read_recipe(out / "recipe.csv").query("split == 'val'").reset_index(drop=True)
    assert y.tolist() == val["label"].tolist()
    assert g.tolist() == val["group_id"].tolist()
    assert [dm.class_names[k] for k in y.tolist()] == val["wnid"].tolist()
    for i, row in val.iterrows():
        pixels = compose_sample(row.to_dict(), out, 64, "squash", "rect")
        expected = (pixels.astype(np.float32) / 255.0 - MEAN) / STD
        np.testing.assert_allclose(x[i].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_train_eval_loader_is_fixed_and_unaugmented(dm):
    first, second = full_epoch(dm.train_eval_dataloader()), full_epoch(dm.train_eval_dataloader())
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    rows = dm.recipe.query("split == 'train'").reset_index(drop=True)
    assert (
        first[1].tolist() == rows["label"].tolist()
        and first[2].tolist() == rows["group_id"].tolist()
    )
    pixels = compose_sample(rows.iloc[0].to_dict(), dm.out, 64)
    expected = (pixels.astype(np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(first[0][0].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


# ----------------------------------------------------------------------------- sampling
def test_easy_sampling_serves_only_easy_groups(built):
    dm = make_module(built[0], sampling="easy")
    dm.setup("fit")
    _, ys, gs = full_epoch(dm.train_dataloader())
    assert set(gs.tolist()) == EASY_IDS
    assert len(gs) == CLASSES * len(EASY_IDS) * EASY
    assert np.bincount(gs.numpy(), minlength=12)[sorted(EASY_IDS)].tolist() == [CLASSES * EASY] * 4
    assert len(dm.dataset("val")) == CLASSES * 12 * VAL  # eval splits keep every group


def test_balanced_sampling_draws_groups_equally(built, dm):
    balanced = make_module(built[0], sampling="balanced")
    balanced.setup("fit")
    data = balanced.dataset("train", train_transforms=True)
    sampler = balanced.train_sampler(data)
    n, epochs = len(data), 50
    assert len(sampler) == n
    draws = np.concatenate([sampler.indices(e) for e in range(epochs)])
    counts = np.bincount(data.group_ids[draws], minlength=12)
    # Each draw lands in a group with probability 1/12: binomial counts, bound at 5 sd.
    total, p = n * epochs, 1 / 12
    mean, sd = total * p, np.sqrt(total * p * (1 - p))
    assert np.all(np.abs(counts - mean) <= 5 * sd), counts
    # The standard sampler gives the long tail instead: 9 per Easy group, 3 per other, each epoch.
    standard = dm.train_sampler(dm.dataset("train", train_transforms=True))
    std_counts = np.bincount(
        data.group_ids[np.concatenate([standard.indices(e) for e in range(epochs)])], minlength=12
    )
    expected = [epochs * CLASSES * (EASY if i in EASY_IDS else 1) for i in range(12)]
    assert std_counts.tolist() == expected
    assert np.any(np.abs(std_counts - mean) > 5 * sd)  # so the bound above can fail


def test_train_repeats_give_exact_multiplicities(built):
    dm = make_module(built[0])
    dm.setup("fit")
    n = len(dm.dataset("train"))
    repeats = np.where(np.arange(n) % 7 == 0, 5, 1)
    assert dm.upsample_train(repeats) == int(repeats.sum())
    sampler = dm.train_sampler(dm.dataset("train", train_transforms=True))
    drawn = sampler.indices(0)
    assert len(sampler) == len(drawn) == n + 4 * int((np.arange(n) % 7 == 0).sum())
    assert np.bincount(drawn, minlength=n).tolist() == repeats.tolist()


def test_sampler_epochs_follow_set_epoch():
    sampler = EpochSampler(20, seed=3)
    first, second = list(sampler), list(sampler)
    assert first != second  # a new order and new augmentation draws each epoch
    sampler.set_epoch(1)
    assert list(sampler) == second
    assert sorted(i for i, _ in first) == list(range(20))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_batches_for_0_and_2_workers(built):
    def first_batches(workers: int, seed: int, n: int = 2):
        dm = make_module(built[0], num_workers=workers, seed=seed)
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        return [next(loader) for _ in range(n)]

    zero, two = first_batches(0, seed=0), first_batches(2, seed=0)
    for a, b in zip(zero, two, strict=True):
        for ta, tb in zip(a, b, strict=True):
            assert torch.equal(ta, tb)
    other = first_batches(0, seed=1, n=1)[0]
    assert not torch.equal(other[0], zero[0][0])


def test_lightning_fit_draws_the_sampler_epoch_by_epoch(built):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 64 * 64, CLASSES)
            self.seen: dict[int, list] = {}

        def training_step(self, batch, _):
            x, y, g = batch
            self.seen.setdefault(self.current_epoch, []).extend(
                zip(y.tolist(), g.tolist(), strict=True)
            )
            return torch.nn.functional.cross_entropy(self.linear(x.flatten(1)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm, probe = make_module(built[0], sampling="balanced"), Probe()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(probe, datamodule=dm)
    data = dm.dataset("train", train_transforms=True)
    sampler = dm.train_sampler(data)
    for epoch in (0, 1):
        order = sampler.indices(epoch)
        assert probe.seen[epoch] == list(
            zip(data.labels[order].tolist(), data.group_ids[order].tolist(), strict=True)
        )
    assert probe.seen[0] != probe.seen[1]


def test_augmentation_leaves_the_global_rng_alone(dm):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(iter(dm.train_dataloader()))
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- failures, export
@pytest.mark.slow
def test_failed_assets_are_dropped_and_counted_or_raise(built, tmp_path):
    cfg, out, _ = built
    source = tmp_path / "synthetic"
    shutil.copytree(Path(cfg.data.generate.source.root), source)
    recipe = read_recipe(out / "recipe.csv")
    broken = recipe.query("split == 'train'")["fg_image"].iloc[0]  # "train/<image_id>"
    jpeg = source / "train" / broken.split("/")[1].split("_")[0] / f"{broken.split('/')[1]}.JPEG"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # the header reads, the body does not decode

    # decode_check=none: the build meets the broken image (the default check routes around it)
    changed = compose_config(
        "hsi",
        [
            *hsi_overrides(tmp_path, out="hsi_broken", source="synthetic"),
            "data.generate.source.decode_check=none",
        ],
    )
    dm = instantiate(changed.data)
    dm.prepare_data()
    expected = int(((recipe["fg_image"] == broken) | (recipe["bg_image"] == broken)).sum())
    assert expected > 0
    with pytest.warns(UserWarning, match=f"{expected} of {len(recipe)} samples"):
        dm.setup("fit")
    assert len(dm.dropped) == expected and len(dm.recipe) == len(recipe) - expected
    assert broken not in set(dm.recipe["fg_image"]) | set(dm.recipe["bg_image"])
    strict = make_module(changed, drop_failed=False)
    with pytest.raises(RuntimeError, match="drop_failed"):
        strict.setup("fit")


def test_exported_png_files_serve_the_same_batches(built, dm, tmp_path):
    cfg, out, _ = built
    export = tmp_path / "export"
    generate = OmegaConf.to_container(cfg.data.generate, resolve=True)
    run_export(
        OmegaConf.create(
            {**generate, "export": {"format": "png", "quality": 95, "dir": str(export)}}
        )
    )
    from_files = make_module(cfg, export_dir=str(export))
    from_files.setup("test")
    for a, b in zip(
        full_epoch(from_files.test_dataloader()), full_epoch(dm.test_dataloader()), strict=True
    ):
        assert torch.equal(a, b)


def test_the_pixel_cache_serves_the_same_batches_and_composes_each_sample_once(built, dm):
    import hsi.data.datasets as datasets

    cached = make_module(built[0], cache_mb=4)
    cached.setup("fit")
    calls = []
    real = datasets.compose
    counting = lambda *a, **k: calls.append(a[0]["fg_image"]) or real(*a, **k)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "compose", counting)
        for loader in ("train_dataloader", "val_dataloader", "train_dataloader"):
            for a, b in zip(
                full_epoch(getattr(cached, loader)()),
                full_epoch(getattr(dm, loader)()),
                strict=True,
            ):
                assert torch.equal(a, b)
    served = len(cached.dataset("train")) + len(cached.dataset("val"))
    # the uncached module composed every read, the cached one each sample once
    assert len(cached.pixel_cache) == served
    assert len(calls) == 2 * len(cached.dataset("train")) + len(cached.dataset("val")) + served
    tiny = make_module(built[0], cache_mb=1e-4)  # 104 bytes: no 64 px sample fits
    tiny.setup("fit")
    full_epoch(tiny.train_dataloader())
    assert len(tiny.pixel_cache) == 0 and tiny.pixel_cache.used == 0
    with pytest.raises(ValueError, match="cache_mb"):
        HSIDataModule(built[0].data.generate, cache_mb=-1)


# ----------------------------------------------------------------------------- source
@pytest.fixture(scope="module")
def source_dm(built) -> SourceDataModule:
    root = Path(built[0].data.generate.source.root)
    cfg = compose_config("source", [*source_overrides("data.source", root), "data.batch_size=8"])
    module = instantiate(cfg.data)
    assert isinstance(module, SourceDataModule)
    module.prepare_data()
    module.setup("fit")
    return module


def test_source_module_batches(source_dm):
    assert (
        source_dm.num_classes == CLASSES
        and source_dm.class_names == WNIDS
        and source_dm.groups is None
    )
    assert len(source_dm.dataset("train")) == CLASSES * TRAIN_PER_CLASS
    assert len(source_dm.dataset("val")) == CLASSES * VAL_PER_CLASS
    x, y, g = next(iter(source_dm.train_dataloader()))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert y.dtype == g.dtype == torch.int64 and (g == 0).all() and ((y >= 0) & (y < CLASSES)).all()
    # Eval: the decoded image resized (bilinear) to 64 x 64, then normalised.
    xv, yv, _ = next(iter(source_dm.val_dataloader()))
    data = source_dm.dataset("val")
    assert yv.tolist() == data.labels[: len(yv)].tolist()
    image = Image.fromarray(load_rgb(data.root / data.paths[0])).resize((64, 64), Image.BILINEAR)
    expected = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(xv[0].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_source_crop_scale_reaches_the_random_resized_crop(source_dm):
    module = SourceDataModule(source_dm.source, resolution=32, crop_scale=[0.35, 1.0])
    module.setup("fit")
    (crop,) = [t for t in module.dataset("train", True).transform.transforms if hasattr(t, "scale")]
    assert tuple(crop.scale) == (0.35, 1.0)


def test_source_val_fraction_holds_out_part_of_train(source_dm):
    held = SourceDataModule(source_dm.source, resolution=32, val_fraction=0.25)
    held.setup("fit")
    train, val = held.dataset("train"), held.dataset("val")
    assert len(val) == CLASSES * round(0.25 * TRAIN_PER_CLASS)
    assert np.bincount(val.labels).tolist() == [round(0.25 * TRAIN_PER_CLASS)] * CLASSES
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(source_dm.dataset("train").paths)
    assert len(held.dataset("test")) == CLASSES * VAL_PER_CLASS
    assert pd.Series(val.paths).str.startswith("train/").all()


def test_a_job_reads_its_source_once(source_dm, monkeypatch):
    """prepare_data, then setup for fit and for test (as a training job and Lightning call them)."""
    reads = []
    real = modules.load_source

    def counting(cfg):
        reads.append(cfg)
        return real(cfg)

    monkeypatch.setattr(modules, "load_source", counting)
    module = SourceDataModule(source_dm.source, resolution=32)
    module.prepare_data()
    module.setup("fit")
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    assert len(reads) == 1 and module.num_classes == CLASSES
