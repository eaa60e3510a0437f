"""Drawing primitives of the synthetic source: silhouettes, grey stripe textures, habitats.

Everything is vectorised numpy (plus OpenCV for the colour conversion and the upsampling of
low-frequency noise); the only Python loops run over the few objects of an image.

The look of a class is what makes the benchmark's phenomenon real:
- the core object is a class-specific silhouette filled with a *grey* stripe pattern whose
  orientation and frequency are class-specific. The number of stripes is tied to the object's
  own size, so shrinking an object pushes its stripes towards the pixel grid, where they blur
  away: small objects become hard, as in the paper. There is no colour on the object, because
  a colour cue would survive any shrinking.
- the background ("habitat") has a class-specific hue, low-frequency noise and a soft wave, and
  is usually the class's own, so a classifier can lean on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) -> bool mask, y pointing down


def _half_planes(points: int, distance: float, needed: int) -> ShapeFn:
    """Points on the origin's side of at least `needed` of `points` lines around the origin.

    With normals evenly spread and a vertex pointing up, needed = points gives a regular polygon
    and, for 5 lines at distance cos(72 deg) from the origin, needed = 4 gives the pentagram
    (its centre lies inside all five, each of its tips inside four). Dot products only: cheap.
    """
    angles = np.radians(90.0 + 180.0 / points + 360.0 / points * np.arange(points))  # y points down

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        count = sum(
            (x * math.cos(a) + y * math.sin(a) <= distance).astype(np.uint8) for a in angles
        )
        return count >= needed

    return shape


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    up = -1.1 * y + 0.1  # the implicit heart curve has y pointing up
    return (x**2 + up**2 - 1) ** 3 - x**2 * up**3 <= 0


# Each silhouette in its own coordinates; `natural_bbox` maps it onto an object box exactly.
SHAPES: dict[str, ShapeFn] = {
    "star": _half_planes(5, math.cos(math.radians(72)), 4),
    "ellipse": lambda x, y: x**2 + y**2 <= 1,
    "triangle": lambda x, y: (np.abs(x) <= (y + 1) / 2) & (y <= 1),
    "cross": lambda x, y: (
        (np.maximum(np.abs(x), np.abs(y)) <= 1) & (np.minimum(np.abs(x), np.abs(y)) <= 0.3)
    ),
    "ring": lambda x, y: (x**2 + y**2 <= 1) & (x**2 + y**2 >= 0.55**2),
    "diamond": lambda x, y: np.abs(x) + np.abs(y) <= 1,
    "hexagon": _half_planes(6, math.cos(math.pi / 6), 6),
    "heart": _heart,
    # Cut at x = 0.35: blunt tips instead of slivers too thin to see.
    "crescent": lambda x, y: (x**2 + y**2 <= 1) & ((x - 0.6) ** 2 + y**2 >= 0.85**2) & (x <= 0.35),
    "frame": lambda x, y: (
        (np.maximum(np.abs(x), np.abs(y)) <= 1) & (np.maximum(np.abs(x), np.abs(y)) >= 0.55)
    ),
    "arrow": lambda x, y: (
        ((x >= 0) & (np.abs(y) <= 1 - x)) | ((x >= -1) & (x <= 0) & (np.abs(y) <= 0.35))
    ),
    "saltire": lambda x, y: (
        (np.maximum(np.abs(x), np.abs(y)) <= 1) & (np.minimum(np.abs(x - y), np.abs(x + y)) <= 0.4)
    ),
}
SHAPE_NAMES = tuple(SHAPES)
STRIPE_CYCLES = (7.0, 10.0, 13.0)  # stripes across the object's scale (sqrt of its box area)
SUPERSAMPLE = 3  # samples per pixel side for the silhouette's soft edge


@cache
def natural_bbox(shape: str) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of a silhouette in its own coordinates, measured on a fine grid."""
    grid = np.linspace(-1.5, 1.5, 1201)
    x, y = np.meshgrid(grid, grid)
    inside = SHAPES[shape](x, y)
    xs, ys = x[inside], y[inside]
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())


@dataclass(frozen=True)
class ClassLook:
    """What identifies a class: its silhouette and stripes, and the habitat it lives in."""

    index: int
    shape: str
    stripe_angle: float  # degrees in [0, 180)
    stripe_cycles: float
    habitat_hue: float  # in [0, 1)
    wave_angle: float  # degrees

    @property
    def name(self) -> str:
        """Human name for LOC_synset_mapping.txt, unique among classes ("striped star")."""
        repeat = self.index // len(SHAPE_NAMES)
        return f"striped {self.shape}" + (f" {repeat + 1}" if repeat else "")

    @property
    def description(self) -> str:
        return (
            f"{self.shape} with grey stripes at {(self.stripe_angle + 90) % 180:.0f} degrees"
            f" on a hue-{self.habitat_hue * 360:.0f} habitat"
        )


def class_look(index: int, num_classes: int) -> ClassLook:
    """The fixed look of class `index` of `num_classes`: cues spread evenly so classes stay apart."""
    return ClassLook(
        index=index,
        shape=SHAPE_NAMES[index % len(SHAPE_NAMES)],
        stripe_angle=180.0 * index / num_classes,
        stripe_cycles=STRIPE_CYCLES[index % len(STRIPE_CYCLES)],
        habitat_hue=index / num_classes,
        wave_angle=(137.5 * index) % 180.0,  # golden angle: neighbouring classes' waves differ
    )


