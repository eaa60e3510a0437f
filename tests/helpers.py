"""Helpers shared by the test modules: paths, tiny generation and training configs, the real
console scripts and the checks of a run's results.

The console scripts are the ones installed beside the interpreter that runs the tests
(``sys.executable``), so a test runs the code of the environment it was started from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hsi.groups import PLACEMENTS, make_groups

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BIN = Path(sys.executable).parent  # the environment's console scripts: hsi-train, hsi-generate, ...


# ============================================================================ generation
# 64 px, sizes 16/24/32; per class: train 4x2 + 8x1 = 16, val 12x1 = 12, test 2 images x 12 groups.
TINY = [
    "dataset.resolution=64",
    "dataset.counts.train.easy=2",
    "dataset.counts.train.medium=1",
    "dataset.counts.train.hard=1",
    "dataset.counts.val=1",
    "dataset.counts.test=2",
    # the synthetic source boxes ~42% of its train images, as ImageNet: repeat some (rows marked)
    "dataset.coverage=reuse",
    "progress=false",
]


def source_overrides(root: Path) -> list[str]:
    return [
        f"source.root={root}",
        "source.num_classes=3",
        "source.train_per_class=30",
        "source.val_per_class=4",
        "source.progress=false",
    ]


def make_cfg(out: Path, source_root: Path, *extra: str) -> DictConfig:
    """conf/generate.yaml for the TINY dataset of a 3-class synthetic source."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("generate", [f"out={out}", *source_overrides(source_root), *TINY, *extra])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes), hidden temp files included."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ============================================================================ training
HSI_TRAIN = BIN / "hsi-train"
CLASSES, RESOLUTION, SIZES, BATCH = 3, 32, (8, 12, 16), 16
EASY, MEDIUM, HARD, VAL, TEST = 3, 1, 1, 1, 2
TRAIN_SAMPLES = CLASSES * (4 * EASY + 4 * MEDIUM + 4 * HARD)  # 60 (4 Medium and 4 Hard groups)
BATCHES_PER_EPOCH = -(-TRAIN_SAMPLES // BATCH)  # 4
# The groups at sizes 8/12/16: Easy = CeO/CoO at 12 and 16, Hard = CeR/CoR at 8 and 12.
EASY_GROUPS = [f"{p}_{s}" for s in (12, 16) for p in ("CeO", "CoO")]
HARD_GROUPS = [f"{p}_{s}" for s in (8, 12) for p in ("CeR", "CoR")]
ALL_GROUPS = [f"{p}_{s}" for s in SIZES for p in PLACEMENTS]
MEDIUM_GROUPS = [g for g in ALL_GROUPS if g not in EASY_GROUPS + HARD_GROUPS]
ALL_GROUPS_IN_ID_ORDER = [g.name for g in make_groups(SIZES)]  # group id order


def source_keys(prefix: str, tmp: Path) -> list[str]:
    return [
        f"{prefix}.root={tmp / 'source'}",
        f"{prefix}.num_classes={CLASSES}",
        f"{prefix}.train_per_class=32",
        f"{prefix}.val_per_class=2",
        f"{prefix}.progress=false",
    ]


def hsi_data(tmp: Path) -> list[str]:
    # The folder is not called `hsi`: in the working directory of a `python -m` job (a SLURM job
    # of submitit) a folder of that name would shadow the package.
    return [
        f"data.generate.out={tmp / 'hsi_data'}",
        "data.generate.progress=false",
        f"data.generate.dataset.resolution={RESOLUTION}",
        f"data.generate.dataset.counts.train.easy={EASY}",
        f"data.generate.dataset.counts.train.medium={MEDIUM}",
        f"data.generate.dataset.counts.train.hard={HARD}",
        f"data.generate.dataset.counts.val={VAL}",
        f"data.generate.dataset.counts.test={TEST}",
        "data.generate.dataset.coverage=reuse",  # ~42% of the synthetic train images are boxed
        f"data.batch_size={BATCH}",
        *source_keys("data.generate.source", tmp),
    ]


def source_data(tmp: Path) -> list[str]:
    return [
        "data=source",
        f"data.resolution={RESOLUTION}",
        f"data.batch_size={BATCH}",
        *source_keys("data.source", tmp),
    ]


FAST = [
    "model=resnet10t",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "method.epochs=1",
]


def compose_train(overrides: list[str], hydra_node: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_node)


def hsi_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The real `hsi-train` command; fails the test with its output when it exits non-zero."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [str(HSI_TRAIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"hsi-train {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def check_metrics(metrics: dict, groups: bool = True) -> None:
    """Ranges, and the pooled numbers recomputed from the 12 group accuracies by hand: every
    val and test group holds the same number of samples, so pooled accuracy = their mean."""
    assert metrics and all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    if not groups:
        assert set(metrics) == {"acc", "worst_group_acc", "mean_group_acc"}
        assert metrics["acc"] == metrics["worst_group_acc"] == metrics["mean_group_acc"]
        return
    per_group = {g: metrics[f"group/{g}"] for g in ALL_GROUPS}
    values = np.array(list(per_group.values()))
    assert metrics["worst_group_acc"] == pytest.approx(values.min(), abs=1e-6)
    assert metrics["mean_group_acc"] == pytest.approx(values.mean(), abs=1e-6)
    assert metrics["acc"] == pytest.approx(values.mean(), abs=1e-6)
    for name, members in (("easy", EASY_GROUPS), ("medium", MEDIUM_GROUPS), ("hard", HARD_GROUPS)):
        assert metrics[f"acc_{name}"] == pytest.approx(
            np.mean([per_group[g] for g in members]), abs=1e-6
        )
    for size in SIZES:
        expected = np.mean([per_group[f"{p}_{size}"] for p in PLACEMENTS])
        assert metrics[f"acc_size_{size}"] == pytest.approx(expected, abs=1e-6)


def check_results(
    results: dict, method: str, run_dir: Path, seed: int = 0, groups: bool = True
) -> None:
    assert results["status"] == "complete"
    assert results["method"] == method and results["seed"] == seed == results["config"]["seed"]
    assert Path(results["run_dir"]) == run_dir.resolve()
    assert results["model"] == "resnet10t" and results["num_classes"] == CLASSES
    assert results["groups"] == (ALL_GROUPS_IN_ID_ORDER if groups else None)
    for split in ("val", "test"):
        check_metrics(results[split], groups)
    for path in results["checkpoints"].values():
        assert Path(path).is_file(), path
    assert results["dropped_samples"]["total"] == 0  # no asset failed in these builds
    for which, model in results.get("models", {}).items():  # every training run reports both
        assert Path(model["checkpoint"]).name == {"final": "last.ckpt", "best": "best.ckpt"}[which]
        raw = torch.load(model["checkpoint"], map_location="cpu", weights_only=True)
        assert (model["epoch"], model["global_step"]) == (raw["epoch"], raw["global_step"])
        for split in ("val", "test"):
            check_metrics(model[split], groups)
