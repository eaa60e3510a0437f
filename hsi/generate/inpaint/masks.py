"""Maskers: which pixels of an image the inpainter must fill (paper 000, §4 and App. C).

A masker turns an image and its object boxes into one uint8 HxW mask in {0, 255}: the union of
every object's region, dilated once with a square kernel (15x15 in the paper, about 7 px each
side) so that object edges and shadows are inside the hole. `object_mask` gives one object's
undilated region, used when pasting the object (the SAM variant of App. E).

Boxes are (xmin, ymin, xmax, ymax) floats in pixels of the image; images are uint8 HxWx3 RGB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

Box = Sequence[float]


class Masker(Protocol):
    """What the asset builder needs from a masker."""

    calls: int

    def __call__(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray: ...

    def object_mask(self, image: np.ndarray, box: Box) -> np.ndarray: ...


def check_image(image: np.ndarray) -> None:
    """Raise a ValueError unless `image` is a uint8 HxWx3 array."""
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {got}")


def as_boxes(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    """Boxes as a float (N, 4) array; a ValueError for anything that is not (xmin, ymin, xmax, ymax)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be a list of (xmin, ymin, xmax, ymax), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"boxes must be finite, got {arr.tolist()}")
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        raise ValueError(f"boxes need xmin <= xmax and ymin <= ymax, got {arr[bad].tolist()}")
    return arr


def box_rectangle(shape: tuple[int, ...], box: Box) -> np.ndarray:
    """Bool HxW mask of the pixels whose area overlaps the continuous box, clipped to the image.

    Pixel (r, c) covers [c, c+1) x [r, r+1), so the columns are floor(xmin) .. ceil(xmax) - 1:
    a box edge inside a pixel takes that whole pixel.
    """
    height, width = shape[:2]
    xmin, ymin, xmax, ymax = as_boxes([box])[0]
    x0, y0 = max(int(np.floor(xmin)), 0), max(int(np.floor(ymin)), 0)
    x1, y1 = min(int(np.ceil(xmax)), width), min(int(np.ceil(ymax)), height)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True  # empty slice when the box lies outside the image
    return mask


