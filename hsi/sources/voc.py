"""PASCAL-VOC XML annotations as ImageNet ships them (one file per image): parse and write.

`write_voc` writes files laid out like ImageNet's (the synthetic source, tests, benchmarks);
`parse_voc` reads them. fixing the known dirt (a `<size>` that differs from the real image,
swapped or out-of-image coordinates, zero-area boxes) is the reader's job, because it needs the
size of the decoded image. Coordinates are returned exactly as written.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from hsi.sources.record import Box


class VocObject(NamedTuple):
    name: str  # a wnid ("n01440764") or, in some files, a human label ("tench")
    box: Box  # (xmin, ymin, xmax, ymax) as written in the file


@dataclass(frozen=True)
class VocAnnotation:
    filename: str  # <filename>, or the XML file's own stem when it is empty or the literal "%s"
    size: tuple[int, int] | None  # <size> (width, height); None when absent or zero
    objects: list[VocObject] = field(default_factory=list)


def _text(parent: ET.Element, tag: str) -> str | None:
    node = parent.find(tag)
    return None if node is None or node.text is None else node.text.strip()


def _number(parent: ET.Element, tag: str, path: str | os.PathLike, where: str) -> float:
    raw = _text(parent, tag)
    if raw is None:
        raise ValueError(f"{path}: {where} has no <{tag}>")
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{path}: {where} <{tag}> is not a number: {raw!r}") from None


def _size(root: ET.Element, path: str | os.PathLike) -> tuple[int, int] | None:
    node = root.find("size")
    if node is None or _text(node, "width") is None or _text(node, "height") is None:
        return None
    width = _number(node, "width", path, "<size>")
    height = _number(node, "height", path, "<size>")
    if width <= 0 or height <= 0:
        return None  # some tools write 0x0 when they do not know; the image header decides then
    return int(round(width)), int(round(height))


def parse_voc(path: str | os.PathLike) -> VocAnnotation:
    """Parse one VOC XML file; malformed XML or a box without numbers raises ValueError naming the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from e
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")

    filename = _text(root, "filename") or ""
    if not filename or "%s" in filename:
        # Some ImageNet train files hold the unformatted template "%s"; the file's own name is right.
        filename = Path(path).stem

    objects = []
    for i, obj in enumerate(root.findall("object")):
        where = f"object {i}"
        name = _text(obj, "name")
        if not name:
            raise ValueError(f"{path}: {where} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{path}: {where} ({name}) has no <bndbox>")
        box = tuple(
            _number(bndbox, k, path, f"{where} <bndbox>") for k in ("xmin", "ymin", "xmax", "ymax")
        )
        objects.append(VocObject(name, box))
    return VocAnnotation(filename=filename, size=_size(root, path), objects=objects)


def _format_number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def voc_xml(
    filename: str,
    size: tuple[int, int] | None,
    objects: Sequence[tuple[str, Box]],
    folder: str = "",
) -> str:
    """An annotation laid out like ImageNet's (no XML declaration, tab indents, final newline).

    `size` (width, height) or None to leave `<size>` out; `objects` are (name, (xmin, ymin,
    xmax, ymax)), whole numbers written as such and floats in their shortest form.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "ILSVRC_2012"
    if size is not None:
        node = ET.SubElement(root, "size")
        for tag, value in (("width", size[0]), ("height", size[1]), ("depth", 3)):
            ET.SubElement(node, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = _format_number(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"
