"""Core crops stored with their shorter side capped at the largest pasted size (dataset.crop_cap)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_cfg
from test_build import MINIMAL

from hsi.generate.assets import capped_size, make_assets
from hsi.generate.build import run_build
from hsi.generate.compose import fit_size, paste_object
from hsi.generate.inpaint.inpainters import OpenCVInpainter
from hsi.generate.inpaint.masks import BoxMasker
from hsi.generate.spec import ConfigError, DatasetSpec


def test_capped_size_by_hand():
    assert capped_size(400, 300, 112) == (149, 112)  # 400 * 112/300 = 149.3
    assert capped_size(300, 400, 112) == (112, 149)
    assert capped_size(1000, 100, 112) == (1000, 100)  # shorter side already below the cap
    assert capped_size(500, 375, None) == (500, 375)


def spec(**dataset):
    counts = {"train": {"easy": 2, "medium": 1, "hard": 1}, "val": 1, "test": 2}
    return DatasetSpec.from_config(
        {"resolution": 64, "sizes": [16, 24, 32], "counts": counts, **dataset}
    )


def test_crop_cap_key():
    assert spec().crop_cap == 32  # auto: the largest size
    assert spec(crop_cap="auto").crop_cap == 32
    assert spec(crop_cap=None).crop_cap is None
    assert spec(crop_cap=48).crop_cap == 48
    for bad in (20, "big", 32.5, True):
        with pytest.raises(ConfigError, match="dataset.crop_cap"):
            spec(crop_cap=bad)


def smooth_image(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], axis=-1
    ).astype(np.uint8)


@pytest.mark.parametrize("resize_mode", ["squash", "fit"])
def test_capped_crop_composes_like_the_full_one_at_the_largest_size(resize_mode):
    image = smooth_image(300, 200)
    box = (20.0, 30.0, 260.0, 180.0)  # a 240 x 150 crop
    masker, inpainter = BoxMasker(dilation=3), OpenCVInpainter()
    full = make_assets(image, [box], masker, inpainter, 64, with_alpha=True)
    capped = make_assets(image, [box], masker, inpainter, 64, with_alpha=True, crop_cap=32)
    assert full.core.shape == (150, 240, 3) and capped.core.shape == (32, 51, 3)
    assert capped.alpha.shape == capped.core.shape[:2] and (capped.bg == full.bg).all()
    if resize_mode == "fit":  # the aspect survives the cap: the pasted rectangle is the same
        assert fit_size(51, 32, 32) == fit_size(240, 150, 32)
    a = paste_object(full.bg, full.core, None, 32, "center", resize_mode).astype(int)
    b = paste_object(capped.bg, capped.core, None, 32, "center", resize_mode).astype(int)
    assert np.abs(a - b).max() <= 3  # two bilinear steps instead of one, on a smooth image


def test_build_reports_bytes_per_image_and_the_cap_saves_them(tmp_path):
    source = tmp_path / "src"
    sizes = {}
    for cap in ("auto", "null"):
        summary = run_build(make_cfg(tmp_path / cap, source, *MINIMAL, f"dataset.crop_cap={cap}"))
        assert summary.done == 2 and set(summary.asset_bytes) == {"bg", "core"}
        assert "KiB per source image" in summary.report()
        sizes[cap] = summary
    auto, full = sizes["auto"], sizes["null"]
    assert auto.asset_bytes["bg"] == full.asset_bytes["bg"]  # backgrounds are untouched
    assert auto.asset_bytes["core"] < full.asset_bytes["core"]
    assert auto.bytes_per_image == sum(auto.asset_bytes.values()) / 2
