"""hsi-train: every config composes; tiny end-to-end runs of every method through the real CLI;
results.json against recomputations; JTT multiplicities; the DFR embedding cache; multirun
folders; W&B offline; resume after an interrupted fit.

One tiny Hard-Spurious-ImageNet is built once for the module (3 synthetic classes, 32 px,
sizes 8/12/16; per class 3 train samples per Easy group and 1 per Medium/Hard group, 1 val and
2 test samples per group), so every val group holds 3 samples and every test group 6.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    ALL_GROUPS,
    BATCH,
    BATCHES_PER_EPOCH,
    CLASSES,
    CONF,
    EASY_GROUPS,
    FAST,
    HSI_TRAIN,
    ROOT,
    SIZES,
    TEST,
    TRAIN_SAMPLES,
    check_results,
    compose_train,
    hsi_data,
    hsi_train,
    source_data,
)
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from hsi.embeddings import data_key
from hsi.generate.layout import DatasetFolder
from hsi.groups import PLACEMENTS, make_groups
from hsi.loggers import group_table_rows
from hsi.models import create_model
from hsi.results import find_results, flat_metrics, read_results, write_results
from hsi.train import check_run_folder, make_datamodule, make_method, resolve_checkpoint, train

# Lightning notices srun on a machine with SLURM installed; these runs are not SLURM jobs.
pytestmark = pytest.mark.filterwarnings("ignore:The `srun` command is available")


def run_inprocess(overrides: list[str], out: Path, callbacks=()) -> dict:
    """hsi.train.train on the composed config (what the CLI does, without a new interpreter)."""
    return train(compose_train([*overrides, f"out={out}"]), callbacks=callbacks)


# ============================================================================ configs
def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def fill_missing(cfg) -> list[str]:
    """Overrides for every `???` key of a composed config (e.g. an ImageNet root)."""
    missing = []

    def walk(node, path):
        for key in node:
            if not path and key == "hydra":  # Hydra fills its own node when it runs a job
                continue
            child = f"{path}.{key}" if path else str(key)
            if OmegaConf.is_missing(node, key):
                missing.append(f"{child}=/nonexistent/{key}")
            elif OmegaConf.is_dict(node[key]):
                walk(node[key], child)

    walk(cfg, "")
    return missing


def compose_filled(overrides: list[str], hydra_node: bool = False):
    first = compose_train([*overrides, "out=/tmp/run"], hydra_node)
    return compose_train([*overrides, "out=/tmp/run", *fill_missing(first)], hydra_node)


# experiments of the other apps, composed by their own tests (test_benchmark.py, test_ranking*.py)
OTHER_APPS = ("benchmark_", "rank_")
GROUP_OPTIONS = [
    *[f"data={o}" for o in options("data")],
    *[f"model={o}" for o in options("model")],
    *[f"method={o}" for o in options("method")],
    *[f"method=dfr method/variant={o}" for o in options("method/variant")],
    *[f"callbacks={o}" for o in options("callbacks")],
    *[f"trainer={o}" for o in options("trainer")],
    *[f"logger={o}" for o in options("logger")],
    *[f"experiment={o}" for o in options("experiment") if not o.startswith(OTHER_APPS)],
    *[f"source@data.generate.source={o}" for o in options("source")],
    *[f"mask@data.generate.mask={o}" for o in options("mask")],
    *[f"inpaint@data.generate.inpaint={o}" for o in options("inpaint")],
    # dataset/hsi_sam selects mask=sam through a global package, which cannot apply under
    # data.generate: in training that variant is data=hsi_sam (composed above)
    *[f"dataset@data.generate.dataset={o}" for o in options("dataset") if o != "sam"],
]


@pytest.mark.parametrize("choice", GROUP_OPTIONS)
def test_every_config_of_every_group_composes_resolves_and_builds(choice):
    # method=pretrained refuses a model without weights before anything is built
    weights = ["model.pretrained=true"] if choice == "method=pretrained" else []
    cfg = compose_filled([*choice.split(), *weights])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["out"] == "/tmp/run" and resolved["seed"] == 0
    dm = make_datamodule(cfg)  # constructors check their arguments; no data is read
    assert isinstance(dm, get_class(cfg.data._target_))
    assert dm.batch_size == cfg.data.batch_size
    factory = instantiate(cfg.model)
    assert factory.func is create_model and factory.keywords["name"]
    method = make_method(cfg)  # the method's class of method._target_, its config checked
    assert method.name == cfg.method.name
    for node in (cfg.method, cfg.method.get("erm")):  # a method's module and its stage 1's
        if node is not None and "module" in node:
            module = instantiate(node.module)
            assert module.func.__name__ in ("ERMModule", "JTTModule")
            assert instantiate(node.optimizer).func is torch.optim.SGD
    assert cfg.trainer.max_epochs == cfg.method.epochs or choice == "trainer=debug"
    if cfg.trainer.accelerator != "gpu":  # a gpu trainer cannot be built on this CPU machine
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs
    assert type(method).__name__ in ("ERM", "JTT", "DFR", "Pretrained")


def test_the_slurm_launcher_composes_with_the_submitit_keys():
    cfg = compose_filled(
        ["hydra/launcher=slurm", "hydra.launcher.partition=debug"], hydra_node=True
    )
    launcher = cfg.hydra.launcher
    # hsi's subclass of submitit's launcher (sbatch refusals in one line)
    assert launcher._target_ == "hydra_plugins.hsi_launcher.slurm_launcher.SlurmLauncher"
    for key in (
        "timeout_min",
        "cpus_per_task",
        "gpus_per_node",
        "mem_gb",
        "nodes",
        "partition",
        "qos",
        "account",
        "array_parallelism",
        "max_num_timeout",
        "setup",
        "additional_parameters",
    ):
        assert key in launcher, key
    assert launcher.max_num_timeout > 0  # requeue on timeout, resumed through ckpt_path=last
    assert str(cfg.hydra.sweep.dir) in launcher.submitit_folder
    built = instantiate(launcher)  # builds the launcher object; submits nothing
    assert built.params["partition"] == "debug"
    # by name: Hydra's plugin scan re-executes plugin modules, so class identity can differ
    assert "BaseSubmititLauncher" in [c.__name__ for c in type(built).__mro__]


@pytest.mark.parametrize(
    ("overrides", "gpus"),
    [([], None), (["experiment=paper_erm"], 1), (["hydra.launcher.gpus_per_node=2"], 2)],
)
def test_the_slurm_launcher_requests_a_gpu_only_when_asked(overrides, gpus):
    cfg = compose_filled(["hydra/launcher=slurm", *overrides], hydra_node=True)
    assert cfg.hydra.launcher.gpus_per_node == gpus  # None: no --gpus-per-node in the sbatch script


def test_an_sbatch_refusal_is_one_line_naming_the_launcher_key(monkeypatch, capsys):
    import subprocess as sp

    from submitit.core.utils import FailedJobError

    from hydra_plugins.hsi_launcher.slurm_launcher import SlurmLauncher

    stderr = "sbatch: error: Invalid generic resource (gres) specification"

    def refuse(self, job_overrides, initial_job_idx):
        try:
            raise sp.CalledProcessError(1, ["sbatch", "/x/submission.sh"], stderr=stderr)
        except sp.CalledProcessError as cause:
            raise FailedJobError(stderr) from cause

    # Hydra's plugin scan re-executes plugin modules, so patch the base class this
    # SlurmLauncher really inherits from, found by name in its MRO
    (base,) = [c for c in SlurmLauncher.__mro__ if c.__name__ == "BaseSubmititLauncher"]
    monkeypatch.setattr(base, "launch", refuse)
    launcher = SlurmLauncher.__new__(SlurmLauncher)
    with pytest.raises(SystemExit) as exit_info:
        launcher.launch([["seed=0"]], 0)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "Invalid generic resource" in line and "hydra.launcher.gpus_per_node" in line


def test_the_sacct_warning_is_shown_once_per_sweep():
    import logging

    from hsi.cli.train import OncePerSweep

    sweep_filter = OncePerSweep()
    record = lambda msg: logging.LogRecord("submitit", logging.WARNING, "", 0, msg, None, None)  # noqa: E731
    sacct = "Call #{} - Bypassing sacct error Command '['sacct']' returned non-zero exit status 1."
    shown = [sweep_filter.filter(record(sacct.format(i))) for i in range(1, 4)]
    assert shown == [True, False, False]
    assert sweep_filter.filter(record("job 12 failed"))  # other warnings pass
    assert any(isinstance(f, OncePerSweep) for f in logging.getLogger("submitit").filters)


def test_help_lists_the_groups_chosen_on_hsi_train_with_their_options():
    from string import Template

    template = compose_train(["out=/x"], hydra_node=True).hydra.help.template
    # only the names Hydra fills in (a wrong one breaks --help)
    Template(template).substitute(
        FLAGS_HELP="", HYDRA_CONFIG_GROUPS="", APP_CONFIG_GROUPS="", CONFIG=""
    )
    listed = dict(
        line.split(":", 1)
        for line in template.split("== Config ==")[0].splitlines()[3:]
        if ":" in line
    )
    groups = {
        "data",
        "model",
        "method",
        "method/variant",
        "trainer",
        "callbacks",
        "logger",
        "experiment",
        "generation",
        "hydra/launcher",
    }
    assert set(listed) == groups  # not source, mask, inpaint, dataset (chosen under data.generate)
    for group, options_text in listed.items():
        shown = [o.strip() for o in options_text.split("(")[0].split(",")]
        expected = options(group)
        if group == "experiment":  # benchmark_* and rank_* are hsi-benchmark's and hsi-rank's
            expected = [o for o in expected if not o.startswith(OTHER_APPS)]
        assert shown == expected, group  # the listing follows conf/


def test_method_configs_carry_the_paper_recipe():
    """Paper 000, §5, written out here by hand."""
    erm = compose_train(["out=/x"]).method
    assert (erm.name, erm.epochs) == ("erm", 20)
    assert (
        erm.optimizer._target_,
        erm.optimizer.lr,
        erm.optimizer.momentum,
        erm.optimizer.weight_decay,
        erm.lr_scheduler,
    ) == ("torch.optim.SGD", 1e-3, 0.9, 1e-3, None)
    base = compose_train(["out=/x"])
    assert (
        base.data.batch_size == 256
        and base.data.augment == "paper"
        and base.data.sampling == "standard"
    )
    assert compose_train(["method=erm_easy"]).data.sampling == "easy"
    assert compose_train(["method=erm_all"]).data.sampling == "balanced"
    # the method option wins over an experiment that does not choose a sampling
    assert compose_filled(["experiment=paper_erm", "method=erm_all"]).data.sampling == "balanced"
    jtt = compose_train(["method=jtt"]).method
    assert jtt.lambda_up == 50 and jtt.erm_checkpoint is None and jtt.epochs == 20
    # stage 1 is the ERM method's node, composed (not copied); stage 2 shares its optimizer
    assert jtt.erm == erm and jtt.optimizer == jtt.erm.optimizer
    dfr = compose_train(["method=dfr"]).method
    assert dfr.erm == erm and dfr.variant._target_ == "hsi.methods.dfr.PaperRecipe"
    assert (dfr.variant.epochs, dfr.variant.lr, dfr.variant.l2) == (1000, 1.0, 100.0)
    official = compose_train(["method=dfr", "method/variant=official"]).method.variant
    # the public dfr_evaluate_spurious.py: 20 retrains, the final scaler fit on train
    assert (official.n_subsets, official.scaler_on) == (20, "train")
    assert list(official.c_grid) == [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]
    cheap = compose_train(["method=dfr", "method/variant=official_val"]).method.variant
    assert (cheap.n_subsets, cheap.scaler_on, cheap._target_) == (10, "val", official._target_)


@pytest.mark.parametrize("name", [o for o in options("experiment") if o.startswith("paper_")])
def test_paper_experiments_are_the_paper_setting(name):
    cfg = compose_filled([f"experiment={name}"])
    assert cfg.model.name.startswith("resnet50") and cfg.model.pretrained
    assert cfg.data.generate.dataset.resolution == 224 and cfg.data.batch_size == 256
    assert cfg.data.generate.source._target_.endswith("ImageNetSource")
    assert cfg.trainer.accelerator == "gpu"
    for node in (cfg.method, cfg.method.get("erm")):
        if node is not None and "optimizer" in node:
            recipe = node.optimizer
            assert (recipe.lr, recipe.momentum, recipe.weight_decay, node.lr_scheduler) == (
                1e-3,
                0.9,
                1e-3,
                None,
            )
    expected = {
        "paper_erm": ("erm", "standard"),
        "paper_erm_easy": ("erm_easy", "easy"),
        "paper_erm_all": ("erm_all", "balanced"),
        "paper_jtt": ("jtt", "standard"),
        "paper_dfr": ("dfr", "standard"),
    }[name]
    assert (cfg.method.name, cfg.data.sampling) == expected
    assert cfg.task_name == name


def test_run_and_sweep_folders_are_distinct_per_job():
    hydra = OmegaConf.to_container(compose_filled([], hydra_node=True).hydra, resolve=False)
    assert "%f" in hydra["run"]["dir"]  # microseconds: two runs started in the same second differ
    assert "%f" in hydra["sweep"]["dir"]
    assert hydra["sweep"]["subdir"] == "${hydra.job.num}"  # unique per job, stable under requeue


def test_a_requeued_job_resolves_the_same_sweep_folder():
    """submitit requeues the pickled launcher; its config must name the same folder later on
    (Hydra copies the master config's resolver cache, `now` included, into each job's config)."""
    cfg = compose_filled([], hydra_node=True)
    first = str(cfg.hydra.sweep.dir)
    time.sleep(0.002)
    requeued = pickle.loads(pickle.dumps(cfg))
    assert str(requeued.hydra.sweep.dir) == first
    fresh = compose_filled([], hydra_node=True)
    assert str(fresh.hydra.sweep.dir) != first  # a new launch gets a new folder


def test_a_sampling_choice_on_source_data_is_refused_clearly(tmp_path):
    cfg = compose_train([*source_data(tmp_path), "method=erm_easy", f"out={tmp_path}"])
    with pytest.raises(ValueError, match="has no groups to sample by; use it with data=hsi"):
        make_datamodule(cfg)


# ============================================================================ small units
def test_resolve_checkpoint_prefers_as_told_and_names_the_key(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match="method.erm_checkpoint=.*no last.ckpt or best.ckpt"
    ):
        resolve_checkpoint(run, "method.erm_checkpoint", ("last.ckpt", "best.ckpt"))
    (run / "checkpoints" / "best.ckpt").write_bytes(b"b")
    assert resolve_checkpoint(run, "k", ("last.ckpt", "best.ckpt")).name == "best.ckpt"
    (run / "checkpoints" / "last.ckpt").write_bytes(b"l")
    assert resolve_checkpoint(run, "k", ("last.ckpt", "best.ckpt")).name == "last.ckpt"
    assert resolve_checkpoint(run, "k", ("best.ckpt", "last.ckpt")).name == "best.ckpt"
    with pytest.raises(FileNotFoundError, match="model.checkpoint=.*no such file or folder"):
        resolve_checkpoint(tmp_path / "nope", "model.checkpoint", ("best.ckpt",))
    with pytest.raises(FileExistsError, match="resume it with ckpt_path=last"):
        check_run_folder(run, None)
    check_run_folder(run, "last")  # resuming is allowed
    check_run_folder(tmp_path / "fresh", None)


def test_data_key_ignores_serving_keys_only(tmp_path):
    base = compose_train([*hsi_data(tmp_path), "out=/x"])
    same = compose_train(
        [
            *hsi_data(tmp_path),
            "out=/x",
            "data.batch_size=3",
            "data.num_workers=2",
            "seed=4",
            "method=erm_all",
            "data.generate.workers=3",
        ]
    )
    other = compose_train([*hsi_data(tmp_path), "out=/x", "data.generate.dataset.resolution=64"])
    assert data_key(base) == data_key(same) != data_key(other)
    # sampling=easy cuts the train split to the Easy groups: other train embeddings
    easy = compose_train([*hsi_data(tmp_path), "out=/x", "method=erm_easy"])
    assert data_key(easy) not in (data_key(base), data_key(other))
    assert data_key(base).startswith("hsi-")


def test_group_table_rows_are_sizes_by_placements():
    metrics = {
        f"group/{p}_{s}": i * 0.01 + j
        for i, s in enumerate(SIZES)
        for j, p in enumerate(PLACEMENTS)
    }
    del metrics["group/CoR_16"]  # an empty group shows as None
    rows = group_table_rows(metrics, make_groups(SIZES))
    assert rows == [
        [8, 0.0, 1.0, 2.0, 3.0],
        [12, 0.01, 1.01, 2.01, 3.01],
        [16, 0.02, 1.02, 2.02, None],
    ]


def test_results_round_trip_and_refuse_nan_and_objects(tmp_path):
    path = write_results(
        tmp_path, {"val": {"acc": np.float32(0.5), "x": float("nan")}, "test": {"acc": 1.0}}
    )
    back = read_results(tmp_path)
    assert (
        back == {"val": {"acc": 0.5, "x": None}, "test": {"acc": 1.0}}
        and path.name == "results.json"
    )
    assert flat_metrics(back) == {"val/acc": 0.5, "val/x": None, "test/acc": 1.0}
    with pytest.raises(TypeError, match="cannot hold a object"):
        write_results(tmp_path, {"bad": object()})
    assert (
        json.loads(path.read_text())["test"]["acc"] == 1.0
    )  # the failed write left the file intact
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_results(tmp_path / "elsewhere")


# ============================================================================ end to end
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder holding the tiny dataset (built once, in process) and every run of the module."""
    tmp = tmp_path_factory.mktemp("train")
    dm = instantiate(compose_train([*hsi_data(tmp), "out=/x"]).data)
    dm.prepare_data()
    return tmp


