"""Inpainters: fill the masked pixels of an image (paper 000, §4 and App. C).

`OpenCVInpainter` is the offline default; `LamaInpainter` runs the paper's LaMa from a local
TorchScript file (big-lama.pt as used by Inpaint-Anything / lama-cleaner). Both take a uint8
HxWx3 RGB image and an HxW mask (nonzero = fill) and return a uint8 HxWx3 image whose pixels
outside the mask are exactly the input's.

`calls` counts model runs only: an empty mask returns a copy of the image without running (or
loading) anything and is not counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from hsi.generate.inpaint.masks import check_image


class Inpainter(Protocol):
    """What the asset builder needs from an inpainter."""

    calls: int

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


def hole(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Validate an image/mask pair and return the mask as bool HxW (nonzero = to fill)."""
    check_image(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    return mask != 0


def keep_outside(image: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The filled pixels inside the mask, the original ones (bit for bit) outside it."""
    return np.where(mask[..., None], filled, image).astype(np.uint8)


class OpenCVInpainter:
    """cv2.inpaint (Telea's fast marching or Navier-Stokes): no weights, runs anywhere."""

    loads = 0  # no model to load; kept so benchmarks read every inpainter alike
    METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}

    def __init__(self, radius: int = 3, method: str = "telea") -> None:
        if method not in self.METHODS:
            raise ValueError(f"inpaint.method={method!r} is not one of {sorted(self.METHODS)}")
        if radius < 1:
            raise ValueError(f"inpaint.radius must be >= 1, got {radius}")
        self.radius = int(radius)
        self.method = method
        self.calls = 0

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill the masked pixels from their surroundings; uint8 HxWx3."""
        holes = hole(image, mask)
        if not holes.any():
            return image.copy()
        filled = cv2.inpaint(
            np.ascontiguousarray(image),
            holes.astype(np.uint8) * 255,
            self.radius,
            self.METHODS[self.method],
        )
        self.calls += 1
        return keep_outside(image, filled, holes)


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Symmetric padding on the bottom and right up to the next multiple (as lama-cleaner does)."""
    height, width = array.shape[:2]
    pad = [(0, -height % multiple), (0, -width % multiple)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="symmetric")


class LamaInpainter:
    """LaMa from a TorchScript file, called as `model(image, mask)`.

    image: float [1, 3, H, W] in [0, 1]; mask: float [1, 1, H, W] in {0, 1}; output [1, 3, H, W]
    in [0, 1]. H and W are padded to a multiple of 8 (LaMa's downsampling needs it) and the
    output cropped back. The file loads lazily on first use, once per instance.
    Counters: `LamaInpainter.loads` (loads in this process), per instance `calls` (model runs).
    """

    loads = 0
    MULTIPLE = 8

    def __init__(self, checkpoint: str, device: str = "cpu") -> None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"LaMa checkpoint not found: {path}. Set inpaint.checkpoint to a local big-lama "
                "TorchScript file (big-lama.pt), or use inpaint=opencv."
            )
        self.checkpoint = path
        self.device = device
        self.calls = 0
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __getstate__(self) -> dict:
        # Workers get the settings, not the model: each loads its own copy on first use.
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    def _load(self) -> Any:
        import torch

        try:
            model = torch.jit.load(str(self.checkpoint), map_location=self.device)
        except RuntimeError as err:
            raise RuntimeError(
                f"{self.checkpoint} is not a TorchScript file (inpaint.checkpoint must be big-lama.pt "
                f"exported with torch.jit): {err}"
            ) from err
        model.eval()
        LamaInpainter.loads += 1
        return model

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill the masked pixels with LaMa; uint8 HxWx3."""
        import torch

        holes = hole(image, mask)
        if not holes.any():
            return image.copy()
        if self._model is None:
            self._model = self._load()
        height, width = holes.shape
        padded_image = pad_to_multiple(image, self.MULTIPLE)
        padded_mask = pad_to_multiple(holes, self.MULTIPLE)
        with torch.inference_mode():
            x = torch.from_numpy(padded_image).permute(2, 0, 1)[None].float().div(255)
            m = torch.from_numpy(padded_mask)[None, None].float()
            out = self._model(x.to(self.device), m.to(self.device))
            if tuple(out.shape) != tuple(x.shape):
                raise RuntimeError(
                    f"{self.checkpoint} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                    "inpaint.checkpoint must map image [1,3,H,W] and mask [1,1,H,W] to [1,3,H,W]"
                )
            out = out[0, :, :height, :width].clamp(0, 1).mul(255).round()
            filled = out.permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        self.calls += 1
        return keep_outside(image, filled, holes)
