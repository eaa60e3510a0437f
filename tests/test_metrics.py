"""GroupAccuracy and group_metrics against counts worked out by hand (paper 000, §4; docs/papers.md)."""

import math

import numpy as np
import pytest
import torch

from hsi.groups import make_groups
from hsi.metrics import GroupAccuracy, group_metrics, prefixed

GROUPS = make_groups((16, 24, 32))  # ids: 16 px -> 0..3, 24 px -> 4..7, 32 px -> 8..11
NUM_CLASSES = 5

# (correct, total) per group id, in CeO, CoO, CeR, CoR order per size; CoR_16 is empty.
# fmt: off
COUNTS = [
    (1, 2), (0, 3), (1, 4), (0, 0),  # 16 px
    (3, 3), (2, 4), (1, 2), (1, 5),  # 24 px
    (4, 4), (2, 3), (3, 4), (1, 2),  # 32 px
]
# fmt: on

# Worked out by hand from COUNTS:
#   pooled 19/36; worst = CoO_16 = 0; mean over the 11 non-empty groups = (88/15)/11 = 8/15;
#   easy = CeO/CoO at 24, 32 = ids 4, 5, 8, 9 -> (3+2+4+2)/(3+4+4+3) = 11/14;
#   hard = CeR/CoR at 16, 24 = ids 2, 3, 6, 7 -> (1+0+1+1)/(4+0+2+5) = 3/11;
#   medium = CeO/CoO at 16 and CeR/CoR at 32 = ids 0, 1, 10, 11 -> (1+0+3+1)/(2+3+4+2) = 5/11;
#   sizes: 16 -> 2/9, 24 -> 7/14, 32 -> 10/13.
EXPECTED = {
    "acc": 19 / 36,
    "worst_group_acc": 0.0,
    "mean_group_acc": 8 / 15,
    "acc_easy": 11 / 14,
    "acc_medium": 5 / 11,
    "acc_hard": 3 / 11,
    "acc_size_16": 2 / 9,
    "acc_size_24": 7 / 14,
    "acc_size_32": 10 / 13,
    "group/CeO_16": 1 / 2,
    "group/CoO_16": 0.0,
    "group/CeR_16": 1 / 4,
    "group/CeO_24": 1.0,
    "group/CoO_24": 2 / 4,
    "group/CeR_24": 1 / 2,
    "group/CoR_24": 1 / 5,
    "group/CeO_32": 1.0,
    "group/CoO_32": 2 / 3,
    "group/CeR_32": 3 / 4,
    "group/CoR_32": 1 / 2,
}


def make_batch(counts):
    """Samples whose per-group hits equal `counts`; wrong predictions are target + 1 (mod C)."""
    targets, preds, group_ids = [], [], []
    for gid, (correct, total) in enumerate(counts):
        for i in range(total):
            target = (gid + i) % NUM_CLASSES
            targets.append(target)
            preds.append(target if i < correct else (target + 1) % NUM_CLASSES)
            group_ids.append(gid)
    return torch.tensor(preds), torch.tensor(targets), torch.tensor(group_ids)


def as_floats(metrics):
    return {k: float(v) for k, v in metrics.items()}


