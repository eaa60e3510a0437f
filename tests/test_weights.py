"""The paper's generation (SAM + LaMa) in the paper experiments, and the weight files' contracts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONF
from hydra import compose, initialize_config_dir
from test_build import TINY_LAMA

from hsi.generate.inpaint.inpainters import LamaInpainter
from hsi.generate.inpaint.masks import SamMasker
from hsi.generate.inpaint.weights import (
    LAMA_FILE,
    SAM_FILES,
    check_checkpoints,
    is_torchscript,
)
from hsi.train import checks

PAPER = sorted(p.stem for p in (CONF / "experiment").glob("paper_*.yaml"))


def train_cfg(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", list(overrides))


@pytest.mark.parametrize("experiment", PAPER)
def test_paper_experiments_generate_with_sam_and_lama(experiment):
    generate = train_cfg(f"experiment={experiment}").data.generate
    assert generate.mask._target_.endswith("SamMasker") and generate.mask.model_type == "vit_h"
    assert generate.mask.dilation == 15  # paper 000, App. C
    assert generate.inpaint._target_.endswith("LamaInpainter")
    fast = train_cfg(f"experiment={experiment}", "generation=fast").data.generate
    assert fast.mask._target_.endswith("BoxMasker") and fast.mask.dilation == 15
    assert fast.inpaint._target_.endswith("OpenCVInpainter")
    assert fast.source._target_ == generate.source._target_  # only the generation differs


def test_hsi_train_names_the_absent_weights_before_any_data(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "check_model", lambda model: None)  # no ResNet-50 weights here
    cfg = train_cfg(
        "experiment=paper_erm", f"out={tmp_path / 'run'}", f"data.generate.source.root={tmp_path}"
    )
    with pytest.raises(ValueError, match="data.generate.mask.checkpoint is not set") as error:
        checks.check_inputs(cfg)
    assert SAM_FILES["vit_h"] in str(error.value) and "generation=fast" in str(error.value)
    absent = tmp_path / "weights" / "sam_vit_h_4b8939.pth"
    cfg = train_cfg(
        "experiment=paper_erm",
        f"out={tmp_path / 'run'}",
        f"data.generate.mask.checkpoint={absent}",
    )
    with pytest.raises(FileNotFoundError, match="data.generate.mask.checkpoint=") as error:
        checks.check_inputs(cfg)
    assert str(absent) in str(error.value) and SAM_FILES["vit_h"] in str(error.value)


# ---- SAM: a released-style state dict ------------------------------------------------------------
@pytest.fixture(scope="module")
def sam_vit_b(tmp_path_factory) -> Path:
    """A randomly initialised SAM ViT-B saved as its releases are: torch.save(state_dict)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_random_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def sam_node(path, model_type="vit_b", **extra):
    return {
        "mask": {
            "_target_": "hsi.generate.inpaint.masks.SamMasker",
            "checkpoint": str(path),
            "model_type": model_type,
            "device": "cpu",
            **extra,
        },
        "inpaint": {"_target_": "hsi.generate.inpaint.inpainters.OpenCVInpainter"},
    }


@pytest.mark.slow
def test_sam_state_dict_contract(sam_vit_b, tmp_path):
    check_checkpoints(sam_node(sam_vit_b))  # accepted as vit_b
    masker = SamMasker(str(sam_vit_b), model_type="vit_b")
    assert masker._load() is not None  # strict load_state_dict into the registry's model
    with pytest.raises(ValueError, match="model_type=vit_b") as error:
        check_checkpoints(sam_node(sam_vit_b, "vit_h"), prefix="data.generate.")
    assert "data.generate.mask.checkpoint" in str(error.value) and SAM_FILES["vit_h"] in str(
        error.value
    )
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a Segment-Anything state dict"):
        check_checkpoints(sam_node(other))


def test_sam_contract_reads_the_encoder_width_only(tmp_path):
    """A state dict with just the patch embedding of ViT-L is told apart from ViT-B and ViT-H."""
    path = tmp_path / "sam_vit_l_like.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, path)
    check_checkpoints(sam_node(path, "vit_l"))
    with pytest.raises(ValueError, match="set mask.model_type=vit_l"):
        check_checkpoints(sam_node(path, "vit_b"))


def test_sam_on_cuda_without_cuda_is_named(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = tmp_path / "sam.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, path)
    with pytest.raises(ValueError, match="data.generate.mask.device=cuda"):
        check_checkpoints(sam_node(path, device="cuda"), prefix="data.generate.")


# ---- LaMa: a TorchScript module -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lama(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lama")
    (folder / "tiny_lama.py").write_text(TINY_LAMA)  # TorchScript compiles from a real file
    spec = importlib.util.spec_from_file_location("tiny_lama", folder / "tiny_lama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = folder / LAMA_FILE
    torch.jit.script(module.GreyFill()).save(str(path))
    return path


def lama_node(path):
    return {
        "mask": {"_target_": "hsi.generate.inpaint.masks.BoxMasker"},
        "inpaint": {
            "_target_": "hsi.generate.inpaint.inpainters.LamaInpainter",
            "checkpoint": str(path),
            "device": "cpu",
        },
    }


def test_lama_torchscript_contract(tiny_lama, tmp_path):
    assert is_torchscript(tiny_lama)
    check_checkpoints(lama_node(tiny_lama))
    image = np.full((20, 28, 3), 200, np.uint8)
    mask = np.zeros((20, 28), np.uint8)
    mask[5:9, 3:11] = 255
    out = LamaInpainter(str(tiny_lama))(image, mask)  # padded to 24 x 32 and cropped back
    assert (out[5:9, 3:11] == 128).all() and (out[mask == 0] == 200).all()
    state = tmp_path / "best.ckpt"  # a state dict / Lightning checkpoint, not TorchScript
    torch.save({"state_dict": {"generator.weight": torch.zeros(2)}}, state)
    assert not is_torchscript(state)
    with pytest.raises(ValueError, match="inpaint.checkpoint=.*not a TorchScript file") as error:
        check_checkpoints(lama_node(state))
    assert LAMA_FILE in str(error.value)
    text = tmp_path / "notes.pt"
    text.write_text("no weights here")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        check_checkpoints(lama_node(text))
