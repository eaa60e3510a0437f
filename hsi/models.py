"""Image classifiers through timm, with weights that never come from the network.

Weights come from one of three places, checked before anything is built so that a missing
file is reported at once:

- ``weights``: a local timm weight file (``.safetensors``/``.pth``), loaded by timm itself via
  ``pretrained_cfg_overlay=dict(file=...)``;
- ``pretrained=True``: the timm weights of ``name``, only if they are already in the Hugging Face
  (or torch hub) cache on this machine;
- ``checkpoint``: a run of this project (a Lightning ``.ckpt`` whose network sits under the
  ``model.`` prefix, or a plain state dict).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "model."  # the training modules hold the timm network as `self.model`


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine."""


class UnloadableFileError(ValueError):
    """A checkpoint or weight file that cannot be loaded safely (or at all)."""


def load_torch_file(path: str | os.PathLike, key: str, mmap: bool = False) -> object:
    """``torch.load`` of a user-given file with ``weights_only=True``: loading runs no code.

    Tensors, plain containers and numbers load; anything else (a pickled object whose
    ``__reduce__`` would run code, garbage bytes, a truncated file) raises
    :class:`UnloadableFileError` naming ``key`` and the file, before anything of it runs.
    hsi's own checkpoints hold nothing else (hyper-parameters are plain dicts).
    """
    path = _existing(path, key)
    try:
        return torch.load(
            path,
            map_location="cpu",
            weights_only=True,
            mmap=mmap and zipfile.is_zipfile(path),
        )
    except Exception as err:  # noqa: BLE001 - every failure becomes one message naming the file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnloadableFileError(
            f"{key}={path}: cannot be loaded as weights only ({type(err).__name__}: {reason[:200]}); "
            f"it is not a checkpoint written by hsi-train or a tensor state dict, or it is "
            f"truncated. Nothing in it was run. Point {key} at another file"
        ) from None


def checkpoint_record(path: str | os.PathLike, key: str = "checkpoint") -> dict:
    """``{checkpoint, epoch, global_step}`` of a Lightning checkpoint (epoch counted from 0)."""
    raw = load_torch_file(path, key, mmap=True)
    raw = raw if isinstance(raw, dict) else {}
    epoch, step = raw.get("epoch"), raw.get("global_step")
    return {
        "checkpoint": str(Path(path).resolve()),
        "epoch": int(epoch) if epoch is not None else None,
        "global_step": int(step) if step is not None else None,
    }


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    checkpoint: str | None = None,
    require_head: bool = False,
    **timm_kwargs,
) -> nn.Module:
    """Build timm model ``name`` with a ``num_classes``-way head.

    ``checkpoint`` (an hsi run) takes precedence over ``weights`` (a local timm weight file),
    which takes precedence over ``pretrained`` (the offline cache). A head whose class count
    differs from the source's is freshly initialised; the backbone is always loaded.
    Raises ``FileNotFoundError`` naming the missing path and its config key.
    ``require_head=True`` (evaluating a model as it is) refuses a head of another class count
    instead of replacing it: a fresh head would make the accuracy meaningless.
    """
    if name.startswith("hf-hub:"):
        raise ValueError(
            f"model.name={name!r} would fetch its config from the Hugging Face hub; use the timm "
            f"name (e.g. 'resnet50.tv_in1k') and model.weights=/path/to/file instead"
        )
    if checkpoint is not None:
        path = _existing(checkpoint, "model.checkpoint")
        if weights is not None or pretrained:
            log.info(
                "model.checkpoint=%s given: model.weights / model.pretrained are not used", path
            )
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
        load_checkpoint(model, path, require_head=require_head)
        return model
    if weights is not None:
        path = _existing(weights, "model.weights")
    elif pretrained:
        path = cached_weights(name)
    else:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    overlay = {"file": str(path)}
    file_classes = _file_num_classes(path, name)
    if require_head and file_classes != num_classes:
        raise HeadMismatchError(path, file_classes, num_classes)
    if file_classes is not None:
        # timm keeps the file's head only when num_classes equals the cfg's class count; tell it
        # the file's real count so a 5-class file loads its head into a 5-class model.
        overlay["num_classes"] = file_classes
    log.info("loading %s weights from %s", name, path)
    return timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        num_classes=num_classes,
        **timm_kwargs,
    )


def _existing(path: str | os.PathLike, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{key}={path}: no such file ({p.resolve()}); point {key} at an existing file "
            f"or set {key}=null"
        )
    return p