@pytest.mark.slow
def test_samples_of_failed_assets_are_counted_in_results(tmp_path, monkeypatch):
    """An image whose assets fail at build time: training leaves its samples out (drop_failed,
    the default) and results.json counts them, in total and per split."""
    import hsi.generate.build as build

    real, failed = build.make_item, []

    def fail_first_train_image(maker, task):
        if task.key.startswith("train/") and not failed:
            failed.append(task.key)
            return build.ItemResult(task.key, "failed", "inpaint: forced by the test")
        return real(maker, task)

    monkeypatch.setattr(build, "make_item", fail_first_train_image)
    instantiate(compose_train([*hsi_data(tmp_path), "out=/x"]).data).prepare_data()
    recipe = DatasetFolder(tmp_path / "hsi_data").read_recipe()
    uses = recipe[recipe["fg_image"].isin(failed) | recipe["bg_image"].isin(failed)]
    assert len(failed) == 1 and len(uses) > 0

    hsi_train([*hsi_data(tmp_path), *FAST, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    dropped = read_results(tmp_path / "run")["dropped_samples"]
    assert dropped == {"total": len(uses), **uses["split"].value_counts().to_dict()}


@pytest.fixture(scope="module")
def source_run(work) -> Path:
    """Source pretraining through the CLI: plain classification on the source's own images."""
    run = work / "source_run"
    hsi_train([*source_data(work), *FAST, f"hydra.run.dir={run}"], work)
    return run


@pytest.fixture(scope="module")
def sweep_a(work, source_run) -> Path:
    """`-m method=erm,erm_all seed=0,1` on the basic launcher, from the source-pretrained model."""
    sweep = work / "sweep_a"
    hsi_train(
        [
            "-m",
            *hsi_data(work),
            *FAST,
            "method=erm,erm_all",
            "seed=0,1",
            f"model.checkpoint={source_run}",
            f"hydra.sweep.dir={sweep}",
        ],
        work,
    )
    return sweep


@pytest.mark.slow
def test_source_pretraining_run_writes_results_without_groups(source_run):
    results = read_results(source_run)
    check_results(results, "erm", source_run, groups=False)
    assert results["data"] == "source" and results["epochs"] == 1
    assert results["config"]["callbacks"]["best"]["monitor"] is None  # val/acc was monitored
    best = torch.load(results["checkpoints"]["best"], map_location="cpu", weights_only=True)
    monitors = {
        v["monitor"] for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint")
    }
    assert monitors == {"val/acc", None}  # best.ckpt by val/acc, last.ckpt every epoch
    assert (source_run / "csv" / "version_0" / "metrics.csv").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)  # several hsi-train jobs
def test_multirun_gives_each_job_its_own_folder_and_results(sweep_a, source_run):
    found = find_results(sweep_a)
    assert [p.parent.name for p in found] == ["0", "1", "2", "3"]
    combos = set()
    for path in found:
        results = read_results(path)
        check_results(results, results["method"], path.parent, seed=results["seed"])
        combos.add((results["method"], results["seed"]))
        assert results["config"]["model"]["checkpoint"] == str(
            source_run
        )  # source-pretrained start
        sampling = {"erm": "standard", "erm_all": "balanced"}[results["method"]]
        assert results["config"]["data"]["sampling"] == sampling
        assert Path(results["checkpoints"]["best"]).parent == path.parent / "checkpoints"
    assert combos == {("erm", 0), ("erm", 1), ("erm_all", 0), ("erm_all", 1)}


def _predict(net, loader):
    preds, labels, group_ids = [], [], []
    with torch.no_grad():
        for x, y, g in loader:
            preds.append(net(x).argmax(1))
            labels.append(y)
            group_ids.append(g)
    return torch.cat(preds).numpy(), torch.cat(labels).numpy(), torch.cat(group_ids).numpy()


def _group_accuracies(pred, label, group_id) -> dict[str, float]:
    correct = np.bincount(group_id, weights=(pred == label), minlength=12)
    total = np.bincount(group_id, minlength=12)
    return {f"group/{g.name}": correct[g.id] / total[g.id] for g in make_groups(SIZES)}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["final", "best"])
