"""Assets, made once per source image: the inpainted background and the core object crop.

Every group and size of Hard-Spurious-ImageNet reuses these, so inpainting (the expensive step)
runs once per source image. Three kinds, one PNG each per image (where they live in a built
dataset is hsi.generate.layout's business):

    bg     the inpainted image, resized to resolution x resolution
    core   the pixels of the core box, cut from the decoded source image; shrunk (aspect kept)
           until its shorter side is `crop_cap` (dataset.crop_cap: the largest pasted size by
           default), since no group pastes it larger: storage stays small at no cost in pixels
    alpha  (SAM variant) the object's mask inside that box, 0/255, at the core's size

All assets are lossless PNGs. Every resize in the project goes through `resize_rgb` (PIL
bilinear, which PIL antialiases when shrinking) or `resize_mask` (nearest), so that composition
on the fly and exported files agree bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hsi.generate.layout import CORE_BOXES, DatasetFolder
from hsi.io import atomic_write_bytes, png_bytes
from hsi.sources.record import Box

RGB_RESAMPLE = Image.BILINEAR  # the one resize filter for images (backgrounds and crops)
MASK_RESAMPLE = Image.NEAREST  # masks stay binary


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 HxWx3 -> height x width x 3 with the project's one resize method."""
    if image.shape[1] == width and image.shape[0] == height:
        return np.array(image, dtype=np.uint8, copy=True)
    return np.asarray(Image.fromarray(image).resize((width, height), RGB_RESAMPLE))


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 HxW mask -> height x width with nearest neighbour (values stay 0/255)."""
    if mask.shape[1] == width and mask.shape[0] == height:
        return np.array(mask, dtype=np.uint8, copy=True)
    return np.asarray(Image.fromarray(mask).resize((width, height), MASK_RESAMPLE))


def capped_size(width: int, height: int, cap: int | None) -> tuple[int, int]:
    """(width, height) scaled (aspect kept) so that the shorter side is at most `cap`."""
    short = min(width, height)
    if cap is None or short <= cap:
        return width, height
    scale = cap / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def box_area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def choose_core_box(boxes: Sequence[Box], rule: str = "largest") -> Box:
    """The box whose object becomes the pasted core: the largest (first of equal areas) or the first."""
    if not boxes:
        raise ValueError("an image without boxes has no core object")
    if rule == "first":
        return boxes[0]
    if rule == "largest":
        # max() keeps the first of equal maxima, so ties resolve by the boxes' stored order.
        return max(boxes, key=box_area)
    raise ValueError(f"dataset.core_box must be one of {CORE_BOXES}, got {rule!r}")


def box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1), end exclusive, covering the continuous box.

    Floor the start and ceil the end so that no object pixel is lost, clip to the image, and keep
    at least one pixel on each side.
    """
    x0 = min(max(int(math.floor(box[0])), 0), width - 1)
    y0 = min(max(int(math.floor(box[1])), 0), height - 1)
    x1 = max(min(int(math.ceil(box[2])), width), x0 + 1)
    y1 = max(min(int(math.ceil(box[3])), height), y0 + 1)
    return x0, y0, x1, y1


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of `box` (see box_pixels) from an HxW or HxWxC array, as a contiguous copy."""
    x0, y0, x1, y1 = box_pixels(box, array.shape[1], array.shape[0])
    return np.ascontiguousarray(array[y0:y1, x0:x1])


@dataclass
class ImageAssets:
    """What one source image contributes: background (res x res x 3), core crop, optional alpha."""

    bg: np.ndarray
    core: np.ndarray
    alpha: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"bg": self.bg, "core": self.core}
        if self.alpha is not None:
            out["alpha"] = self.alpha
        return out


def make_assets(
    image: np.ndarray,
    boxes: Sequence[Box],
    masker,
    inpainter,
    resolution: int,
    core_box: str = "largest",
    with_alpha: bool = False,
    crop_cap: int | None = None,
) -> ImageAssets:
    """Assets of one decoded image: ONE inpainting call fills the union of all its objects.

    `masker(image, boxes)` gives the dilated union mask, `inpainter(image, mask)` the filled image
    at full resolution, which is then resized. The core crop comes from the untouched source
    pixels. With `with_alpha`, the masker's undilated object mask of the core box is cropped to
    the box; if nothing of it falls inside the box the whole box is used, as for an empty SAM mask.
    With `crop_cap`, core (and alpha) are shrunk until their shorter side is `crop_cap`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")
    mask = masker(image, list(boxes))
    filled = inpainter(image, mask)
    bg = resize_rgb(np.asarray(filled, dtype=np.uint8), resolution, resolution)
    box = choose_core_box(boxes, core_box)
    core = crop(image, box)
    alpha = None
    if with_alpha:
        inside = crop(np.asarray(masker.object_mask(image, box), dtype=bool), box)
        if not inside.any():
            inside = np.ones_like(inside)
        alpha = inside.astype(np.uint8) * 255
    width, height = capped_size(core.shape[1], core.shape[0], crop_cap)
    if (width, height) != (core.shape[1], core.shape[0]):
        core = resize_rgb(core, width, height)
        if alpha is not None:
            alpha = resize_mask(alpha, width, height)
    return ImageAssets(bg=bg, core=core, alpha=alpha)


