"""ImageNet-1k as users have it on disk -> a SourceIndex (paper 000, §3: its CLS-LOC boxes).

Layout (each path can be set on its own; None = the default under `root`):

    <root>/LOC_synset_mapping.txt           classes: "n01440764 tench, Tinca tinca"
    <root>/train/<wnid>/<wnid>_<n>.JPEG     label from the folder
    <root>/val/ILSVRC2012_val_<n>.JPEG      flat: label from the names in the image's boxes
    <root>/val/<wnid>/ILSVRC2012_val_<n>.JPEG   or per class: label from the folder
    boxes, per split: <root>/boxes/<split>/ (VOC XML, flat or in <wnid>/ folders), else
                      <root>/LOC_<split>_solution.csv (Kaggle)

Images and annotations are paired by file stem (the image id). What is read per image is the
header only (see hsi.sources.images); a truncated body is found by the later full decode.

Dirt is handled as follows. Normalised: boxes are rescaled from the XML `<size>` to the real
image size, swapped coordinates are put in order, boxes are clipped to the image; a `<filename>`
of "%s" does not matter because pairing uses the XML's own name. Dropped with a `box_errors`
entry (image kept): boxes of zero area after clipping, non-finite coordinates. Skipped with a
reason (image left out): unreadable header, malformed annotation, several annotation files for
one id, a duplicate image id, a class folder whose wnid is not in the synset file (one skip per
image: a partial copy of ImageNet keeps working), a flat val image whose label cannot be told
(no annotation, unknown or ambiguous name, names of several classes), files that are not
`.JPEG`/`.jpg`, any entry the file system cannot give (a self-looping or dangling link, a class
folder that cannot be listed, an I/O error: one skip naming the error). Images without any box stay in the index with `boxes=()` (most of train).
Every box of an image counts as an object of the image's class, as in ImageNet CLS-LOC, so box
names are used only to label flat val images.

Before the index is returned, the images a recipe may pick are fully decoded (`decode_check`,
hsi.sources.decode_check), and the whole read is cached while the tree's listing is unchanged
(`cache`, `cache_dir`, hsi.sources.index_cache).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hsi.sources.decode_check import check_mode
from hsi.sources.images import ImageReadError, read_size
from hsi.sources.index_cache import default_cache_dir, load_cached
from hsi.sources.kaggle import read_loc_solution
from hsi.sources.record import Box, ClassInfo, ImageRecord, Skip, SourceIndex
from hsi.sources.synsets import SynsetNames, UnknownClassName, read_synsets
from hsi.sources.voc import parse_voc
from hsi.workers import ordered_map

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg")
MIN_TASKS_PER_WORKER = 2000  # fewer images per worker are read in this process
SPLITS = ("train", "val")
_IMAGE_PATTERN = {
    "train": "train/<wnid>/*.JPEG",
    "val": "val/ILSVRC2012_val_*.JPEG or val/<wnid>/*.JPEG",
}
_XML_PATTERN = {"train": "<wnid>/<wnid>_<n>.xml", "val": "ILSVRC2012_val_<n>.xml or <wnid>/*.xml"}
# Where the Kaggle download keeps things, offered as a hint when the defaults are not there.
_KAGGLE_IMAGES = "ILSVRC/Data/CLS-LOC/{split}"
_KAGGLE_XML = "ILSVRC/Annotations/CLS-LOC/{split}"


class SourceLayoutError(FileNotFoundError):
    """The files are not where the configuration says; the message names the path and the key to set."""


@dataclass(frozen=True)
class _ImageFile:
    image_id: str
    path: str  # as opened (root joined)
    rel: str  # POSIX, relative to root
    folder_wnid: str | None  # None for flat val images


@dataclass(frozen=True)
class _Annotation:
    source: str  # relative path of the XML or CSV file, for messages
    objects: list[tuple[str, Box]]
    size: tuple[int, int] | None  # the annotation's own idea of the image size (XML only)


def normalise_boxes(
    boxes: Sequence[Box], image_size: tuple[int, int], annotated_size: tuple[int, int] | None = None
) -> tuple[list[Box], list[tuple[int, str]], Counter]:
    """Boxes in decoded-image pixels: rescaled, ordered, clipped; zero-area ones dropped.

    Returns the kept boxes, (index, reason) for each dropped one, and a count of each fix made.
    """
    width, height = image_size
    sx = sy = 1.0
    if annotated_size is not None and tuple(annotated_size) != (width, height):
        sx, sy = width / annotated_size[0], height / annotated_size[1]
    kept: list[Box] = []
    dropped: list[tuple[int, str]] = []
    fixes: Counter = Counter()
    for i, box in enumerate(boxes):
        if not all(math.isfinite(v) for v in box):
            dropped.append((i, f"box {i} {box} has non-finite coordinates"))
            continue
        x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
        fixes["rescaled"] += (sx, sy) != (1.0, 1.0)
        if x0 > x1 or y0 > y1:
            fixes["swapped"] += 1
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
        clipped = (
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        )
        fixes["clipped"] += clipped != (x0, y0, x1, y1)
        if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
            dropped.append((i, f"box {i} {box} has zero area inside the {width}x{height} image"))
            continue
        kept.append(clipped)
    return kept, dropped, fixes


def _read_one(_state: None, task: tuple[str, str | None]) -> tuple:
    """Worker: the image's header size and its parsed XML, errors as strings (picklable, no raising)."""
    image_path, xml_path = task
    try:
        size = read_size(image_path)
    except ImageReadError as e:
        return None, str(e), None, None
    except OSError as e:  # a link to nowhere, a loop, an I/O error: this image only
        return None, _os_reason(e), None, None
    if xml_path is None:
        return size, None, None, None
    try:
        voc = parse_voc(xml_path)
    except (ValueError, OSError) as e:
        return size, None, None, str(e)
    return size, None, ([(o.name, o.box) for o in voc.objects], voc.size), None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _os_reason(error: OSError) -> str:
    """`unreadable entry (OSError: [Errno 40] Too many levels of symbolic links)`."""
    return f"unreadable entry ({type(error).__name__}: [Errno {error.errno}] {error.strerror or error})"