def test_erm_test_metrics_equal_a_recomputation_from_each_checkpoint(sweep_a, which):
    results = read_results(sweep_a / "0")
    model = results["models"][which]
    assert results["selection"] == "final" and results["test"] == results["models"]["final"]["test"]
    net = create_model("resnet10t", CLASSES, checkpoint=model["checkpoint"]).eval()
    dm = instantiate(OmegaConf.create(results["config"]["data"]))
    dm.setup("test")
    pred, label, group_id = _predict(net, dm.test_dataloader())
    assert len(label) == CLASSES * TEST * 12
    expected = _group_accuracies(pred, label, group_id)
    for name, value in expected.items():
        assert model["test"][name] == pytest.approx(value, abs=1e-6), name
    assert model["test"]["acc"] == pytest.approx(float((pred == label).mean()), abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)  # several hsi-train jobs
def test_pretrained_evaluates_the_source_model_as_it_is_on_the_groups(work, source_run):
    run = work / "pretrained_run"
    hsi_train(
        [
            *hsi_data(work),
            *FAST,
            "method=pretrained",
            f"model.checkpoint={source_run}",
            f"hydra.run.dir={run}",
        ],
        work,
    )
    results = read_results(run)
    assert results["method"] == "pretrained" and results["epochs"] == 0
    assert not (run / "checkpoints").exists()  # nothing was trained, nothing saved
    best = read_results(source_run)["checkpoints"]["best"]
    net = create_model("resnet10t", CLASSES, checkpoint=best).eval()  # the head as trained
    dm = instantiate(OmegaConf.create(results["config"]["data"]))
    dm.setup("test")
    pred, label, group_id = _predict(net, dm.test_dataloader())
    for name, value in _group_accuracies(pred, label, group_id).items():
        assert results["test"][name] == pytest.approx(value, abs=1e-6), name


