"""`hsi-benchmark`: a trained model evaluated as it is -- clean accuracy on the source's val images
and accuracy on the 12 groups of Hard-Spurious-ImageNet (paper 000, §5.1, Tables 1/2/5/6/7).

    benchmark(cfg) -> results dict (also <run folder>/results.json, method "benchmark")

The subset-head protocol. A model whose head covers every class of the source (a 1000-way
ImageNet model) is evaluated on a dataset of fewer classes (v2: 10) by keeping only the logits
of the dataset's classes -- column ``source_label`` of each class in the recipe -- and predicting
the largest of those: the standard way of evaluating an ImageNet model on an ImageNet class
subset. A model whose head already has one output per dataset class (fine-tuned on it) is used as
it is; its clean accuracy is not computed (it has no head for the source's other classes).

HSI images are fed at the dataset's resolution with no resize; clean images are resized to that
resolution (the source data module's eval transform). Evaluation runs under
``torch.inference_mode`` with channels-last inputs, bfloat16 autocast on a GPU, and as many loader
workers as the machine has cores unless ``workers`` says otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hsi.data.modules import SourceDataModule
from hsi.metrics import GroupAccuracy
from hsi.models import HeadMismatchError, model_input_config
from hsi.progress import Progress
from hsi.results import RESULTS_FILE, read_results, write_results

log = logging.getLogger(__name__)

METHOD = "benchmark"
RUN_CHECKPOINTS = ("best.ckpt", "last.ckpt")


# --------------------------------------------------------------------------- the model
def model_config(model_cfg: DictConfig | Mapping) -> dict[str, Any]:
    """The model node to instantiate; a run folder as ``checkpoint`` brings its own model config.

    ``model.checkpoint=<hsi-train run folder>``: the run's own ``model`` config (name and timm
    keywords, from its results.json or .hydra/config.yaml) with ``checkpoint`` set to the run's
    checkpoints/best.ckpt (else last.ckpt), so ``model=`` need not be restated.
    """
    from hsi.train import resolve_checkpoint

    node = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    given = node.get("checkpoint")
    if not given:
        return node
    folder = Path(str(given)).expanduser()
    if folder.is_dir():
        own = _run_model_config(folder)
        if own is not None:
            if own.get("name") != node.get("name"):
                log.info(
                    "model.checkpoint=%s: its own model %s is used (not %s)",
                    folder,
                    own.get("name"),
                    node.get("name"),
                )
            node = {**own, "pretrained": False, "weights": None}
    node["checkpoint"] = str(resolve_checkpoint(given, "model.checkpoint", RUN_CHECKPOINTS))
    return node


def _run_model_config(folder: Path) -> dict[str, Any] | None:
    if (folder / RESULTS_FILE).is_file():
        model = (read_results(folder).get("config") or {}).get("model")
        if model:
            return dict(model)
    hydra_config = folder / ".hydra" / "config.yaml"
    if hydra_config.is_file():
        model = OmegaConf.to_container(OmegaConf.load(hydra_config), resolve=False).get("model")
        if model:
            return dict(model)
    return None


def load_model(
    node: Mapping[str, Any], source_classes: int | None, dataset_classes: int
) -> tuple[nn.Module, bool]:
    """The network and whether its head is the source's (True) or the dataset's own (False)."""
    factory = instantiate(dict(node))
    if source_classes is not None:
        try:
            return factory(num_classes=source_classes, require_head=True), True
        except HeadMismatchError as err:
            if source_classes == dataset_classes:
                raise
            log.info(
                "head is not the source's (%s); trying the dataset's %d classes",
                err,
                dataset_classes,
            )
    return factory(num_classes=dataset_classes, require_head=True), False


# --------------------------------------------------------------------------- evaluation
def subset_columns(recipe) -> list[int]:
    """For dataset label k (0..K-1), the source label of its class: the logits to keep."""
    pairs = recipe[["label", "source_label"]].drop_duplicates().sort_values("label")
    if pairs["label"].tolist() != list(range(len(pairs))) or pairs["label"].duplicated().any():
        raise ValueError("recipe: each label 0..K-1 needs exactly one source_label; rebuild it")
    return [int(s) for s in pairs["source_label"]]


def restrict_logits(logits: torch.Tensor, columns: Sequence[int] | None) -> torch.Tensor:
    """Logits of the subset's classes, in dataset label order (None: all of them)."""
    return logits if columns is None else logits[:, list(columns)]


