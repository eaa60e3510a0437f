"""hsi-benchmark: the subset-head protocol by hand, run folders that bring their model config, and
two tiny models on a tiny synthetic Hard-Spurious-ImageNet giving the Table 5 layout end to end."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from hsi.benchmark import benchmark, evaluate, model_config, restrict_logits, subset_columns
from hsi.data.modules import SourceDataModule
from hsi.groups import PLACEMENTS, make_groups
from hsi.reporting import build_report
from hsi.results import write_results

CONF = Path(__file__).resolve().parents[1] / "conf"
SOURCE_CLASSES, RESOLUTION, SIZES = 4, 32, (8, 12, 16)
# the dataset labels 3 of the source's 4 classes: dataset label k is source label SUBSET[k]
SUBSET = [0, 2, 3]
WNIDS = [f"n9000000{i}" for i in SUBSET]


def test_restricting_logits_to_the_subset_by_hand():
    # 3 samples, a 5-way source head; the dataset's labels 0, 1 are source classes 3 and 1
    logits = torch.tensor(
        [
            [9.0, 1.0, 0.0, 2.0, 0.0],  # full: 0; subset (2.0, 1.0) -> 0
            [0.0, 5.0, 0.0, 4.0, 7.0],  # full: 4; subset (4.0, 5.0) -> 1
            [0.0, 0.0, 0.0, 3.0, 1.0],
        ]
    )  # full: 3; subset (3.0, 0.0) -> 0
    restricted = restrict_logits(logits, [3, 1])
    assert restricted.tolist() == [[2.0, 1.0], [4.0, 5.0], [3.0, 0.0]]
    assert restricted.argmax(1).tolist() == [0, 1, 0]
    assert restrict_logits(logits, None) is logits

    # evaluate(): the same logits through a network (inputs [N, 5, 1, 1] flattened), targets 0,1,1
    # in groups 0, 0, 5: hits 1, 1, 0 -> acc 2/3, group 0 = 1.0, group 5 = 0.0
    loader = [(logits[:, :, None, None], torch.tensor([0, 1, 1]), torch.tensor([0, 0, 5]))]
    metrics = evaluate(
        nn.Flatten(), loader, torch.device("cpu"), make_groups(SIZES), [3, 1], progress=False
    )
    assert metrics["acc"] == pytest.approx(2 / 3)
    assert metrics["group/CeO_8"] == 1.0 and metrics["group/CoO_12"] == 0.0
    assert metrics["worst_group_acc"] == 0.0 and metrics["mean_group_acc"] == 0.5
    # the whole head's argmax (0, 4, 3) names source classes, not dataset labels: 1 of 3 "hits"
    full = evaluate(
        nn.Flatten(), loader, torch.device("cpu"), make_groups(SIZES), None, progress=False
    )
    assert full["acc"] == pytest.approx(1 / 3)


def test_subset_columns_follow_the_label_order():
    recipe = pd.DataFrame({"label": [1, 0, 2, 1], "source_label": [7, 3, 9, 7]})
    assert subset_columns(recipe) == [3, 7, 9]
    with pytest.raises(ValueError, match="exactly one source_label"):
        subset_columns(pd.DataFrame({"label": [0, 0], "source_label": [1, 2]}))


def test_a_run_folder_brings_its_own_model_config(tmp_path):
    run = tmp_path / "zoo_vit"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    own = {
        "_target_": "hsi.models.create_model",
        "_partial_": True,
        "name": "vit_tiny_patch16_224",
        "img_size": 64,
        "patch_size": 8,
        "pretrained": False,
        "weights": None,
        "checkpoint": "/elsewhere/source",
    }
    write_results(run, {"status": "complete", "config": {"model": own}})
    given = {
        "_target_": "hsi.models.create_model",
        "_partial_": True,
        "name": "resnet18",
        "pretrained": True,
        "weights": None,
        "checkpoint": str(run),
    }
    node = model_config(given)
    assert node["name"] == "vit_tiny_patch16_224" and node["patch_size"] == 8
    assert node["checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert node["pretrained"] is False
    with pytest.raises(FileNotFoundError, match="model.checkpoint="):
        model_config({**given, "checkpoint": str(tmp_path / "missing")})


def data_keys(tmp: Path) -> list[str]:
    return [
        f"data.generate.out={tmp / 'hsi_data'}",
        "data.generate.progress=false",
        f"data.generate.dataset.resolution={RESOLUTION}",
        f"data.generate.dataset.classes=[{','.join(WNIDS)}]",
        "data.generate.dataset.counts.train.easy=1",
        "data.generate.dataset.counts.train.medium=1",
        "data.generate.dataset.counts.train.hard=1",
        "data.generate.dataset.counts.val=1",
        "data.generate.dataset.counts.test=2",
        "data.generate.dataset.coverage=reuse",  # ~42% of the synthetic train images are boxed
        f"data.generate.source.root={tmp / 'source'}",
        f"data.generate.source.num_classes={SOURCE_CLASSES}",
        "data.generate.source.train_per_class=24",
        "data.generate.source.val_per_class=2",
        "data.generate.source.progress=false",
    ]


def compose_benchmark(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("benchmark", overrides=overrides)


def save_tiny(path: Path, seed: int) -> nn.Module:
    """A random resnet10t with a 4-way (source) head, saved as a Lightning-style checkpoint."""
    torch.manual_seed(seed)
    net = timm.create_model("resnet10t", num_classes=SOURCE_CLASSES)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return net.eval()


@torch.inference_mode()
def plain_group_accuracies(net: nn.Module, dm) -> dict[str, float]:
    """The test groups' accuracies by a plain loop, independent of hsi.benchmark."""
    preds, labels, groups = [], [], []
    for x, y, g in dm.test_dataloader():
        preds.append(net(x)[:, SUBSET].argmax(1))
        labels.append(y)
        groups.append(g)
    pred, label, group = (torch.cat(t).numpy() for t in (preds, labels, groups))
    return {
        f"group/{g.name}": float(np.mean(pred[group == g.id] == label[group == g.id]))
        for g in dm.groups
    }


