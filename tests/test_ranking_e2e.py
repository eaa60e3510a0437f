"""hsi-rank end to end on a tiny synthetic source with a tiny classifier trained here: the
offline cam detector's ranking follows object size, every task writes its files, reruns reuse
the caches and give the same bytes, bad input exits with a message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import BIN, hsi_train

pytestmark = pytest.mark.slow

SOURCE = ["num_classes=3", "train_per_class=100", "val_per_class=10", "size_range=[32,48]"]


def source_keys(prefix: str, root: Path) -> list[str]:
    return [f"{prefix}.root={root}", f"{prefix}.progress=false", *(f"{prefix}.{k}" for k in SOURCE)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A resnet10t trained for 8 epochs on the tiny source's own images at 32 px."""
    tmp = tmp_path_factory.mktemp("rank")
    hsi_train(
        [
            "experiment=demo_source",
            "model=resnet10t",
            *source_keys("data.source", tmp / "source"),
            "data.resolution=32",
            "data.batch_size=32",
            "method.epochs=8",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"hydra.run.dir={tmp / 'model'}",
        ],
        cwd=tmp,
    )
    return tmp


def hsi_rank(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    command = [
        str(BIN / "hsi-rank"),
        *source_keys("source", tmp / "source"),
        f"detector.checkpoint={tmp / 'model'}",
        "detector.target_layer=layer2",  # layer4 of resnet10t is 1x1 at 32 px
        f"model.checkpoint={tmp / 'model'}",
        "resolution=32",
        "device=cpu",
        "progress=false",
        *args,
    ]
    proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, (
            f"hsi-rank failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def test_cam_ranking_follows_object_size(trained):
    out = trained / "score_only"
    hsi_rank(trained, "tasks=[score]", f"hydra.run.dir={out}")
    rho = pd.read_csv(out / "size_correlation.csv")
    train = rho[rho["split"] == "train"]
    assert len(train) == 3 and (train["images"] == 100).all()
    # a larger object: a more confident classifier, so a lower (less spurious) rank, in every
    # class. A model of fewer epochs or images still reads mostly the habitat (the easier cue),
    # and its confidence then falls as the object hides more of it (docs/ranking.md)
    assert (train["spearman"] > 0).all() and train["spearman"].mean() > 0.3, train
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 3 * (100 + 10) and scores["score"].between(0, 1).all()
    # the cam box is missing only where the map is flat (recorded as NaN, noise skips those)
    assert scores[["box_xmin", "box_ymin", "box_xmax", "box_ymax"]].notna().all(axis=1).mean() > 0.8


def test_hsi_rank_every_task_and_rerun(trained):
    out = trained / "all"
    shifted = (
        "ood.source={_target_:hsi.sources.synthetic.SyntheticSource,"
        f"root:{trained / 'shifted'},num_classes:3,train_per_class:1,val_per_class:6,"
        "size_range:[32,48],habitat_prob:0.0,seed:1,progress:false}"
    )
    common = [
        "subsets.ks=[5,60]",
        "retrain.epochs=100",
        "retrain.l2=1.0",
        "noise.per_class=3",
        f"embeddings.cache={trained / 'emb'}",
        shifted,
        "ood.name='shifted synthetic source (every object on another habitat)'",
    ]
    proc = hsi_rank(
        trained, "tasks=[score,subsets,retrain,noise,ood,grids]", *common, f"hydra.run.dir={out}"
    )
    for name in (
        "scores.csv",
        "size_correlation.csv",
        "subsets.csv",
        "overlaps.csv",
        "accuracy_vs_rank.csv",
        "accuracy_vs_rank.png",
        "retrain.csv",
        "noise.csv",
        "ood.csv",
        "ranked_grid.png",
    ):
        assert (out / name).is_file(), name
    assert "bot-5" in proc.stdout and "shifted synthetic source" in proc.stdout
    overlaps = pd.read_csv(out / "overlaps.csv")
    assert set(overlaps["k"]) == {60} and (overlaps["bot_top"] == 20).all()  # 100 < 120 images
    noise = pd.read_csv(out / "noise.csv")
    assert set(noise["region"]) == {"clean", "fg", "bg"} and set(noise["alpha"]) == {
        0,
        10,
        100,
        250,
    }
    ood = pd.read_csv(out / "ood.csv")
    assert (ood["ood_images"] == 18).all() and ood["ood_acc"].between(0, 1).all()

    # a second run from the first one's scores, reusing the embeddings: the same table
    again = trained / "again"
    hsi_rank(
        trained,
        "tasks=[retrain]",
        *common,
        f"scores={out / 'scores.csv'}",
        f"hydra.run.dir={again}",
    )
    assert (again / "accuracy_vs_rank.csv").read_bytes() == (
        out / "accuracy_vs_rank.csv"
    ).read_bytes()


def test_hsi_rank_bad_input_says_what_to_fix(trained):
    proc = hsi_rank(
        trained,
        "tasks=[subsets]",
        f"scores={trained / 'nowhere.csv'}",
        f"hydra.run.dir={trained / 'bad'}",
        check=False,
    )
    assert proc.returncode != 0
    assert "scores=" in proc.stderr and "Traceback" not in proc.stderr


def test_hsi_test_groups_as_the_ood_set(trained):
    """On a fresh machine the HSI test groups stand in for ImageNet-A (named so in ood.csv)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    built = trained / "hsi_data"
    subprocess.run(
        [
            str(BIN / "hsi-generate"),
            f"out={built}",
            *source_keys("source", trained / "source"),
            "dataset.resolution=32",
            "dataset.counts.train.easy=2",
            "dataset.counts.train.medium=1",
            "dataset.counts.train.hard=1",
            "dataset.counts.val=1",
            "dataset.counts.test=2",
            "dataset.coverage=reuse",  # the synthetic source boxes only part of its train images
            "progress=false",
        ],
        cwd=trained,
        env=env,
        check=True,
        capture_output=True,
    )
    out = trained / "ood_hsi"
    proc = hsi_rank(
        trained,
        "tasks=[score,ood]",
        "subsets.ks=[5]",
        "retrain.epochs=50",
        "retrain.l2=1.0",
        f"ood.hsi={built}",
        f"hydra.run.dir={out}",
    )
    assert "HSI test groups" in proc.stdout
    ood = pd.read_csv(out / "ood.csv")
    groups = pd.read_csv(out / "ood_groups.csv")
    assert (ood["ood_images"] == 3 * 12 * 2).all()  # 3 classes x 12 groups x 2 images
    for row in ood.itertuples():
        mine = groups[groups["head"] == row.head]
        assert len(mine) == 12  # every group holds as many images: overall = mean of groups
        assert row.ood_acc == pytest.approx(mine["acc"].mean())
        assert row.ood_worst_group_acc == pytest.approx(mine["acc"].min())
