"""hsi-analyze end to end on a tiny synthetic source, with tiny models trained here.

- background: a model trained on the source's whole images (habitats class-correlated) names every
  class from its inpainted backgrounds above chance; correlation: the Fig. 3 table and figure.
- v2_pairs: from that table to pairs and a built v2 dataset.
- gradcam: grids for a tiny CNN and a tiny ViT; the CAM-in-box share of a CNN trained on object
  crops only is higher than that of a CNN trained on backgrounds only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from hsi.analysis.background import ensure_backgrounds, generation_settings
from hsi.cli.analyze import run_tasks
from hsi.data.transforms import eval_transform
from hsi.generate.assets import choose_core_box, crop, resize_rgb
from hsi.generate.pairs import read_pairs_csv
from hsi.sources import load_source
from hsi.sources.images import load_rgb
from tests.helpers import CONF

CLASSES, RES = 4, 32  # at 32 px resnet10t's layer2 is a 4 x 4 map: coarse, but enough


def keys(tmp: Path) -> list[str]:
    return [
        f"data.generate.out={tmp / 'hsi_data'}",
        "data.generate.progress=false",
        f"data.generate.dataset.resolution={RES}",
        "data.generate.dataset.counts.train.easy=1",
        "data.generate.dataset.counts.train.medium=1",
        "data.generate.dataset.counts.train.hard=1",
        "data.generate.dataset.counts.val=1",
        "data.generate.dataset.counts.test=3",
        "data.generate.dataset.replacement=true",  # 16 train images per class, 24 needed
        f"data.generate.source.root={tmp / 'source'}",
        f"data.generate.source.num_classes={CLASSES}",
        "data.generate.source.train_per_class=16",
        "data.generate.source.val_per_class=4",
        "data.generate.source.progress=false",
        # 4 val images a class: at the default habitat_prob (0.7) a class may draw 2-3 of them on
        # other habitats; 0.9 keeps "class-correlated habitats" true of so small a sample
        "data.generate.source.habitat_prob=0.9",
        "progress=false",
        "workers=0",
        "batch_size=16",
        "device=cpu",
    ]


def analyze_cfg(tmp: Path, *extra: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("analyze", [*keys(tmp), *extra])


def fit(images: list[np.ndarray], labels: list[int], steps: int, seed: int) -> torch.nn.Module:
    """A resnet10t trained for a few Adam steps on uint8 images (ImageNet normalisation)."""
    torch.manual_seed(seed)
    net = timm.create_model("resnet10t", num_classes=CLASSES)
    transform = eval_transform()
    x = torch.stack([transform(Image.fromarray(im)) for im in images])
    y = torch.tensor(labels)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        batch = torch.randperm(len(x), generator=generator)[:32]
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def save(net: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny source and the train images' whole pictures, object crops and backgrounds."""
    tmp = tmp_path_factory.mktemp("analysis")
    cfg = analyze_cfg(tmp, f"out={tmp / 'unused'}")
    generate = generation_settings(cfg.data.generate)
    index = load_source(generate.source)
    train = sorted(index.split("train"), key=lambda r: r.key)
    backgrounds = ensure_backgrounds(generate, index, train, tmp / "train_bg", 1, False)
    whole, crops, bgs, labels = [], [], [], []
    for r in train:
        image = load_rgb(Path(index.root) / r.path)
        whole.append(resize_rgb(image, RES, RES))
        crops.append(resize_rgb(crop(image, choose_core_box(r.boxes)), RES, RES))
        with Image.open(backgrounds[r.key]) as im:
            bgs.append(np.asarray(im.convert("RGB")))
        labels.append(r.label)
    return {"tmp": tmp, "whole": whole, "crops": crops, "bgs": bgs, "labels": labels}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_background_accuracy_above_chance_and_the_fig3_table(world):
    tmp = world["tmp"]
    ckpt = save(fit(world["whole"], world["labels"], 30, seed=0), tmp / "whole.ckpt")
    out = tmp / "bg_run"
    cfg = analyze_cfg(
        tmp,
        "model=resnet10t",
        f"model.checkpoint={ckpt}",
        f"out={out}",
        "tasks=[background,correlation]",
    )
    done = run_tasks(cfg)
    table = pd.read_csv(out / "background_accuracy.csv", dtype={"wnid": str})
    assert len(table) == CLASSES and (table["images"] == 4).all()
    # the habitats are class-correlated: every class is named from its background alone more
    # often than by chance
    assert (table["accuracy"] > 1 / CLASSES).all(), table
    assert table["mean_true_prob"].mean() > 1 / CLASSES, table
    assert ((table["mean_true_prob"] > 0) & (table["mean_true_prob"] < 1)).all()
    correlation = pd.read_csv(out / "correlation.csv")
    assert correlation["score"].tolist() == ["center_score", "size_score", "product"]
    assert (correlation["n"] == CLASSES).all()
    assert (out / "fig3_correlation.png").stat().st_size > 0
    # the backgrounds the dataset folder lacked were made in the run folder, once
    made = sorted((out / "assets" / "bg" / "val").glob("*.png"))
    assert len(made) == CLASSES * 4
    before = (out / "background_accuracy.csv").read_bytes()
    run_tasks(cfg)  # a finished table is read back, not evaluated again
    assert (out / "background_accuracy.csv").read_bytes() == before
    assert done["background"]["accuracy"].tolist() == pytest.approx(table["accuracy"].tolist())

    # automatic v2: the same table -> the paper's rule -> pairs -> a built v2 dataset
    cfg = analyze_cfg(
        tmp,
        "model=resnet10t",
        f"model.checkpoint={ckpt}",
        f"out={out}",
        "tasks=[v2_pairs]",
        "v2.count=2",
    )
    result = run_tasks(cfg)["v2_pairs"]
    ranked = table.sort_values(["accuracy", "wnid"], ascending=[False, True])["wnid"].tolist()
    pairs = result["pairs"]
    assert pairs["bg_wnid"].tolist() == ranked[:2]  # the most spurious backgrounds
    assert sorted(pairs["fg_wnid"]) == sorted(ranked[2:])
    built = out / "hsi_v2"
    expected = dict(zip(pairs["fg_wnid"], pairs["bg_wnid"], strict=True))
    assert read_pairs_csv(built / "pairs.csv") == expected
    recipe = pd.read_csv(built / "recipe.csv", dtype=str)
    assert set(recipe["wnid"]) == set(pairs["fg_wnid"])
    assert result["build"].failed == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gradcam_grid_and_object_models_look_at_the_object(world):
    tmp = world["tmp"]
    on_objects = save(fit(world["crops"], world["labels"], 30, seed=1), tmp / "objects.ckpt")
    on_backgrounds = save(fit(world["bgs"], world["labels"], 30, seed=2), tmp / "bgs.ckpt")
    torch.manual_seed(3)
    vit_node = {"model_name": "vit_tiny_patch16_224", "img_size": RES, "patch_size": 8, "depth": 2}
    vit = save(timm.create_model(num_classes=CLASSES, **vit_node), tmp / "vit.ckpt")
    out = tmp / "cam_run"
    models = (
        f"gradcam.models=[{{checkpoint: {on_objects}, label: objects, target_layer: layer2}},"
        f"{{checkpoint: {on_backgrounds}, label: backgrounds, target_layer: layer2}},"
        f"{{checkpoint: {vit}, label: vit, name: vit_tiny_patch16_224, img_size: {RES}, "
        "patch_size: 8, depth: 2}]"
    )
    cfg = analyze_cfg(
        tmp,
        "model=resnet10t",
        f"out={out}",
        "tasks=[gradcam]",
        models,
        "gradcam.images=1",
        "gradcam.share_images=12",
        "gradcam.target=predicted",
    )
    result = run_tasks(cfg)["gradcam"]
    with Image.open(result["grid"]) as grid:
        assert grid.width > grid.height / 12  # 12 rows, 4 columns (input + 3 models)
    shares = pd.read_csv(out / "cam_in_box.csv")
    assert set(shares["model"]) == {"objects", "backgrounds", "vit"}
    assert len(shares) == 3 * 12 * 12  # models x images (all test images) x groups
    measured = shares["cam_in_box"].dropna()  # NaN: a map zero everywhere
    assert len(measured) > len(shares) / 2 and measured.between(0, 1).all()
    groups = pd.read_csv(out / "cam_in_box_groups.csv")
    assert len(groups) == 3 * 12
    mean = shares.groupby("model")["cam_in_box"].mean()
    assert mean["objects"] > mean["backgrounds"], mean
