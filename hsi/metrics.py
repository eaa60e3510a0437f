"""Per-group accuracy on Hard-Spurious-ImageNet (paper 000, §4).

Four distinct quantities, never to be confused:

- **average accuracy** (``acc``): pooled over samples, sum(correct) / sum(total);
- **worst-group accuracy** (``worst_group_acc``): the minimum of the per-group accuracies over
  the groups that hold at least one sample;
- **mean-group accuracy** (``mean_group_acc``): the unweighted mean of those per-group accuracies;
- **category accuracy** (``acc_easy`` / ``acc_medium`` / ``acc_hard``) and **size accuracy**
  (``acc_size_{s}``): pooled over the samples of the groups in the category (paper 000, §4) or of the
  four groups of object size ``s``.

Per-group accuracies are reported as ``group/{name}`` (e.g. ``group/CeO_56``). Groups, categories
and sizes without samples are left out of the result rather than reported as NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from hsi.groups import CATEGORIES, Group


def _counts(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-d vector of per-group counts; got shape {array.shape}"
        )
    return array.astype(np.int64)


def _check_groups(groups: Sequence[Group]) -> None:
    ids = [g.id for g in groups]
    if ids != list(range(len(groups))):
        raise ValueError(
            f"group ids must be 0..{len(groups) - 1} in order (as hsi.groups.make_groups returns "
            f"them); got {ids}"
        )


def _pooled(correct: np.ndarray, total: np.ndarray, ids: list[int]) -> float | None:
    n = int(total[ids].sum())
    return float(correct[ids].sum()) / n if n else None


def group_metrics(correct, total, groups: Sequence[Group] | None = None) -> dict[str, float]:
    """Accuracies from per-group counts (numpy arrays, lists or tensors of equal length).

    Keys: ``acc``, ``worst_group_acc``, ``mean_group_acc``; with ``groups`` also
    ``acc_{easy,medium,hard}``, ``acc_size_{s}`` (sizes ascending) and ``group/{name}``.
    Returns an empty dict when there are no samples at all.
    """
    correct, total = _counts(correct, "correct"), _counts(total, "total")
    if correct.shape != total.shape:
        raise ValueError(f"correct {correct.shape} and total {total.shape} differ in length")
    if (total < 0).any() or (correct < 0).any() or (correct > total).any():
        raise ValueError(f"invalid counts: correct={correct.tolist()} total={total.tolist()}")
    if groups is not None:
        _check_groups(groups)
        if len(groups) != len(total):
            raise ValueError(f"{len(groups)} groups but {len(total)} counts")

    non_empty = np.flatnonzero(total > 0)
    if non_empty.size == 0:
        return {}
    per_group = correct[non_empty] / total[non_empty]
    out: dict[str, float] = {
        "acc": float(correct.sum()) / float(total.sum()),
        "worst_group_acc": float(per_group.min()),
        "mean_group_acc": float(per_group.mean()),
    }
    if groups is None:
        return out

    for cat in CATEGORIES:
        value = _pooled(correct, total, [g.id for g in groups if g.category == cat])
        if value is not None:
            out[f"acc_{cat}"] = value
    for size in sorted({g.size for g in groups}):
        value = _pooled(correct, total, [g.id for g in groups if g.size == size])
        if value is not None:
            out[f"acc_size_{size}"] = value
    for g in groups:
        if total[g.id] > 0:
            out[f"group/{g.name}"] = float(correct[g.id]) / float(total[g.id])
    return out


def prefixed(metrics: dict, split: str) -> dict:
    """``{"acc": x}`` -> ``{"val/acc": x}``: the names under which runs log and report."""
    return {f"{split}/{key}": value for key, value in metrics.items()}


class GroupAccuracy(Metric):
    """Accumulates correct/total counts per group; ``compute()`` returns :func:`group_metrics`.

    With ``groups`` (the 12 groups of :func:`hsi.groups.make_groups`) the result holds the
    category, size and per-group accuracies too. Without groups (plain classification) every
    sample belongs to group 0 unless ``group_id`` says otherwise, and only ``acc``,
    ``worst_group_acc`` and ``mean_group_acc`` are returned.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        groups: Sequence[Group] | None = None,
        num_groups: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if groups is not None:
            groups = list(groups)
            _check_groups(groups)
            if num_groups is not None and num_groups != len(groups):
                raise ValueError(f"num_groups={num_groups} but {len(groups)} groups were given")
            num_groups = len(groups)
        num_groups = 1 if num_groups is None else int(num_groups)
        if num_groups < 1:
            raise ValueError(f"num_groups must be at least 1; got {num_groups}")
        self.groups = groups
        self.num_groups = num_groups
        self.add_state("correct", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: torch.Tensor, target: torch.Tensor, group_id: torch.Tensor | None = None
    ) -> None:
        """``preds``: logits [N, C] or class indices [N]; ``target``: [N]; ``group_id``: [N]."""
        if preds.ndim == 2:
            preds = preds.argmax(dim=1)
        if preds.ndim != 1 or preds.shape != target.shape:
            raise ValueError(
                f"preds must be logits [N, C] or indices [N] matching target {tuple(target.shape)}; "
                f"got {tuple(preds.shape)}"
            )
        if group_id is None:
            group_id = torch.zeros_like(target)
        group_id = group_id.long()
        if group_id.shape != target.shape:
            raise ValueError(
                f"group_id {tuple(group_id.shape)} must match target {tuple(target.shape)}"
            )
        if group_id.numel() and (group_id.min() < 0 or group_id.max() >= self.num_groups):
            raise ValueError(
                f"group ids must lie in 0..{self.num_groups - 1}; got "
                f"{int(group_id.min())}..{int(group_id.max())}"
            )
        hit = preds.long() == target.long()
        self.total += torch.bincount(group_id, minlength=self.num_groups)
        self.correct += torch.bincount(group_id[hit], minlength=self.num_groups)

    def compute(self) -> dict[str, torch.Tensor]:
        values = group_metrics(self.correct, self.total, self.groups)
        return {key: torch.tensor(value, dtype=torch.float64) for key, value in values.items()}
