"""Maskers (box, Segment-Anything) and inpainters (OpenCV, LaMa) (paper 000, §4 and App. C)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hsi.generate.inpaint import BoxMasker, LamaInpainter, OpenCVInpainter, SamMasker

CONF = Path(__file__).resolve().parents[1] / "conf"
FLAT = (30, 120, 200)


def flat_image(height: int, width: int, colour=FLAT) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


# ---------------------------------------------------------------- BoxMasker


def test_box_dilated_by_kernel_grows_half_kernel_each_side():
    # A 3x3 box at rows/cols 10..12 and a 5x5 kernel: 2 more pixels each side -> rows/cols 8..14.
    mask = BoxMasker(dilation=5)(flat_image(32, 32), [(10, 10, 13, 13)])
    expected = np.zeros((32, 32), np.uint8)
    expected[8:15, 8:15] = 255
    assert mask.dtype == np.uint8 and mask.shape == (32, 32)
    np.testing.assert_array_equal(mask, expected)


def test_box_union_of_two_boxes_clipped_at_the_border():
    boxes = [(0, 1, 4, 3), (20, 10, 25, 30)]  # the second box ends at the bottom edge (height 30)
    image = flat_image(30, 40)
    expected = np.zeros((30, 40), np.uint8)
    expected[1:3, 0:4] = 255
    expected[10:30, 20:25] = 255
    for no_dilation in (0, 1):
        np.testing.assert_array_equal(BoxMasker(dilation=no_dilation)(image, boxes), expected)
    grown = np.zeros((30, 40), np.uint8)  # 3x3 kernel: one pixel more each side, cut by the image
    grown[0:4, 0:5] = 255
    grown[9:30, 19:26] = 255
    np.testing.assert_array_equal(BoxMasker(dilation=3)(image, boxes), grown)


def test_box_with_fractional_edges_takes_every_touched_pixel():
    # x 2.3..5.2 touches pixel columns 2, 3, 4, 5; y 4.7..8.0 touches rows 4, 5, 6, 7.
    image = flat_image(12, 10)
    box = (2.3, 4.7, 5.2, 8.0)
    expected = np.zeros((12, 10), bool)
    expected[4:8, 2:6] = True
    masker = BoxMasker(dilation=0)
    np.testing.assert_array_equal(masker(image, [box]), expected.astype(np.uint8) * 255)
    obj = masker.object_mask(image, box)
    assert obj.dtype == bool
    np.testing.assert_array_equal(obj, expected)
    # object_mask is never dilated, whatever the masker's dilation.
    np.testing.assert_array_equal(BoxMasker(dilation=15).object_mask(image, box), expected)


def test_box_masker_edge_cases():
    image = flat_image(8, 8)
    masker = BoxMasker()
    np.testing.assert_array_equal(masker(image, []), np.zeros((8, 8), np.uint8))
    assert masker.calls == 0
    with pytest.raises(ValueError, match="xmin <= xmax"):
        masker(image, [(5, 1, 2, 4)])
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        masker(image[..., 0], [(1, 1, 2, 2)])
    with pytest.raises(ValueError, match="dilation"):
        BoxMasker(dilation=-1)


# ---------------------------------------------------------------- OpenCVInpainter


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_removes_square_and_keeps_the_rest(method):
    image = flat_image(48, 48)
    image[18:30, 18:30] = (250, 10, 10)  # a red square on a flat blue-ish image
    mask = BoxMasker(dilation=5)(image, [(18, 18, 30, 30)])
    inpainter = OpenCVInpainter(radius=3, method=method)
    out = inpainter(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    outside = mask == 0
    np.testing.assert_array_equal(out[outside], image[outside])
    inside = out[mask > 0].astype(int)
    # Filled with the surrounding colour (Telea leaves +-3 ripples on a flat image; the square
    # differed by 110 or more in every channel).
    assert np.abs(inside - np.array(FLAT)).max() <= 5
    assert np.abs(inside.mean(axis=0) - np.array(FLAT)).max() <= 1
    assert not (out == (250, 10, 10)).all(axis=-1).any()  # no red pixel left
    assert inpainter.calls == 1


def test_opencv_empty_mask_and_bad_input():
    image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    inpainter = OpenCVInpainter()
    out = inpainter(image, np.zeros((10, 12), np.uint8))
    np.testing.assert_array_equal(out, image)
    assert out is not image and inpainter.calls == 0
    with pytest.raises(ValueError, match="does not match"):
        inpainter(image, np.zeros((12, 10), np.uint8))
    with pytest.raises(ValueError, match="inpaint.method"):
        OpenCVInpainter(method="fast")


# ---------------------------------------------------------------- LamaInpainter


class ShapeProbe(torch.nn.Module):
    """A LaMa stand-in that writes what it saw into the hole.

    Channel 0 = input height / 255, channel 1 = input width / 255, channel 2 = mean of channel 2
    over the unmasked pixels (so the [0, 1] scaling of the input shows in the output). It fails on
    inputs that are not padded to a multiple of 8, as LaMa's downsampling would.
    """

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[2], image.shape[3]
        assert h % 8 == 0 and w % 8 == 0, "input not padded to a multiple of 8"
        assert mask.shape[1] == 1 and mask.shape[2] == h and mask.shape[3] == w
        keep = 1.0 - mask
        mean2 = (image[:, 2:3] * keep).sum() / keep.sum()
        fill = torch.stack([torch.tensor(h / 255.0), torch.tensor(w / 255.0), mean2]).view(
            1, 3, 1, 1
        )
        return image * keep + fill * mask


class OutOfRange(torch.nn.Module):
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * 0.0 + torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1, 1)


def scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def test_lama_pads_to_multiple_of_8_crops_back_and_keeps_outside(tmp_path):
    inpainter = LamaInpainter(str(scripted(ShapeProbe(), tmp_path / "probe.pt")))
    loads_before = LamaInpainter.loads
    assert not inpainter.loaded  # lazy: nothing loaded at construction
    rng = np.random.default_rng(1)
    # (height, width) -> padded size the model must see
    for (height, width), (ph, pw) in {
        (37, 53): (40, 56),
        (16, 24): (16, 24),
        (5, 9): (8, 16),
    }.items():
        image = flat_image(height, width)
        # texture in channels 0-1 only: channel 2 stays 200 so its mean over the kept pixels is known
        image[:, : width // 3, :2] = rng.integers(0, 256, (height, width // 3, 2), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[height // 2 :, width // 2 :] = 255
        out = inpainter(image, mask)
        assert out.dtype == np.uint8 and out.shape == (height, width, 3)
        np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
        hole = out[mask > 0]
        np.testing.assert_array_equal(hole[:, 0], ph)
        np.testing.assert_array_equal(hole[:, 1], pw)
        assert np.all(hole[:, 2] == FLAT[2])  # channel 2 is 200 everywhere, padding included
    assert LamaInpainter.loads == loads_before + 1  # one load for three images
    assert inpainter.calls == 3


def test_lama_clips_output_and_skips_empty_masks(tmp_path):
    inpainter = LamaInpainter(str(scripted(OutOfRange(), tmp_path / "range.pt")))
    image = flat_image(10, 10)
    assert np.array_equal(inpainter(image, np.zeros((10, 10), bool)), image)
    assert inpainter.calls == 0 and not inpainter.loaded  # an empty mask never touches the model
    mask = np.zeros((10, 10), bool)
    mask[2:4, 3:7] = True
    out = inpainter(image, mask)
    np.testing.assert_array_equal(
        out[mask], np.tile([255, 0, 128], (8, 1))
    )  # 0.5 * 255 = 127.5 -> 128
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_lama_pickles_without_its_model(tmp_path):
    inpainter = LamaInpainter(str(scripted(ShapeProbe(), tmp_path / "probe.pt")))
    image, mask = flat_image(8, 8), np.eye(8, dtype=bool)
    expected = inpainter(image, mask)
    copy = pickle.loads(pickle.dumps(inpainter))
    assert inpainter.loaded and not copy.loaded
    np.testing.assert_array_equal(copy(image, mask), expected)


def test_missing_checkpoints_name_path_and_config_key(tmp_path):
    missing = tmp_path / "nowhere" / "big-lama.pt"
    with pytest.raises(FileNotFoundError, match="inpaint.checkpoint") as err:
        LamaInpainter(str(missing))
    assert str(missing) in str(err.value)
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError, match="mask.checkpoint") as err:
        SamMasker(str(missing))
    assert str(missing) in str(err.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="model_type"):
        SamMasker(str(tmp_path / "empty.pth"), model_type="vit_z")


# ---------------------------------------------------------------- SamMasker


def side_sensitive_sam(seed: int = 0) -> dict:
    """A random SAM vit_b whose mask decoder is rewired so the answer is known in advance.

    A box prompt whose corners lie in the left half of the image gets an EMPTY mask (so the
    masker must fall back to the rectangle); one in the right half gets the WHOLE image.
    How: the box-corner positional encoding keeps one feature, sin(pi/2 * x) with x in [-1, 1];
    the first self-attention averages the tokens (zero q/k, identity v/out), every later
    attention and MLP adds zero, and mask token 0's hypernetwork outputs that feature minus a
    constant one, times a positive constant upscaled embedding: the mask logit everywhere has
    the sign of sin(x1) + sin(x2) over the two box corners.
    """
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    state = sam_model_registry["vit_b"](checkpoint=None).state_dict()
    eye, dec = torch.eye(256), "mask_decoder."

    def put(key: str, value) -> None:
        state[key] = torch.as_tensor(value, dtype=torch.float32).expand_as(state[key]).clone()

    gauss = torch.zeros(2, 128)
    gauss[0, 0] = 0.25
    put("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", gauss)
    for key in (
        "prompt_encoder.point_embeddings.2.weight",
        "prompt_encoder.point_embeddings.3.weight",
        dec + "iou_token.weight",
        dec + "mask_tokens.weight",
    ):
        put(key, 0.0)
    first = dec + "transformer.layers.0.self_attn."
    for proj, weight in (("q_proj", 0.0), ("k_proj", 0.0), ("v_proj", eye), ("out_proj", eye)):
        put(first + proj + ".weight", weight)
        put(first + proj + ".bias", 0.0)
    for key in list(state):
        silenced = (
            key.startswith(dec + "transformer.")
            and not key.startswith(first)
            and ("out_proj." in key or "mlp.lin2." in key)
        )
        if silenced:
            put(key, 0.0)
    hyper = dec + "output_hypernetworks_mlps.0.layers."
    put(hyper + "0.weight", eye)
    put(hyper + "0.bias", 100.0)  # keeps the ReLUs open: LayerNorm'd features are within +-16
    put(hyper + "1.weight", eye)
    put(hyper + "1.bias", 0.0)  # the features stay shifted by +100 and the ReLU open
    last = torch.zeros(32, 256)
    last[:, 0], last[:, 1] = 1.0, -1.0  # feature 0 (the sine) minus feature 1 (constant sin 0)
    put(hyper + "2.weight", last)
    put(hyper + "2.bias", 0.0)
    put(dec + "output_upscaling.3.weight", 0.0)
    put(dec + "output_upscaling.3.bias", 1.0)  # GELU(1) > 0 everywhere
    return state


@pytest.mark.slow
def test_sam_masker_uses_sam_masks_falls_back_on_empty_ones_and_embeds_once(tmp_path):
    checkpoint = tmp_path / "sam_vit_b_forged.pth"
    torch.save(side_sensitive_sam(), checkpoint)
    loads_before = SamMasker.loads
    masker = SamMasker(str(checkpoint), model_type="vit_b", dilation=5)
    assert not masker.loaded  # lazy: construction only checks the file

    image = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    left, right = (2.0, 4.0, 12.0, 20.5), (26.0, 6.0, 38.0, 25.0)
    left_rect = np.zeros((32, 40), bool)
    left_rect[4:21, 2:12] = True

    # SAM's own masks: empty for the left box, the whole image for the right one.
    raw = masker.sam_masks(image, [left, right])
    assert raw.shape == (2, 32, 40) and raw.dtype == bool
    assert not raw[0].any() and raw[1].all()

    np.testing.assert_array_equal(masker.object_mask(image, left), left_rect)
    assert masker.fallbacks == 1
    assert masker.object_mask(image, right).all()
    assert masker.fallbacks == 1

    mask = masker(image.copy(), [left])  # same pixels, another array: the embedding is reused
    expected = np.zeros((32, 40), np.uint8)
    expected[2:23, 0:14] = 255  # the rectangle, dilated by 5x5 (2 px each side, cut at x = 0)
    assert mask.dtype == np.uint8 and mask.shape == (32, 40)
    np.testing.assert_array_equal(mask, expected)
    assert masker.fallbacks == 2

    np.testing.assert_array_equal(masker(image, [left, right]), np.full((32, 40), 255, np.uint8))
    assert masker.fallbacks == 3  # every box is either a fallback or a non-empty SAM mask

    np.testing.assert_array_equal(masker(image, []), np.zeros((32, 40), np.uint8))
    assert SamMasker.loads == loads_before + 1
    assert masker.embeddings == 1
    assert masker.calls == 5  # prompt batches; the box-less call ran nothing

    payload = pickle.dumps(masker)
    assert len(payload) < 10_000 and not pickle.loads(payload).loaded


# ---------------------------------------------------------------- Hydra configs


def make(group: str, option: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+{group}={option}", *overrides])
    return instantiate(cfg[group])


def test_configs_instantiate_each_component(tmp_path):
    box = make("mask", "box")
    assert isinstance(box, BoxMasker) and box.dilation == 15
    opencv = make("inpaint", "opencv")
    assert isinstance(opencv, OpenCVInpainter) and (opencv.radius, opencv.method) == (3, "telea")

    # Construction checks the file exists but loads nothing, so any file will do here.
    dummy = tmp_path / "weights.bin"
    dummy.write_bytes(b"")
    sam_loads, lama_loads = SamMasker.loads, LamaInpainter.loads
    sam = make("mask", "sam", f'mask.checkpoint="{dummy}"')
    assert isinstance(sam, SamMasker) and not sam.loaded
    assert (sam.checkpoint, sam.model_type, sam.dilation, sam.device) == (dummy, "vit_b", 15, "cpu")
    lama = make("inpaint", "lama", f'inpaint.checkpoint="{dummy}"')
    assert isinstance(lama, LamaInpainter) and not lama.loaded
    assert (lama.checkpoint, lama.device) == (dummy, "cpu")
    assert (SamMasker.loads, LamaInpainter.loads) == (sam_loads, lama_loads)


def test_configs_require_the_checkpoint():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        make("inpaint", "lama")