def asset_bytes(store: AssetStore, keys: Sequence[str], kinds: Sequence[str]) -> dict[str, int]:
    """Bytes on disk of the assets of `keys`, per kind (missing files count 0)."""
    total = dict.fromkeys(kinds, 0)
    for key in keys:
        for kind in kinds:
            try:
                total[kind] += store.path(kind, key).stat().st_size
            except OSError:
                pass
    return total


class AssetStore:
    """Paths of a build's assets, atomic saving, and loading with a small LRU cache.

    `out` is the built dataset's folder (hsi.generate.layout). Loaded arrays are read-only,
    because the cache hands the same array to every caller.
    """

    def __init__(self, out: str | os.PathLike, cache_size: int = 256):
        self.out = Path(out)
        self.folder = DatasetFolder(self.out)
        self.root = self.folder.assets_dir
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def path(self, kind: str, key: str) -> Path:
        """The file of one image's asset, for an ImageRecord key "<split>/<image_id>"."""
        return self.folder.asset_path(kind, key)

    def exists(self, key: str, kinds: Sequence[str]) -> bool:
        return all(self.path(kind, key).is_file() for kind in kinds)

    def save(self, key: str, assets: ImageAssets) -> dict[str, str]:
        """Write every asset of one image atomically; returns {kind: sha256 of the bytes written}.

        The hash is of the bytes this process encoded, never of what a file holds later.
        """
        hashes = {}
        for kind, array in assets.arrays().items():
            data = png_bytes(array)
            atomic_write_bytes(self.path(kind, key), data)
            hashes[kind] = hashlib.sha256(data).hexdigest()
        return hashes

    def load(self, kind: str, key: str) -> np.ndarray:
        """The decoded asset (bg/core: HxWx3 uint8, alpha: HxW uint8), cached."""
        cache_key = (kind, key)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        path = self.path(kind, key)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: asset missing; run `hsi-generate build out={self.out}` first"
            )
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("L" if kind == "alpha" else "RGB"))
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
            raise ValueError(
                f"{path}: cannot decode asset ({type(e).__name__}: {e}); run "
                f"`hsi-generate validate out={self.out}`, delete the files it names and rebuild"
            ) from e
        array.setflags(write=False)
        if self.cache_size > 0:
            self._cache[cache_key] = array
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return array

    def __getstate__(self) -> dict:
        # DataLoader workers get a copy: send the settings, not the cached pixels.
        return {"out": self.out, "cache_size": self.cache_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["out"], state["cache_size"])
