"""The parts every training flow shares: the job, its checks, Trainer and checkpoints, stage 1."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from hsi.loggers import (
    WandbGroupCurves,
    wandb_runs,
)
from hsi.results import RESULTS_FILE, read_results, write_results

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STAGE1_DIR = "stage1"
STAGE1_RECORD = "stage1.json"  # not results.json: a stage 1 is not a run of its own


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


def checkpoint_paths(**paths: Path | None) -> dict[str, str | None]:
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


def stage1_network(job: Job, checkpoint: Path, require_head: bool = False) -> torch.nn.Module:
    """The stage-1 network loaded from ``checkpoint``; ``require_head``: its head as trained
    (JTT's error set needs the predictions; DFR uses only the embeddings)."""
    return job.model_factory()(
        num_classes=job.num_classes, checkpoint=str(checkpoint), require_head=require_head
    )
