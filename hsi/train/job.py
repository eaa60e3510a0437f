"""What every method's run shares: the job, its Trainer and checkpoints, the stage-1 model.

A method (``hsi.methods``, chosen by ``method._target_``) runs on a :class:`Job`: it builds its
module with :meth:`Job.make_module`, fits with :meth:`Job.fit` (the ``callbacks`` group's
checkpoints under ``<run folder>/checkpoints``), evaluates with :meth:`Job.evaluate`; JTT and
DFR take their stage-1 model from :meth:`Job.erm_stage1`.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable, Sequence
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

from hsi.loggers import WandbGroupCurves, wandb_runs
from hsi.models import checkpoint_record
from hsi.results import read_results, write_results
from hsi.train.checks import (
    CHECKPOINT_DIR,
    STAGE1_DIR,
    resolve_checkpoint,
    resume_checkpoint,
    stage1_files,
)
from hsi.train.ddp import is_main_process, local_rank

log = logging.getLogger(__name__)

STAGE1_RECORD = "stage1.json"  # not results.json: a stage 1 is not a run of its own
SELECTIONS = ("final", "best")  # the model a run reports: its last epoch, or its best by val
COARSE_STEP = 0.02  # a monitored metric moving in larger steps makes "best" a near-tie pick


class TrainingDiverged(RuntimeError):
    """A fit whose loss became NaN or infinite: its model is no result."""


class FiniteLoss(Callback):
    """Stop a fit at the first non-finite training loss, naming the step, lr and key to change."""

    def __init__(self, lr_key: str) -> None:
        self.lr_key = lr_key

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
            raise TrainingDiverged(
                f"training diverged: loss {float(loss):g} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}) with lr {lr:g}; lower {self.lr_key}"
            )


@dataclass
class FitOutcome:
    """A finished fit: its module, trainer and checkpoints."""

    module: L.LightningModule
    trainer: L.Trainer
    best: Path | None
    last: Path | None
    epochs: int
    global_step: int


@dataclass
class Job:
    """What every method's run shares: the config, the run folder, the data, the loggers."""

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
    def selection(self) -> str:
        """Which model a run reports and JTT/DFR stage 1 uses: ``final`` (paper) or ``best``."""
        return str(self.cfg.get("selection", "final"))

    @property
    def default_monitor(self) -> str:
        """What a checkpoint callback with ``monitor: null`` selects on."""
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

    def eval_device(self) -> torch.device:
        """Where the non-Trainer passes (error set, embeddings) run: the GPU when the trainer may."""
        accelerator = str(self.cfg.trainer.get("accelerator", "auto"))
        if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
            return torch.device("cuda", local_rank())  # under DDP: this process's GPU
        return torch.device("cpu")

    # ----------------------------------------------------------------------- components
    def make_module(self, module_cfg: DictConfig, **kwargs: Any) -> L.LightningModule:
        """A training module of ``module_cfg`` (a ``_partial_`` node) for this data and model."""
        return instantiate(module_cfg)(
            model_factory=self.model_factory(),
            num_classes=self.num_classes,
            groups=self.groups,
            **kwargs,
        )

    def make_callbacks(self, run_dir: Path, checkpointing: bool) -> list[Callback]:
        """The ``callbacks`` group's callbacks; checkpoint callbacks write to run_dir/checkpoints.

        A ModelCheckpoint node with ``monitor: null`` and a ``filename`` other than ``last``
        selects on :attr:`default_monitor`; with ``checkpointing=False`` (no fit) checkpoint
        callbacks are left out.
        """
        callbacks: list[Callback] = []
        for node in (self.cfg.get("callbacks") or {}).values():
            if node is None:
                continue  # switched off with callbacks.<name>=null
            is_checkpoint = issubclass(get_class(node._target_), ModelCheckpoint)
            if is_checkpoint and not checkpointing:
                continue
            kwargs: dict[str, Any] = {}
            if is_checkpoint:
                kwargs["dirpath"] = str(checkpoint_dir(run_dir))
                if node.get("monitor") is None and node.get("filename") != "last":
                    kwargs["monitor"] = self.default_monitor
            callbacks.append(instantiate(node, **kwargs))
        return callbacks

    def make_trainer(
        self,
        run_dir: Path,
        loggers: Sequence[Logger],
        max_epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        checkpointing: bool = True,
    ) -> L.Trainer:
        """The Trainer of conf/trainer with the ``callbacks`` group and the loggers."""
        extra: dict[str, Any] = {}
        if max_epochs is not None:
            extra["max_epochs"] = int(max_epochs)
        if SLURMEnvironment.detect():
            # submitit owns requeueing (max_num_timeout); Lightning's SIGUSR1 requeue would race it
            extra["plugins"] = [SLURMEnvironment(auto_requeue=False)]
        return instantiate(
            self.cfg.trainer,
            logger=list(loggers) if loggers else False,
            callbacks=[*self.make_callbacks(run_dir, checkpointing), *callbacks],
            default_root_dir=str(run_dir),
            enable_checkpointing=checkpointing,
            **extra,
        )

    def main_callbacks(self) -> list[Callback]:
        """The main fit's extra callbacks: the caller's, and W&B's group curves."""
        callbacks = list(self.callbacks)
        if self.groups and wandb_runs(self.loggers):
            callbacks.append(WandbGroupCurves(self.groups))
        return callbacks

    # ----------------------------------------------------------------------- fit and evaluate
    def fit(
        self,
        module: L.LightningModule,
        run_dir: Path,
        loggers: Sequence[Logger],
        max_epochs: int | None,
        ckpt_path: str | None,
        callbacks: Sequence[Callback] = (),
        lr_key: str = "method.optimizer.lr",
    ) -> FitOutcome:
        """trainer.fit with checkpoints under ``run_dir/checkpoints`` (resumed from ``ckpt_path``).

        A non-finite loss raises :class:`TrainingDiverged` naming ``lr_key``.
        """
        trainer = self.make_trainer(run_dir, loggers, max_epochs, [FiniteLoss(lr_key), *callbacks])
        trainer.fit(
            module,
            datamodule=self.datamodule,
            ckpt_path=resume_checkpoint(ckpt_path, checkpoint_dir(run_dir)),
            weights_only=True,
        )
        best, last = _checkpoint_files(trainer)
        return FitOutcome(
            module, trainer, best, last, int(trainer.current_epoch), int(trainer.global_step)
        )

    def evaluate(self, outcome: FitOutcome) -> dict[str, Any]:
        """Val and test metrics of the final model (last.ckpt) and of the best one (best.ckpt).

        Returns ``selection``, ``models: {final: {checkpoint, epoch, global_step, val, test},
        best: {...}}`` and ``val``/``test`` of the selected model (``selection``; the paper's
        tables use the final one: a fixed number of epochs).
        """
        trainer, module = outcome.trainer, outcome.module
        models: dict[str, dict[str, Any]] = {}
        for which, path in (("final", outcome.last), ("best", outcome.best)):
            if path is None:
                continue
            record = checkpoint_record(path)
            same = next(
                (
                    m
                    for m in models.values()
                    if (m["epoch"], m["global_step"]) == (record["epoch"], record["global_step"])
                ),
                None,
            )
            if same is None:
                for evaluate in (trainer.validate, trainer.test):
                    evaluate(
                        module,
                        datamodule=self.datamodule,
                        ckpt_path=str(path),
                        verbose=False,
                        weights_only=True,
                    )
                metrics = {split: dict(module.last_metrics[split]) for split in ("val", "test")}
            else:
                metrics = {split: same[split] for split in ("val", "test")}
            models[which] = {**record, **metrics}
        if not models:
            raise RuntimeError(
                "the fit saved no checkpoint: keep the callbacks group's checkpoints (best, last)"
            )
        selection = self.selection if self.selection in models else next(iter(models))
        if selection != self.selection:
            log.warning("no %s checkpoint: reporting the %s model", self.selection, selection)
        chosen = models[selection]
        return {
            "selection": selection,
            "models": models,
            "val": chosen["val"],
            "test": chosen["test"],
        }

    def warn_coarse_selection(self) -> float | None:
        """Warn when ``selection=best`` selects on a val metric that moves in coarse steps.

        Worst-group accuracy moves in steps of 1 / (the smallest val group), plain accuracy in
        steps of 1 / (val samples). Returns the step (None when it cannot be told).
        """
        dataset = self.datamodule.dataset("val")
        group_ids = getattr(dataset, "group_ids", None)
        if self.groups and group_ids is not None and len(group_ids):
            counts = np.bincount(np.asarray(group_ids))
            smallest = int(counts[counts > 0].min())
            metric = "val/worst_group_acc"
        else:
            smallest, metric = len(dataset), "val/acc"
        step = 1.0 / smallest if smallest else math.inf
        if self.selection == "best" and step > COARSE_STEP:
            warnings.warn(
                f"selection=best picks the epoch by {metric}, which moves in steps of {step:.3f} "
                f"({smallest} val samples {'in the smallest group' if metric.endswith('group_acc') else ''}): "
                f"near-ties decide the model. selection=final (the paper's fixed epochs) avoids it",
                stacklevel=2,
            )
        return step

    # ----------------------------------------------------------------------- stage 1 (JTT, DFR)
    def erm_stage1(self, method_cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
        """The stage-1 ERM checkpoint (epoch T) and a record of where it came from.

        ``method.erm_checkpoint``: a .ckpt, or an ERM run folder (its last.ckpt, the model after
        its T epochs; with ``selection=best`` its best.ckpt); null: trained here under
        ``stage1/`` by the ERM method of ``method.erm`` (its ``epochs`` are T), its final (or
        best) checkpoint used; a finished stage 1 is reused. The record holds the checkpoint's
        path, epoch and global step.
        """
        from hsi.methods.erm import ERM

        cfg, stage_dir = self.cfg, self.out / STAGE1_DIR
        if method_cfg.get("erm_checkpoint"):
            path = resolve_checkpoint(
                method_cfg.erm_checkpoint, "method.erm_checkpoint", stage1_files(self.selection)
            ).resolve()
            return path, {**checkpoint_record(path, "method.erm_checkpoint"), "trained_here": False}
        if (stage_dir / STAGE1_RECORD).is_file():
            record = read_results(stage_dir / STAGE1_RECORD)
            log.info("stage 1 already finished in %s: reusing %s", stage_dir, record["checkpoint"])
            return Path(record["checkpoint"]), record
        stage1 = ERM(method_cfg.erm, key="method.erm")
        epochs = int(method_cfg.erm.epochs)
        # Stage 1 logs to CSV only: a job keeps one W&B run, which belongs to the method's result.
        loggers = (
            [CSVLogger(save_dir=str(stage_dir), name="csv")] if cfg.logger.get("_target_") else []
        )
        module = stage1.build_module(self)
        # any ckpt_path resumes stage 1 from its own last.ckpt; a given file belongs to the main fit
        resume = None if cfg.ckpt_path is None else "last"
        outcome = self.fit(
            module, stage_dir, loggers, epochs, resume, lr_key="method.erm.optimizer.lr"
        )
        chosen = outcome.best if self.selection == "best" else outcome.last
        if chosen is None:
            raise RuntimeError(
                f"stage 1 saved no {self.selection} checkpoint in {checkpoint_dir(stage_dir)}; "
                f"keep the callbacks group's checkpoints (best, last)"
            )
        record = {
            **checkpoint_record(chosen),
            "trained_here": True,
            "epochs": outcome.epochs,
            "val": dict(module.last_metrics.get("val", {})),  # validation after its last epoch
        }
        if is_main_process():
            write_results(stage_dir, record, STAGE1_RECORD)
        return chosen, record

    def stage1_network(self, checkpoint: Path, require_head: bool = False) -> torch.nn.Module:
        """The stage-1 network loaded from ``checkpoint``; ``require_head``: its head as trained
        (JTT's error set needs the predictions; DFR uses only the embeddings)."""
        return self.model_factory()(
            num_classes=self.num_classes, checkpoint=str(checkpoint), require_head=require_head
        )

    @property
    def checkpoints(self) -> Path:
        """The run folder's checkpoints/."""
        return checkpoint_dir(self.out)

    @staticmethod
    def checkpoint_paths(**paths: Path | None) -> dict[str, str | None]:
        return {k: (str(v) if v is not None else None) for k, v in paths.items()}


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _checkpoint_files(trainer: L.Trainer) -> tuple[Path | None, Path | None]:
    """(best, last) checkpoint files written by the trainer's checkpoint callbacks.

    ``best``: of the first callback that monitors a metric; ``last``: the file of a callback
    without a monitor (it keeps the latest epoch), else a ``save_last`` file.
    """
    best = last = None
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor is not None and callback.best_model_path and best is None:
            best = Path(callback.best_model_path)
        if callback.monitor is None and callback.best_model_path and last is None:
            last = Path(callback.best_model_path)
    if last is None:
        last = next(
            (Path(c.last_model_path) for c in trainer.checkpoint_callbacks if c.last_model_path),
            None,
        )
    return best, last


# --------------------------------------------------------------------------- components
def make_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Instantiate ``cfg.data``; a sampling choice on data without groups is a clear error."""
    if "sampling" in cfg.data:
        accepted = inspect.signature(get_class(cfg.data._target_)).parameters
        if "sampling" not in accepted:
            raise ValueError(
                f"method={cfg.method.name} sets data.sampling={cfg.data.sampling}, but data "
                f"({cfg.data._target_}) has no groups to sample by; use it with data=hsi, hsi_v2 "
                f"or hsi_sam"
            )
    return instantiate(cfg.data)
