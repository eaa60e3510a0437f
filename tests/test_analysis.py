"""hsi.analysis: Fig. 3 correlations, background-only accuracy, automatic v2 pairs, Grad-CAM."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from hsi.analysis.background import accuracy_table
from hsi.analysis.correlation import (
    CorrelationWarning,
    correlation_table,
    joined,
    rank_correlation,
)
from hsi.analysis.gradcam import (
    box_share,
    cam_maps,
    default_target_layer,
    module_at,
    paste_box,
    token_reshape,
)
from tests.helpers import CONF

CLASSES, RES = 3, 32


# ============================================================================ correlations
def test_rank_correlation_matches_a_hand_count_without_ties():
    # pairs: 5 concordant, 1 discordant -> tau = 4/6; rank differences 0,1,1,0 -> rho = 1 - 12/60
    got = rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert got["n"] == 4
    assert got["kendall_tau"] == pytest.approx(2 / 3)
    assert got["spearman_rho"] == pytest.approx(0.8)
    # exact null distribution of n=4: P(at most 1 discordant pair) = (1 + 3)/24, two-sided x2
    assert got["kendall_p"] == pytest.approx(1 / 3)


def test_rank_correlation_with_ties_is_tau_b_and_average_ranks():
    # x has one tied pair: C=5, D=0, n0=6, n1=1 -> tau_b = 5 / sqrt(5 * 6)
    got = rank_correlation([1, 2, 2, 3], [1, 2, 3, 4])
    assert got["kendall_tau"] == pytest.approx(5 / math.sqrt(30))
    # average ranks 1, 2.5, 2.5, 4 vs 1..4: Pearson = 4.5 / sqrt(4.5 * 5)
    assert got["spearman_rho"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert 0 < got["kendall_p"] < 1 and 0 < got["spearman_p"] < 1


def test_a_reversed_order_is_minus_one():
    got = rank_correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert got["kendall_tau"] == pytest.approx(-1) and got["spearman_rho"] == pytest.approx(-1)


@pytest.mark.parametrize(
    ("x", "y", "n"),
    [([1, 1, 1, 1], [1, 2, 3, 4], 4), ([1, 2], [2, 1], 2), ([1, 2, float("nan")], [1, 2, 3], 2)],
    ids=["constant", "too-short", "nan-leaves-too-few"],
)
def test_undefined_correlations_are_nan_with_a_warning(x, y, n):
    with pytest.warns(CorrelationWarning):
        got = rank_correlation(x, y)
    assert got["n"] == n
    numbers = ("kendall_tau", "kendall_p", "spearman_rho", "spearman_p")
    assert all(math.isnan(got[k]) for k in numbers)


def test_the_fig3_table_joins_classes_and_multiplies_the_scores():
    accuracy = pd.DataFrame({"wnid": ["a", "b", "c", "d"], "accuracy": [0.9, 0.5, 0.4, 0.1]})
    scores = pd.DataFrame(
        {
            "wnid": ["a", "b", "c", "d", "a"],
            "split": ["val", "val", "val", "val", "train"],
            "center_score": [0.1, 0.2, 0.3, 0.4, 9.0],
            "size_score": [1.0, 1.0, 1.0, 1.0, 9.0],
        }
    )
    table = joined(accuracy, scores, "val")
    assert table["product"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corr = correlation_table(table).set_index("score")
    assert corr.loc["center_score", "kendall_tau"] == pytest.approx(-1)
    assert math.isnan(corr.loc["size_score", "kendall_tau"])  # constant size score
    assert any(issubclass(w.category, CorrelationWarning) for w in caught)
    with pytest.raises(ValueError, match="no rows of split 'test'"):
        joined(accuracy, scores, "test")


# ============================================================================ accuracy table
def test_accuracy_table_counts_per_class():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    table = accuracy_table(probabilities, [0, 0, 2, 2], ["a", "b", "c"], {"a": "A"})
    assert table["images"].tolist() == [2, 0, 2]
    assert table["correct"].tolist() == [1, 0, 1]
    assert table.loc[0, "accuracy"] == 0.5 and math.isnan(table.loc[1, "accuracy"])
    assert table.loc[0, "mean_true_prob"] == pytest.approx((0.7 + 0.2) / 2)
    assert table.loc[2, "mean_true_prob"] == pytest.approx((0.8 + 0.1) / 2)
    assert table["name"].tolist() == ["A", "b", "c"] and table["chance"].iloc[0] == 1 / 3


# ============================================================================ grad-cam parts
def test_paste_box_is_where_compose_pastes(tmp_path):
    from hsi.generate.compose import paste_object

    core = np.full((10, 20, 3), 255, np.uint8)
    background = np.zeros((RES, RES, 3), np.uint8)
    for position in ("center", "corner"):
        for mode in ("squash", "fit"):
            row = {"size": 12, "position": position}
            x0, y0, x1, y1 = paste_box(row, core.shape[:2], RES, mode)
            pasted = paste_object(background, core, None, 12, position, mode).any(axis=2)
            ys, xs = np.nonzero(pasted)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_box_share_is_the_energy_inside():
    cam = np.zeros((8, 8))
    cam[0:2, 0:2] = 1.0
    cam[7, 7] = 4.0
    assert box_share(cam, (0, 0, 2, 2)) == pytest.approx(0.5)
    assert math.isnan(box_share(np.zeros((4, 4)), (0, 0, 2, 2)))


def tiny_vit() -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=RES, patch_size=8, num_classes=CLASSES, depth=2
    )


def test_target_layers_per_architecture_and_override():
    cnn = timm.create_model("resnet10t", num_classes=CLASSES)
    assert default_target_layer(cnn) is cnn.layer4[-1]
    vit = tiny_vit()
    assert default_target_layer(vit) is vit.blocks[-1].norm1
    assert module_at(vit, "blocks.-2.norm1") is vit.blocks[0].norm1
    with pytest.raises(ValueError, match="gradcam.target_layer='layer9'"):
        module_at(cnn, "layer9")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    assert default_target_layer(plain) is plain[2]


def test_vit_tokens_become_a_map_without_the_class_token():
    vit = tiny_vit()
    tokens = torch.arange(2 * 17 * 5, dtype=torch.float32).reshape(2, 17, 5)  # 1 + 4x4 tokens
    maps = token_reshape(vit)(tokens)
    assert maps.shape == (2, 5, 4, 4)
    assert torch.equal(maps[0, :, 0, 0], tokens[0, 1])  # the first patch, not the class token
    assert torch.equal(maps[1, :, 3, 3], tokens[1, 16])
    assert token_reshape(timm.create_model("resnet10t", num_classes=CLASSES)) is None


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_cam_maps_of_a_cnn_and_a_vit(arch):
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=CLASSES) if arch == "cnn" else tiny_vit()
    x = torch.randn(2, 3, RES, RES)
    maps, predicted = cam_maps(net, x, [0, 1])
    assert maps.shape == (2, RES, RES) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert predicted.shape == (2,)
    # a subset head: 4 source classes, the dataset's are source labels 3 and 1
    net4 = timm.create_model("resnet10t", num_classes=4)
    _, sub = cam_maps(net4, x, [0, 1], columns=[3, 1])
    with torch.no_grad():
        assert sub.tolist() == net4(x)[:, [3, 1]].argmax(1).tolist()


# ============================================================================ config
def test_the_analyze_config_composes():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("analyze", ["out=x", "tasks=[background,gradcam]"])
    assert list(cfg.tasks) == ["background", "gradcam"]
    assert cfg.verbose is False and cfg.model.name == "resnet18"
    assert cfg.data.generate.dataset.name == "hsi"


def test_an_unknown_task_is_refused():
    from hsi.cli.analyze import run_tasks

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("analyze", ["out=x", "tasks=[fig3]"])
    with pytest.raises(ValueError, match="must be one of"):
        run_tasks(cfg)
