"""`cam_box`: the detector that needs no downloaded weights -- a box from the Grad-CAM map of a
classifier trained here (e.g. the source-pretrained model of `hsi-train experiment=demo_source`).

The standard weakly-supervised localisation recipe (CAM, Zhou et al. 2016; as evaluated by Choe
et al. 2020): the class-activation map of the query's class (pytorch-grad-cam, through
hsi.analysis.gradcam), kept where it reaches `threshold` x its maximum, and the box around the
largest connected region of that mask, rescaled from the classifier's input to the source image. The map comes from the classifier's
last stage whose map keeps CAM's granularity at its input size (`auto_target_layer`).
The score is the classifier's softmax probability of the query's class: like a detector's
class-query confidence, high when the class is plainly visible.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from hsi.detectors.base import Detection, Query, clip_box
from hsi.detectors.hf import pick_device

KIND = "cam"
MIN_CAM_SIDE = 7  # CAM's map side in its recipe (a ResNet's last stage at 224 px)


def cam_box(cam: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end exclusive, around the largest region where cam >= threshold x max."""
    peak = float(np.max(cam)) if cam.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return None
    mask = (cam >= threshold * peak).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[largest, :4])
    return x, y, x + w, y + h


def auto_target_layer(
    net: torch.nn.Module, resolution: int, min_side: int = MIN_CAM_SIDE
) -> str | None:
    """The deepest stage whose map is at least `min_side` pixels a side at `resolution`.

    CAM's recipe takes the last convolutional stage: 7 x 7 for a ResNet at 224 px. At the small
    resolutions a model is trained at here (64 px: a 2 x 2 `layer4`), that map is too coarse to
    box anything, so the deepest stage that still keeps about the recipe's granularity is taken
    (64 px ResNet: `layer2`, 8 x 8). None: the architecture's default (hsi.analysis.gradcam).
    """
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        names = [f"layer{i}" for i in (4, 3, 2, 1)]
    elif hasattr(net, "stages") and not hasattr(net, "blocks"):
        names = [f"stages.{i}" for i in reversed(range(len(net.stages)))]
    else:
        return None
    from hsi.analysis.gradcam import module_at

    sides: dict[str, int] = {}
    hooks = [
        module_at(net, n).register_forward_hook(
            lambda _m, _i, out, n=n: sides.__setitem__(n, int(min(out.shape[-2:])))
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, resolution, resolution, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return next((n for n in names if sides.get(n, 0) >= min_side), names[-1])


def _run_config(checkpoint: Path) -> dict:
    """The hsi-train run's resolved config, when `checkpoint` is (in) a run folder."""
    from hsi.results import RESULTS_FILE, read_results

    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if folder.is_dir() and (folder / RESULTS_FILE).is_file():
            return read_results(folder).get("config") or {}
    return {}


class CamBoxDetector:
    """Grad-CAM box + softmax score of an hsi classifier checkpoint (module doc)."""

    def __init__(
        self,
        checkpoint,
        model: str | None = None,
        resolution: int | None = None,
        threshold: float = 0.2,
        method: str = "gradcam",
        target_layer: str | None = None,
        device: str = "cpu",
        key: str = "detector.checkpoint",
    ):
        from hydra.utils import instantiate

        from hsi.benchmark import model_config
        from hsi.models import model_input_config

        if checkpoint is None or str(checkpoint) in ("", "???"):
            raise ValueError(
                f"{key} is not set: the cam detector needs a classifier trained here, e.g. "
                f"{key}=<hsi-train run folder> (hsi-train experiment=demo_source makes one)"
            )
        given = Path(str(checkpoint)).expanduser()
        if not given.exists():
            raise ValueError(
                f"{key}={checkpoint}: no such file or folder ({given.resolve()}); point it at an "
                f"hsi-train run folder or its .ckpt file"
            )
        if not 0 < float(threshold) <= 1:
            raise ValueError(
                f"detector.threshold={threshold}: must be in (0, 1] (a fraction of the CAM's maximum)"
            )
        node = {
            "_target_": "hsi.models.create_model",
            "_partial_": True,
            "name": model,
            "pretrained": False,
            "weights": None,
            "checkpoint": str(given),
        }
        try:
            node = model_config(node)
        except FileNotFoundError as err:
            raise ValueError(f"{key}: {err}") from None
        if not node.get("name"):
            raise ValueError(
                f"{key}={checkpoint}: a bare .ckpt does not say its architecture; set "
                f"detector.model=<timm name> (e.g. resnet18) or give the run folder"
            )
        path = Path(node["checkpoint"])
        factory = instantiate(node)
        net = factory(num_classes=_head_rows(path, node))
        run = _run_config(given)
        data = run.get("data") or {}
        input_cfg = model_input_config(net)
        self.resolution = int(resolution or data.get("resolution") or input_cfg["input_size"][-1])
        self.mean = tuple(data.get("mean") or input_cfg["mean"])
        self.std = tuple(data.get("std") or input_cfg["std"])
        self.threshold, self.method = float(threshold), str(method)
        self.device = pick_device(str(device))
        self.net = net.to(self.device).eval()
        self.target_layer = target_layer or auto_target_layer(self.net, self.resolution)
        st = path.stat()
        self.name = (
            f"cam_box|{path.resolve()}|{st.st_size}-{st.st_mtime_ns}|{node['name']}|"
            f"res={self.resolution}|thr={self.threshold}|{self.method}|{self.target_layer}"
        )

    def detect(self, images: list[Image.Image], queries: list[Query]) -> list[Detection]:
        from hsi.analysis.gradcam import cam_maps
        from hsi.data.transforms import eval_transform

        if len(images) != len(queries):
            raise ValueError(f"detect: {len(images)} images but {len(queries)} queries")
        if not images:
            return []
        transform = eval_transform(self.mean, self.std, resize=self.resolution)
        x = torch.stack([transform(im.convert("RGB")) for im in images]).to(self.device)
        labels = [int(q.label) for q in queries]
        classes = int(self.net.num_classes)
        outside = [lab for lab in labels if not 0 <= lab < classes]
        if outside:
            raise ValueError(
                f"{self.name}: query labels {outside[:5]} outside its {classes}-way head"
            )
        with torch.no_grad():
            probs = torch.softmax(self.net(x).float(), dim=1).cpu()
        maps, _ = cam_maps(self.net, x, labels, self.target_layer, self.method)
        found = []
        for i, im in enumerate(images):
            w, h = im.size
            box = cam_box(maps[i], self.threshold)
            if box is not None:
                sx, sy = w / maps[i].shape[1], h / maps[i].shape[0]
                box = clip_box((box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), w, h)
            found.append(Detection(score=float(probs[i, labels[i]]), box=box))
        return found


def _head_rows(path: Path, node: dict) -> int:
    """Outputs of the checkpoint's classifier (the source's class count for a source model)."""
    import timm

    from hsi.models import CHECKPOINT_PREFIX, load_torch_file

    raw = load_torch_file(path, "detector.checkpoint", mmap=True)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else {}
    kwargs = {
        k: v
        for k, v in node.items()
        if k not in ("_target_", "_partial_", "name", "pretrained", "weights", "checkpoint")
    }
    skeleton = timm.create_model(node["name"], pretrained=False, num_classes=1, **kwargs)
    head = skeleton.get_classifier()
    head_name = next((n for n, m in skeleton.named_modules() if m is head), None)
    for key in (f"{CHECKPOINT_PREFIX}{head_name}.weight", f"{head_name}.weight"):
        weight = state.get(key) if isinstance(state, dict) else None
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
    raise ValueError(
        f"detector.checkpoint={path}: no classifier weight {head_name}.weight in it; expected a "
        f"checkpoint of hsi-train with a {node['name']} network"
    )
