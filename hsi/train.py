"""One training job of `hsi-train`: ERM (ERM_easy / ERM_all), JTT or DFR from a Hydra config.

    train(cfg) -> results dict (also <run folder>/results.json)

The flow of every job: seed everything; the loggers; the data module (prepare_data builds
whatever is missing, setup reads it); the method's flow; results.json written atomically; the
W&B run closed even when the job fails. The three flows:

- ``erm``: fit with ModelCheckpoint (``val/worst_group_acc``, max; ``last.ckpt`` every epoch),
  then val and test with the best checkpoint;
- ``jtt``: stage 1 (an ERM checkpoint, or an ERM fit under ``stage1/``), its error set on the
  train split with eval transforms (``error_set.csv``), stage 2 = the ERM flow on the train
  split in which every error example appears ``lambda_up`` times;
- ``dfr``: stage 1 as JTT's, embeddings of the frozen model through the shared embedding cache,
  the last layer refit on val (paper or official recipe), val and test of that classifier.

Resume: ``ckpt_path=last`` continues from ``<run folder>/checkpoints/last.ckpt`` (and an
unfinished stage 1 from ``stage1/checkpoints/last.ckpt``), or starts afresh when there is none
yet. A SLURM job requeued by submitit (``hydra.launcher.max_num_timeout``) reruns the pickled
launcher with the same job number, and Hydra copies the launch's resolver cache (``${now:}``
included) into the job's config, so it lands in the same ``<sweep dir>/<job num>`` folder and,
launched with ``ckpt_path=last``, continues there.

A model checkpoint given as a run folder (``model.checkpoint=<run>``, e.g. a source
pretraining) means its ``checkpoints/best.ckpt``, else ``last.ckpt``; an ERM run folder given to
JTT or DFR (``method.erm_checkpoint=<run>``) means its ``last.ckpt`` (the model after that
run's epochs, T), else ``best.ckpt``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from hsi.loggers import (
    WandbGroupCurves,
    define_group_metrics,
    finish_loggers,
    log_group_tables,
    log_summary,
    make_loggers,
    wandb_runs,
)
from hsi.methods.erm import ERMModule
from hsi.results import RESULTS_FILE, flat_metrics, read_results, write_results

log = logging.getLogger(__name__)

ALGORITHMS = ("erm", "jtt", "dfr", "evaluate")
CHECKPOINT_DIR = "checkpoints"
STAGE1_DIR = "stage1"
STAGE1_RECORD = "stage1.json"  # not results.json: a stage 1 is not a run of its own
# Data-module keys that change how data is served, not what the samples are: left out of the
# embedding cache's data key, so a sweep over them reuses the embeddings.
# (`sampling` is replaced by whether the train split is cut to the Easy groups: sampling=easy
# serves other train samples, balanced only draws the same ones differently.)
_SERVING_KEYS = ("batch_size", "eval_batch_size", "num_workers", "sampling", "augment", "seed",
                 "pin_memory", "persistent_workers")  # fmt: skip
_RUNTIME_KEYS = ("shard", "num_shards", "workers", "progress")


@dataclass
class Job:
    """What every flow of one job shares."""

    cfg: DictConfig
    out: Path
    datamodule: L.LightningDataModule
    loggers: list[Logger]
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def groups(self):
        return self.datamodule.groups

    @property
    def num_classes(self) -> int:
        return int(self.datamodule.num_classes)

    @property
    def monitor(self) -> str:
        chosen = self.cfg.checkpoint.get("monitor")
        if chosen:
            return str(chosen)
        return "val/worst_group_acc" if self.groups else "val/acc"

    def model_factory(self) -> Callable[..., torch.nn.Module]:
        """The model config as a partial of hsi.models.create_model, its checkpoint resolved."""
        node = OmegaConf.to_container(self.cfg.model, resolve=True)
        if node.get("checkpoint"):
            node["checkpoint"] = str(
                resolve_checkpoint(
                    node["checkpoint"], "model.checkpoint", ("best.ckpt", "last.ckpt")
                )
            )
        return instantiate(node)


@dataclass
class FitOutcome:
    """A finished fit: its module, trainer and checkpoints."""

    module: L.LightningModule
    trainer: L.Trainer
    best: Path | None
    last: Path | None
    epochs: int
    global_step: int


# --------------------------------------------------------------------------- entry point
def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the job of ``cfg`` (conf/train.yaml's keys) and return what results.json holds.

    ``callbacks`` are added to the main fit's Trainer (tests use them to interrupt a fit).
    """
    started = time.time()
    algorithm = str(cfg.method.algorithm)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"method.algorithm={algorithm!r}: must be one of {ALGORITHMS}")
    out = Path(str(cfg.out)).resolve()
    cfg.ckpt_path = requeue_ckpt_path(cfg.ckpt_path)
    check_run_folder(out, cfg.ckpt_path)
    check_weights(cfg.model)
    L.seed_everything(int(cfg.seed), workers=True)
    loggers = make_loggers(cfg)
    failed = True
    try:
        define_group_metrics(loggers)
        datamodule = make_datamodule(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        job = Job(cfg, out, datamodule, loggers, list(callbacks))
        results = FLOWS[algorithm](job)
        results.update(common_results(job, started))
        write_results(out, results)
        for split in ("val", "test"):
            log_group_tables(loggers, split, results[split], job.groups)
        log_summary(loggers, flat_metrics(results))
        print(summary_line(results))
        failed = False
        return results
    finally:
        finish_loggers(loggers, failed)


def single_console_log() -> None:
    """Print each Lightning message once under Hydra's logging.

    ``lightning/__init__`` gives the ``lightning`` logger a console handler of its own and yet
    lets records propagate to the root logger, which Hydra's job logging already prints.
    """
    if logging.getLogger().handlers:
        lightning_log = logging.getLogger("lightning")
        for handler in list(lightning_log.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_log.removeHandler(handler)


# --------------------------------------------------------------------------- checks and paths
def requeue_ckpt_path(ckpt_path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """``last`` for a job that SLURM restarted (submitit's requeue on timeout or preemption sets
    SLURM_RESTART_COUNT) when no ckpt_path was given: the restart continues its own run instead
    of being refused by its own checkpoints."""
    if ckpt_path is None and int(environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        log.warning("SLURM restarted this job: resuming from its last checkpoint (ckpt_path=last)")
        return "last"
    return ckpt_path


def check_run_folder(out: Path, ckpt_path: str | None) -> None:
    """Refuse to start a fresh fit in a folder that holds an earlier run's checkpoints."""
    if ckpt_path is not None:
        return
    earlier = [out / RESULTS_FILE, *sorted(out.glob(f"{CHECKPOINT_DIR}/*.ckpt")),
               *sorted(out.glob(f"{STAGE1_DIR}/{CHECKPOINT_DIR}/*.ckpt"))]  # fmt: skip
    found = [p for p in earlier if p.exists()]
    if found:
        raise FileExistsError(
            f"run folder {out} already holds {found[0].relative_to(out)} of an earlier run: resume it "
            f"with ckpt_path=last, or start in a new folder (hydra.run.dir=...)"
        )


def check_weights(model_cfg: DictConfig) -> None:
    """Fail before any data is built when the model's weights are absent (never a network wait)."""
    if model_cfg.get("checkpoint"):
        resolve_checkpoint(model_cfg.checkpoint, "model.checkpoint", ("best.ckpt", "last.ckpt"))
    elif model_cfg.get("weights"):
        if not Path(str(model_cfg.weights)).expanduser().is_file():
            raise FileNotFoundError(
                f"model.weights={model_cfg.weights}: no such file; point it at a timm weight file"
            )
    elif model_cfg.get("pretrained"):
        from hsi.models import cached_weights

        cached_weights(str(model_cfg.name))


def resolve_checkpoint(path: str | Path, key: str, prefer: Sequence[str]) -> Path:
    """A .ckpt file as given, or the first of ``prefer`` in a run folder's checkpoints/."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for folder in (p / CHECKPOINT_DIR, p):
            for name in prefer:
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(
            f"{key}={path}: the folder has no {' or '.join(prefer)} under {CHECKPOINT_DIR}/; point {key} "
            f"at a .ckpt file or at an hsi-train run folder"
        )
    raise FileNotFoundError(f"{key}={path}: no such file or folder ({p.resolve()})")


def resume_checkpoint(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """What ``trainer.fit(ckpt_path=...)`` gets: None, the folder's last.ckpt, or a given file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        last = checkpoint_dir / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last: %s does not exist yet, starting a fresh fit", last)
        return None
    return str(resolve_checkpoint(ckpt_path, "ckpt_path", ("last.ckpt",)))


def eval_device(cfg: DictConfig) -> torch.device:
    """Where the non-Trainer passes (error set, embeddings) run: the GPU when the trainer may."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda")
    return torch.device("cpu")


# --------------------------------------------------------------------------- components
def make_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Instantiate ``cfg.data``; a sampling choice on data without groups is a clear error."""
    if "sampling" in cfg.data:
        accepted = inspect.signature(get_class(cfg.data._target_)).parameters
        if "sampling" not in accepted:
            raise ValueError(
                f"method={cfg.method.name} sets data.sampling={cfg.data.sampling}, but data "
                f"({cfg.data._target_}) has no groups to sample by; use it with data=hsi, hsi_v2 or hsi_sam"
            )
    return instantiate(cfg.data)


def make_trainer(
    job: Job,
    run_dir: Path,
    loggers: Sequence[Logger],
    max_epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
    checkpointing: bool = True,
) -> tuple[L.Trainer, ModelCheckpoint | None]:
    """The Trainer of conf/trainer with this job's checkpoint callback and loggers."""
    cbs: list[Callback] = list(callbacks)
    checkpoint = None
    if checkpointing:
        checkpoint = ModelCheckpoint(
            dirpath=run_dir / CHECKPOINT_DIR,
            filename="best",
            monitor=job.monitor,
            mode=str(job.cfg.checkpoint.mode),
            save_top_k=1,
            save_last=bool(job.cfg.checkpoint.save_last),
            auto_insert_metric_name=False,
            enable_version_counter=False,  # best.ckpt is replaced, never best-v1.ckpt
        )
        cbs.insert(0, checkpoint)
    extra: dict[str, Any] = {}
    if max_epochs is not None:
        extra["max_epochs"] = int(max_epochs)
    if SLURMEnvironment.detect():
        # submitit owns requeueing (max_num_timeout); Lightning's own SIGUSR1 requeue would race it
        extra["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    trainer = instantiate(
        job.cfg.trainer,
        logger=list(loggers) if loggers else False,
        callbacks=cbs,
        default_root_dir=str(run_dir),
        enable_checkpointing=checkpointing,
        **extra,
    )
    return trainer, checkpoint


def make_module(
    job: Job, module_cfg: DictConfig, max_epochs: int, **kwargs: Any
) -> L.LightningModule:
    """A training module of ``module_cfg`` (a ``_partial_`` node) for this job's data and model."""
    return instantiate(module_cfg)(
        model_factory=job.model_factory(),
        num_classes=job.num_classes,
        groups=job.groups,
        max_epochs=int(max_epochs),
        **kwargs,
    )


def fit(job: Job, module: L.LightningModule, run_dir: Path, loggers: Sequence[Logger], max_epochs: int | None,
        ckpt_path: str | None, callbacks: Sequence[Callback] = ()) -> FitOutcome:  # fmt: skip
    """trainer.fit with checkpoints under ``run_dir/checkpoints`` (resumed from ``ckpt_path``)."""
    trainer, checkpoint = make_trainer(job, run_dir, loggers, max_epochs, callbacks)
    trainer.fit(
        module,
        datamodule=job.datamodule,
        ckpt_path=resume_checkpoint(ckpt_path, run_dir / CHECKPOINT_DIR),
    )
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    last = Path(checkpoint.last_model_path) if checkpoint.last_model_path else None
    return FitOutcome(
        module, trainer, best, last, int(trainer.current_epoch), int(trainer.global_step)
    )


def evaluate(job: Job, outcome: FitOutcome) -> dict[str, dict[str, float]]:
    """Val and test metrics of the best checkpoint (the last when there is no best)."""
    chosen = outcome.best or outcome.last
    if chosen is None:
        log.warning("no checkpoint was saved; evaluating the weights at the end of the fit")
    ckpt = str(chosen) if chosen is not None else None
    outcome.trainer.validate(
        outcome.module, datamodule=job.datamodule, ckpt_path=ckpt, verbose=False
    )
    outcome.trainer.test(outcome.module, datamodule=job.datamodule, ckpt_path=ckpt, verbose=False)
    return {split: dict(outcome.module.last_metrics[split]) for split in ("val", "test")}


def main_callbacks(job: Job) -> list[Callback]:
    cbs = list(job.callbacks)
    if job.groups and wandb_runs(job.loggers):
        cbs.append(WandbGroupCurves(job.groups))
    return cbs


# --------------------------------------------------------------------------- ERM
def run_erm(job: Job) -> dict[str, Any]:
    """ERM, ERM_easy, ERM_all: one fit, then val and test of the best checkpoint."""
    cfg = job.cfg
    epochs = int(cfg.trainer.max_epochs)
    module = make_module(job, cfg.method.module, epochs, method=str(cfg.method.name))
    outcome = fit(job, module, job.out, job.loggers, None, cfg.ckpt_path, main_callbacks(job))
    results = {
        "epochs": outcome.epochs,
        "global_step": outcome.global_step,
        **evaluate(job, outcome),
    }
    results["checkpoints"] = _paths(best=outcome.best, last=outcome.last)
    return results


# --------------------------------------------------------------------------- pretrained
def run_evaluate(job: Job) -> dict[str, Any]:
    """A model as it is (no training): val and test group accuracy (Table 3's "Pretrained" row).

    The model comes from ``model.checkpoint`` (e.g. a source-pretraining run), ``model.weights``
    or ``model.pretrained``; its head must already fit the data's classes.
    """
    model_cfg = job.cfg.model
    if not (model_cfg.get("checkpoint") or model_cfg.get("weights") or model_cfg.get("pretrained")):
        raise ValueError(
            "method=pretrained evaluates a trained model: set model.checkpoint=<run folder or "
            ".ckpt>, model.weights=<file> or model.pretrained=true"
        )
    network = job.model_factory()(num_classes=job.num_classes, require_head=True)
    module = ERMModule(
        model=network, num_classes=job.num_classes, groups=job.groups, method="pretrained"
    )
    trainer, _ = make_trainer(job, job.out, job.loggers, max_epochs=0, checkpointing=False)
    trainer.validate(module, datamodule=job.datamodule, verbose=False)
    trainer.test(module, datamodule=job.datamodule, verbose=False)
    return {
        "epochs": 0,
        "global_step": 0,
        **{s: dict(module.last_metrics[s]) for s in ("val", "test")},
    }


def _paths(**paths: Path | None) -> dict[str, str | None]:
    return {k: (str(v) if v is not None else None) for k, v in paths.items()}


# --------------------------------------------------------------------------- stage 1 (JTT, DFR)
def erm_stage1(job: Job) -> tuple[Path, dict[str, Any]]:
    """The stage-1 ERM checkpoint (epoch T) and a record of where it came from.

    ``method.erm_checkpoint``: a .ckpt, or an ERM run folder (its last.ckpt, else best.ckpt);
    null: trained here under ``stage1/`` for ``method.erm_epochs`` epochs with the ERM recipe
    (``method.erm_module``), its last checkpoint used; a finished stage 1 is reused.
    """
    cfg, stage_dir = job.cfg, job.out / STAGE1_DIR
    if cfg.method.get("erm_checkpoint"):
        path = resolve_checkpoint(
            cfg.method.erm_checkpoint, "method.erm_checkpoint", ("last.ckpt", "best.ckpt")
        )
        return path.resolve(), {"checkpoint": str(path.resolve()), "trained_here": False}
    if (stage_dir / STAGE1_RECORD).is_file():
        record = read_results(stage_dir / STAGE1_RECORD)
        log.info("stage 1 already finished in %s: reusing %s", stage_dir, record["checkpoint"])
        return Path(record["checkpoint"]), record
    epochs = int(cfg.method.erm_epochs)
    # Stage 1 logs to CSV only: a job keeps one W&B run, which belongs to the method's result.
    loggers = [CSVLogger(save_dir=str(stage_dir), name="csv")] if cfg.logger.get("_target_") else []
    module = make_module(job, cfg.method.erm_module, epochs, method="erm")
    # any ckpt_path resumes stage 1 from its own last.ckpt; a given file belongs to the main fit
    resume = None if cfg.ckpt_path is None else "last"
    outcome = fit(job, module, stage_dir, loggers, epochs, resume)
    if outcome.last is None:
        raise RuntimeError(
            f"stage 1 saved no last.ckpt in {stage_dir / CHECKPOINT_DIR}; keep checkpoint.save_last=true"
        )
    record = {
        "checkpoint": str(outcome.last),
        "trained_here": True,
        "epochs": outcome.epochs,
        "global_step": outcome.global_step,
        "val": dict(module.last_metrics.get("val", {})),  # validation after its last epoch
    }
    write_results(stage_dir, record, STAGE1_RECORD)
    return outcome.last, record


def _network(job: Job, checkpoint: Path, require_head: bool = False) -> torch.nn.Module:
    """The stage-1 network loaded from ``checkpoint``; ``require_head``: its head as trained
    (JTT's error set needs the predictions; DFR uses only the embeddings)."""
    return job.model_factory()(
        num_classes=job.num_classes, checkpoint=str(checkpoint), require_head=require_head
    )


# --------------------------------------------------------------------------- JTT
def run_jtt(job: Job) -> dict[str, Any]:
    """JTT: error set of the stage-1 model, then ERM on the upsampled train split."""
    from hsi.methods.jtt import (
        compute_error_set,
        error_set_report,
        upsample_repeats,
        write_error_set,
    )

    cfg, dm = job.cfg, job.datamodule
    if getattr(dm, "sampling", "standard") != "standard" or not hasattr(dm, "set_train_repeats"):
        raise ValueError(
            "method=jtt upsamples the train split as built: use data=hsi (hsi_v2, hsi_sam) with data.sampling=standard"
        )
    stage1, stage1_record = erm_stage1(job)
    errors = compute_error_set(
        _network(job, stage1, require_head=True), dm.train_eval_dataloader(), eval_device(cfg)
    )
    train_set = dm.dataset("train")
    errors.insert(1, "sample_id", train_set.sample_ids)
    errors["category"] = [job.groups[g].category for g in errors["group_id"]]
    errors["group"] = [job.groups[g].name for g in errors["group_id"]]
    report = error_set_report(errors, errors["category"])
    lambda_up = int(cfg.method.lambda_up)
    dm.set_train_repeats(
        upsample_repeats(len(errors), np.flatnonzero(errors["error"].to_numpy()), lambda_up)
    )
    # The multiplicity each sample really gets in a stage-2 epoch, read off the sampler in use.
    sampler = dm.train_dataloader().sampler
    errors["multiplicity"] = np.bincount(sampler.indices(0), minlength=len(errors))
    report["lambda_up"] = lambda_up
    report["epoch_size"] = len(sampler)
    write_error_set(job.out, errors, report)
    log.info("JTT error set: %d of %d train samples (precision %.3f, recall %s against Medium+Hard)",
             report["size"], report["num_samples"], report["precision"] or 0.0, report["recall"])  # fmt: skip

    L.seed_everything(int(cfg.seed), workers=True)  # stage 2 starts from stage 1's initial weights
    epochs = int(cfg.trainer.max_epochs)
    module = make_module(job, cfg.method.module, epochs, method=str(cfg.method.name),
                         stage1_checkpoint=str(stage1), error_set=report)  # fmt: skip
    outcome = fit(job, module, job.out, job.loggers, None, cfg.ckpt_path, main_callbacks(job))
    results = {
        "epochs": outcome.epochs,
        "global_step": outcome.global_step,
        **evaluate(job, outcome),
    }
    results["checkpoints"] = _paths(best=outcome.best, last=outcome.last, stage1=stage1)
    results["stage1"] = stage1_record
    results["error_set"] = {**report, "file": str(job.out / "error_set.csv")}
    return results


# --------------------------------------------------------------------------- DFR
def data_key(cfg: DictConfig) -> str:
    """Names the data a split's embeddings come from: the data config without serving keys."""
    node = OmegaConf.to_container(cfg.data, resolve=True)
    easy_only = node.get("sampling") == "easy"
    for key in _SERVING_KEYS:
        node.pop(key, None)
    if easy_only:
        node["train_easy_only"] = True
    for sub in ("generate", "source"):
        if isinstance(node.get(sub), dict):
            for key in _RUNTIME_KEYS:
                node[sub].pop(key, None)
            if isinstance(node[sub].get("source"), dict):
                for key in _RUNTIME_KEYS:
                    node[sub]["source"].pop(key, None)
    digest = hashlib.sha256(json.dumps(node, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    name = (node.get("generate") or {}).get("dataset", {}).get("name") or "source"
    return f"{name}-{digest}"


def run_dfr(job: Job) -> dict[str, Any]:
    """DFR: the last layer of the frozen stage-1 model refit on the val embeddings."""
    from hsi.methods.dfr import (
        VARIANTS,
        DFRModule,
        EmbeddingCache,
        embedding_loader,
        extract_embeddings,
    )

    cfg, dm = job.cfg, job.datamodule
    variant = str(cfg.method.variant)
    if variant not in VARIANTS:
        raise ValueError(f"method.variant={variant!r}: must be one of {VARIANTS}")
    stage1, stage1_record = erm_stage1(job)
    cache, key = EmbeddingCache(cfg.method.cache_dir), data_key(cfg)
    loaders = {
        "train": dm.train_eval_dataloader,
        "val": dm.val_dataloader,
        "test": dm.test_dataloader,
    }
    splits = ["val", "test"]
    if variant == "official" and cfg.method.official.scaler_on == "train":
        splits.append("train")
    network: list[torch.nn.Module] = []  # built on the first cache miss only

    def compute(split: str):
        if not network:
            network.append(_network(job, stage1))
        log.info("DFR: extracting %s embeddings of %s", split, stage1)
        return extract_embeddings(network[0], loaders[split](), eval_device(cfg))

    embeddings, cache_files = {}, {}
    for split in splits:
        path = cache.path(stage1, split, key)
        hit = path.is_file()
        embeddings[split] = cache.get_or_compute(stage1, split, key, lambda s=split: compute(s))
        cache_files[split] = {"path": str(path), "hit": hit}
        log.info(
            "DFR: %s embeddings %s %s", split, "read from the cache" if hit else "cached at", path
        )

    X, y, g = embeddings["val"]
    if variant == "paper":
        options = {k: cfg.method.paper[k] for k in ("epochs", "lr", "l2")}
    else:
        options = {
            "n_subsets": int(cfg.method.official.n_subsets),
            "c_grid": list(cfg.method.official.c_grid),
        }
        if "train" in embeddings:
            options["scaler_X"] = embeddings["train"][0]
    module = DFRModule.fit(variant, X, y, g, num_classes=job.num_classes, groups=job.groups,
                           seed=int(cfg.seed), checkpoint=str(stage1), **options)  # fmt: skip
    trainer, _ = make_trainer(job, job.out, job.loggers, checkpointing=False)
    trainer.validate(module, dataloaders=embedding_loader(*embeddings["val"]), verbose=False)
    trainer.test(module, dataloaders=embedding_loader(*embeddings["test"]), verbose=False)
    head = job.out / CHECKPOINT_DIR / "dfr.ckpt"
    trainer.save_checkpoint(head)
    return {
        "epochs": None,  # no network is trained here (stage 1's epochs are under stage1)
        "global_step": None,
        "val": dict(module.last_metrics["val"]),  # on the val samples the layer was fit on
        "test": dict(module.last_metrics["test"]),
        "checkpoints": _paths(dfr=head, stage1=stage1),
        "stage1": stage1_record,
        "dfr": {
            "variant": variant,
            "chosen_C": module.hparams.get("chosen_C"),
            "data_key": key,
            "embeddings": cache_files,
            **{k: v for k, v in options.items() if k != "scaler_X"},
        },  # fmt: skip
    }


FLOWS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "erm": run_erm,
    "jtt": run_jtt,
    "dfr": run_dfr,
    "evaluate": run_evaluate,
}


# --------------------------------------------------------------------------- results
def _choice(group: str, default: str) -> str:
    """The option picked for a config group (e.g. data=hsi_v2), when Hydra runs the job."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return default


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def common_results(job: Job, started: float) -> dict[str, Any]:
    cfg = job.cfg
    return {
        "status": "complete",
        "method": str(cfg.method.name),
        "algorithm": str(cfg.method.algorithm),
        "model": str(cfg.model.name),
        "data": _choice("data", type(job.datamodule).__name__),
        "num_classes": job.num_classes,
        "groups": [g.name for g in job.groups] if job.groups else None,
        "seed": int(cfg.seed),
        "run_dir": str(job.out),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),  # null outside SLURM
        "overrides": _overrides(),
        "seconds": round(time.time() - started, 3),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def summary_line(results: dict[str, Any]) -> str:
    """`erm resnet18 seed=0: val worst 0.512 | test acc 0.733 worst 0.480 -> <run folder>`."""
    val, test = results.get("val", {}), results.get("test", {})

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "n/a"

    return (
        f"{results['method']} {results['model']} seed={results['seed']}: "
        f"val worst-group {fmt(val.get('worst_group_acc'))} | test acc {fmt(test.get('acc'))} "
        f"worst-group {fmt(test.get('worst_group_acc'))} -> {results['run_dir']}"
    )
