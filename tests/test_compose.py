"""Composition and assets on hand-made inputs: geometry, fit/squash, alpha paste, core box, cache."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from hsi.generate.assets import AssetStore, box_pixels, choose_core_box, crop, make_assets
from hsi.generate.compose import compose, fit_size, paste_object
from hsi.generate.inpaint.masks import BoxMasker
from hsi.io import atomic_save_png

RES = 64
BG_COLOUR = (10, 20, 30)
OBJ_COLOUR = (250, 5, 5)


def changed_box(image: np.ndarray, colour=BG_COLOUR) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the pixels that differ from the constant background."""
    ys, xs = np.nonzero((image != np.array(colour, dtype=np.uint8)).any(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@pytest.fixture
def store(tmp_path) -> AssetStore:
    """Assets of two made-up images: constant backgrounds, a constant 37x23 object crop."""
    s = AssetStore(tmp_path)
    atomic_save_png(s.path("bg", "val/bgimage"), np.full((RES, RES, 3), BG_COLOUR, dtype=np.uint8))
    atomic_save_png(s.path("core", "val/fgimage"), np.full((23, 37, 3), OBJ_COLOUR, dtype=np.uint8))
    alpha = np.zeros((23, 37), dtype=np.uint8)
    alpha[:, :10] = 255
    atomic_save_png(s.path("alpha", "val/fgimage"), alpha)
    return s


def row(size: int, position: str) -> dict:
    return {
        "fg_image": "val/fgimage",
        "bg_image": "val/bgimage",
        "size": size,
        "position": position,
    }


# Worked out by hand for a 64 px image: centre offset (64 - s) // 2, corner x = 64 - s, y = 0.
EXPECTED_SQUASH = {
    (16, "center"): (24, 24, 16, 16),
    (24, "center"): (20, 20, 24, 24),
    (32, "center"): (16, 16, 32, 32),
    (16, "corner"): (48, 0, 16, 16),
    (24, "corner"): (40, 0, 24, 24),
    (32, "corner"): (32, 0, 32, 32),
}


@pytest.mark.parametrize(("size", "position"), sorted(EXPECTED_SQUASH))
def test_squash_pastes_exactly_the_s_by_s_square(store, size, position):
    image = compose(row(size, position), store, RES)
    assert image.shape == (RES, RES, 3) and image.dtype == np.uint8
    assert changed_box(image) == EXPECTED_SQUASH[(size, position)]
    x, y, w, h = EXPECTED_SQUASH[(size, position)]
    assert (image[y : y + h, x : x + w] == OBJ_COLOUR).all()  # a constant crop stays constant


def test_a_pandas_row_and_a_namedtuple_serve_the_recipe_size(store):
    """A pandas Series has its own `.size` (its number of fields): the recipe's column must win."""
    frame = pd.DataFrame([row(32, "corner")])
    assert frame.iloc[0].size == 4  # the attribute that must not be taken for the size
    for served in (frame.iloc[0], next(frame.itertuples(index=False))):
        assert changed_box(compose(served, store, RES)) == EXPECTED_SQUASH[(32, "corner")]


def test_fit_keeps_the_aspect_and_centres_in_the_square(store):
    # 37x23 crop, s = 32: width 32, height round(23 * 32 / 37) = round(19.89) = 20, centred
    # vertically in the corner square: y = (32 - 20) // 2 = 6, x = 64 - 32 = 32.
    assert fit_size(37, 23, 32) == (32, 20)
    image = compose(row(32, "corner"), store, RES, resize_mode="fit")
    assert changed_box(image) == (32, 6, 32, 20)
    # centre square starts at 16; the 20 px high crop at 16 + 6 = 22
    assert changed_box(compose(row(32, "center"), store, RES, resize_mode="fit")) == (
        16,
        22,
        32,
        20,
    )


def test_alpha_pastes_only_the_mask():
    background = np.full((RES, RES, 3), BG_COLOUR, dtype=np.uint8)
    core = np.full((32, 32, 3), OBJ_COLOUR, dtype=np.uint8)
    alpha = np.zeros((32, 32), dtype=np.uint8)
    alpha[:, :16] = 255  # left half of the object
    out = paste_object(background, core, alpha, 16, "corner")
    # 32 -> 16 halves the mask: the left 8 columns of the corner square at x = 48.
    assert changed_box(out) == (48, 0, 8, 16)
    rect = paste_object(background, core, None, 16, "corner")
    assert changed_box(rect) == (48, 0, 16, 16)


def test_alpha_of_the_store_is_used_for_paste_alpha(store):
    image = compose(row(32, "center"), store, RES, paste="alpha")
    full = compose(row(32, "center"), store, RES, paste="rect")
    changed = (image != np.array(BG_COLOUR, np.uint8)).any(axis=2).sum()
    assert 0 < changed < 32 * 32 == (full != np.array(BG_COLOUR, np.uint8)).any(axis=2).sum()


def test_compose_leaves_the_background_outside_the_square(store):
    # A textured background: every pixel outside the pasted square must be the asset's own.
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, size=(RES, RES, 3), dtype=np.uint8)
    atomic_save_png(store.path("bg", "val/bgimage"), textured)
    fresh = AssetStore(store.out)
    image = compose(row(24, "corner"), fresh, RES)
    outside = np.ones((RES, RES), dtype=bool)
    outside[0:24, 40:64] = False
    assert (image[outside] == textured[outside]).all()


def test_wrong_resolution_names_the_file(store):
    with pytest.raises(ValueError, match="bgimage.png"):
        compose(row(16, "center"), store, 128)


def test_bad_modes_are_rejected(store):
    with pytest.raises(ValueError, match="resize_mode"):
        compose(row(16, "center"), store, RES, resize_mode="stretch")
    with pytest.raises(ValueError, match="paste"):
        compose(row(16, "center"), store, RES, paste="blend")


def test_core_box_rule():
    equal = [(0, 0, 10, 10), (0, 0, 20, 5), (5, 5, 15, 15)]  # all of area 100
    assert choose_core_box(equal, "largest") == (0, 0, 10, 10)  # ties: the first
    boxes = [(0, 0, 2, 2), (1, 1, 11, 11), (0, 0, 3, 3)]
    assert choose_core_box(boxes, "largest") == (1, 1, 11, 11)
    assert choose_core_box(boxes, "first") == (0, 0, 2, 2)
    with pytest.raises(ValueError, match="core_box"):
        choose_core_box(boxes, "smallest")


def test_box_pixels_cover_the_continuous_box():
    assert box_pixels((1.5, 2.2, 7.1, 9.0), 20, 20) == (1, 2, 8, 9)
    assert box_pixels((-3.0, -1.0, 25.0, 30.0), 20, 10) == (0, 0, 20, 10)  # clipped
    assert box_pixels((5.0, 5.0, 5.0, 5.0), 20, 20) == (5, 5, 6, 6)  # at least one pixel
    image = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    assert (crop(image, (1.5, 2.2, 7.1, 9.0)) == image[2:9, 1:8]).all()


class CountingInpainter:
    """Records every call; fills the hole with a constant so the result is known."""

    def __init__(self):
        self.calls = 0
        self.masks = []

    def __call__(self, image, mask):
        self.calls += 1
        self.masks.append(mask.copy())
        return np.where(mask[..., None] > 0, 7, image).astype(np.uint8)


def test_make_assets_inpaints_the_union_once():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    boxes = [(2.0, 3.0, 12.0, 13.0), (30.0, 10.0, 55.0, 35.0), (40.0, 0.0, 45.0, 4.0)]
    inpainter = CountingInpainter()
    assets = make_assets(image, boxes, BoxMasker(dilation=0), inpainter, resolution=32)
    assert inpainter.calls == 1
    expected_mask = np.zeros((40, 60), dtype=bool)
    for x0, y0, x1, y1 in [(2, 3, 12, 13), (30, 10, 55, 35), (40, 0, 45, 4)]:
        expected_mask[y0:y1, x0:x1] = True
    assert ((inpainter.masks[0] > 0) == expected_mask).all()
    assert assets.bg.shape == (32, 32, 3)
    assert (assets.core == image[10:35, 30:55]).all()  # the largest box, from the source pixels
    assert assets.alpha is None


def test_asset_store_caches_read_only_arrays(store):
    a = store.load("bg", "val/bgimage")
    assert store.load("bg", "val/bgimage") is a
    assert not a.flags.writeable
    small = AssetStore(store.out, cache_size=1)
    first = small.load("bg", "val/bgimage")
    small.load("core", "val/fgimage")  # evicts the background
    assert small.load("bg", "val/bgimage") is not first
    clone = pickle.loads(pickle.dumps(store))
    assert clone.out == store.out and not clone._cache
    with pytest.raises(ValueError, match="train/<image_id>"):
        store.path("bg", "no_split")
    with pytest.raises(FileNotFoundError, match="hsi-generate build"):
        store.load("bg", "val/absent")
