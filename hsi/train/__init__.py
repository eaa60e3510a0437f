"""One training job of `hsi-train`: ERM (ERM_easy / ERM_all), JTT or DFR from a Hydra config.

    train(cfg) -> results dict (also <run folder>/results.json)

The flow of every job: the method (``method._target_``: hsi.methods.erm.ERM, .jtt.JTT,
.dfr.DFR, .erm.Pretrained) built and its config checked; seed everything; the loggers; the data
module (prepare_data builds whatever is missing, setup reads it); the method's ``run``;
results.json written atomically; the W&B run closed even when the job fails. What each method
does is in its own module (hsi/methods/) and in docs/architecture.md.

Resume: ``ckpt_path=last`` continues from ``<run folder>/checkpoints/last.ckpt`` (and an
unfinished stage 1 from ``stage1/checkpoints/last.ckpt``), or starts afresh when there is none
yet. A SLURM job requeued by submitit (``hydra.launcher.max_num_timeout``) reruns the pickled
launcher with the same job number, and Hydra copies the launch's resolver cache (``${now:}``
included) into the job's config, so it lands in the same ``<sweep dir>/<job num>`` folder and,
launched with ``ckpt_path=last``, continues there.

A model checkpoint given as a run folder (``model.checkpoint=<run>``, e.g. a source
pretraining) means its ``checkpoints/best.ckpt``, else ``last.ckpt``; an ERM run folder given to
JTT or DFR (``method.erm_checkpoint=<run>``) means its ``last.ckpt`` (the model after that
run's epochs, T), or its ``best.ckpt`` with ``selection=best``.

Safety: every checkpoint and weight file loads with ``weights_only=True``; the run folder is
locked (``<out>/.lock``) for the job's lifetime; a non-finite loss stops the fit and leaves
``status: diverged`` in results.json.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from hsi.loggers import (
    define_group_metrics,
    finish_loggers,
    log_group_tables,
    log_summary,
    make_loggers,
)
from hsi.methods.base import Method
from hsi.models import checkpoint_record
from hsi.results import flat_metrics, write_results
from hsi.train.checks import (
    RunLock,
    check_inputs,
    check_run_folder,
    requeue_ckpt_path,
    resolve_checkpoint,
)
from hsi.train.ddp import check_strategy, is_main_process
from hsi.train.job import SELECTIONS, Job, TrainingDiverged, make_datamodule

__all__ = [
    "check_run_folder",
    "make_datamodule",
    "make_method",
    "requeue_ckpt_path",
    "resolve_checkpoint",
    "single_console_log",
    "summary_line",
    "train",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- entry point
def train(cfg: DictConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the job of ``cfg`` (conf/train.yaml's keys) and return what results.json holds.

    ``callbacks`` are added to the main fit's Trainer (tests use them to interrupt a fit).
    """
    started = time.time()
    # Everything cheap is checked before any data is read or built (each error names its key).
    method = make_method(cfg)
    if cfg.get("selection", "final") not in SELECTIONS:
        raise ValueError(f"selection={cfg.selection}: must be one of {SELECTIONS}")
    out = Path(str(cfg.out)).resolve()
    cfg.ckpt_path = requeue_ckpt_path(cfg.ckpt_path)
    check_inputs(cfg)
    check_strategy(cfg, _multirun(), SLURMEnvironment.detect())
    # Under DDP every process runs this job; the main one owns the run folder (hsi/train/ddp.py)
    main = is_main_process()
    with RunLock(out) if main else nullcontext():
        if main:
            check_run_folder(out, cfg.ckpt_path)
        return _train_locked(cfg, method, out, callbacks, started, main)


def _train_locked(
    cfg: DictConfig,
    method: Method,
    out: Path,
    callbacks: Sequence[Callback],
    started: float,
    main: bool = True,
) -> dict[str, Any]:
    L.seed_everything(int(cfg.seed), workers=True)
    loggers = make_loggers(cfg)
    failed = True
    try:
        define_group_metrics(loggers)
        datamodule = make_datamodule(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        job = Job(cfg, out, datamodule, loggers, list(callbacks))
        job.warn_coarse_selection()
        try:
            results = method.run(job)
        except TrainingDiverged as err:
            # a failed fit is recorded as such, never as a result a report would tabulate
            if main:
                write_results(
                    out,
                    {
                        **common_results(job, method, started),
                        "status": "diverged",
                        "error": str(err),
                    },
                )
            raise
        results.update(common_results(job, method, started))
        if main:  # the other DDP processes hold the same (synced) metrics
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


def make_method(cfg: DictConfig) -> Method:
    """The method of ``cfg.method`` (its ``_target_``), its config checked against the job's."""
    target = cfg.method.get("_target_")
    if not target:
        raise ValueError(
            "method has no _target_: choose a method config (method=erm, erm_easy, erm_all, jtt, "
            "dfr or pretrained), or give method._target_=<a hsi.methods.base.Method subclass>"
        )
    method_class = get_class(str(target))
    if not (isinstance(method_class, type) and issubclass(method_class, Method)):
        raise ValueError(f"method._target_={target}: not a hsi.methods.base.Method subclass")
    method = method_class(cfg.method)
    method.check(cfg)
    return method


# --------------------------------------------------------------------------- results
def _choice(group: str, default: str) -> str:
    """The option picked for a config group (e.g. data=hsi_v2), when Hydra runs the job."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    return default


def _multirun() -> bool:
    """Whether Hydra runs this job as part of a sweep (-m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def common_results(job: Job, method: Method, started: float) -> dict[str, Any]:
    cfg = job.cfg
    dropped = getattr(job.datamodule, "dropped", None)
    model_checkpoint = None
    if cfg.model.get("checkpoint"):
        path = resolve_checkpoint(
            cfg.model.checkpoint, "model.checkpoint", ("best.ckpt", "last.ckpt")
        )
        model_checkpoint = checkpoint_record(path, "model.checkpoint")
    return {
        "status": "complete",
        # samples left out because their assets failed (the data module warns about them)
        "dropped_samples": {
            "total": 0 if dropped is None else len(dropped),
            **(
                {}
                if dropped is None or "split" not in dropped
                else {str(k): int(v) for k, v in dropped["split"].value_counts().items()}
            ),
        },
        "model_checkpoint": model_checkpoint,
        "method": method.name,
        "selects_on_val": method.selects_on_val,
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