def assert_metrics_equal(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_hand_counted_batch_in_two_updates():
    preds, target, group_id = make_batch(COUNTS)
    order = torch.randperm(len(target), generator=torch.Generator().manual_seed(0))
    preds, target, group_id = preds[order], target[order], group_id[order]
    logits = torch.nn.functional.one_hot(preds, NUM_CLASSES).float() * 3.0 - 1.0
    metric = GroupAccuracy(GROUPS)
    half = len(target) // 2
    metric.update(logits[:half], target[:half], group_id[:half])  # logits
    metric.update(preds[half:], target[half:], group_id[half:])  # class indices
    assert metric.total.tolist() == [t for _, t in COUNTS]
    assert metric.correct.tolist() == [c for c, _ in COUNTS]
    result = metric.compute()
    assert all(isinstance(v, torch.Tensor) for v in result.values())
    assert_metrics_equal(as_floats(result), EXPECTED)
    assert "group/CoR_16" not in result  # the empty group is left out, not NaN
    assert not any(math.isnan(v) for v in as_floats(result).values())


def test_group_metrics_matches_compute_and_takes_numpy():
    preds, target, group_id = make_batch(COUNTS)
    metric = GroupAccuracy(GROUPS)
    metric.update(preds, target, group_id)
    correct = np.array([c for c, _ in COUNTS])
    total = np.array([t for _, t in COUNTS])
    from_numpy = group_metrics(correct, total, GROUPS)
    assert_metrics_equal(from_numpy, EXPECTED)
    assert_metrics_equal(as_floats(metric.compute()), from_numpy)
    assert all(isinstance(v, float) for v in from_numpy.values())


def test_empty_categories_and_sizes_are_left_out():
    # samples only in CeR_16 (hard, 1 of 2 right) and CoR_32 (medium, 2 of 2 right)
    counts = [(0, 0)] * 12
    counts[2], counts[11] = (1, 2), (2, 2)
    got = group_metrics([c for c, _ in counts], [t for _, t in counts], GROUPS)
    assert_metrics_equal(
        got,
        {
            "acc": 3 / 4,
            "worst_group_acc": 1 / 2,
            "mean_group_acc": 3 / 4,
            "acc_hard": 1 / 2,
            "acc_medium": 1.0,
            "acc_size_16": 1 / 2,
            "acc_size_32": 1.0,
            "group/CeR_16": 1 / 2,
            "group/CoR_32": 1.0,
        },
    )
    assert group_metrics([0] * 12, [0] * 12, GROUPS) == {}


def test_plain_classification_without_groups():
    metric = GroupAccuracy()
    preds = torch.tensor([0, 1, 2, 2, 1])
    target = torch.tensor([0, 1, 1, 2, 0])  # 3 of 5 right
    metric.update(preds, target)
    assert_metrics_equal(
        as_floats(metric.compute()),
        {"acc": 3 / 5, "worst_group_acc": 3 / 5, "mean_group_acc": 3 / 5},
    )


def test_num_groups_without_names():
    metric = GroupAccuracy(num_groups=3)
    # group 0: 2/2, group 1: 1/4, group 2: empty
    preds = torch.tensor([1, 2, 0, 0, 0, 3])
    target = torch.tensor([1, 2, 0, 1, 1, 1])
    group_id = torch.tensor([0, 0, 1, 1, 1, 1])
    metric.update(preds, target, group_id)
    assert_metrics_equal(
        as_floats(metric.compute()),
        {"acc": 3 / 6, "worst_group_acc": 1 / 4, "mean_group_acc": (1 + 1 / 4) / 2},
    )
    metric.reset()
    assert metric.total.tolist() == [0, 0, 0]


def test_bad_input_is_rejected():
    metric = GroupAccuracy(GROUPS)
    with pytest.raises(ValueError, match="group ids must lie in 0..11"):
        metric.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([12]))
    with pytest.raises(ValueError, match="preds"):
        metric.update(torch.zeros(3), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="invalid counts"):
        group_metrics([3], [2])
    with pytest.raises(ValueError, match="12 groups but 3 counts"):
        group_metrics([0, 0, 0], [1, 1, 1], GROUPS)
    with pytest.raises(ValueError, match="group ids must be 0..11"):
        GroupAccuracy(list(reversed(GROUPS)))


def test_prefixed_names():
    out = prefixed({"acc": 0.5, "worst_group_acc": 0.1, "group/CeO_56": 0.9}, "val")
    assert out == {"val/acc": 0.5, "val/worst_group_acc": 0.1, "val/group/CeO_56": 0.9}
    paper = group_metrics([1] * 12, [2] * 12, make_groups((56, 84, 112)))
    assert "test/group/CeO_56" in prefixed(paper, "test")
    assert "test/acc_size_112" in prefixed(paper, "test")
