"""DDP (trainer.strategy=ddp) on CPU processes with gloo: each sampler's epoch sharded across
ranks (hsi/data/sharding.py), the group metrics summed over ranks, a 2-process `hsi-train`
whose test metrics equal a 1-process evaluation of its checkpoint, and the same fit as a
2-task SLURM job through submitit.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ddp_worker import group_metrics_on_rank, predictions
from helpers import (
    BATCH,
    FAST,
    HSI_TRAIN,
    TRAIN_SAMPLES,
    check_results,
    compose_train,
    hsi_data,
    hsi_train,
)
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_slurm import LAUNCHER, slurm  # noqa: F401 - the fixture that starts SLURM or skips

from hsi.data import EpochSampler
from hsi.data.sharding import EvalShard, TrainShard, shard_epoch, shard_length
from hsi.groups import make_groups
from hsi.methods.jtt import upsample_repeats
from hsi.metrics import GroupAccuracy
from hsi.results import read_results
from hsi.train.ddp import check_strategy, is_main_process

pytestmark = pytest.mark.filterwarnings("ignore:The `srun` command is available")
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
EPOCHS = 2


# ============================================================================ sharding
def check_shards(epoch: list, shards: list[list]) -> None:
    """Equal lengths; the shards together are the epoch plus fewer than world-size items of
    padding taken from its start, wrapping around (an epoch shorter than the world repeats)."""
    world = len(shards)
    length = shard_length(len(epoch), world)
    assert [len(s) for s in shards] == [length] * world
    pad = world * length - len(epoch)
    assert 0 <= pad < world
    together = Counter(item for shard in shards for item in shard)
    assert together == Counter(epoch) + Counter(epoch[i % len(epoch)] for i in range(pad))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 60, 61])
def test_shard_epoch_pads_by_wrapping_and_loses_nothing(n, world):
    epoch = [f"item{i}" for i in range(n)]
    check_shards(epoch, [shard_epoch(epoch, r, world) for r in range(world)])


def test_shard_epoch_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 of world size 2"):
        shard_epoch([1, 2, 3], 2, 2)


def samplers(n: int = 61) -> dict[str, EpochSampler]:
    """The data module's four ways of drawing the train split (hsi.data.modules.train_sampler):
    standard and easy (a seeded permutation; easy is the same sampler on the Easy rows), balanced
    (weighted draws with replacement) and JTT (the permutation with the error set repeated)."""
    rng = np.random.default_rng(0)
    group_ids = rng.integers(0, 12, n)
    weights = 1.0 / np.bincount(group_ids, minlength=12)[group_ids]
    return {
        "standard": EpochSampler(n, seed=3),
        "easy": EpochSampler(n // 3, seed=3),
        "balanced": EpochSampler(n, seed=3, weights=weights, num_samples=n),
        "jtt": EpochSampler(n, seed=3, repeats=upsample_repeats(n, [0, 7, 30], lambda_up=5)),
    }


@pytest.mark.parametrize("kind", ["standard", "easy", "balanced", "jtt"])
@pytest.mark.parametrize("world", [2, 3])
def test_each_sampler_shards_its_epochs_without_duplicates_or_losses(kind, world):
    reference = samplers()[kind]
    shards = [TrainShard(samplers()[kind], r, world) for r in range(world)]
    for epoch in (0, 1, 4):
        reference.set_epoch(epoch)
        for shard in shards:
            shard.set_epoch(epoch)  # what Lightning calls on the loader's sampler
        whole = list(reference)  # (index, augmentation seed) pairs of the 1-process epoch
        drawn = [list(shard) for shard in shards]
        assert all(len(d) == len(s) for d, s in zip(drawn, shards, strict=True))
        check_shards(whole, drawn)
    # epochs differ (the shards follow the wrapped sampler's epoch)
    assert list(shards[0]) != drawn[0]


@pytest.mark.parametrize("n, world", [(36, 2), (37, 2), (5, 3), (1, 2)])
def test_eval_shards_are_disjoint_and_cover_the_split_once(n, world):
    shards = [list(EvalShard(range(n), r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [len(EvalShard(range(n), r, world)) for r in range(world)]


@pytest.mark.slow
def test_group_metrics_summed_over_two_gloo_ranks_equal_one_process(tmp_path):
    preds, target, group_id = predictions()
    single = GroupAccuracy(make_groups([8, 12, 16]))
    single.update(preds, target, group_id)
    expected = {k: float(v) for k, v in single.compute().items()}
    out = str(tmp_path / "metrics")
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(group_metrics_on_rank, args=(2, init, out), nprocs=2)
    for rank in (0, 1):
        assert torch.load(f"{out}.{rank}", weights_only=True) == expected
    assert len(set(expected.values())) > 3  # the groups' accuracies differ: not a trivial case


# ============================================================================ checks
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn is not supported"),
        (["trainer.strategy=fsdp"], "trainer.strategy=fsdp is not supported"),
        (["trainer.use_distributed_sampler=true"], "trainer.use_distributed_sampler=true"),
    ],
)
def test_unsupported_settings_are_refused_in_one_line_naming_the_key(overrides, message):
    cfg = compose_train(["trainer=cpu", *overrides])
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        check_strategy(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_cli_refuses_ddp_spawn_in_one_line(tmp_path):
    proc = subprocess.run(
        [str(HSI_TRAIN), "trainer=cpu", "trainer.strategy=ddp_spawn", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hsi-train: error:")]
    assert len(errors) == 1 and "trainer.strategy=ddp_spawn" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "hsi_data").exists()  # refused before any data was built


def test_a_local_multirun_of_ddp_jobs_is_refused_but_slurm_tasks_are_not():
    cfg = compose_train(["trainer=cpu", *DDP])
    check_strategy(cfg)  # one job: Lightning starts the second process
    with pytest.raises(ValueError, match="hydra.launcher.tasks_per_node"):
        check_strategy(cfg, multirun=True)
    check_strategy(cfg, multirun=True, under_slurm=True)
    check_strategy(compose_train(["trainer=cpu"]), multirun=True)  # one process per job


@pytest.mark.parametrize(
    "environ, main",
    [
        ({}, True),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # Lightning's second process
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # first process of the second node
        ({"SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, False),  # SLURM's second task
        ({"SLURM_PROCID": "0"}, True),
        ({"RANK": "3"}, False),  # torchrun
    ],
)
def test_only_global_rank_zero_is_the_main_process(environ, main):
    assert is_main_process(environ) is main


# ============================================================================ end to end
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    instantiate(compose_train([*hsi_data(tmp), "out=/x"]).data).prepare_data()
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["standard", "easy", "balanced", "jtt"])
def test_the_data_module_gives_each_rank_its_shard_of_every_split(built, sampling):
    setting = "standard" if sampling == "jtt" else sampling
    dm = instantiate(compose_train([*hsi_data(built), f"data.sampling={setting}", "out=/x"]).data)
    dm.setup("fit")
    if sampling == "jtt":  # JTT's hook: an error set of three samples, each drawn 5 times
        size = dm.upsample_train(upsample_repeats(len(dm.dataset("train")), [0, 3, 7], 5))
        assert size == TRAIN_SAMPLES + 3 * 4
    loaders = {}
    for rank in (0, 1, None):
        # the Trainer a data module is attached to tells it the rank (None: no Trainer)
        dm.trainer = None if rank is None else SimpleNamespace(global_rank=rank, world_size=2)
        loaders[rank] = (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
    whole_train = list(loaders[None][0].sampler)
    if sampling == "jtt":
        assert len(whole_train) == TRAIN_SAMPLES + 3 * 4
    check_shards(whole_train, [list(loaders[r][0].sampler) for r in (0, 1)])
    for split in (1, 2):
        n = len(loaders[None][split].dataset)
        ranks = [list(loaders[r][split].sampler) for r in (0, 1)]
        assert sorted(ranks[0] + ranks[1]) == list(range(n))
    # outside a Trainer (JTT's error-set pass) the whole train split, in order
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    assert len(dm.train_eval_dataloader().sampler) == len(dm.dataset("train"))


def ddp_run_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("erm resnet10t seed=0:")]


@pytest.fixture(scope="module")
def ddp_run(built) -> tuple[Path, str]:
    """A 2-process ERM fit on the CPU: (run folder, its stdout)."""
    run = built / "ddp_run"
    proc = hsi_train(
        [*hsi_data(built), *FAST, *DDP, f"method.epochs={EPOCHS}", f"hydra.run.dir={run}"], built
    )
    return run, proc.stdout


@pytest.mark.slow
def test_a_two_process_fit_writes_once_and_its_metrics_equal_a_one_process_evaluation(
    built, ddp_run
):
    run, stdout = ddp_run
    results = read_results(run)
    check_results(results, "erm", run)
    # two ranks ran, each on half of every epoch: ceil(60 / 2 / 16) = 2 steps per epoch, not 4
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run / "train_ddp_process_1.log").read_text()
    assert results["global_step"] == EPOCHS * math.ceil(TRAIN_SAMPLES / 2 / BATCH)
    assert OmegaConf.create(results["config"]).trainer.strategy == "ddp"
    # written once: one summary line (rank 1 prints none), one results file, two checkpoints
    assert len(ddp_run_lines(stdout)) == 1, stdout[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))

    # the final checkpoint evaluated by one process: the same val and test metrics, exactly
    evaluation = built / "one_process_eval"
    hsi_train(
        [
            *hsi_data(built),
            *FAST,
            "method=pretrained",
            f"model.checkpoint={run / 'checkpoints' / 'last.ckpt'}",
            f"hydra.run.dir={evaluation}",
        ],
        built,
    )
    single = read_results(evaluation)
    assert single["config"]["trainer"]["devices"] == 1
    for split in ("val", "test"):
        assert results[split] == single[split], split
        assert results["models"]["final"][split] == single[split]


@pytest.mark.slow
def test_a_two_task_slurm_job_runs_the_same_ddp_fit(slurm, built, ddp_run):  # noqa: F811
    sweep = built / "slurm_sweep"
    args = [
        "-m",
        *LAUNCHER,
        "hydra.launcher.tasks_per_node=2",  # = trainer.devices: srun starts the two processes
        "seed=0",
        f"hydra.sweep.dir={sweep}",
        *hsi_data(built),
        *FAST,
        *DDP,
        f"method.epochs={EPOCHS}",
    ]
    hsi_train(args, built)
    results = read_results(sweep / "0")
    check_results(results, "erm", sweep / "0")
    assert results["slurm_job_id"], "the job did not run under SLURM"
    assert results["global_step"] == EPOCHS * math.ceil(TRAIN_SAMPLES / 2 / BATCH)
    # both tasks ran the fit (submitit logs one file per task), rank 0 alone wrote the results
    logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs
    text = "\n".join(p.read_text() for p in logs)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text and "GLOBAL_RANK: 0, MEMBER: 1/2" in text
    assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    # the same seed, shards and gloo sums as the fit that Lightning launched locally
    local = read_results(ddp_run[0])
    for split in ("val", "test"):
        assert results[split] == local[split], split
