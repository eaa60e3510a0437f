"""The public weight files the SAM masker and the LaMa inpainter accept, checked before any image.

    mask=sam      Segment-Anything's released state dicts (github.com/facebookresearch/segment-anything):
                  sam_vit_h_4b8939.pth (model_type=vit_h, what Inpaint-Anything and so paper 000,
                  App. C use), sam_vit_l_0b3195.pth (vit_l), sam_vit_b_01ec64.pth (vit_b); any
                  torch.save'd state dict of `sam_model_registry[model_type]` loads the same way.
    inpaint=lama  a TorchScript LaMa, `model(image [1,3,H,W] in [0,1], mask [1,1,H,W] in {0,1})
                  -> [1,3,H,W]`: big-lama.pt as released for lama-cleaner / IOPaint. The LaMa
                  repository's own big-lama/models/best.ckpt (a Lightning checkpoint) is not one.

`check_checkpoints` runs before the source is read (hsi-generate build, and hsi-train for its
`data.generate`): a checkpoint key left unset, a missing file, a SAM file of another model size
or a LaMa file that is not TorchScript is an error naming the key and the file to give.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SAM_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
SAM_WIDTHS = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}  # image encoder embedding width
SAM_WIDTH_KEY = "image_encoder.patch_embed.proj.weight"  # [width, 3, 16, 16]
LAMA_FILE = "big-lama.pt"
FAST = "mask=box inpaint=opencv (generation=fast in hsi-train)"


def _kind(node: Mapping) -> str | None:
    target = str(node.get("_target_", ""))
    if target.endswith("SamMasker"):
        return "sam"
    if target.endswith("LamaInpainter"):
        return "lama"
    return None


def expected_file(node: Mapping) -> str:
    """The released file a SAM (of the node's model_type) or LaMa node expects."""
    if _kind(node) == "sam":
        return SAM_FILES.get(str(node.get("model_type", "vit_b")), "sam_<model_type>_<hash>.pth")
    return LAMA_FILE


def sam_width(path: Path) -> int | None:
    """The image-encoder width stored in a SAM state dict (None: not a SAM state dict)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # an old (non-zip) serialisation cannot be mapped: read it whole
        state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state.get(SAM_WIDTH_KEY) if isinstance(state, Mapping) else None
    return None if weight is None else int(weight.shape[0])


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with compiled code (`<name>/code/...`); torch.save'd
    state dicts and Lightning checkpoints are zips without it."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def check_sam(path: Path, model_type: str, key: str) -> None:
    try:
        width = sam_width(path)
    except Exception as e:  # noqa: BLE001 - one message naming the key and the file
        raise ValueError(
            f"{key}={path}: not a readable PyTorch file ({type(e).__name__}: {e}); give a "
            f"Segment-Anything checkpoint such as {SAM_FILES.get(model_type, SAM_FILES['vit_b'])}"
        ) from None
    if width is None:
        raise ValueError(
            f"{key}={path}: not a Segment-Anything state dict (no {SAM_WIDTH_KEY}); give "
            f"{SAM_FILES.get(model_type, SAM_FILES['vit_b'])} or another released SAM .pth"
        )
    if SAM_WIDTHS.get(model_type) != width:
        found = next((t for t, w in SAM_WIDTHS.items() if w == width), None)
        fix = f"set {key.rsplit('.', 1)[0]}.model_type={found}" if found else "give another file"
        raise ValueError(
            f"{key}={path} holds SAM weights of width {width} ({found or 'unknown model'}), but "
            f"model_type={model_type} needs {SAM_FILES.get(model_type)}; {fix}"
        )


def check_lama(path: Path, key: str) -> None:
    if not is_torchscript(path):
        raise ValueError(
            f"{key}={path}: not a TorchScript file; give {LAMA_FILE} (LaMa exported with "
            "torch.jit, as released for lama-cleaner / IOPaint), not LaMa's training checkpoint "
            "(best.ckpt) or a state dict"
        )


def _checkpoint(node: Mapping) -> object:
    """The node's checkpoint, None when unset (null, or Hydra's `???`)."""
    # `"checkpoint" in node` is False for a `???` value: ask OmegaConf directly
    if isinstance(node, DictConfig) and OmegaConf.is_missing(node, "checkpoint"):
        return None
    value = node.get("checkpoint")
    return None if value in (None, "???") else value


def check_checkpoints(generate: DictConfig | Mapping, prefix: str = "") -> None:
    """Every weight file the `mask` and `inpaint` nodes of a generation config need is there
    and is of the kind its loader accepts; errors name `<prefix><group>.<key>` and the file."""
    for group in ("mask", "inpaint"):
        node = generate[group]
        kind = _kind(node)
        if kind is None:
            continue
        key = f"{prefix}{group}.checkpoint"
        checkpoint = _checkpoint(node)
        if checkpoint is None:
            raise ValueError(
                f"{key} is not set: {group}={kind} needs its weights, e.g. "
                f"{key}=/weights/{expected_file(node)}; or build without weights: {FAST}"
            )
        path = Path(str(checkpoint)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{key}={path}: no such file; expected {expected_file(node)} there "
                f"(docs/generation.md), or build without weights: {FAST}"
            )
        if kind == "sam":
            check_sam(path, str(node.get("model_type", "vit_b")), key)
        else:
            check_lama(path, key)
        device = str(node.get("device", "cpu"))
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    f"{prefix}{group}.device={device}: no CUDA device here; set "
                    f"{prefix}{group}.device=cpu (slow) or run on a GPU node"
                )


__all__ = ["LAMA_FILE", "SAM_FILES", "check_checkpoints", "expected_file", "is_torchscript"]
