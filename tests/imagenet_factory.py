"""Writers of small, deliberately dirty ImageNet-layout trees for the reader's tests.

The factory only writes what a case describes (sizes, boxes as they appear in the files); the
tests work out by hand what the reader must make of it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from hsi.sources.voc import voc_xml  # re-exported for the reader tests

SYNSETS = (
    ("n01440764", "tench, Tinca tinca"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n02012849", "crane"),  # two ImageNet classes share the name "crane"
    ("n03126707", "crane"),
)

TENCH, GOLDFISH, CRANE_BIRD, CRANE_MACHINE = (wnid for wnid, _ in SYNSETS)
CMYK_RED = (0, 255, 255, 0)  # C, M, Y, K: no cyan, full magenta and yellow = red


@dataclass(frozen=True)
class Case:
    """One image file, with the annotation written for it."""

    split: str
    image_id: str
    wnid: str  # class folder (train; val in the per-class layout)
    size: tuple[int, int] = (40, 30)  # real (width, height) of the image file
    kind: str = "rgb"  # rgb | cmyk | gray | png (PNG named .JPEG) | garbage | truncated | text
    objects: tuple[tuple[str, tuple[float, float, float, float]], ...] | None = (
        None  # None: no annotation
    )
    xml_size: tuple[int, int] | None = None  # <size> written in the XML; None = the real size
    filename: str | None = None  # <filename>; None = the image id
    xml: str = "ok"  # ok | malformed
    suffix: str = ".JPEG"


def write_synsets(path: Path, entries=SYNSETS) -> Path:
    """LOC_synset_mapping.txt, deliberately not in wnid order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(f"{wnid} {names}\n" for wnid, names in reversed(entries)), encoding="utf-8"
    )
    return path


