"""The synthetic source: ImageNet's layout, honest boxes, the biases, the cues, determinism, reruns.

Expected values come from the parameters and from the written files (parsed here with
xml.etree and PIL), never from the generator's own bookkeeping.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid

import hsi.sources.synthetic as synthetic
from hsi.io import sha256_file
from hsi.sources.synthetic import SyntheticSource, write_synthetic

K = 10
TRAIN, VAL = 30, 6
LOOK = synthetic.SynthParams()  # the default look
MULTI = 0.3  # above the default, so that a small source holds enough multi-object images
GREY = 12  # chroma (max - min of RGB) below this is object; every habitat keeps >= 0.3 * 0.3 * 255


def wnid(k: int) -> str:
    return f"n{90000000 + k:08d}"


def hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def parse(xml_path: Path) -> dict:
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    return {
        "root": root.tag,
        "folder": root.findtext("folder"),
        "filename": root.findtext("filename"),
        "size": (
            int(size.findtext("width")),
            int(size.findtext("height")),
            int(size.findtext("depth")),
        ),
        "objects": [
            (
                o.findtext("name"),
                tuple(int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")),
            )
            for o in root.findall("object")
        ],
    }


def load_items(root: Path, split: str) -> list[dict]:
    """Every annotated image of a split: class, pixels, boxes, read from the files only."""
    items = []
    for xml in sorted((root / "boxes" / split).rglob("*.xml")):
        ann = parse(xml)
        names = {name for name, _ in ann["objects"]}
        assert len(names) == 1, xml
        name = names.pop()
        image = root / ("train/" + name if split == "train" else "val") / f"{xml.stem}.JPEG"
        pixels = np.asarray(Image.open(image).convert("RGB"))
        items.append(
            {
                "stem": xml.stem,
                "label": int(name[1:]) - 90000000,
                "pixels": pixels,
                "boxes": [b for _, b in ann["objects"]],
            }
        )
    return items


def chroma(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2).astype(np.int16)


def outside_boxes(shape: tuple[int, ...], boxes) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0, 0) : y1, max(x0, 0) : x1] = False  # a negative start would wrap around
    return mask


def habitat_hue_class(pixels: np.ndarray, boxes) -> int:
    """The class whose habitat hue (k / K of the hue circle) is nearest the background's mean hue."""
    hue = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV_FULL)[..., 0][outside_boxes(pixels.shape, boxes)]
    angle = hue.astype(np.float64) / 256 * 2 * np.pi
    mean = math.atan2(np.sin(angle).mean(), np.cos(angle).mean()) % (2 * np.pi)
    distance = [abs((mean - 2 * np.pi * k / K + np.pi) % (2 * np.pi) - np.pi) for k in range(K)]
    return int(np.argmin(distance))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Default look (habitat_prob 0.7), more multi-object images, 10 classes x (30 + 6)."""
    out = tmp_path_factory.mktemp("synthetic") / "src"
    write_synthetic(
        out,
        seed=3,
        num_classes=K,
        train_per_class=TRAIN,
        val_per_class=VAL,
        multi_object_prob=MULTI,
        train_box_fraction=1.0,  # every image annotated: the tests below read each one's boxes
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def uniform(tmp_path_factory) -> Path:
    """Backgrounds drawn uniformly over all classes (habitat_prob = 1/K): the object is the only cue."""
    out = tmp_path_factory.mktemp("synthetic") / "uniform"
    write_synthetic(
        out,
        seed=4,
        num_classes=K,
        train_per_class=TRAIN,
        val_per_class=0,
        habitat_prob=1 / K,
        multi_object_prob=0.0,
        train_box_fraction=1.0,
        progress=False,
    )
    return out


# ---- layout ------------------------------------------------------------------------------------


def test_layout_matches_imagenet(source: Path) -> None:
    lines = (source / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in lines] == [wnid(k) for k in range(K)]
    names = [line.split(" ", 1)[1].split(",")[0] for line in lines]
    assert len(set(names)) == K and all(n.startswith("striped ") for n in names)

    for k in range(K):
        expected = {f"{wnid(k)}_{n}" for n in range(1, TRAIN + 1)}
        assert {p.stem for p in (source / "train" / wnid(k)).glob("*.JPEG")} == expected
        assert {p.stem for p in (source / "boxes/train" / wnid(k)).glob("*.xml")} == expected
    expected_val = {f"ILSVRC2012_val_{n:08d}" for n in range(1, K * VAL + 1)}
    assert {p.name for p in (source / "val").iterdir()} == {f"{s}.JPEG" for s in expected_val}
    assert {p.name for p in (source / "boxes/val").iterdir()} == {f"{s}.xml" for s in expected_val}
    assert json.loads((source / "synth.json").read_text())["params"]["seed"] == 3
    assert not (source / "synth.partial.json").exists()


def test_xml_is_imagenet_voc(source: Path) -> None:
    val_classes = []
    for xml in sorted((source / "boxes").rglob("*.xml")):
        ann = parse(xml)
        split = xml.relative_to(source / "boxes").parts[0]
        folder = "val" if split == "val" else xml.parent.name
        image = source / split / ("" if split == "val" else folder) / f"{xml.stem}.JPEG"
        with Image.open(image) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert ann["size"] == (*im.size, 3)
        assert (ann["root"], ann["folder"], ann["filename"]) == ("annotation", folder, xml.stem)
        assert ann["objects"], xml
        names = {name for name, _ in ann["objects"]}
        assert len(names) == 1
        if split == "train":
            assert names == {xml.parent.name}
        else:
            val_classes.append(int(names.pop()[1:]) - 90000000)
    # every class has its val images, and the file number does not reveal the class
    assert sorted(val_classes) == sorted(list(range(K)) * VAL)
    assert val_classes != sorted(val_classes)


# ---- boxes and content -----------------------------------------------------------------------


def test_boxes_inside_and_tight(source: Path) -> None:
    all_gaps: list[int] = []
    for item in load_items(source, "train") + load_items(source, "val"):
        pixels, boxes = item["pixels"], item["boxes"]
        height, width = pixels.shape[:2]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        if len(boxes) != 1:
            continue
        (x0, y0, x1, y1), grey = boxes[0], chroma(pixels) < GREY
        # The background never looks like the object; inside the box, much of it does.
        assert not grey[outside_boxes(pixels.shape, [(x0 - 2, y0 - 2, x1 + 2, y1 + 2)])].any()
        assert grey[y0:y1, x0:x1].mean() > 0.2
        # Tight: the grey evidence reaches close to every side of the box (JPEG's colour blur
        # hides the last pixels of sharp tips, hence the few pixels of slack).
        ys, xs = np.nonzero(grey)
        gaps = [xs.min() - x0, ys.min() - y0, x1 - 1 - xs.max(), y1 - 1 - ys.max()]
        assert max(gaps) <= 12, (item["stem"], gaps)
        all_gaps += gaps
    assert len(all_gaps) > 4 * 200 and np.mean(all_gaps) < 3


def test_habitat_follows_its_probability(source: Path, uniform: Path) -> None:
    items = load_items(source, "train") + load_items(source, "val")
    same = np.mean([habitat_hue_class(i["pixels"], i["boxes"]) == i["label"] for i in items])
    assert abs(same - LOOK.habitat_prob) < 0.06  # binomial sd over 360 images: 0.024
    items = load_items(uniform, "train")
    same = np.mean([habitat_hue_class(i["pixels"], i["boxes"]) == i["label"] for i in items])
    assert abs(same - 0.1) < 0.06


def test_imagenet_like_biases(source: Path) -> None:
    items = load_items(source, "train") + load_items(source, "val")
    centres, image_areas, counts, sizes = [], [], [], []
    for item in items:
        height, width = item["pixels"].shape[:2]
        sizes.append((width, height))
        counts.append(len(item["boxes"]))
        areas = [(x1 - x0) * (y1 - y0) / (width * height) for x0, y0, x1, y1 in item["boxes"]]
        image_areas.append(np.mean(areas))
        centres += [
            ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height) for x0, y0, x1, y1 in item["boxes"]
        ]
        if len(item["boxes"]) == 1:  # a lone object covers area_range, up to whole pixels and tips
            assert LOOK.area_range[0] * 0.85 <= areas[0] <= LOOK.area_range[1] + 0.03
    centres = np.array(centres)
    assert np.abs(centres.mean(axis=0) - 0.5).max() < 0.03
    assert centres.std(axis=0).min() > 0.03  # spread around the centre, not pinned to it
    # all objects of an image share area_range: E = (1 - p) * mid + p * mid / 2
    mid = sum(LOOK.area_range) / 2
    assert abs(np.mean(image_areas) - ((1 - MULTI) * mid + MULTI * mid / 2)) < 0.04
    assert set(counts) == {1, 2} and abs(np.mean(np.array(counts) == 2) - MULTI) < 0.08
    widths, heights = np.array(sizes).T
    assert (
        widths.min() >= 96 and heights.min() >= 96 and widths.max() <= 160 and heights.max() <= 160
    )
    assert len(set(widths)) > 30 and len(set(heights)) > 30
    aspect = widths / heights
    assert aspect.min() < 0.8 and aspect.max() > 1.25


# ---- the cues: the object identifies the class, so does the habitat, shrinking hurts --------------


def crop_features(item: dict, side: int) -> np.ndarray:
    """FFT magnitude of the grey box crop, shrunk to `side` px and brought back to 32 px."""
    x0, y0, x1, y1 = item["boxes"][0]
    grey = cv2.cvtColor(item["pixels"][y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA)
    grey = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_LINEAR)
    return np.log1p(np.abs(np.fft.fft2(grey - grey.mean()))).ravel()


def split_train_test(items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([i["label"] for i in items])
    number = np.array([int(i["stem"].rsplit("_", 1)[1]) for i in items])
    return labels, number <= 20  # 20 per class to fit, 10 to test


def test_object_alone_identifies_class_and_shrinking_hurts(uniform: Path) -> None:
    items = load_items(uniform, "train")
    labels, fit = split_train_test(items)

    def accuracy(side: int) -> float:
        features = np.stack([crop_features(i, side) for i in items])
        return NearestCentroid().fit(features[fit], labels[fit]).score(features[~fit], labels[~fit])

    full, shrunk = accuracy(32), accuracy(8)
    assert full > 0.8  # chance: 0.1; the background carries nothing here
    assert shrunk < full - 0.3  # the fine stripes are gone at 8 px


def background_accuracy(items: list[dict]) -> float:
    labels, fit = split_train_test(items)
    features = []
    for item in items:
        hsv = cv2.cvtColor(item["pixels"], cv2.COLOR_RGB2HSV_FULL)
        angle = (
            hsv[..., 0][outside_boxes(hsv.shape, item["boxes"])].astype(np.float64)
            / 256
            * 2
            * np.pi
        )
        features.append([np.cos(angle).mean(), np.sin(angle).mean()])
    features = np.array(features)
    model = LogisticRegression(max_iter=1000).fit(features[fit], labels[fit])
    return model.score(features[~fit], labels[~fit])


def test_background_alone_predicts_class(source: Path, uniform: Path) -> None:
    # habitat_prob 0.7, read by a linear model of the mean hue: well above the control's 0.3
    assert background_accuracy(load_items(source, "train")) > 0.45
    assert background_accuracy(load_items(uniform, "train")) < 0.3  # control: no habitat cue


# ---- read back through the ImageNet reader ----------------------------------------------------------


def test_read_back_by_imagenet_reader(source: Path) -> None:
    index = SyntheticSource(
        source,
        seed=3,
        num_classes=K,
        train_per_class=TRAIN,
        val_per_class=VAL,
        multi_object_prob=MULTI,
        train_box_fraction=1.0,
        progress=False,
    ).load()
    assert index.skipped == [] and index.box_errors == []
    assert index.wnids == [wnid(k) for k in range(K)]
    assert index.counts() == {
        "train": {"images": K * TRAIN, "with_boxes": K * TRAIN, "without_boxes": 0},
        "val": {"images": K * VAL, "with_boxes": K * VAL, "without_boxes": 0},
    }
    for record in index.records:
        ann = parse(
            source
            / "boxes"
            / record.split
            / ("" if record.split == "val" else record.wnid)
            / f"{record.image_id}.xml"
        )
        assert (
            record.wnid == ann["objects"][0][0] and record.label == int(record.wnid[1:]) - 90000000
        )
        assert [tuple(b) for b in record.boxes] == [tuple(map(float, b)) for _, b in ann["objects"]]
        assert (record.width, record.height) == ann["size"][:2]


def test_source_generates_when_missing(tmp_path: Path) -> None:
    index = SyntheticSource(
        tmp_path / "new",
        num_classes=3,
        train_per_class=4,
        val_per_class=2,
        train_box_fraction=0.5,
        progress=False,
    ).load()
    assert index.counts() == {
        "train": {"images": 12, "with_boxes": 6, "without_boxes": 6},
        "val": {"images": 6, "with_boxes": 6, "without_boxes": 0},
    }
    assert index.skipped == [] and index.box_errors == []


# ---- determinism and reruns -------------------------------------------------------------------


SMALL = dict(num_classes=4, train_per_class=6, val_per_class=3, progress=False)


def test_workers_do_not_change_bytes_and_seed_does(tmp_path: Path) -> None:
    one = hashes(write_synthetic(tmp_path / "one", seed=0, workers=1, **SMALL))
    two = hashes(write_synthetic(tmp_path / "two", seed=0, workers=2, **SMALL))
    assert one == two and len(one) == 2 * 4 * (6 + 3) + 2
    other = hashes(write_synthetic(tmp_path / "other", seed=1, **SMALL))
    jpegs = [k for k in one if k.endswith(".JPEG")]
    assert all(one[k] != other[k] for k in jpegs)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the default source written twice: minutes on a loaded CPU
def test_default_source_is_byte_identical_for_any_workers(tmp_path: Path) -> None:
    one = hashes(write_synthetic(tmp_path / "one", workers=1, progress=False))
    two = hashes(write_synthetic(tmp_path / "two", workers=2, progress=False))
    assert len(one) == 10 * (700 + 50) * 2 + 2
    assert one == two


def test_rerun_is_a_no_op(source: Path, caplog) -> None:
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    caplog.set_level("INFO", logger="hsi.sources.synthetic")
    write_synthetic(
        source,
        seed=3,
        num_classes=K,
        train_per_class=TRAIN,
        val_per_class=VAL,
        multi_object_prob=MULTI,
        train_box_fraction=1.0,
        workers=2,
        progress=False,
    )
    assert "already complete with these parameters" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before


def test_other_parameters_on_a_complete_source_fail(source: Path) -> None:
    with pytest.raises(FileExistsError) as error:
        write_synthetic(
            source,
            seed=3,
            num_classes=K,
            train_per_class=TRAIN,
            val_per_class=VAL,
            multi_object_prob=MULTI,
            train_box_fraction=1.0,
            habitat_prob=0.5,
            progress=False,
        )
    message = str(error.value)
    assert str(source / "synth.json") in message and "habitat_prob" in message
    assert "choose another out " in message
    # generated through a source config, the error names the key that points there
    with pytest.raises(FileExistsError, match="choose another source.root "):
        SyntheticSource(
            source,
            seed=3,
            num_classes=K,
            train_per_class=TRAIN,
            val_per_class=VAL,
            habitat_prob=0.5,
            progress=False,
        ).load()


def interrupt_after(monkeypatch, calls: int) -> None:
    real = synthetic._write_item
    done = []

    def flaky(state, task):
        if len(done) == calls:
            raise KeyboardInterrupt
        done.append(task)
        real(state, task)

    monkeypatch.setattr(synthetic, "_write_item", flaky)


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    interrupt_after(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "cut", **SMALL)
    assert not (tmp_path / "cut/synth.json").exists()
    monkeypatch.undo()
    write_synthetic(tmp_path / "cut", **SMALL)
    assert hashes(tmp_path / "cut") == hashes(write_synthetic(tmp_path / "whole", **SMALL))


def test_interrupted_run_with_other_parameters_leaves_no_stale_files(
    tmp_path: Path, monkeypatch
) -> None:
    interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "cut", **{**SMALL, "train_per_class": 9})
    monkeypatch.undo()
    write_synthetic(tmp_path / "cut", **SMALL)
    assert hashes(tmp_path / "cut") == hashes(write_synthetic(tmp_path / "whole", **SMALL))


def test_foreign_folder_and_bad_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "imagenet/train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="synth.json"):
        write_synthetic(tmp_path / "imagenet", **SMALL)
    with pytest.raises(TypeError, match="habitat_probability"):
        write_synthetic(tmp_path / "x", habitat_probability=0.5, **SMALL)
    with pytest.raises(ValueError, match="habitat_prob"):
        write_synthetic(tmp_path / "x", habitat_prob=1.5, **SMALL)
    with pytest.raises(ValueError, match="area_range"):
        write_synthetic(tmp_path / "x", area_range=(0.7, 0.3), **SMALL)


# ---- configs and the command line ---------------------------------------------------------------


def test_configs_agree_with_the_library() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        synth = OmegaConf.to_container(compose("synth"))
    source = OmegaConf.to_container(OmegaConf.load(conf / "source/synthetic.yaml"))
    assert synth.pop("out") == "data/synthetic" == source.pop("root")
    assert synth.pop("verbose") is False  # the console's key (hsi/console.py), not the source's
    assert source.pop("_target_") == "hsi.sources.synthetic.SyntheticSource"
    # how the written tree is read back (hsi.sources.imagenet), not what hsi-synth writes
    reading = {key: source.pop(key) for key in ("cache", "cache_dir", "decode_check")}
    assert reading == {"cache": True, "cache_dir": None, "decode_check": "boxed"}
    assert synth == source
    expected = dict(
        seed=0,
        num_classes=10,
        train_per_class=700,
        val_per_class=50,
        workers=1,
        progress=True,
        habitat_prob=0.7,
        center_sd=0.3,
        area_range=[0.1, 0.7],
        multi_object_prob=0.15,
        multi_object_count=2,
        size_range=[96, 160],
        train_box_fraction=[0.3, 0.55],
        jpeg_quality=95,
    )
    assert synth == expected


def test_hsi_synth_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "hsi-synth"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hsi.cli.synth"]
    args = ["out=data/s", "num_classes=2", "train_per_class=3", "val_per_class=1", "progress=false"]
    args.append("train_box_fraction=1.0")  # one number for every class instead of the range
    done = subprocess.run(command + args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 classes, 6 train images (6 with boxes), 2 val images" in done.stdout
    assert len(list((tmp_path / "data/s/train").rglob("*.JPEG"))) == 6
    assert (tmp_path / "data/s/synth.json").exists()