@torch.inference_mode()
def evaluate(
    net: nn.Module,
    loader: Iterable,
    device: torch.device,
    groups=None,
    columns: Sequence[int] | None = None,
    desc: str = "evaluate",
    progress: bool = True,
) -> dict[str, float]:
    """hsi.metrics' accuracies of ``net`` over ``loader``'s ``(x, label, group_id)`` batches."""
    net.eval()
    metric = GroupAccuracy(groups=groups)
    index = torch.tensor(list(columns), device=device) if columns is not None else None
    autocast = device.type == "cuda"
    total = len(loader) if hasattr(loader, "__len__") else None
    with Progress(total, desc, unit="batch", enabled=progress) as bar:
        for x, y, g in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = net(x)
            if index is not None:
                logits = logits.index_select(1, index)
            metric.update(logits.argmax(dim=1).cpu(), y, g)
            bar.update(1)
    return {key: float(value) for key, value in metric.compute().items()}


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- the job
def _choice(group: str, default: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group) or default)
    return default


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on ``cfg.data`` (and the source's val images); write results.json.

    A run folder that already holds a complete results.json is not evaluated again.
    """
    started = time.time()
    out = Path(str(cfg.out))
    if (out / RESULTS_FILE).is_file():
        done = read_results(out)
        if done.get("status") == "complete":
            log.info("%s already holds a complete benchmark: not evaluated again", out)
            return done
    node = model_config(cfg.model)
    device = pick_device(str(cfg.device))
    workers = default_workers() if cfg.workers is None else int(cfg.workers)
    if not str(cfg.data.get("_target_", "")).endswith("HSIDataModule"):
        raise ValueError("hsi-benchmark needs data=hsi, hsi_v2 or hsi_sam (a dataset with groups)")
    # The source is indexed once (on ImageNet that takes a while): the same module serves the
    # clean images, its loader settings filled in below once the model's are known.
    source = SourceDataModule(
        cfg.data.generate.source, resolution=int(cfg.data.generate.dataset.resolution)
    )
    source.setup("test")
    hsi_dm = instantiate(cfg.data, num_workers=0)
    hsi_dm.prepare_data()
    hsi_dm.setup("test")
    net, source_head = load_model(node, source.num_classes, hsi_dm.num_classes)
    net = net.to(device).to(memory_format=torch.channels_last)
    input_cfg = model_input_config(net)
    loader_keys = dict(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        eval_batch_size=int(cfg.batch_size),
        mean=input_cfg["mean"],
        std=input_cfg["std"],
        seed=int(cfg.seed),
    )
    hsi_dm = instantiate(cfg.data, **loader_keys)
    hsi_dm.setup("test")
    columns = subset_columns(hsi_dm.recipe) if source_head else None
    progress = bool(cfg.progress)
    results: dict[str, Any] = {}
    for split in ("val", "test"):
        loader = hsi_dm.test_dataloader() if split == "test" else hsi_dm.val_dataloader()
        results[split] = evaluate(
            net, loader, device, hsi_dm.groups, columns, f"{split} groups", progress
        )
    if source_head:
        source.num_workers, source.pin_memory = workers, device.type == "cuda"
        source.eval_batch_size, source.seed = int(cfg.batch_size), int(cfg.seed)
        source.mean, source.std = tuple(input_cfg["mean"]), tuple(input_cfg["std"])
        clean_loader = source.test_dataloader()
        clean = evaluate(net, clean_loader, device, desc="clean", progress=progress)
        results["clean"] = {"acc": clean["acc"], "samples": len(clean_loader.dataset)}
    else:
        results["clean"] = {
            "acc": None,
            "samples": 0,
            "reason": "the head has the dataset's classes, not the source's",
        }
    results.update(
        {
            "status": "complete",
            "method": METHOD,
            "algorithm": METHOD,
            "model": str(cfg.label or node["name"]),
            "model_name": str(node["name"]),
            "checkpoint": str(Path(node["checkpoint"]).resolve())
            if node.get("checkpoint")
            else None,
            "data": _choice("data", "hsi"),
            "num_classes": hsi_dm.num_classes,
            "head_classes": source.num_classes if source_head else hsi_dm.num_classes,
            "protocol": "subset"
            if source_head and columns != list(range(len(columns)))
            else "full",
            "groups": [g.name for g in hsi_dm.groups],
            "seed": int(cfg.seed),
            "epochs": 0,
            "run_dir": str(out.resolve()),
            "device": device.type,
            "workers": workers,
            "seconds": round(time.time() - started, 3),
            "config": {**OmegaConf.to_container(cfg, resolve=True), "model": node},
        }
    )
    write_results(out, results)
    return results


def summary_line(results: Mapping[str, Any]) -> str:
    clean = results["clean"].get("acc")
    shown = "n/a" if clean is None else f"{clean:.4f}"
    return (
        f"{results['model']} on {results['data']}: clean {shown} | test acc "
        f"{results['test']['acc']:.4f} worst-group {results['test']['worst_group_acc']:.4f} "
        f"-> {results['run_dir']}"
    )
