"""Reading ImageNet's image files: the size from the header, the pixels as RGB.

Two levels of checking, on purpose:

- `read_size` parses only the file header (PIL's `Image.open` stops before the compressed data).
  It is what the source reader runs on every image, so listing ImageNet stays fast. It catches
  files that are not images at all and images whose header is broken.
- A file whose header is fine but whose body is truncated or corrupt passes `read_size`; only the
  full decode of `load_rgb`, done by the later steps that need the pixels, finds it. Those steps
  record such an image as a skip with the reason.

The format is detected from the content, never from the extension, so ImageNet's PNG named
`.JPEG` reads like any other file. EXIF orientation is ignored: ImageNet's boxes are given in the
stored pixel grid, which is also what `read_size` reports.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# What PIL raises on unreadable files: not an image, a broken header, a truncated body.
_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file."""


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the stored image, from its header only (no pixel decoding)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except _PIL_ERRORS as e:
        raise ImageReadError(
            f"{path}: not an image or broken header ({type(e).__name__}: {e})"
        ) from e
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{path}: header gives an empty image ({width}x{height})")
    return int(width), int(height)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; PIL's own conversions cover CMYK, L, LA, P, RGBA, YCbCr."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit greyscale: PIL's convert("RGB") would clip at 255 instead of rescaling.
        grey = np.asarray(im, dtype=np.float64)
        grey8 = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8, mode="L").convert("RGB")
    if im.mode == "F":
        grey8 = np.clip(np.round(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        # Going through RGBA avoids PIL's warning about palette transparency; alpha is dropped.
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The decoded image as a uint8 HxWx3 RGB array (CMYK, greyscale, palette, alpha converted).

    Raises ImageReadError, naming the file, for anything PIL cannot decode, truncated bodies
    included (PIL's LOAD_TRUNCATED_IMAGES is left off so that no grey-padded image slips through).
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = _to_rgb(im)
            array = np.array(rgb, dtype=np.uint8)
    except _PIL_ERRORS as e:
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    return array