def test_a_slurm_restart_resumes_from_last_unless_told_otherwise():
    from hsi.train import requeue_ckpt_path

    assert requeue_ckpt_path(None, {}) is None  # a first start: a fresh fit
    assert requeue_ckpt_path(None, {"SLURM_RESTART_COUNT": "0"}) is None
    assert requeue_ckpt_path(None, {"SLURM_RESTART_COUNT": "2"}) == "last"  # requeued by submitit
    assert requeue_ckpt_path("/x/a.ckpt", {"SLURM_RESTART_COUNT": "1"}) == "/x/a.ckpt"


def test_pretrained_refuses_a_head_for_other_classes(tmp_path):
    from hsi.models import HeadMismatchError

    net = create_model("resnet10t", 3)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "m.ckpt"
    )
    with pytest.raises(HeadMismatchError, match="3 outputs but the data has 5 classes"):
        create_model("resnet10t", 5, checkpoint=str(tmp_path / "m.ckpt"), require_head=True)
    assert create_model("resnet10t", 3, checkpoint=str(tmp_path / "m.ckpt"), require_head=True)


@pytest.mark.slow
@pytest.mark.timeout(900)  # several hsi-train jobs
def test_erm_easy_and_jtt_end_to_end_with_an_exact_upsampling(work):
    sweep = work / "sweep_b"
    lambda_up = 3
    hsi_train(
        [
            "-m",
            *hsi_data(work),
            *FAST,
            "method=erm_easy,jtt",
            "++method.erm.epochs=1",
            f"++method.lambda_up={lambda_up}",
            f"hydra.sweep.dir={sweep}",
        ],
        work,
    )
    erm_easy, jtt = read_results(sweep / "0"), read_results(sweep / "1")
    check_results(erm_easy, "erm_easy", sweep / "0")
    assert erm_easy["config"]["data"]["sampling"] == "easy"
    check_results(jtt, "jtt", sweep / "1")

    errors = pd.read_csv(sweep / "1" / "error_set.csv")
    assert len(errors) == TRAIN_SAMPLES and errors["index"].tolist() == list(range(TRAIN_SAMPLES))
    is_error = errors["error"].to_numpy(dtype=bool)
    assert is_error.any()
    # exact multiplicity in the stage-2 sampler: lambda_up for the error set, once for the rest
    assert (errors["multiplicity"].to_numpy() == np.where(is_error, lambda_up, 1)).all()
    report = jtt["error_set"]
    assert report["epoch_size"] == TRAIN_SAMPLES + (lambda_up - 1) * int(is_error.sum())
    # precision / recall against Medium ∪ Hard, by hand from the file
    minority = ~errors["group"].isin(EASY_GROUPS).to_numpy()
    assert report["size"] == is_error.sum()
    assert report["precision"] == pytest.approx((is_error & minority).sum() / is_error.sum())
    assert report["recall"] == pytest.approx((is_error & minority).sum() / minority.sum())

    # the error set is the stage-1 model's mistakes on the train split with eval transforms
    stage1 = Path(jtt["stage1"]["checkpoint"])
    assert (
        stage1 == sweep / "1" / "stage1" / "checkpoints" / "last.ckpt"
        and jtt["stage1"]["epochs"] == 1
    )
    net = create_model("resnet10t", CLASSES, checkpoint=stage1).eval()
    dm = instantiate(OmegaConf.create(jtt["config"]["data"]))
    dm.setup("fit")
    pred, label, _ = _predict(net, dm.train_eval_dataloader())
    assert (pred == errors["pred"].to_numpy()).all() and ((pred != label) == is_error).all()
    assert errors["sample_id"].tolist() == list(dm.dataset("train").sample_ids)

    # stage 2 ran on the upsampled epochs: its global step counts their batches
    assert jtt["global_step"] == -(-report["epoch_size"] // BATCH)


@pytest.mark.slow
@pytest.mark.timeout(900)  # several hsi-train jobs
def test_dfr_paper_and_official_share_one_embedding_extraction(work, sweep_a):
    sweep, cache = work / "sweep_c", work / "cache"
    erm_run = sweep_a / "0"
    common = [
        *hsi_data(work),
        *FAST,
        "method=dfr",
        f"method.erm_checkpoint={erm_run}",
        f"method.cache_dir={cache}",
    ]
    # the two recipes have their own keys (conf/method/variant/): one run each, one cache
    hsi_train([*common, "method.variant.l2=10", f"hydra.run.dir={sweep / '0'}"], work)
    hsi_train(
        [
            *common,
            "method/variant=official_val",  # val alone: the embeddings paper uses
            "method.variant.n_subsets=3",
            f"hydra.run.dir={sweep / '1'}",
        ],
        work,
    )
    paper, official = read_results(sweep / "0"), read_results(sweep / "1")
    for results, job in ((paper, "0"), (official, "1")):
        check_results(results, "dfr", sweep / job)
        last = torch.load(erm_run / "checkpoints" / "last.ckpt", weights_only=True)
        assert results["stage1"] == {
            "checkpoint": str(erm_run / "checkpoints" / "last.ckpt"),
            "epoch": last["epoch"],
            "global_step": last["global_step"],
            "trained_here": False,
        }
    assert paper["dfr"]["variant"] == "paper" and official["dfr"]["variant"] == "official"
    assert official["dfr"]["chosen_C"] in [1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01]
    # the first job extracted, the second read the very same files back
    assert [paper["dfr"]["embeddings"][s]["hit"] for s in ("val", "test")] == [False, False]
    assert [official["dfr"]["embeddings"][s]["hit"] for s in ("val", "test")] == [True, True]
    assert paper["dfr"]["embeddings"] == {
        s: {**v, "hit": False} for s, v in official["dfr"]["embeddings"].items()
    }
    assert len(list(cache.rglob("*.npz"))) == 2
    assert "extracting" in (sweep / "0" / "train.log").read_text()
    assert "extracting" not in (sweep / "1" / "train.log").read_text()

    # the saved head on the cached test embeddings gives results.json's test numbers
    with np.load(paper["dfr"]["embeddings"]["test"]["path"]) as data:
        X, y, g = data["X"], data["y"], data["g"]
    state = torch.load(paper["checkpoints"]["dfr"], map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    logits = ((X - state["feature_mean"].numpy()) / state["feature_scale"].numpy()) @ state[
        "linear.weight"
    ].numpy().T
    pred = (logits + state["linear.bias"].numpy()).argmax(1)
    for name, value in _group_accuracies(pred, y, g).items():
        assert paper["test"][name] == pytest.approx(value, abs=1e-6), name


class Interrupt(Exception):
    pass


class InterruptAtEpoch(Callback):
    """Stops the fit at the first batch of `epoch` (0-based), after the previous epoch's checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            raise Interrupt(f"interrupted at epoch {self.epoch}")


class EpochCounter(Callback):
    def __init__(self) -> None:
        self.started = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.started += 1


@pytest.mark.slow
def test_an_interrupted_fit_resumes_from_last_and_ends_after_the_same_epochs(work):
    run = work / "resume"
    overrides = [*hsi_data(work), *FAST, "method.epochs=3", "logger=none"]
    with pytest.raises(Interrupt):
        run_inprocess(overrides, run, callbacks=[InterruptAtEpoch(1)])
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, BATCHES_PER_EPOCH)  # one epoch of three done
    assert not (run / "results.json").exists()
    with pytest.raises(FileExistsError, match="ckpt_path=last"):
        run_inprocess(overrides, run)  # a fresh fit would overwrite it
    counter = EpochCounter()
    results = run_inprocess([*overrides, "ckpt_path=last"], run, callbacks=[counter])
    assert counter.started == 2  # epochs 2 and 3 only
    assert results["epochs"] == 3 and results["global_step"] == 3 * BATCHES_PER_EPOCH
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 3 * BATCHES_PER_EPOCH)
    check_results(results, "erm", run)
    assert not (run / "csv").exists() and not (run / "wandb").exists()  # logger=none


@pytest.mark.slow
def test_wandb_offline_dfr_run_logs_group_tables_and_finishes(work):
    import wandb

    run = work / "wandb_dfr"
    results = run_inprocess(
        [
            *hsi_data(work),
            *FAST,
            "logger=wandb",
            "method=dfr",
            "method.erm.epochs=1",
            "method.variant.l2=10",
            f"method.cache_dir={work / 'cache_wandb'}",
        ],
        run,
    )
    assert wandb.run is None  # finished
    check_results(results, "dfr", run)
    assert results["stage1"]["trained_here"] and results["stage1"]["epochs"] == 1
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))  # one W&B run for the job
    assert "got exitcode: 0" in (offline[0] / "logs" / "debug.log").read_text()
    for split in ("val", "test"):
        (table,) = (offline[0] / "files" / "media" / "table" / split).glob(
            "group_table_*.table.json"
        )
        content = json.loads(table.read_text())
        assert content["columns"] == ["size", "CeO", "CoO", "CeR", "CoR"]
        expected = [[s, *(results[split][f"group/{p}_{s}"] for p in PLACEMENTS)] for s in SIZES]
        assert len(content["data"]) == len(expected)
        for row, want in zip(content["data"], expected, strict=True):
            assert row == pytest.approx(want)


@pytest.mark.slow
def test_wandb_offline_erm_run_draws_the_per_group_curves(work):
    import wandb

    run = work / "wandb_erm"
    results = run_inprocess([*hsi_data(work), *FAST, "logger=wandb", "method.epochs=2"], run)
    assert wandb.run is None
    (offline,) = (run / "wandb").glob("offline-run-*")
    (curves,) = (offline / "files" / "media" / "table" / "val").glob(
        "group_curves_table_*.table.json"
    )
    content = json.loads(curves.read_text())
    assert content["columns"] == ["step", "lineKey", "lineVal"]
    points = {(row[1], row[0]): row[2] for row in content["data"]}
    assert sorted(points) == sorted((g, e) for g in ALL_GROUPS for e in (0, 1))  # group x epoch
    # each reported model's epoch on the chart = its val numbers in results.json (same weights)
    for model in results["models"].values():
        for group in ALL_GROUPS:
            assert points[(group, model["epoch"])] == pytest.approx(
                model["val"][f"group/{group}"], abs=1e-6
            )
    assert not (run / "csv").exists()  # logger=wandb replaces the CSV logger
    assert results["epochs"] == 2


@pytest.mark.slow
def test_a_failing_wandb_job_closes_its_run_and_exits_non_zero(work, monkeypatch):
    import wandb

    from hsi.cli.train import main

    run = work / "wandb_fail"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "hsi-train",
            *hsi_data(work),
            *FAST,
            "logger=wandb",
            "data.sampling=bogus",
            f"hydra.run.dir={run}",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2  # a bad key: one line, no traceback
    assert wandb.run is None
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert "got exitcode: 1" in (offline / "logs" / "debug.log").read_text()  # W&B saw the failure
    assert not (run / "results.json").exists()


# ============================================================================ trust
@pytest.mark.slow
def test_last_ckpt_holds_every_epoch_and_jtt_and_dfr_stage1_load_it(work):
    """A monitored metric that peaks at epoch 0 (`epoch`, mode min): best.ckpt stays at epoch 0,
    last.ckpt follows every epoch; stage 1 of JTT and DFR is the epoch-T model."""
    peak_at_0 = ["callbacks.best.monitor=epoch", "callbacks.best.mode=min", "logger=none"]
    erm = work / "peak_erm"
    results = run_inprocess([*hsi_data(work), *FAST, *peak_at_0, "method.epochs=4"], erm)
    last = torch.load(erm / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(erm / "checkpoints" / "best.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (3, 4 * BATCHES_PER_EPOCH)
    assert best["epoch"] == 0
    assert (results["models"]["final"]["epoch"], results["models"]["best"]["epoch"]) == (3, 0)
    assert results["selection"] == "final" and results["test"] == results["models"]["final"]["test"]

    expected = {
        "checkpoint": str(erm / "checkpoints" / "last.ckpt"),
        "epoch": 3,
        "global_step": 4 * BATCHES_PER_EPOCH,
        "trained_here": False,
    }
    jtt = run_inprocess(
        [*hsi_data(work), *FAST, "logger=none", "method=jtt", f"method.erm_checkpoint={erm}"],
        work / "peak_jtt",
    )
    dfr = run_inprocess(
        [
            *hsi_data(work),
            *FAST,
            "logger=none",
            "method=dfr",
            "method.variant.l2=10",
            f"method.erm_checkpoint={erm}",
            f"method.cache_dir={work / 'peak_cache'}",
        ],
        work / "peak_dfr",
    )
    assert jtt["stage1"] == expected and dfr["stage1"] == expected
    assert jtt["checkpoints"]["stage1"] == dfr["checkpoints"]["stage1"] == expected["checkpoint"]
    # selection=best takes the best model instead, and says that the metric is coarse
    with pytest.warns(UserWarning, match="moves in steps of 0.333"):
        dfr_best = run_inprocess(
            [
                *hsi_data(work),
                *FAST,
                "logger=none",
                "method=dfr",
                "method.variant.l2=10",
                "selection=best",
                f"method.erm_checkpoint={erm}",
                f"method.cache_dir={work / 'peak_cache'}",
            ],
            work / "peak_dfr_best",
        )
    assert dfr_best["stage1"]["checkpoint"].endswith("best.ckpt")
    assert dfr_best["stage1"]["epoch"] == 0

    # stage 1 trained in the run: its epoch-T model as well
    jtt_here = run_inprocess(
        [*hsi_data(work), *FAST, *peak_at_0, "method=jtt", "method.erm.epochs=4"],
        work / "peak_jtt_here",
    )
    stage1 = jtt_here["stage1"]
    assert stage1["trained_here"] and (stage1["epoch"], stage1["epochs"]) == (3, 4)
    assert stage1["checkpoint"] == str(
        work / "peak_jtt_here" / "stage1" / "checkpoints" / "last.ckpt"
    )


class Marker:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize(
    "key", ["model.checkpoint", "method.erm_checkpoint", "model.weights", "ckpt_path"]
)
def test_a_malicious_pickle_runs_nothing_whatever_key_it_is_given_as(tmp_path, key):
    from hsi.models import UnloadableFileError

    marker, evil = tmp_path / "marker", tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Marker(marker)}))
    overrides = [*hsi_data(tmp_path), *FAST, f"{key}={evil}"]
    if key == "method.erm_checkpoint":
        overrides.append("method=jtt")
    with pytest.raises(
        UnloadableFileError, match=f"{key}={evil}: cannot be loaded as weights only"
    ):
        run_inprocess(overrides, tmp_path / "run")
    assert not marker.exists()  # nothing in the file ran
    assert not (tmp_path / "hsi_data").exists()  # refused before any data was built
    assert not (tmp_path / "run" / "results.json").exists()


def _fresh_run(work: Path) -> Path:
    """A finished 1-epoch ERM run (its results.json and checkpoints), made once."""
    run = work / "fresh_erm"
    if not (run / "results.json").exists():
        run_inprocess([*hsi_data(work), *FAST, "logger=none"], run)
    return run


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            ["model.name=resnet_nosuch"],
            ValueError,
            "model.name=resnet_nosuch: timm has no such model",
        ),
        (["data.batch_size=0"], ValueError, "data.batch_size=0: must be an integer >= 1"),
        (
            ["method.epochs=0"],
            ValueError,
            "method.epochs=0: a training method needs at least one epoch",
        ),
        (
            ["method=jtt", "method.erm.epochs=0"],
            ValueError,
            "method.erm.epochs=0: a training method",
        ),
        (
            ["method=dfr", "method.erm.epochs=0"],
            ValueError,
            "method.erm.epochs=0: a training method",
        ),
        (["method=jtt", "method.lambda_up=0"], ValueError, "method.lambda_up=0"),
        (
            ["method=jtt", "method.erm_checkpoint=/nonexistent/erm"],
            FileNotFoundError,
            "method.erm_checkpoint=/nonexistent/erm: no such file or folder",
        ),
        (
            ["method=erm_all", "method=jtt", "data.sampling=balanced"],
            ValueError,
            "data.sampling=standard",
        ),
        (["method=pretrained"], ValueError, "method=pretrained evaluates a trained model"),
        (["selection=latest"], ValueError, "selection=latest: must be one of"),
        (["method=dfr", "method.variant.lr=-1"], ValueError, "method.variant .*lr > 0"),
    ],
)
def test_bad_keys_are_refused_before_any_data_is_read(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        run_inprocess([*hsi_data(tmp_path), *FAST, *overrides], tmp_path / "run")
    assert not (tmp_path / "hsi_data").exists() and not (tmp_path / "source").exists()
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("content", [b"garbage bytes, not a checkpoint", "truncated"])
def test_unreadable_checkpoints_are_named_and_nothing_is_overwritten(tmp_path, work, content):
    from hsi.models import UnloadableFileError

    done = _fresh_run(work)
    before = (done / "results.json").read_bytes()
    if content == "truncated":  # a last.ckpt cut short (a full disk, a killed copy)
        run = tmp_path / "resume"
        (run / "checkpoints").mkdir(parents=True)
        good = (done / "checkpoints" / "last.ckpt").read_bytes()
        (run / "checkpoints" / "last.ckpt").write_bytes(good[: len(good) // 2])
        overrides, key = ["ckpt_path=last"], "ckpt_path=last"
    else:
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes(content)
        run, overrides, key = tmp_path / "run", [f"model.checkpoint={bad}"], "model.checkpoint"
    with pytest.raises(UnloadableFileError, match=f"{key}=.*cannot be loaded as weights only"):
        run_inprocess([*hsi_data(work), *FAST, *overrides], run)
    assert (done / "results.json").read_bytes() == before
    assert not (run / "results.json").exists()


def test_out_must_be_a_writable_folder(tmp_path, monkeypatch):
    import hsi.train.checks

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"out={afile}: is a file"):
        run_inprocess([*hsi_data(tmp_path), *FAST], afile)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    if os.access(readonly, os.W_OK):  # root writes anywhere: deny as a read-only mount would
        real_access = os.access
        monkeypatch.setattr(
            hsi.train.checks.os,
            "access",
            lambda path, mode: False if Path(path) == readonly else real_access(path, mode),
        )
        message = f"out={readonly}: the run folder is not writable"
        out = readonly
    else:
        message, out = "out=.*readonly/run: cannot create the run folder", readonly / "run"
    with pytest.raises(PermissionError, match=message):
        run_inprocess([*hsi_data(tmp_path), *FAST], out)
    readonly.chmod(0o700)
    assert afile.read_text() == "not a folder" and not (tmp_path / "hsi_data").exists()


def test_a_second_process_on_a_run_folder_fails_at_once_naming_the_first(tmp_path):
    from hsi.train.checks import RunLock, RunLockedError

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from hsi.train.checks import RunLock; lock = RunLock(Path(sys.argv[1])).__enter__(); "
            "print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            run_inprocess([*hsi_data(tmp_path), *FAST], run)
        assert not (tmp_path / "hsi_data").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):  # free again once its holder is gone
        pass


@pytest.mark.slow
def test_a_diverged_fit_stops_is_recorded_as_such_and_exits_non_zero(work):
    from hsi.reporting import category_tables

    run = work / "diverged"
    proc = subprocess.run(
        [
            str(HSI_TRAIN),
            *hsi_data(work),
            *FAST,
            "method.optimizer.lr=1e12",
            f"hydra.run.dir={run}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("hsi-train: error:")]
    assert (
        "training diverged" in line and "lower method.optimizer.lr" in line and " at step " in line
    )
    assert "Traceback" not in proc.stderr
    results = read_results(run)
    assert results["status"] == "diverged" and "training diverged" in results["error"]
    assert "test" not in results  # no numbers a table could pick up
    with pytest.raises(ValueError, match=r"did not complete: .*\(status 'diverged'\)"):
        category_tables([results])


@pytest.mark.slow
def test_the_cli_reports_a_bad_key_in_one_line_without_a_traceback(work):
    proc = subprocess.run(
        [
            str(HSI_TRAIN),
            *hsi_data(work),
            *FAST,
            "model.name=resnet_nosuch",
            f"hydra.run.dir={work / 'badname'}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hsi-train: error: model.name=resnet_nosuch: timm has no such model" in proc.stderr