@pytest.mark.slow
def test_two_tiny_models_give_the_table5_layout_end_to_end(tmp_path):
    base = [*data_keys(tmp_path), "workers=0", "batch_size=8", "progress=false"]
    net_a = save_tiny(tmp_path / "a.ckpt", seed=0)
    # model b: an hsi-train run folder whose config names the model (model= is not restated)
    run_b = tmp_path / "run_b"
    net_b = save_tiny(run_b / "checkpoints" / "best.ckpt", seed=1)
    model_b = {
        "_target_": "hsi.models.create_model",
        "_partial_": True,
        "name": "resnet10t",
        "pretrained": False,
        "weights": None,
        "checkpoint": None,
    }
    write_results(run_b, {"status": "complete", "config": {"model": model_b}})

    results = {
        "tiny_a": benchmark(
            compose_benchmark(
                [
                    *base,
                    "model=resnet10t",
                    f"model.checkpoint={tmp_path / 'a.ckpt'}",
                    "label=tiny_a",
                    f"out={tmp_path / 'bench_a'}",
                ]
            )
        ),
        "tiny_b": benchmark(
            compose_benchmark(
                [*base, f"model.checkpoint={run_b}", "label=tiny_b", f"out={tmp_path / 'bench_b'}"]
            )
        ),
    }
    cfg = compose_benchmark([*base, f"out={tmp_path / 'x'}"])
    dm = instantiate(cfg.data, eval_batch_size=8)
    dm.setup("test")
    source = SourceDataModule(cfg.data.generate.source, resolution=RESOLUTION, eval_batch_size=8)
    source.setup("test")
    for name, net in (("tiny_a", net_a), ("tiny_b", net_b)):
        res = results[name]
        assert res["status"] == "complete" and res["method"] == "benchmark"
        assert res["protocol"] == "subset" and res["head_classes"] == 4 and res["num_classes"] == 3
        assert res["model_name"] == "resnet10t"
        for key, value in plain_group_accuracies(net, dm).items():
            assert res["test"][key] == pytest.approx(value), (name, key)
        with torch.inference_mode():
            hits = [(net(x).argmax(1) == y).float() for x, y, _ in source.test_dataloader()]
        assert res["clean"]["acc"] == pytest.approx(float(torch.cat(hits).mean()))
        assert res["clean"]["samples"] == SOURCE_CLASSES * 2
    again = benchmark(
        compose_benchmark(
            [*base, f"model.checkpoint={run_b}", "label=tiny_b", f"out={tmp_path / 'bench_b'}"]
        )
    )
    assert again == results["tiny_b"]  # a finished run folder is not evaluated again

    report = build_report(results.values(), tmp_path / "report")
    title, table = report.tables["table5"]
    assert list(table.index) == [(m, s) for m in ("tiny_a", "tiny_b") for s in SIZES]
    for name, res in results.items():
        for size in SIZES:
            assert table.loc[(name, size), "Clean"] == pytest.approx(100 * res["clean"]["acc"])
            for placement in PLACEMENTS:
                expected = 100 * res["test"][f"group/{placement}_{size}"]
                assert table.loc[(name, size), placement] == pytest.approx(expected)
    assert (tmp_path / "report" / "tables" / "table5.tex").is_file()
    assert (tmp_path / "report" / "figures" / "fig6_hsi.pdf").is_file()


ZOO = {"resnet10t": "resnet10t", "convnext": "convnext_atto", "vit": "vit_tiny_patch16_224"}


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("key", sorted(ZOO))
def test_demo_zoo_experiments_compose_and_build_their_model(key):
    cfg = compose_train([f"experiment=demo_zoo_{key}"])
    assert cfg.model.name == ZOO[key]
    assert cfg.data._target_ == "hsi.data.SourceDataModule" and cfg.data.resolution == 64
    assert cfg.data.val_fraction == 0.1  # selection on held-out train images, as demo_source
    net = instantiate(cfg.model)(num_classes=10)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.slow
def test_a_demo_zoo_model_trains_one_debug_epoch(tmp_path):
    from hsi.train import train

    cfg = compose_train(
        [
            "experiment=demo_zoo_vit",
            "trainer=debug",
            f"data.source.root={tmp_path / 'source'}",
            "data.source.num_classes=3",
            "data.source.train_per_class=10",
            "data.source.val_per_class=2",
            "data.source.progress=false",
            "logger=none",
            f"out={tmp_path / 'run'}",
        ]
    )
    results = train(cfg)
    assert results["status"] == "complete" and results["model"] == "vit_tiny_patch16_224"
    assert results["epochs"] == 1 and 0.0 <= results["test"]["acc"] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # the run folder brings its own ViT config (img_size 64, 8 px patches) to hsi-benchmark
    node = model_config({"name": "resnet18", "checkpoint": str(tmp_path / "run")})
    assert node["name"] == "vit_tiny_patch16_224" and node["patch_size"] == 8


@pytest.mark.parametrize("data", ["hsi", "hsi_v2", "hsi_sam"])
def test_benchmark_paper_is_imagenet_at_224_for_every_dataset(data):
    cfg = compose_benchmark(["experiment=benchmark_paper", f"data={data}", "model=resnet50"])
    assert cfg.data.generate.dataset.name == data
    assert cfg.data.generate.source._target_ == "hsi.sources.imagenet.ImageNetSource"
    assert cfg.data.generate.dataset.resolution == 224
    assert cfg.model.name == "resnet50.tv_in1k"