def _lowfreq_noise(rng: np.random.Generator, width: int, height: int, channels: int) -> np.ndarray:
    """Smooth noise, about unit variance: a 4x4 grid of normal values upsampled bicubically."""
    grid = rng.standard_normal((4, 4, channels)).astype(np.float32)
    smooth = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return smooth.reshape(height, width, channels)


def draw_habitat(look: ClassLook, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A class's habitat background as float32 RGB in [0, 1], shape (height, width, 3)."""
    hue = look.habitat_hue + rng.uniform(-0.02, 0.02)
    saturation = rng.uniform(0.45, 0.75)
    value = rng.uniform(0.5, 0.8)
    noise = _lowfreq_noise(rng, width, height, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    side = math.sqrt(width * height)
    angle = math.radians(look.wave_angle + rng.uniform(-10, 10))
    cycles = rng.uniform(1.0, 2.5)
    phase = rng.uniform(0, 2 * math.pi)
    wave = np.sin(
        2 * math.pi * cycles / side * (xs * math.cos(angle) + ys * math.sin(angle)) + phase
    )

    hsv = np.empty((height, width, 3), np.float32)
    hsv[..., 0] = np.mod(360.0 * (hue + 0.025 * noise[..., 0]), 360.0)
    # Saturation and value stay clear of grey, so the grey objects stand apart from any habitat.
    hsv[..., 1] = np.clip(saturation + 0.08 * noise[..., 1], 0.3, 1.0)
    hsv[..., 2] = np.clip(value * (1 + 0.12 * noise[..., 2] + 0.12 * wave), 0.3, 1.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@dataclass(frozen=True)
class Placement:
    """Where an object's silhouette is stretched to: its planned box in pixels (continuous)."""

    x0: float
    y0: float
    width: float
    height: float


def draw_object(
    canvas: np.ndarray, look: ClassLook, place: Placement, rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """Paint one object onto `canvas` (float RGB, modified in place); return its tight box.

    The box is (xmin, ymin, xmax, ymax) in pixels, xmax exclusive, around every pixel at least
    half covered by the silhouette; None when no pixel is.
    """
    height, width = canvas.shape[:2]
    cols = (max(0, math.floor(place.x0)), min(width, math.ceil(place.x0 + place.width)))
    rows = (max(0, math.floor(place.y0)), min(height, math.ceil(place.y0 + place.height)))
    if cols[0] >= cols[1] or rows[0] >= rows[1]:
        return None

    # Coverage of each pixel by the silhouette, from SUPERSAMPLE^2 samples: a soft, unaliased edge.
    s = SUPERSAMPLE
    sub_x = cols[0] + (np.arange((cols[1] - cols[0]) * s) + 0.5) / s
    sub_y = rows[0] + (np.arange((rows[1] - rows[0]) * s) + 0.5) / s
    nx0, nx1, ny0, ny1 = natural_bbox(look.shape)
    u = nx0 + (sub_x - place.x0) / place.width * (nx1 - nx0)
    v = ny0 + (sub_y - place.y0) / place.height * (ny1 - ny0)
    inside = SHAPES[look.shape](u[None, :], v[:, None])
    coverage = inside.reshape(rows[1] - rows[0], s, cols[1] - cols[0], s).mean(axis=(1, 3))
    # The box holds every pixel that is mostly object: what an annotator would see as the object.
    mostly = coverage >= 0.5
    touched_rows = np.flatnonzero(mostly.any(axis=1))
    touched_cols = np.flatnonzero(mostly.any(axis=0))
    if touched_rows.size == 0:
        return None

    # Grey stripes; their count is tied to the object's size, so shrinking the object fines them.
    angle = math.radians(look.stripe_angle + rng.uniform(-4, 4))
    cycles = look.stripe_cycles * rng.uniform(0.92, 1.08)
    phase = rng.uniform(0, 2 * math.pi)
    mean_grey = rng.uniform(0.35, 0.65)
    contrast = rng.uniform(0.55, 0.9)
    scale = math.sqrt(place.width * place.height)
    cx, cy = place.x0 + place.width / 2, place.y0 + place.height / 2
    px = np.arange(cols[0], cols[1], dtype=np.float32) + 0.5 - cx
    py = np.arange(rows[0], rows[1], dtype=np.float32) + 0.5 - cy
    along = px[None, :] * math.cos(angle) + py[:, None] * math.sin(angle)
    wave = np.tanh(2.0 * np.sin(2 * math.pi * cycles / scale * along + phase)) / math.tanh(2.0)
    grey = np.clip(mean_grey + 0.5 * contrast * wave, 0.0, 1.0).astype(np.float32)

    alpha = coverage.astype(np.float32)[..., None]
    region = canvas[rows[0] : rows[1], cols[0] : cols[1]]
    region *= 1 - alpha
    region += alpha * grey[..., None]
    return (
        cols[0] + int(touched_cols[0]),
        rows[0] + int(touched_rows[0]),
        cols[0] + int(touched_cols[-1]) + 1,
        rows[0] + int(touched_rows[-1]) + 1,
    )


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)
