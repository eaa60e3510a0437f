"""Grad-CAM of models on the 12 groups (paper 000, Figs. 1, 8, 9) and how much of it falls on the
pasted object, with pytorch-grad-cam.

    gradcam_grid.png      rows: the 12 groups of each chosen test image; columns: the input, then
                          one CAM per model, titled with the predicted class -- green when right,
                          red when wrong (the figures' convention)
    cam_in_box.csv        per model and sample: the share of CAM energy inside the pasted object's
                          box (`cam_in_box`) and the box's share of the image (`box_fraction`,
                          what a CAM spread evenly would give)
    cam_in_box_groups.csv the mean of both per model and group

Target layers, chosen per architecture (``gradcam.target_layer`` names another by its module
path, e.g. ``layer3`` or ``blocks.-2.norm1``): ResNets their last ``layer4`` block, ConvNeXt /
CoAtNet / other staged timm models their last stage, ViT-style models (DeiT, CLIP ViT) the
``norm1`` of their last block -- its tokens are reshaped to a map after dropping the prefix
(class, register) tokens --, anything else its last Conv2d.

A head on every source class is restricted to the dataset's classes first (the subset-head
protocol of hsi.benchmark), so the explained class and the prediction are among the dataset's.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from hsi.generate.compose import fit_size
from hsi.groups import placement_xy
from hsi.io import atomic_write_bytes, atomic_write_csv, item_rng

GRID_FILE = "gradcam_grid.png"
SHARES_FILE = "cam_in_box.csv"
GROUP_SHARES_FILE = "cam_in_box_groups.csv"


# --------------------------------------------------------------------------- layers
def module_at(net: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; integer parts index sequences (negative ones too)."""
    found = net
    for part in path.split("."):
        try:
            found = found[int(part)] if part.lstrip("-").isdigit() else getattr(found, part)
        except (AttributeError, IndexError, TypeError) as err:
            raise ValueError(
                f"gradcam.target_layer={path!r}: {type(net).__name__} has no {part!r} there "
                f"({err}); name a module of the network, e.g. one of "
                f"{[n for n, _ in net.named_children()]}"
            ) from None
    return found


def is_token_model(net: nn.Module) -> bool:
    """A ViT-style network: patch embedding + transformer blocks working on token sequences."""
    return hasattr(net, "patch_embed") and hasattr(net, "blocks") and not hasattr(net, "stages")


