"""Each DDP rank's share of an epoch (``trainer.strategy=ddp``, ``trainer.devices`` > 1).

Lightning's own distributed sampler is off (``trainer.use_distributed_sampler: false``): it
would reshuffle the training order with its own seed and pad the val/test splits with repeated
samples, which then count twice in the group metrics. Instead:

- **train**: every rank draws the same whole epoch from the data module's EpochSampler (a
  function of seed and epoch only: standard, easy, balanced and JTT's repeats alike) and keeps
  the positions ``rank, rank + W, rank + 2W, ...`` of it (W = world size), each with the
  augmentation seed of its position in the whole epoch. When W does not divide the epoch, the
  epoch is first padded by wrapping around to its start (as torch's DistributedSampler pads),
  so every rank gets ``ceil(n / W)`` items and takes the same number of steps: fewer than W
  draws of padding per epoch (the epoch's first items once more), none lost. The union of the ranks' shards is the
  1-process epoch plus that padding.
- **val / test**: rank r evaluates the samples ``r, r + W, ...`` of the split, with no padding;
  the shards are disjoint and cover the split once. The per-group counts of
  hsi.metrics.GroupAccuracy are summed over the ranks (torchmetrics' sync on ``compute``), so
  the metrics equal a 1-process evaluation's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import Sampler

T = TypeVar("T")


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")


def shard_length(n: int, world_size: int) -> int:
    """Items per rank of an epoch of ``n`` items, padded: ``ceil(n / world_size)``."""
    return math.ceil(n / world_size)


def shard_epoch(items: list[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s items of one epoch: every ``world_size``-th item of the epoch padded by
    wrapping to ``world_size * ceil(n / world_size)`` items (an empty epoch stays empty)."""
    check_rank(rank, world_size)
    if not items:
        return []
    total = world_size * shard_length(len(items), world_size)
    # np.resize repeats the list cyclically, which also covers an epoch shorter than W
    padded = [items[i] for i in np.resize(np.arange(len(items)), total)]
    return padded[rank:total:world_size]


class TrainShard(Sampler):
    """Rank ``rank``'s share of each epoch of ``sampler`` (an EpochSampler), padded to equal
    lengths on every rank; ``set_epoch`` goes to the wrapped sampler."""

    def __init__(self, sampler: Any, rank: int, world_size: int) -> None:
        check_rank(rank, world_size)
        self.sampler, self.rank, self.world_size = sampler, int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return shard_length(len(self.sampler), self.world_size)

    def __iter__(self) -> Iterator:
        return iter(shard_epoch(list(self.sampler), self.rank, self.world_size))


class EvalShard(Sampler):
    """Rank ``rank``'s samples of an evaluation split, in order: ``rank, rank + W, ...``.

    No padding: the ranks' shards are disjoint and together hold every sample once (their
    lengths differ by at most one).
    """

    def __init__(self, dataset: Sized, rank: int, world_size: int) -> None:
        check_rank(rank, world_size)
        self.size, self.rank, self.world_size = len(dataset), int(rank), int(world_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))


def trainer_ranks(datamodule: Any) -> tuple[int, int]:
    """(global rank, world size) of the Trainer a data module is attached to; (0, 1) without one."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)