def cached_weights(name: str) -> Path:
    """Path of the pretrained weights of timm model ``name`` in the local caches, or raise.

    Looks only on disk (Hugging Face hub cache, then torch hub cache), so it never waits on a
    network, whatever ``HF_HUB_OFFLINE`` says.
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsUnavailableError(
            f"timm knows no pretrained weights for model.name={name!r}; supply a file with "
            f"model.weights=/path/to/file or set model.pretrained=false"
        )
    looked: list[str] = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filenames = (
            [cfg.hf_hub_filename]
            if cfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in filenames:
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
            looked.append(f"{HF_HUB_CACHE} ({repo_id}/{filename})")
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    hub_id = cfg.hf_hub_id or name
    raise WeightsUnavailableError(
        f"pretrained weights for {name!r} are not on this machine (looked in: {'; '.join(looked)}) "
        f"and are never downloaded here. Supply them with model.weights=/path/to/file "
        f"(a timm .safetensors/.pth), or pre-populate the Hugging Face cache on a machine with "
        f"network (`huggingface-cli download {hub_id}`, then copy the cache over and point HF_HOME "
        f"at it), or set model.pretrained=false"
    )


def _file_num_classes(path: Path, name: str) -> int | None:
    """Rows of the classifier weight in a timm weight file, or None when it cannot be told.

    A ``.pth`` file is loaded here with weights only, before timm reads it.
    """
    if path.suffix == ".safetensors":
        state = None
    else:
        # mmap (zip-format files only): the tensors are not read, so even a large file costs little
        state = load_torch_file(path, "model.weights", mmap=True)
    cfg = get_pretrained_cfg(name)
    classifiers = cfg.classifier if cfg is not None else None
    if not classifiers:
        return None
    key = (classifiers if isinstance(classifiers, str) else classifiers[0]) + ".weight"
    if state is None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(key).get_shape()[0] if key in f.keys() else None
    # the same wrappers timm's load_state_dict unpacks, in its order
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    weight = state.get(key) if isinstance(state, dict) else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def _classifier_name(model: nn.Module) -> str | None:
    head = model.get_classifier()
    return next((n for n, m in model.named_modules() if m is head), None)


def _network_state(raw: dict, model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The timm network's state dict out of a Lightning checkpoint or a plain state dict."""
    lightning = isinstance(raw.get("state_dict"), dict)
    state = raw["state_dict"] if lightning else raw
    inner = {
        k[len(CHECKPOINT_PREFIX) :]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)
    }
    own_keys = set(model.state_dict())
    if lightning or (inner and not own_keys & set(state)):
        if not inner:
            raise ValueError(
                f"model.checkpoint={path}: no '{CHECKPOINT_PREFIX}*' entries in its state_dict; "
                f"expected a checkpoint written by an hsi training run"
            )
        return inner
    return state


class HeadMismatchError(ValueError):
    """A model evaluated as it is has a head for another label space than the data's."""

    def __init__(self, path: Path, found: int | None, wanted: int):
        super().__init__(
            f"{path}: its classifier has {found if found is not None else 'an unknown number of'} "
            f"outputs but the data has {wanted} classes; evaluate it on data with the same label "
            f"space (e.g. every class of its source), or fine-tune it (method=erm) first"
        )


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, require_head: bool = False
) -> nn.Module:
    """Load an hsi checkpoint into ``model`` in place; re-initialise the head on a class mismatch."""
    path = _existing(path, "model.checkpoint")
    raw = load_torch_file(path, "model.checkpoint")
    if not isinstance(raw, dict):
        raise ValueError(f"model.checkpoint={path}: expected a dict, got {type(raw).__name__}")
    state = _network_state(raw, model, path)

    num_classes = model.num_classes
    head = _classifier_name(model)
    head_weight = state.get(f"{head}.weight") if head is not None else None
    ckpt_classes = int(head_weight.shape[0]) if head_weight is not None else 0
    if require_head and ckpt_classes != num_classes:
        raise HeadMismatchError(path, ckpt_classes or None, num_classes)
    if head is not None and ckpt_classes != num_classes:
        model.reset_classifier(ckpt_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"model.checkpoint={path} does not fit timm model "
            f"{model.pretrained_cfg.get('architecture', type(model).__name__)!r}: {err}. "
            f"Check that model.name matches the run that wrote the checkpoint"
        ) from err
    if head is not None and ckpt_classes != num_classes:
        model.reset_classifier(num_classes)
        log.info(
            "checkpoint %s: backbone loaded; its %d-class head replaced by a new %d-class head",
            path,
            ckpt_classes,
            num_classes,
        )
    else:
        log.info("checkpoint %s: backbone and %d-class head loaded", path, num_classes)
    return model


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(x, y, group_id)``, ``(x, y)`` or ``x`` -> ``(x, y or None, group_id or None)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        x, y, *rest = batch
        return x, y, (rest[0] if rest else None)
    raise ValueError(
        f"expected a batch (x, y, group_id), (x, y) or a tensor x; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else "")
    )


@contextmanager
def evaluating(model: nn.Module, device: str | torch.device = "cpu") -> Iterator[nn.Module]:
    """Put ``model`` in eval mode on ``device`` without gradients; restore mode and device after.

    Dropout off and batch-norm on running statistics: what JTT's error set and DFR's embeddings
    must see. The caller's model comes back exactly as it was handed over.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    old_device = param.device if param is not None else None
    model.to(device).eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        if old_device is not None:
            model.to(old_device)


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-logit features [N, num_features]: what the classifier sees (used by DFR)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def embedding_dim(model: nn.Module) -> int:
    """Width of :func:`embed`'s output."""
    return int(model.num_features)


def classifier(model: nn.Module) -> nn.Module:
    """The final linear layer (timm's ``get_classifier``)."""
    return model.get_classifier()


def model_input_config(model: nn.Module) -> dict:
    """timm's resolved data config of ``model``: ``input_size``, ``interpolation``, ``mean``,
    ``std``, ``crop_pct``, ``crop_mode``. Most paper models use the ImageNet mean/std; CLIP and
    CoAtNet tags have their own."""
    return resolve_data_config(model=model)
