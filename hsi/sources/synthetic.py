"""The embedded synthetic source: procedural images written in ImageNet's on-disk layout.

On a fresh machine there is no ImageNet, so this module writes a small stand-in that the real
reader (hsi.sources.imagenet) reads like the real thing:

    <out>/LOC_synset_mapping.txt                       "<wnid> <name>, <description>"
    <out>/train/<wnid>/<wnid>_<n>.JPEG
    <out>/boxes/train/<wnid>/<wnid>_<n>.xml             PASCAL VOC, as ImageNet's
    <out>/val/ILSVRC2012_val_<8 digits>.JPEG            flat, numbered in a seeded shuffled order
    <out>/boxes/val/ILSVRC2012_val_<8 digits>.xml        the label comes from <name>
    <out>/hidden_boxes/train/<wnid>/<wnid>_<n>.xml      the true boxes of the train images that
                                                        carry no annotation (not read as boxes:
                                                        ground truth for a detector's audit)
    <out>/synth.json                                    parameters; written last = complete

Like ImageNet (about 42% of its train images have a box, unevenly per class; val all), only a
fraction of each class's train images is annotated: `train_box_fraction`, one number for every
class or a range [low, high] from which each class draws its own fraction (seeded by its wnid).

What the images hold (see hsi.sources.synthetic_draw): a class-specific grey striped silhouette
on a class-specific "habitat" background that matches the class with probability
`habitat_prob`, with ImageNet's biases: objects centred on average but spread over the image,
of every size from a tenth of it to most of it, sometimes several. Small and off-centre objects
make the source's models lean on the habitat where the object is hard to see, as ImageNet's do;
a source of only large, centred objects gives a model that ignores some classes' habitats
entirely and never meets an object in a corner.

Every pixel is a function of (seed, split, class, index) through hsi.io.item_rng, so the bytes
do not depend on `workers`; every file is written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from hsi.io import atomic_write_bytes, atomic_write_text, item_rng
from hsi.sources.record import SourceIndex
from hsi.sources.synthetic_draw import Placement, class_look, draw_habitat, draw_object, to_uint8
from hsi.sources.voc import voc_xml
from hsi.workers import ordered_map

FORMAT_VERSION = 2  # bump when the same parameters would draw different pixels
DONE_FILE = "synth.json"
PARTIAL_FILE = "synth.partial.json"  # written first: proves a half-written folder is ours
OUTPUTS = ("LOC_synset_mapping.txt", "train", "val", "boxes", "hidden_boxes")
HIDDEN_BOXES = "hidden_boxes"  # true boxes of unannotated images; no reader takes them as boxes
ASPECT_JITTER = (0.75, 4 / 3)  # object box aspect relative to the image's
MIN_SIDE = 4.0  # px: no object smaller (size_range starts at 16 px or more)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthParams:
    """Everything that decides the bytes of a synthetic source (not `workers`, not `progress`)."""

    seed: int = 0
    num_classes: int = 10
    train_per_class: int = 700
    val_per_class: int = 50
    habitat_prob: float = 0.7  # P(an image shows its own class's habitat)
    center_sd: float = 0.3  # sd of object centres around the image centre, x the side
    area_range: tuple[float, float] = (0.1, 0.7)  # box area of all objects together / image area
    multi_object_prob: float = 0.15
    multi_object_count: int = 2
    size_range: tuple[int, int] = (96, 160)  # image width and height drawn in this range, px
    # fraction of a class's train images with a box file: one number for every class, or
    # [low, high] from which each class draws its own (ImageNet: ~42% overall, uneven per class)
    train_box_fraction: float | tuple[float, float] = (0.3, 0.55)
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        # Normalise what Hydra hands over (ListConfig, str numbers) so equality and JSON are exact.
        for name, kind in (
            ("seed", int),
            ("num_classes", int),
            ("train_per_class", int),
            ("val_per_class", int),
            ("multi_object_count", int),
            ("jpeg_quality", int),
            ("habitat_prob", float),
            ("center_sd", float),
            ("multi_object_prob", float),
        ):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "area_range", tuple(float(v) for v in self.area_range))
        object.__setattr__(self, "size_range", tuple(int(v) for v in self.size_range))
        fraction = self.train_box_fraction
        if isinstance(fraction, (int, float, str)):
            fraction = float(fraction)  # one value for all classes: stored as given (a number)
        else:
            fraction = tuple(float(v) for v in fraction)
        object.__setattr__(self, "train_box_fraction", fraction)
        self._check()

    def _check(self) -> None:
        problems = []
        if not 1 <= self.num_classes <= 10_000_000:  # wnids are n + 8 digits from n90000000
            problems.append(f"num_classes={self.num_classes} must lie in [1, 10000000]")
        if self.train_per_class < 0 or self.val_per_class < 0:
            problems.append("train_per_class and val_per_class must be >= 0")
        for name in ("habitat_prob", "multi_object_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} must lie in [0, 1]")
        low, high = self.box_fraction_range
        if isinstance(self.train_box_fraction, tuple) and len(self.train_box_fraction) != 2:
            problems.append(
                f"train_box_fraction={list(self.train_box_fraction)} must be one number or [low, high]"
            )
        elif not 0.0 <= low <= high <= 1.0:
            problems.append(
                f"train_box_fraction={self.to_json()['train_box_fraction']} must lie in [0, 1] "
                "(a range: [low, high] with low <= high)"
            )
        if self.center_sd < 0:
            problems.append(f"center_sd={self.center_sd} must be >= 0")
        if len(self.area_range) != 2 or not 0.0 < self.area_range[0] <= self.area_range[1] <= 1.0:
            problems.append(
                f"area_range={list(self.area_range)} must be [low, high] with 0 < low <= high <= 1"
            )
        if len(self.size_range) != 2 or not 16 <= self.size_range[0] <= self.size_range[1]:
            problems.append(
                f"size_range={list(self.size_range)} must be [low, high] with 16 <= low <= high"
            )
        if self.multi_object_count < 2:
            problems.append(f"multi_object_count={self.multi_object_count} must be >= 2")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality={self.jpeg_quality} must lie in [1, 100]")
        if problems:
            raise ValueError("synthetic source: " + "; ".join(problems))

    @property
    def box_fraction_range(self) -> tuple[float, float]:
        f = self.train_box_fraction
        if isinstance(f, tuple):
            return (f[0], f[-1]) if f else (0.0, -1.0)
        return f, f

    def class_box_fraction(self, wnid: str) -> float:
        """The fraction of this class's train images that carry a box file (seeded by the wnid)."""
        low, high = self.box_fraction_range
        if low == high:
            return low
        return low + (high - low) * float(
            item_rng(self.seed, "synthetic", "box-fraction", wnid).random()
        )

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