def image_bytes(size: tuple[int, int], kind: str = "rgb", color=(200, 40, 40)) -> bytes:
    """Encoded bytes of a small image of one colour (a CMYK tuple for "cmyk", a grey level for "gray")."""
    buf = io.BytesIO()
    if kind == "rgb":
        Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    elif kind == "cmyk":
        Image.new("CMYK", size, CMYK_RED if len(color) != 4 else color).save(
            buf, format="JPEG", quality=95
        )
    elif kind == "gray":
        Image.new("L", size, color if isinstance(color, int) else 90).save(
            buf, format="JPEG", quality=95
        )
    elif kind == "png":
        Image.new("RGB", size, color).save(buf, format="PNG")
    elif kind == "truncated":
        # A noisy image so the body is long; the first third keeps the whole header.
        noise = Image.effect_noise(size, 64).convert("RGB")
        noise.save(buf, format="JPEG", quality=95)
        return buf.getvalue()[: len(buf.getvalue()) // 3]
    elif kind == "garbage":
        return b"\x00\x01 this is not an image at all \xff\xfe" * 4
    elif kind == "text":
        return b"notes left in the class folder\n"
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    return buf.getvalue()


def write_image(path: Path, size: tuple[int, int], kind: str = "rgb", color=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(size, kind, color))
    return path


def _num(v: float) -> str:
    return f"{v:g}"


MALFORMED_XML = "<annotation><filename>x</filename><object><name>n01440764</name><bndbox><xmin>1"


def write_loc_csv(path: Path, rows: dict[str, list]) -> Path:
    """LOC_<split>_solution.csv: ImageId,PredictionString with 'name xmin ymin xmax ymax' repeated.

    The fields are separated by spaces, so a name with spaces ("Tinca tinca") is written with
    underscores ("Tinca_tinca").
    """
    lines = ["ImageId,PredictionString"]
    for image_id in sorted(rows):
        fields = " ".join(
            f"{name.replace(' ', '_')} {' '.join(_num(v) for v in box)}"
            for name, box in rows[image_id]
        )
        lines.append(f"{image_id},{fields} ")  # Kaggle's strings end with a space
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _in_image_pixels(case: Case):
    """What a correct Kaggle row holds for a case: the XML's boxes in the real image's pixels."""
    if case.xml_size is None or case.xml_size == case.size:
        return list(case.objects)
    sx, sy = case.size[0] / case.xml_size[0], case.size[1] / case.xml_size[1]
    return [(n, (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)) for n, b in case.objects]


def write_tree(
    root: Path,
    cases,
    val_layout: str = "flat",
    boxes: str = "xml",
    val_xml_layout: str = "flat",
) -> Path:
    """Write images, annotations and the synset file of `cases` under `root`.

    val_layout: "flat" (val/<id>.JPEG) or "per_class" (val/<wnid>/<id>.JPEG).
    boxes: "xml" (root/boxes/<split>/...) or "csv" (root/LOC_<split>_solution.csv; a malformed-XML
    case gets no row). val_xml_layout: "flat" or "per_class" for root/boxes/val.
    """
    write_synsets(root / "LOC_synset_mapping.txt")
    csv_rows: dict[str, dict[str, list]] = {"train": {}, "val": {}}
    for case in cases:
        per_class = case.split == "train" or val_layout == "per_class"
        image_dir = root / case.split / case.wnid if per_class else root / case.split
        write_image(image_dir / f"{case.image_id}{case.suffix}", case.size, case.kind)
        if case.objects is None and case.xml == "ok":
            continue
        if boxes == "csv":
            if case.xml == "ok":
                csv_rows[case.split][case.image_id] = _in_image_pixels(case)
            continue
        xml_per_class = case.split == "train" or val_xml_layout == "per_class"
        xml_dir = root / "boxes" / case.split / (case.wnid if xml_per_class else "")
        xml_dir.mkdir(parents=True, exist_ok=True)
        text = (
            MALFORMED_XML
            if case.xml == "malformed"
            else voc_xml(
                case.filename or case.image_id, case.xml_size or case.size, case.objects, case.wnid
            )
        )
        (xml_dir / f"{case.image_id}.xml").write_text(text, encoding="utf-8")
    if boxes == "csv":
        for split, rows in csv_rows.items():
            write_loc_csv(root / f"LOC_{split}_solution.csv", rows)
    else:
        for split in ("train", "val"):
            (root / "boxes" / split).mkdir(parents=True, exist_ok=True)
    return root


def _t(image_id: str, wnid: str, **kw) -> Case:
    return Case("train", image_id, wnid, **kw)


def _v(n: int, wnid: str, objects, **kw) -> Case:
    return Case("val", f"ILSVRC2012_val_{n:08d}", wnid, objects=objects, **kw)


# The dirt of ImageNet (see hsi.sources.imagenet), one case each; the tests hold the expected outcome of every case.
TRAIN_CASES = (
    _t(
        "n01440764_1",
        TENCH,
        size=(100, 50),
        xml_size=(200, 100),
        objects=((TENCH, (20, 10, 60, 40)),),
    ),
    _t("n01440764_2", TENCH, size=(80, 60), objects=((TENCH, (40, 30, 10, 5)),)),
    _t("n01440764_3", TENCH, size=(80, 60), objects=((TENCH, (-5, 10, 90, 70)),)),
    _t(
        "n01440764_4",
        TENCH,
        size=(80, 60),
        objects=((TENCH, (10, 10, 10, 30)), (TENCH, (5, 5, 20, 20)), (TENCH, (100, 100, 120, 120))),
    ),
    _t(
        "n01440764_5",
        TENCH,
        size=(64, 48),
        filename="%s",
        objects=((TENCH, (1, 2, 3, 4)), (TENCH, (10, 10, 30, 30))),
    ),
    _t("n01440764_6", TENCH),  # no boxes, like most of ImageNet train
    _t("n01440764_7", TENCH, suffix=".jpg"),  # lower-case extension, no boxes
    _t("notes", TENCH, kind="text", suffix=".txt"),
    _t("n01443537_1", GOLDFISH, size=(60, 40), kind="cmyk", objects=((GOLDFISH, (0, 0, 30, 20)),)),
    _t("n01443537_2", GOLDFISH, size=(50, 40), kind="gray"),
    _t("n01443537_3", GOLDFISH, size=(40, 30), kind="png", objects=((GOLDFISH, (4, 3, 20, 15)),)),
    _t("n01443537_4", GOLDFISH, kind="garbage", objects=((GOLDFISH, (1, 1, 5, 5)),)),
    _t("n01443537_5", GOLDFISH, xml="malformed"),
    _t(
        "n09999999_1", "n09999999", objects=(("n09999999", (1, 1, 5, 5)),)
    ),  # wnid not in the synsets
)

VAL_CASES = (
    _v(1, TENCH, ((TENCH, (2, 2, 20, 20)),)),
    _v(2, GOLDFISH, (("Goldfish", (0, 0, 10, 10)),)),  # human label, other case
    _v(
        3, TENCH, (("Tinca tinca", (1, 1, 5, 5)), (TENCH, (6, 6, 30, 20)))
    ),  # synonym + wnid, two boxes
    _v(4, TENCH, ((TENCH, (1, 1, 5, 5)), (GOLDFISH, (6, 6, 9, 9)))),  # names of two classes
    _v(5, GOLDFISH, (("unicorn", (1, 1, 5, 5)),)),  # unknown name
    _v(6, GOLDFISH, None),  # no annotation
    _v(7, CRANE_BIRD, (("crane", (1, 1, 5, 5)),)),  # ambiguous name
    _v(8, CRANE_MACHINE, ((CRANE_MACHINE, (1, 1, 5, 5)),)),
)
