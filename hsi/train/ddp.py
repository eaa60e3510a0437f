"""Training on several processes: Lightning DDP (``trainer.strategy=ddp``).

One process per device (``trainer.devices``) on each node (``trainer.num_nodes``). On one
machine Lightning starts the other processes itself, by running the same ``hsi-train`` command
line again in the same run folder (``LOCAL_RANK`` set); under SLURM (``hydra/launcher=slurm``
with ``hydra.launcher.tasks_per_node`` = devices and ``hydra.launcher.nodes`` = num_nodes) srun
starts them as the job's tasks and Lightning reads the ranks from SLURM's variables.

Every process runs the whole job (same config, same seed, same data); the data modules give each
its shard (hsi/data/sharding.py) and the metrics sum their counts over the processes. Only the
main process (global rank 0) holds the run folder's lock and writes results.json, stage1.json
and the JTT error set; Lightning writes checkpoints and logs from rank 0 alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

from omegaconf import DictConfig

# ddp_spawn / ddp_fork / ddp_notebook start workers that do not run the job's own flow (and
# the evaluation after the fit would start them again); fsdp / deepspeed are untested here.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
# set by: torchrun, Lightning's launcher (LOCAL_RANK, NODE_RANK), srun (SLURM_PROCID)
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
T = TypeVar("T")


def is_main_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this is global rank 0, as the launcher set it before any process group exists:
    the process hsi-train was started as, or SLURM's task 0; False for the others."""
    return all(int(environ.get(key) or 0) == 0 for key in _RANK_VARIABLES)


def local_rank(environ: Mapping[str, str] = os.environ) -> int:
    """This process's index on its node (its device), from Lightning's launcher or srun."""
    return int(environ.get("LOCAL_RANK") or environ.get("SLURM_LOCALID") or 0)


def _count(value: object) -> int | None:
    """Processes asked for by trainer.devices or num_nodes (None: decided at run time)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
        if len(parts) > 1 or value.strip().endswith(","):
            return len(parts)
        return int(value) if value.strip().isdigit() and int(value) > 0 else None
    try:
        return len(value)  # a list of device indices
    except TypeError:
        return None


def check_strategy(cfg: DictConfig, multirun: bool = False, under_slurm: bool = False) -> None:
    """Refuse what DDP here cannot run, naming the key: an unsupported ``trainer.strategy``,
    Lightning's own distributed sampler, and a local multirun of DDP jobs (Lightning starts the
    other processes by running the command line again, which would start the whole sweep)."""
    trainer = cfg.trainer
    strategy = trainer.get("strategy", "auto")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        shown = strategy.get("_target_", strategy) if isinstance(strategy, Mapping) else strategy
        raise ValueError(
            f"trainer.strategy={shown} is not supported: use trainer.strategy=ddp (one process "
            f"per device, with trainer.devices and trainer.num_nodes) or auto"
        )
    if trainer.get("use_distributed_sampler", False):
        raise ValueError(
            "trainer.use_distributed_sampler=true: hsi's data modules give each process its "
            "shard themselves (hsi/data/sharding.py); set trainer.use_distributed_sampler=false"
        )
    processes = (_count(trainer.get("devices", 1)) or 1) * (
        _count(trainer.get("num_nodes", 1)) or 1
    )
    if multirun and not under_slurm and processes > 1:
        raise ValueError(
            f"a local multirun (-m) cannot train on {processes} processes (trainer.devices x "
            f"trainer.num_nodes): Lightning would rerun the whole sweep in each; run the jobs "
            f"one by one, or through hydra/launcher=slurm with "
            f"hydra.launcher.tasks_per_node=trainer.devices"
        )


def from_main_process(value: T) -> T:
    """Rank 0's ``value`` on every process once DDP has started (``value`` as is before, or on
    one process): what each process computed outside the Trainer (JTT's error set on a GPU,
    where near-tied logits may round differently) is then the same everywhere."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value