LOOK_KEYS = tuple(
    k
    for k in SynthParams.__dataclass_fields__
    if k not in ("seed", "num_classes", "train_per_class", "val_per_class")
)


def wnid_of(k: int) -> str:
    """Synthetic WordNet-like ids that sort in class order and cannot clash with ImageNet's."""
    return f"n{90000000 + k:08d}"


@dataclass(frozen=True)
class Item:
    """One image to write; its pixels depend on (seed, split, class, index) only."""

    split: str
    label: int
    index: int
    stem: str  # file stem, which is also the ImageNet image id
    with_box: bool


def plan_items(p: SynthParams) -> list[Item]:
    """Every image of the source, in sorted (split, class, index) order."""
    items = []
    for k in range(p.num_classes):
        wnid = wnid_of(k)
        n_boxed = round(p.class_box_fraction(wnid) * p.train_per_class)
        boxed = set(
            item_rng(p.seed, "synthetic", "train-boxes", wnid)
            .permutation(p.train_per_class)[:n_boxed]
            .tolist()
        )
        items += [
            Item("train", k, i, f"{wnid}_{i + 1}", i in boxed) for i in range(p.train_per_class)
        ]
    # Val files are numbered in a seeded shuffled order, so the number does not reveal the class.
    numbers = (
        item_rng(p.seed, "synthetic", "val-order").permutation(p.num_classes * p.val_per_class) + 1
    )
    for k in range(p.num_classes):
        for i in range(p.val_per_class):
            number = int(numbers[k * p.val_per_class + i])
            items.append(Item("val", k, i, f"ILSVRC2012_val_{number:08d}", True))
    return items


def image_path(out: Path, item: Item) -> Path:
    if item.split == "train":
        return out / "train" / wnid_of(item.label) / f"{item.stem}.JPEG"
    return out / "val" / f"{item.stem}.JPEG"


def box_path(out: Path, item: Item) -> Path:
    """Where the item's boxes go: the annotation, or the hidden truth of an unannotated image."""
    folder = out / ("boxes" if item.with_box else HIDDEN_BOXES) / item.split
    if item.split == "train":
        folder = folder / wnid_of(item.label)
    return folder / f"{item.stem}.xml"