def _listing(folder: str | os.PathLike) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: e.name)


class ImageNetSource:
    """Reads ImageNet-1k (train + val, boxes from VOC XML or Kaggle CSV) into a SourceIndex."""

    def __init__(
        self,
        root: str | os.PathLike,
        train_dir: str | os.PathLike | None = None,
        val_dir: str | os.PathLike | None = None,
        train_boxes: str | os.PathLike | None = None,
        val_boxes: str | os.PathLike | None = None,
        synsets: str | os.PathLike | None = None,
        workers: int = 1,
        progress: bool = True,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        decode_check: str = "boxed",
    ):
        self.root = Path(root).expanduser()
        self.image_dirs = {
            "train": Path(train_dir).expanduser() if train_dir is not None else self.root / "train",
            "val": Path(val_dir).expanduser() if val_dir is not None else self.root / "val",
        }
        self.explicit_boxes = {
            "train": Path(train_boxes).expanduser() if train_boxes is not None else None,
            "val": Path(val_boxes).expanduser() if val_boxes is not None else None,
        }
        self.synsets = (
            Path(synsets).expanduser()
            if synsets is not None
            else self.root / "LOC_synset_mapping.txt"
        )
        self.workers = max(1, int(workers))
        self.progress = progress
        self.cache = bool(cache)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.decode_check = check_mode(str(decode_check))

    # ---- layout -------------------------------------------------------------------------------

    def _rel(self, path: Path | str) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def _kaggle_hint(self, template: str, split: str) -> str:
        candidate = self.root / template.format(split=split)
        return f"; {candidate} exists (Kaggle layout?)" if candidate.is_dir() else ""

    def _box_source(self, split: str, problems: list[str]) -> Path | None:
        key = f"source.{split}_boxes"
        path = self.explicit_boxes[split]
        what = f"VOC XML files {_XML_PATTERN[split]}, or a Kaggle LOC_{split}_solution.csv"
        if path is not None:
            is_csv = path.suffix.lower() == ".csv"
            if (is_csv and path.is_file()) or (not is_csv and path.is_dir()):
                return path
            kind = "CSV file" if is_csv else "folder"
            problems.append(
                f"expected ImageNet {split} boxes at {path} (a {kind}: {what}); set {key}=<folder or .csv>"
            )
            return None
        folder, csv = self.root / "boxes" / split, self.root / f"LOC_{split}_solution.csv"
        if folder.is_dir():
            return folder
        if csv.is_file():
            return csv
        problems.append(
            f"expected ImageNet {split} boxes at {folder} ({_XML_PATTERN[split]}) or {csv} (Kaggle CSV); "
            f"set {key}=<folder or .csv> or source.root=..." + self._kaggle_hint(_KAGGLE_XML, split)
        )
        return None

    def _check_layout(self) -> dict[str, Path]:
        """Every path needed, checked before anything is read; all problems reported at once."""
        if not self.root.is_dir():
            raise SourceLayoutError(
                f"ImageNet root {self.root} is not a folder; set source.root=<folder holding "
                "train/, val/ and LOC_synset_mapping.txt>"
            )
        problems: list[str] = []
        if not self.synsets.is_file():
            problems.append(
                f"expected the ImageNet class list at {self.synsets} (LOC_synset_mapping.txt, lines like "
                "'n01440764 tench, Tinca tinca'); set source.synsets=... or source.root=..."
            )
        for split in SPLITS:
            if not self.image_dirs[split].is_dir():
                problems.append(
                    f"expected ImageNet {split} images under {self.image_dirs[split]} ({_IMAGE_PATTERN[split]}); "
                    f"set source.{split}_dir=... or source.root=..."
                    + self._kaggle_hint(_KAGGLE_IMAGES, split)
                )
        boxes = {split: self._box_source(split, problems) for split in SPLITS}
        if problems:
            raise SourceLayoutError("ImageNet source layout:\n  " + "\n  ".join(problems))
        return boxes

    # ---- listing ------------------------------------------------------------------------------

    def _list_images(self, split: str, known: set[str], skipped: list[Skip]) -> list[_ImageFile]:
        """Image files of one split, sorted by (image_id, path); duplicates of an id skipped."""
        image_dir = self.image_dirs[split]
        rel_dir = self._rel(image_dir)
        found: list[_ImageFile] = []

        def consider(path: str, rel: str, name: str, folder: str | None) -> None:
            suffix = os.path.splitext(name)[1].lower()
            if suffix == ".xml":
                return  # annotations may share the image folder; they are read as boxes, not images
            if suffix not in IMAGE_SUFFIXES:
                skipped.append(Skip(rel, "not a .JPEG/.jpg file"))
            elif folder is None and split == "train":
                skipped.append(
                    Skip(rel, "train image outside a class folder (train/<wnid>/): label unknown")
                )
            elif folder is not None and folder not in known:
                skipped.append(
                    Skip(
                        rel, f"class folder {folder!r} is not a class of {self._rel(self.synsets)}"
                    )
                )
            else:
                found.append(_ImageFile(os.path.splitext(name)[0], path, rel, folder))

        for entry in _listing(image_dir):
            if _is_hidden(entry.name):
                continue
            rel = f"{rel_dir}/{entry.name}"
            try:
                is_dir = entry.is_dir()
                subs = _listing(entry.path) if is_dir else []
            except OSError as e:  # one entry (or one class folder) only, never the whole read
                skipped.append(Skip(rel, _os_reason(e)))
                continue
            if not is_dir:
                consider(entry.path, rel, entry.name, None)
                continue
            for sub in subs:
                if _is_hidden(sub.name):
                    continue
                sub_rel = f"{rel}/{sub.name}"
                try:
                    sub_is_dir = sub.is_dir()
                except OSError as e:
                    skipped.append(Skip(sub_rel, _os_reason(e)))
                    continue
                if sub_is_dir:
                    skipped.append(
                        Skip(
                            sub_rel,
                            f"folder nested in a class folder; expected {_IMAGE_PATTERN[split]}",
                        )
                    )
                else:
                    consider(sub.path, sub_rel, sub.name, entry.name)

        found.sort(key=lambda f: (f.image_id, f.rel))
        unique: list[_ImageFile] = []
        for f in found:
            if unique and unique[-1].image_id == f.image_id:
                skipped.append(
                    Skip(f.rel, f"duplicate image id {f.image_id}; kept {unique[-1].rel}")
                )
            else:
                unique.append(f)
        return unique

    def _index_xml(self, folder: Path, skipped: list[Skip]) -> dict[str, list[str]]:
        """image id -> XML paths, from files in `folder` and in its subfolders (one level)."""
        index: dict[str, list[str]] = {}
        for entry in _listing(folder):
            try:
                entries = _listing(entry.path) if entry.is_dir() else [entry]
            except OSError as e:
                skipped.append(Skip(self._rel(entry.path), _os_reason(e)))
                continue
            for e in entries:
                stem, suffix = os.path.splitext(e.name)
                if suffix.lower() != ".xml" or _is_hidden(e.name):
                    continue
                try:
                    is_file = e.is_file()
                except OSError as error:
                    skipped.append(Skip(self._rel(e.path), _os_reason(error)))
                    continue
                if is_file:
                    index.setdefault(stem, []).append(e.path)
        return index

    # ---- reading ------------------------------------------------------------------------------

    def _map(self, tasks: list, desc: str) -> list:
        """_read_one over tasks, in order; in worker processes when workers > 1 (same result)."""
        chunk = max(1, min(512, len(tasks) // (self.workers * 8)))
        # A header read takes well under a millisecond and a spawned worker a second or more to
        # start: small reads stay in this process (the result is the same either way).
        workers = self.workers if len(tasks) >= MIN_TASKS_PER_WORKER * self.workers else 1
        return list(
            ordered_map(
                _read_one,
                tasks,
                workers=workers,
                progress=self.progress,
                desc=desc,
                unit="img",
                chunk=chunk,
            )
        )

    def _label(self, image: _ImageFile, annotation: _Annotation | None, names: SynsetNames) -> str:
        """The image's wnid; raises UnknownClassName with the reason when it cannot be told."""
        if image.folder_wnid is not None:
            return image.folder_wnid
        if annotation is None or not annotation.objects:
            raise UnknownClassName(
                "label unknown: flat val image without an annotation naming its class"
            )
        wnids = sorted({names.resolve(name) for name, _ in annotation.objects})
        if len(wnids) > 1:
            raise UnknownClassName(
                f"label unknown: {annotation.source} names several classes ({', '.join(wnids)})"
            )
        return wnids[0]

    def _read_split(
        self,
        split: str,
        box_source: Path,
        classes: list[ClassInfo],
        names: SynsetNames,
        index: SourceIndex,
        fixes: Counter,
    ) -> None:
        label_of = {c.wnid: c.index for c in classes}
        images = self._list_images(split, set(label_of), index.skipped)
        xml_index: dict[str, list[str]] = {}
        csv_boxes: dict[str, list[tuple[str, Box]]] = {}
        csv_errors: dict[str, str] = {}
        if box_source.suffix.lower() == ".csv":
            csv_boxes = read_loc_solution(box_source, errors=csv_errors)
        else:
            xml_index = self._index_xml(box_source, index.skipped)
        known_ids = {image.image_id for image in images}
        orphans = sum(1 for i in (*xml_index, *csv_boxes) if i not in known_ids)
        if orphans:
            log.info(
                "%s: %d annotations have no image in %s",
                box_source,
                orphans,
                self.image_dirs[split],
            )

        tasks = []
        for image in images:
            xml = xml_index.get(image.image_id, [None])
            tasks.append((image.path, xml[0] if len(xml) == 1 else None))
        results = self._map(tasks, desc=f"ImageNet {split}")

        for image, (size, size_error, parsed, xml_error) in zip(images, results, strict=True):
            xml_paths = xml_index.get(image.image_id, [])
            if size_error is not None:
                index.skipped.append(Skip(image.rel, size_error))
                continue
            if len(xml_paths) > 1:
                listed = ", ".join(self._rel(p) for p in xml_paths)
                index.skipped.append(Skip(image.rel, f"several annotation files: {listed}"))
                continue
            if xml_error is not None:
                index.skipped.append(Skip(image.rel, f"annotation unreadable: {xml_error}"))
                continue
            if image.image_id in csv_errors:
                index.skipped.append(
                    Skip(image.rel, f"annotation unreadable: {csv_errors[image.image_id]}")
                )
                continue
            annotation = None
            if parsed is not None:
                annotation = _Annotation(self._rel(xml_paths[0]), parsed[0], parsed[1])
            elif image.image_id in csv_boxes:
                annotation = _Annotation(self._rel(box_source), csv_boxes[image.image_id], None)
            try:
                wnid = self._label(image, annotation, names)
            except UnknownClassName as e:
                index.skipped.append(Skip(image.rel, str(e)))
                continue
            boxes: list[Box] = []
            if annotation is not None:
                raw = [box for _, box in annotation.objects]
                boxes, dropped, image_fixes = normalise_boxes(raw, size, annotation.size)
                fixes.update(image_fixes)
                index.box_errors.extend(
                    Skip(image.rel, f"{annotation.source}: {why}; dropped") for _, why in dropped
                )
            index.records.append(
                ImageRecord(
                    image.image_id,
                    split,
                    wnid,
                    label_of[wnid],
                    image.rel,
                    size[0],
                    size[1],
                    tuple(boxes),
                )
            )

    def load(self) -> SourceIndex:
        """The index (see `read`), decode-checked; from the cache while the tree is unchanged."""
        box_sources = self._check_layout()
        paths = {"root": self.root, "synsets": self.synsets}
        for split in SPLITS:
            paths[f"{split}_dir"] = self.image_dirs[split]
            paths[f"{split}_boxes"] = box_sources[split]
        return load_cached(
            lambda: self.read(box_sources),
            self.root,
            paths,
            cache_dir=self.cache_dir if self.cache else None,
            decode_check=self.decode_check,
            workers=self.workers,
            progress=self.progress,
        )

    def read(self, box_sources: dict[str, Path] | None = None) -> SourceIndex:
        """List, read headers and annotations, normalise boxes; records sorted by (split, image_id)."""
        box_sources = box_sources or self._check_layout()
        classes = read_synsets(self.synsets)
        index = SourceIndex(root=self.root, classes=classes, records=[])
        names = SynsetNames(classes)
        fixes: Counter = Counter()
        for split in SPLITS:
            self._read_split(split, box_sources[split], classes, names, index, fixes)
        index.records.sort(key=lambda r: (r.split, r.image_id))
        index.skipped.sort(key=lambda s: (s.path, s.reason))
        index.box_errors.sort(key=lambda s: (s.path, s.reason))
        log.info(
            "ImageNet %s: %s; %d skipped, %d boxes dropped; boxes fixed: %s",
            self.root,
            index.counts(),
            len(index.skipped),
            len(index.box_errors),
            dict(sorted(fixes.items())),
        )
        return index


__all__ = ["ImageNetSource", "SourceLayoutError", "normalise_boxes"]