def default_target_layer(net: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs, per architecture (see the module doc)."""
    if hasattr(net, "layer4"):
        return net.layer4[-1]
    if is_token_model(net):
        return net.blocks[-1].norm1
    if hasattr(net, "stages"):
        return net.stages[-1]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"{type(net).__name__}: no known target layer and no Conv2d; set gradcam.target_layer"
        )
    return convs[-1]


def token_reshape(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For ViT-style models: (B, prefix + h*w, C) tokens -> (B, C, h, w) maps; else None."""
    if not is_token_model(net):
        return None
    prefix = int(getattr(net, "num_prefix_tokens", 1))
    grid = getattr(net.patch_embed, "grid_size", None)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        h, w = grid if grid is not None else (int(patches.shape[1] ** 0.5),) * 2
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


class SubsetHead(nn.Module):
    """A network whose logits are restricted to `columns` (dataset label order)."""

    def __init__(self, net: nn.Module, columns: Sequence[int] | None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("columns", torch.tensor(list(columns or []), dtype=torch.long))
        self.restrict = columns is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits.index_select(1, self.columns) if self.restrict else logits


# --------------------------------------------------------------------------- maps and shares
def cam_maps(
    net: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int],
    target_layer: str | None = None,
    method: str = "gradcam",
    columns: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(CAMs B x H x W in [0, 1], predicted dataset labels B) of `net` on the batch `x`.

    `targets` are dataset labels (after the subset head, if `columns`).
    """
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "hirescam": HiResCAM,
        "eigencam": EigenCAM,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
    }
    if method not in methods:
        raise ValueError(f"gradcam.method={method!r}: expected one of {sorted(methods)}")
    net.eval()
    layer = module_at(net, target_layer) if target_layer else default_target_layer(net)
    model = SubsetHead(net, columns).to(next(net.parameters()).device)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).cpu().numpy()
    with methods[method](model, [layer], reshape_transform=token_reshape(net)) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float64), predicted


def paste_box(row, core_shape: tuple[int, int], resolution: int, resize_mode: str = "squash"):
    """(x0, y0, x1, y1), end exclusive, of the object hsi.generate.compose pastes for `row`."""
    size, position = int(row["size"]), str(row["position"])
    if resize_mode == "squash":
        w, h = size, size
    else:
        w, h = fit_size(core_shape[1], core_shape[0], size)
    x, y = placement_xy(position, size, resolution)
    x, y = x + (size - w) // 2, y + (size - h) // 2
    return x, y, x + w, y + h


def box_share(cam: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of the map's energy (sum) inside the box; NaN for an all-zero map."""
    total = float(cam.sum())
    if total <= 0:
        return float("nan")
    x0, y0, x1, y1 = box
    return float(cam[y0:y1, x0:x1].sum()) / total


# --------------------------------------------------------------------------- the grid
def plot_grid(
    images: Sequence[np.ndarray],
    row_labels: Sequence[str],
    cams: Mapping[str, np.ndarray],
    predictions: Mapping[str, Sequence[str]],
    correct: Mapping[str, Sequence[bool]],
    path: str | Path,
) -> Path:
    """Rows = samples, columns = input + one CAM overlay per model; titles green/red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    models = list(cams)
    rows, cols = len(images), 1 + len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows), squeeze=False)
    for i, image in enumerate(images):
        axes[i, 0].imshow(image)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
        for j, name in enumerate(models, start=1):
            rgb = image.astype(np.float32) / 255.0
            overlay = show_cam_on_image(rgb, cams[name][i], use_rgb=True)
            axes[i, j].imshow(overlay)
            axes[i, j].set_title(
                predictions[name][i], fontsize=7, color="green" if correct[name][i] else "red"
            )
        if i == 0:
            axes[0, 0].set_title("input", fontsize=8)
            for j, name in enumerate(models, start=1):
                axes[0, j].set_title(
                    f"{name}\n{predictions[name][0]}",
                    fontsize=7,
                    color="green" if correct[name][0] else "red",
                )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- the task
def chosen_images(recipe: pd.DataFrame, split: str, count: int, seed: int, ids=None) -> list[str]:
    """fg_image keys of `split` to show: `ids` as given, else `count` in a seeded draw."""
    available = sorted(recipe.loc[recipe["split"] == split, "fg_image"].unique())
    if ids:
        missing = [i for i in ids if i not in set(available)]
        if missing:
            raise ValueError(
                f"gradcam.image_ids: {missing} are not {split} images of the dataset "
                f"(e.g. {available[:3]})"
            )
        return [str(i) for i in ids]
    order = item_rng(seed, "gradcam", split).permutation(len(available))
    return [available[i] for i in order[: max(0, int(count))]]


def model_nodes(cfg) -> list[tuple[str, dict]]:
    """(label, model node) of every model of `gradcam.models` ([]: the `model` node)."""
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(cfg.model, resolve=True)
    entries = OmegaConf.to_container(cfg.gradcam.models, resolve=True) or [None]
    nodes = []
    for entry in entries:
        node = dict(base)
        if isinstance(entry, str):
            node["checkpoint"] = entry
        elif isinstance(entry, Mapping):
            node.update(entry)
        label = node.pop("label", None)
        node.setdefault("target_layer", None)
        if not label and node.get("checkpoint"):
            label = Path(str(node["checkpoint"])).name
        nodes.append((str(label or node["name"]), node))
    return nodes


def run_gradcam(cfg) -> dict:
    """Task `gradcam` of hsi-analyze: the grid and the CAM-in-box shares in the run folder."""
    from hydra.utils import instantiate

    from hsi.benchmark import load_model, model_config, pick_device, subset_columns
    from hsi.data.transforms import eval_transform
    from hsi.generate.compose import Composer
    from hsi.models import model_input_config
    from hsi.sources import load_source

    out = Path(str(cfg.out))
    data = instantiate(cfg.data, num_workers=0)
    data.prepare_data()  # builds what the dataset folder lacks, as hsi-train would
    composer = Composer.from_output(cfg.data.generate.out)
    recipe = composer.recipe
    split = str(cfg.gradcam.split)
    index = load_source(cfg.data.generate.source)
    class_name = {c.wnid: c.name for c in index.classes}
    labelled = zip(recipe["label"], recipe["wnid"], strict=True)
    names = {int(k): class_name.get(w, w) for k, w in labelled}
    source_classes = len(index.wnids)
    target_kind = str(cfg.gradcam.target).lower()
    if target_kind not in ("true", "predicted"):
        raise ValueError(f"gradcam.target={cfg.gradcam.target!r}: expected true or predicted")
    dataset_classes = int(recipe["label"].nunique())
    device = pick_device(str(cfg.device))
    shown = chosen_images(
        recipe, split, int(cfg.gradcam.images), int(cfg.seed), cfg.gradcam.image_ids
    )
    measured = chosen_images(recipe, split, int(cfg.gradcam.share_images), int(cfg.seed))
    keys = list(dict.fromkeys([*shown, *measured]))
    rows = recipe[(recipe["split"] == split) & recipe["fg_image"].isin(keys)].copy()
    rows["order"] = rows["fg_image"].map({k: i for i, k in enumerate(keys)})
    rows = rows.sort_values(["order", "group_id"]).reset_index(drop=True)
    images = [composer(row) for _, row in rows.iterrows()]
    boxes = [
        paste_box(
            row,
            composer.store.load("core", row["fg_image"]).shape[:2],
            composer.resolution,
            composer.resize_mode,
        )
        for _, row in rows.iterrows()
    ]
    labels = rows["label"].to_numpy()
    cams, predictions, correct, records = {}, {}, {}, []
    for label, node in model_nodes(cfg):
        layer = node.pop("target_layer") or cfg.gradcam.target_layer
        node = model_config(node)
        net, source_head = load_model(node, source_classes, dataset_classes)
        net = net.to(device)
        columns = subset_columns(recipe) if source_head else None
        input_cfg = model_input_config(net)
        transform = eval_transform(input_cfg["mean"], input_cfg["std"])
        maps, predicted = [], []
        for start in range(0, len(images), int(cfg.batch_size)):
            chunk = slice(start, start + int(cfg.batch_size))
            x = torch.stack([transform(im) for im in images[chunk]]).to(device)
            target = labels[chunk]
            if target_kind == "predicted":
                with torch.no_grad():
                    target = SubsetHead(net, columns)(x).argmax(dim=1).cpu().numpy()
            m, p = cam_maps(net, x, target, layer, str(cfg.gradcam.method), columns)
            maps.append(m)
            predicted.append(p)
        maps_all, predicted_all = np.concatenate(maps), np.concatenate(predicted)
        cams[label] = maps_all
        predictions[label] = [str(names.get(int(k), k)) for k in predicted_all]
        correct[label] = list(predicted_all == labels)
        res = composer.resolution
        for i, row in rows.iterrows():
            if row["fg_image"] not in set(measured):
                continue
            x0, y0, x1, y1 = boxes[i]
            records.append(
                {
                    "model": label,
                    "sample_id": row["sample_id"],
                    "fg_image": row["fg_image"],
                    "group": row["group"],
                    "group_id": int(row["group_id"]),
                    "label": int(labels[i]),
                    "predicted": int(predicted_all[i]),
                    "correct": bool(correct[label][i]),
                    "box_fraction": (x1 - x0) * (y1 - y0) / (res * res),
                    "cam_in_box": box_share(maps_all[i], boxes[i]),
                }
            )
    show = rows["fg_image"].isin(set(shown)).to_numpy()
    idx = np.flatnonzero(show)
    grid = plot_grid(
        [images[i] for i in idx],
        [f"{rows.at[i, 'group']}\n{rows.at[i, 'fg_image'].split('/')[-1][-8:]}" for i in idx],
        {k: v[idx] for k, v in cams.items()},
        {k: [v[i] for i in idx] for k, v in predictions.items()},
        {k: [v[i] for i in idx] for k, v in correct.items()},
        out / GRID_FILE,
    )
    result = {"grid": grid, "shares": None}
    if records:
        shares = pd.DataFrame(records)
        summary = (
            shares.groupby(["model", "group_id", "group"], sort=True)
            .agg(cam_in_box=("cam_in_box", "mean"), box_fraction=("box_fraction", "mean"))
            .reset_index()
        )
        result.update(
            shares=shares,
            summary=summary,
            shares_csv=atomic_write_csv(out / SHARES_FILE, shares),
            groups_csv=atomic_write_csv(out / GROUP_SHARES_FILE, summary),
        )
    return result
