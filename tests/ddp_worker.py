"""What each spawned gloo process of tests/test_ddp.py runs: a module of its own, so that the
processes import torch and hsi.metrics only, not the test module's imports."""

from __future__ import annotations

import torch

from hsi.data.sharding import EvalShard
from hsi.groups import make_groups
from hsi.metrics import GroupAccuracy


def group_metrics_on_rank(rank: int, world: int, init: str, out: str) -> None:
    """One gloo process: GroupAccuracy over its EvalShard of fixed predictions."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    preds, target, group_id = predictions()
    mine = torch.tensor(list(EvalShard(range(len(target)), rank, world)))
    metric = GroupAccuracy(make_groups([8, 12, 16]))
    for batch in mine.split(5):  # uneven batches, as the last one of an eval loader
        metric.update(preds[batch], target[batch], group_id[batch])
    values = {k: float(v) for k, v in metric.compute().items()}
    torch.save(values, f"{out}.{rank}")
    dist.destroy_process_group()


def predictions():
    g = torch.Generator().manual_seed(0)
    n = 71
    return (
        torch.randint(0, 3, (n,), generator=g),
        torch.randint(0, 3, (n,), generator=g),
        torch.randint(0, 12, (n,), generator=g),
    )