def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask -> uint8 {0, 255} mask dilated once by a size x size square (0 or 1: unchanged)."""
    if size < 0:
        raise ValueError(f"dilation must be >= 0, got {size}")
    out = mask.astype(np.uint8) * 255
    if size <= 1:
        return out
    return cv2.dilate(out, np.ones((size, size), dtype=np.uint8), iterations=1)


class BoxMasker:
    """The paper's default mask: every object box, dilated."""

    loads = 0  # no model to load; kept so benchmarks read every masker alike

    def __init__(self, dilation: int = 15) -> None:
        if dilation < 0:
            raise ValueError(f"mask.dilation must be >= 0, got {dilation}")
        self.dilation = int(dilation)
        self.calls = 0  # masks computed for at least one box

    def __call__(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """Union of the box rectangles of `image`, dilated; uint8 HxW in {0, 255}."""
        check_image(image)
        union = np.zeros(image.shape[:2], dtype=bool)
        arr = as_boxes(boxes)
        for box in arr:
            union |= box_rectangle(image.shape, box)
        if len(arr):
            self.calls += 1
        return dilate(union, self.dilation)

    def object_mask(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Bool HxW: the box rectangle itself, undilated."""
        check_image(image)
        return box_rectangle(image.shape, box)


def image_key(image: np.ndarray) -> str:
    """Content hash of an image: the same pixels give the same key, whatever the array object."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(repr((image.shape, image.dtype.str)).encode())
    return digest.hexdigest()


class SamMasker:
    """Segment-Anything masks, one box prompt per object (paper 000, App. E).

    The model loads lazily on first use, once per instance, so an unloaded masker pickles cheaply
    to worker processes and each worker loads once. The image embedding (the expensive part) is
    cached for the last image, so `__call__` and `object_mask` on the same image share it.
    Where SAM returns an empty mask for a box, the box rectangle is used instead and counted in
    `fallbacks`. SAM masks are not clipped to their box.

    Counters: `SamMasker.loads` (model loads in this process), per instance `calls` (prompt
    batches run through the mask decoder), `embeddings` (image-encoder runs), `fallbacks`.
    """

    loads = 0

    def __init__(
        self,
        checkpoint: str,
        model_type: str = "vit_b",
        dilation: int = 15,
        device: str = "cpu",
        multimask: bool = False,
    ) -> None:
        from segment_anything import sam_model_registry

        if model_type not in sam_model_registry:
            raise ValueError(
                f"mask.model_type={model_type!r} is not a Segment-Anything model; "
                f"choose one of {sorted(sam_model_registry)}"
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"SAM checkpoint not found: {path}. Set mask.checkpoint to a local Segment-Anything "
                f"checkpoint for model_type={model_type!r} (e.g. sam_vit_b_01ec64.pth), "
                "or use mask=box."
            )
        if dilation < 0:
            raise ValueError(f"mask.dilation must be >= 0, got {dilation}")
        self.checkpoint = path
        self.model_type = model_type
        self.dilation = int(dilation)
        self.device = device
        self.multimask = bool(multimask)
        self.calls = 0
        self.embeddings = 0
        self.fallbacks = 0
        self._predictor: Any = None
        self._image_key: str | None = None

    @property
    def loaded(self) -> bool:
        return self._predictor is not None

    def __getstate__(self) -> dict:
        # Workers get the settings, not the model: each loads its own copy on first use.
        state = self.__dict__.copy()
        state["_predictor"] = None
        state["_image_key"] = None
        return state

    def _load(self) -> Any:
        import torch
        from segment_anything import SamPredictor, sam_model_registry

        sam = sam_model_registry[self.model_type](checkpoint=None)
        # Loaded here rather than by the registry so that map_location lets a checkpoint saved
        # on a GPU open on a CPU-only machine, and weights_only keeps unpickling safe.
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        try:
            sam.load_state_dict(state)
        except RuntimeError as err:
            raise RuntimeError(
                f"{self.checkpoint} does not hold SAM {self.model_type} weights "
                f"(check mask.checkpoint and mask.model_type): {err}"
            ) from err
        sam.to(self.device).eval()
        SamMasker.loads += 1
        return SamPredictor(sam)

    def _set_image(self, image: np.ndarray) -> Any:
        import torch

        check_image(image)
        if self._predictor is None:
            self._predictor = self._load()
        key = image_key(image)
        if key != self._image_key:
            with torch.inference_mode():
                self._predictor.set_image(image, image_format="RGB")
            self._image_key = key
            self.embeddings += 1
        return self._predictor

    def sam_masks(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """SAM's own bool (N, H, W) masks, one per box, without the rectangle fallback."""
        import torch

        arr = as_boxes(boxes)
        height, width = image.shape[:2]
        if len(arr) == 0:
            check_image(image)
            return np.zeros((0, height, width), dtype=bool)
        predictor = self._set_image(image)
        with torch.inference_mode():
            prompts = torch.as_tensor(arr, dtype=torch.float32, device=predictor.device)
            prompts = predictor.transform.apply_boxes_torch(prompts, (height, width))
            masks, scores, _ = predictor.predict_torch(
                None, None, boxes=prompts, multimask_output=self.multimask
            )
            # One mask per box: with several candidates, the one SAM scores best.
            best = scores.argmax(dim=1)
            masks = masks[torch.arange(len(arr), device=masks.device), best]
        self.calls += 1
        return masks.cpu().numpy().astype(bool)

    def _object_masks(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        masks = self.sam_masks(image, boxes)
        for i, box in enumerate(as_boxes(boxes)):
            if not masks[i].any():
                masks[i] = box_rectangle(image.shape, box)
                self.fallbacks += 1
        return masks

    def __call__(self, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """Union of the SAM masks of all boxes (rectangle where SAM's is empty), dilated; uint8 HxW."""
        masks = self._object_masks(image, boxes)  # (0, H, W) without boxes: an empty union
        return dilate(masks.any(axis=0), self.dilation)

    def object_mask(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Bool HxW: SAM's mask of this box, undilated (its rectangle where SAM's is empty)."""
        return self._object_masks(image, [box])[0]
