"""Experiment loggers of `hsi-train`: CSV (default), Weights & Biases, or none.

W&B specifics (the CSV logger needs none):

- offline unless ``WANDB_API_KEY`` is set, or ``logger.offline`` says otherwise;
- one W&B run per job, named after the job's overrides and grouped by multirun folder;
- per-group accuracy panels: summaries declared with ``define_metric`` and, at the end of the
  fit, one line chart with the 12 validation group accuracies per epoch;
- the 3x4 group table per object size (rows sizes, columns CeO/CoO/CeR/CoR) for val and test;
- :func:`finish_loggers` closes the run in the job's ``finally``, marked failed on an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from hsi.groups import PLACEMENTS, Group

log = logging.getLogger(__name__)

WANDB_TARGETS = (
    "lightning.pytorch.loggers.WandbLogger",
    "lightning.pytorch.loggers.wandb.WandbLogger",
)


def is_wandb(logger_cfg: DictConfig) -> bool:
    return str(logger_cfg.get("_target_") or "") in WANDB_TARGETS


def _hydra_job() -> tuple[str | None, str | None]:
    """(the job's override_dirname, the multirun folder's name or None), when Hydra runs the job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra_cfg = HydraConfig.get()
    group = Path(str(hydra_cfg.sweep.dir)).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    return str(hydra_cfg.job.override_dirname) or None, group


def make_loggers(cfg: DictConfig) -> list[Logger]:
    """The job's loggers from ``cfg.logger`` (empty for ``logger=none``)."""
    node = cfg.logger
    if not node.get("_target_"):
        return []
    if is_wandb(node):
        return [make_wandb_logger(cfg)]
    return [instantiate(node)]


def make_wandb_logger(cfg: DictConfig) -> WandbLogger:
    """A WandbLogger for this job, with the resolved config attached to the W&B run."""
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.logger, resolve=True)
    kwargs.pop("_target_")
    offline = kwargs.pop("offline", None)
    if offline is None:
        offline = not os.environ.get("WANDB_API_KEY")
    overrides, sweep = _hydra_job()
    if kwargs.get("name") is None:
        kwargs["name"] = overrides or f"{cfg.method.name}-{cfg.model.name}-seed{cfg.seed}"
    if kwargs.get("group") is None:
        kwargs["group"] = sweep
    kwargs.setdefault("job_type", str(cfg.method.name))
    # One W&B run per run folder: a resumed or requeued job continues it instead of opening another.
    if kwargs.get("id") is None:
        kwargs["id"] = hashlib.sha1(str(Path(str(cfg.out)).resolve()).encode()).hexdigest()[:16]
        kwargs.setdefault("resume", "allow")
    Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)  # wandb wants it to exist
    return WandbLogger(
        offline=bool(offline), config=OmegaConf.to_container(cfg, resolve=True), **kwargs
    )


def wandb_runs(loggers: Sequence[Logger]) -> list[Any]:
    """The W&B run objects of the job's W&B loggers (created on first use)."""
    return [lg.experiment for lg in loggers if isinstance(lg, WandbLogger)]


def define_group_metrics(loggers: Sequence[Logger]) -> None:
    """Summaries that W&B's run table and panels show: best val, last test."""
    for run in wandb_runs(loggers):
        for name in ("val/acc", "val/worst_group_acc", "val/mean_group_acc"):
            run.define_metric(name, summary="max")
        run.define_metric("val/group/*", summary="last")
        run.define_metric("test/*", summary="last")


def group_table_rows(metrics: Mapping[str, float], groups: Sequence[Group]) -> list[list[Any]]:
    """Rows ``[size, CeO, CoO, CeR, CoR]`` (sizes ascending) of one split's group accuracies;
    a group without samples is None."""
    sizes = sorted({g.size for g in groups})
    return [[size, *(metrics.get(f"group/{p}_{size}") for p in PLACEMENTS)] for size in sizes]


def log_group_tables(
    loggers: Sequence[Logger],
    split: str,
    metrics: Mapping[str, float],
    groups: Sequence[Group] | None,
) -> None:
    """Log ``{split}/group_table`` (a wandb.Table, 3 sizes x 4 placements) to every W&B run."""
    runs = wandb_runs(loggers)
    if not runs or not groups:
        return
    import wandb

    for run in runs:
        table = wandb.Table(columns=["size", *PLACEMENTS], data=group_table_rows(metrics, groups))
        run.log({f"{split}/group_table": table})


def log_summary(loggers: Sequence[Logger], values: Mapping[str, Any]) -> None:
    """Final numbers (e.g. results.json's flat metrics) into every W&B run's summary."""
    for run in wandb_runs(loggers):
        run.summary.update(dict(values))


class WandbGroupCurves(Callback):
    """One W&B chart "val/group_curves": the validation accuracy of every group per epoch."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.names = [g.name for g in groups]
        self.epochs: list[int] = []
        self.values: dict[str, list[float | None]] = {name: [] for name in self.names}

    def on_validation_end(self, trainer, pl_module) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module logs its metrics
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.epochs.append(int(trainer.current_epoch))
        for name in self.names:
            value = trainer.callback_metrics.get(f"val/group/{name}")
            self.values[name].append(None if value is None else float(value))

    def on_fit_end(self, trainer, pl_module) -> None:
        runs = wandb_runs(trainer.loggers)
        if not runs or not self.epochs:
            return
        import wandb

        names = [n for n in self.names if all(v is not None for v in self.values[n])]
        chart = wandb.plot.line_series(
            xs=self.epochs,
            ys=[self.values[n] for n in names],
            keys=names,
            title="validation accuracy per group",
            xname="epoch",
        )
        for run in runs:
            run.log({"val/group_curves": chart})


def finish_loggers(loggers: Sequence[Logger], failed: bool) -> None:
    """Close the job's W&B run (exit code 1 when the job failed) so the next job of a multirun
    starts its own; other loggers are finalised by the Trainer."""
    if not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
