"""What every method shares: batches, eval mode, groups and the group evaluation of val/test.

Each method (ERM, JTT, DFR) is a LightningModule built on :class:`GroupEvalModule`, which logs
the group metrics of paper 000, §4 (``val/acc``, ``val/worst_group_acc``,
``val/group/CeO_56`` ...) once per epoch, and a :class:`Method`: the config node ``method``
(its ``_target_``) that runs the method's algorithm on a training job (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from hsi.groups import Group, make_groups
from hsi.metrics import GroupAccuracy, prefixed
from hsi.models import evaluating, split_batch

__all__ = ["GroupEvalModule", "Method", "as_groups", "evaluating", "group_sizes", "split_batch"]

SPLITS = ("val", "test")


def as_groups(groups: Sequence[Group] | Sequence[int] | None) -> list[Group] | None:
    """Groups from a list of :class:`Group` or from the three object sizes (as hparams store them)."""
    if groups is None:
        return None
    groups = list(groups)
    if groups and all(isinstance(g, Group) for g in groups):
        return groups
    if all(isinstance(g, int) for g in groups):
        return make_groups(groups)
    raise TypeError(f"groups must be hsi.groups.Group objects or the three sizes; got {groups!r}")


def group_sizes(groups: Sequence[Group] | None) -> list[int] | None:
    """The three object sizes that :func:`as_groups` turns back into the groups."""
    return sorted({g.size for g in groups}) if groups else None


class GroupEvalModule(L.LightningModule):
    """Validation/test per-group accuracy shared by every method of this package.

    Subclasses call :meth:`init_group_metrics` in ``__init__`` and implement ``forward``.
    After an epoch of validation or test, ``last_metrics[split]`` holds the plain-float metric
    dict (keys without the split prefix) of that epoch, for the caller's ``results.json``.
    """

    def init_group_metrics(self, groups: Sequence[Group] | None) -> None:
        self.groups = groups
        # Separate objects: a test run in the same process must not mix counts with validation.
        self.val_metric = GroupAccuracy(groups)
        self.test_metric = GroupAccuracy(groups)
        self.last_metrics: dict[str, dict[str, float]] = {}

    def _metric(self, split: str) -> GroupAccuracy:
        return self.val_metric if split == "val" else self.test_metric

    def _eval_step(self, batch: Any, split: str) -> None:
        x, y, group_id = split_batch(batch)
        if y is None:
            raise ValueError(f"{split} batches must carry labels: (x, y, group_id)")
        self._metric(split).update(self(x), y, group_id)

    def _epoch_end(self, split: str) -> None:
        metric = self._metric(split)
        values = {key: float(value) for key, value in metric.compute().items()}
        metric.reset()
        # compute() already summed the counts over DDP processes: every process holds the same
        # values, and sync_dist's mean of equal values leaves them as they are
        self.log_dict(prefixed(values, split), sync_dist=True)
        sanity = self._trainer is not None and self._trainer.sanity_checking
        if not sanity:  # the sanity check's two batches are not a result
            self.last_metrics[split] = values

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Logits [N, num_classes]."""
        return self(split_batch(batch)[0])


class Method:
    """A method's algorithm, built from its config node (``method``, selected by ``_target_``).

    ``name`` is the method's one identity: results.json's ``method``, the checkpoints' ``method``
    hyper-parameter, W&B's run name. :meth:`check` runs before any data is read (cheap config
    errors first); :meth:`run` trains and evaluates on a job (``hsi.train.job.Job``) and returns
    results.json's method part (``val``, ``test``, ``checkpoints`` ...).
    """

    def __init__(self, cfg: DictConfig, key: str = "method") -> None:
        self.cfg = cfg
        self.key = key  # where cfg sits in the job's config, for error messages
        self.name = str(cfg.name)

    def check(self, cfg: DictConfig) -> None:
        """Refuse a config this method cannot run (``cfg``: the whole job config)."""

    def run(self, job: Any) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def selects_on_val(self) -> bool:
        """Whether val metrics are a selection signal (not for a layer fit on val, as DFR's)."""
        return True
