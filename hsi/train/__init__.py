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

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from hsi.loggers import (
    define_group_metrics,
    finish_loggers,
    log_group_tables,
    log_summary,
    make_loggers,
)
from hsi.results import flat_metrics, write_results
from hsi.train.flows import FLOWS, data_key
from hsi.train.job import (
    Job,
    check_run_folder,
    check_weights,
    make_datamodule,
    requeue_ckpt_path,
    resolve_checkpoint,
)

__all__ = [
    "ALGORITHMS",
    "FLOWS",
    "check_run_folder",
    "data_key",
    "make_datamodule",
    "requeue_ckpt_path",
    "resolve_checkpoint",
    "single_console_log",
    "summary_line",
    "train",
]
ALGORITHMS = tuple(FLOWS)  # method.algorithm: erm, evaluate, jtt, dfr

log = logging.getLogger(__name__)


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