def _place_objects(
    p: SynthParams, rng: np.random.Generator, width: int, height: int
) -> list[Placement]:
    """ImageNet's biases: large boxes near the centre, sometimes several side by side."""
    count = p.multi_object_count if rng.random() < p.multi_object_prob else 1
    area = rng.uniform(*p.area_range) / count  # area_range bounds all objects of the image together
    along_x = width >= height  # several objects line up along the longer side
    placements = []
    for j in range(count):
        # Box aspect follows the image's, jittered, so a box of any area in range fits the image.
        rho = math.exp(rng.uniform(math.log(ASPECT_JITTER[0]), math.log(ASPECT_JITTER[1])))
        # At least MIN_SIDE px, so that even a tiny area_range leaves pixels to draw and box.
        w = max(min(1.0, math.sqrt(area * rho)) * width, MIN_SIDE)
        h = max(min(1.0, math.sqrt(area / rho)) * height, MIN_SIDE)
        shift = (j - (count - 1) / 2) * (w if along_x else h)
        cx = width / 2 + p.center_sd * width * rng.standard_normal() + (shift if along_x else 0.0)
        cy = height / 2 + p.center_sd * height * rng.standard_normal() + (0.0 if along_x else shift)
        cx = min(max(cx, w / 2), width - w / 2)  # clipped so that the whole object is in the image
        cy = min(max(cy, h / 2), height - h / 2)
        placements.append(Placement(cx - w / 2, cy - h / 2, w, h))
    return placements


def render_item(
    p: SynthParams, item: Item
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], int]:
    """(uint8 RGB image, tight boxes, habitat class) of one item; fixed by (seed, split, class, index)."""
    rng = item_rng(p.seed, "synthetic", item.split, wnid_of(item.label), item.index)
    width, height = (int(v) for v in rng.integers(p.size_range[0], p.size_range[1] + 1, size=2))
    habitat = item.label
    if p.num_classes > 1 and rng.random() >= p.habitat_prob:
        habitat = int(rng.integers(p.num_classes - 1))
        habitat += habitat >= item.label  # uniform over the other classes
    canvas = draw_habitat(class_look(habitat, p.num_classes), rng, width, height)
    look = class_look(item.label, p.num_classes)
    boxes = [
        box
        for place in _place_objects(p, rng, width, height)
        if (box := draw_object(canvas, look, place, rng)) is not None
    ]
    return to_uint8(canvas), boxes, habitat


def item_voc_xml(
    item: Item, width: int, height: int, boxes: Sequence[tuple[int, int, int, int]]
) -> bytes:
    """The item's annotation file, laid out like ImageNet's."""
    wnid = wnid_of(item.label)
    folder = wnid if item.split == "train" else "val"
    objects = [(wnid, tuple(int(v) for v in box)) for box in boxes]
    return voc_xml(item.stem, (width, height), objects, folder).encode("utf-8")


def _write_item(_state: None, task: tuple[SynthParams, str, Item, bool]) -> None:
    """Render and write one item; with `resume`, files already there are kept (writes are atomic)."""
    p, out_str, item, resume = task
    out = Path(out_str)
    jpeg, xml = image_path(out, item), box_path(out, item)
    if resume and jpeg.exists() and xml.exists():
        return
    pixels, boxes, _ = render_item(p, item)
    buf = io.BytesIO()
    # PIL writes no timestamp into a JPEG: the same pixels give the same bytes.
    Image.fromarray(pixels).save(buf, format="JPEG", quality=p.jpeg_quality)
    atomic_write_bytes(jpeg, buf.getvalue())
    atomic_write_bytes(xml, item_voc_xml(item, pixels.shape[1], pixels.shape[0], boxes))


def _init_worker() -> None:
    # One thread per process: the pool already uses the cores, and the images are small.
    cv2.setNumThreads(1)


def synset_mapping(num_classes: int) -> str:
    looks = [class_look(k, num_classes) for k in range(num_classes)]
    return "".join(f"{wnid_of(x.index)} {x.name}, {x.description}\n" for x in looks)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    )


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path}: unreadable ({e}); delete the folder {path.parent} and generate again"
        ) from e


def _prepare(out: Path, marker: dict[str, Any], out_key: str) -> bool:
    """Decide what to do with `out`: True = complete already; resume or clear a partial one."""
    done = out / DONE_FILE
    if done.exists():
        old = _read_marker(done)
        if old == {**marker, "counts": old.get("counts")}:
            return True
        raise FileExistsError(
            f"{done} holds a synthetic source made with other parameters "
            f"({_differences(old.get('params', {}), marker['params']) or 'generator version differs'}); "
            f"choose another {out_key} or delete {out}"
        )
    partial = out / PARTIAL_FILE
    if partial.exists():
        if _read_marker(partial) != marker:
            # Our own half-written folder with other parameters: its files would be stale.
            print(f"{partial}: an interrupted run with other parameters; clearing it")
            for name in OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
    else:
        found = [name for name in OUTPUTS if (out / name).exists()]
        if found:
            raise FileExistsError(
                f"{out} already holds {', '.join(found)} but no {DONE_FILE}: it is not a synthetic "
                f"source written here; choose another {out_key} or delete those"
            )
    atomic_write_text(partial, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return False


def write_synthetic(
    out: str | Path,
    *,
    seed: int = 0,
    num_classes: int = 10,
    train_per_class: int = 700,
    val_per_class: int = 50,
    workers: int = 1,
    progress: bool = True,
    out_key: str = "out",
    **look: Any,
) -> Path:
    """Write the synthetic source under `out` (ImageNet's layout) and return `out`.

    `out_key` is the config key that set `out` (`out` for hsi-synth, `source.root` when a source
    config generates it), so that an error names the key the user has to change.

    `look` takes the keys of LOOK_KEYS (habitat_prob, center_sd, area_range, multi_object_prob,
    multi_object_count, size_range, train_box_fraction, jpeg_quality). A complete `out` with the
    same parameters is left as it is; one with other parameters raises FileExistsError.
    """
    unknown = sorted(set(look) - set(LOOK_KEYS))
    if unknown:
        raise TypeError(
            f"write_synthetic: unknown keys {unknown}; known look keys: {list(LOOK_KEYS)}"
        )
    params = SynthParams(seed, num_classes, train_per_class, val_per_class, **look)
    out = Path(out)
    marker = {"format_version": FORMAT_VERSION, "params": params.to_json()}
    if _prepare(out, marker, out_key):
        log.info("%s: synthetic source already complete with these parameters", out / DONE_FILE)
        return out

    atomic_write_text(out / "LOC_synset_mapping.txt", synset_mapping(num_classes))
    for folder in ("train", "val", "boxes/train", "boxes/val"):
        (out / folder).mkdir(parents=True, exist_ok=True)  # the reader wants them even when empty
    items = plan_items(params)
    tasks = [(params, str(out), item, True) for item in items]
    written = ordered_map(
        _write_item,
        tasks,
        workers=workers,
        init=_init_worker if workers > 1 else None,
        progress=progress,
        desc=f"synthetic -> {out}",
        unit="img",
        chunk=32,
    )
    for _ in written:
        pass

    counts = {
        "classes": num_classes,
        "train_images": sum(i.split == "train" for i in items),
        "train_with_boxes": sum(i.split == "train" and i.with_box for i in items),
        "val_images": sum(i.split == "val" for i in items),
    }
    atomic_write_text(
        out / DONE_FILE, json.dumps({**marker, "counts": counts}, indent=2, sort_keys=True) + "\n"
    )
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return out


def read_hidden_boxes(out: str | Path) -> dict[str, tuple[tuple[float, float, float, float], ...]]:
    """{ImageRecord key: true boxes} of the train images written without a box file.

    What a detector run on those images should find (hsi.sources.imagenet never reads them).
    """
    from hsi.sources.voc import parse_voc

    found = {}
    for xml in sorted((Path(out) / HIDDEN_BOXES / "train").glob("*/*.xml")):
        objects = parse_voc(xml).objects
        found[f"train/{xml.stem}"] = tuple(tuple(float(v) for v in o.box) for o in objects)
    return found


def read_counts(out: str | Path) -> dict[str, int]:
    """The counts recorded in a complete source's synth.json."""
    path = Path(out) / DONE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {out} is not a complete synthetic source")
    return _read_marker(path)["counts"]


class SyntheticSource:
    """The synthetic source as a source component: generate once, then read like ImageNet."""

    def __init__(
        self,
        root: str | Path,
        seed: int = 0,
        num_classes: int = 10,
        train_per_class: int = 700,
        val_per_class: int = 50,
        workers: int = 1,
        progress: bool = True,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        decode_check: str = "boxed",
        **look: Any,
    ) -> None:
        self.root = Path(root)
        self.generation = dict(
            seed=seed,
            num_classes=num_classes,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            **look,
        )
        self.workers = workers
        self.progress = progress
        # how the generated tree is read back (hsi.sources.imagenet), not what it holds
        self.reading = dict(cache=cache, cache_dir=cache_dir, decode_check=decode_check)

    def load(self) -> SourceIndex:
        """Generate into `root` if needed, then read it back through the ImageNet reader."""
        from hsi.sources.imagenet import ImageNetSource

        write_synthetic(
            self.root,
            workers=self.workers,
            progress=self.progress,
            out_key="source.root",
            **self.generation,
        )
        return ImageNetSource(
            root=self.root, workers=self.workers, progress=self.progress, **self.reading
        ).load()
