"""Bias scores (paper 000, §3.1-3.2): hand-computed values, the averaging order, the figures and hsi-scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hsi.analysis.bias_plots import (
    extreme_classes,
    plot_center_heatmap,
    plot_center_vs_size,
    plot_score_histograms,
)
from hsi.scores import (
    SCORE_COLUMNS,
    bias_scores,
    center_offsets,
    counts_table,
    object_scores,
    skipped_table,
    write_score_tables,
)
from hsi.sources.record import ClassInfo, ImageRecord, Skip, SourceIndex
from hsi.sources.voc import voc_xml

REPO = Path(__file__).resolve().parents[1]
A, B = "n00000001", "n00000002"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(split, wnid, image_id, width, height, boxes=()):
    label = [A, B].index(wnid)
    return ImageRecord(
        image_id=image_id,
        split=split,
        wnid=wnid,
        label=label,
        path=f"{split}/{wnid}/{image_id}.JPEG",
        width=width,
        height=height,
        boxes=tuple(boxes),
    )


def handmade_index() -> SourceIndex:
    """2 classes x 2 splits; images of different sizes, one with two boxes, one without boxes."""
    records = [
        # 200x100, box centre (100, 50) -> (0.5, 0.5): centre 1.0; size 100*50 / (200*100) = 0.25
        _record("train", A, "a1", 200, 100, [(50, 25, 150, 75)]),
        # 100x100, two boxes:
        #   (0,0,20,20):   centre (10,10) -> (0.1,0.1): 1 - 0.4 = 0.6;   size 20*20/10000 = 0.04
        #   (50,0,100,100): centre (75,50) -> (0.75,0.5): 1 - 0.25 = 0.75; size 50*100/10000 = 0.5
        _record("train", A, "a2", 100, 100, [(0, 0, 20, 20), (50, 0, 100, 100)]),
        _record("train", A, "a3", 300, 200),  # no boxes: counted in counts.csv, not in scores
        # 400x300, the whole image: centre 1.0, size 1.0
        _record("train", B, "b1", 400, 300, [(0, 0, 400, 300)]),
        # 50x80, box centre (5, 70) -> (0.1, 0.875): 1 - max(0.4, 0.375) = 0.6; size 10*20/4000 = 0.05
        _record("val", A, "va1", 50, 80, [(0, 60, 10, 80)]),
        # 100x100, thin box at the left edge: centre (1, 50) -> (0.01, 0.5): 1 - 0.49 = 0.51;
        # size 2*100/10000 = 0.02
        _record("val", B, "vb1", 100, 100, [(0, 0, 2, 100)]),
    ]
    return SourceIndex(
        root=Path("/nowhere"),
        classes=[ClassInfo(0, A, "alpha", ("alpha",)), ClassInfo(1, B, "beta", ("beta",))],
        records=records,
        skipped=[Skip("train/n00000002/broken.JPEG", "cannot decode image")],
        box_errors=[Skip("train/n00000001/a2.xml", "zero-area box (3, 3, 3, 9)")],
    )


def test_object_scores_by_hand():
    index = handmade_index()
    by_id = {r.image_id: r for r in index.records}
    assert np.array(object_scores(by_id["a1"])) == pytest.approx(np.array([[1.0, 0.25]]))
    assert np.array(object_scores(by_id["a2"])) == pytest.approx(
        np.array([[0.6, 0.04], [0.75, 0.5]])
    )
    assert object_scores(by_id["a3"]) == []
    assert np.array(object_scores(by_id["va1"])) == pytest.approx(np.array([[0.6, 0.05]]))
    assert np.array(object_scores(by_id["vb1"])) == pytest.approx(np.array([[0.51, 0.02]]))


def test_bias_scores_by_hand_mean_per_image_then_over_images():
    scores = bias_scores(handmade_index())
    assert list(scores.columns) == SCORE_COLUMNS
    assert list(zip(scores["split"], scores["wnid"], strict=True)) == [
        ("train", A),
        ("train", B),
        ("val", A),
        ("val", B),
    ]
    # class A, train: a1 -> (1.0, 0.25); a2 -> mean of its boxes ((0.6+0.75)/2, (0.04+0.5)/2)
    a2_center, a2_size = (0.6 + 0.75) / 2, (0.04 + 0.5) / 2  # 0.675, 0.27
    expected_center = [(1.0 + a2_center) / 2, 1.0, 0.6, 0.51]  # 0.8375 for A/train
    expected_size = [(0.25 + a2_size) / 2, 1.0, 0.05, 0.02]  # 0.26 for A/train
    assert scores["center_score"].tolist() == pytest.approx(expected_center)
    assert scores["size_score"].tolist() == pytest.approx(expected_size)
    assert scores["n_images"].tolist() == [2, 1, 1, 1]  # a3 has no box
    assert scores["n_objects"].tolist() == [3, 1, 1, 1]
    # Pooling the three boxes of A/train would give other numbers: the averaging order matters.
    pooled_center = (1.0 + 0.6 + 0.75) / 3  # 0.7833
    pooled_size = (0.25 + 0.04 + 0.5) / 3  # 0.2633
    assert abs(scores.loc[0, "center_score"] - pooled_center) > 0.05
    assert abs(scores.loc[0, "size_score"] - pooled_size) > 0.003


def random_index(n_images: int, seed: int = 0) -> SourceIndex:
    """Images of random sizes with 0-3 random boxes each, boxes anywhere inside the image."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_images):
        w, h = (int(v) for v in rng.integers(8, 600, size=2))
        boxes = []
        for _ in range(int(rng.integers(0, 4))):
            x0, x1 = np.sort(rng.uniform(0, w, size=2))
            y0, y1 = np.sort(rng.uniform(0, h, size=2))
            if x1 > x0 and y1 > y0:
                boxes.append((float(x0), float(y0), float(x1), float(y1)))
        split = "train" if i % 3 else "val"
        records.append(_record(split, [A, B][i % 2], f"img{i:05d}", w, h, boxes))
    records.sort(key=lambda r: (r.split, r.image_id))
    classes = [ClassInfo(0, A, "alpha"), ClassInfo(1, B, "beta")]
    return SourceIndex(root=Path("/nowhere"), classes=classes, records=records)


def test_scores_in_range_and_equal_to_a_plain_loop():
    index = random_index(400)
    for record in index.records:
        for center, size in object_scores(record):
            assert 0.5 <= center <= 1.0
            assert 0.0 < size <= 1.0
    # An independent, unvectorised computation of the same definition.
    per_class: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for r in index.records:
        if not r.boxes:
            continue
        centers, sizes = [], []
        for x0, y0, x1, y1 in r.boxes:
            cx, cy = (x0 + x1) / 2 / r.width, (y0 + y1) / 2 / r.height
            centers.append(1 - max(abs(0.5 - cx), abs(0.5 - cy)))
            sizes.append((x1 - x0) * (y1 - y0) / (r.width * r.height))
        per_class.setdefault((r.split, r.wnid), []).append(
            (sum(centers) / len(centers), sum(sizes) / len(sizes), len(r.boxes))
        )
    scores = bias_scores(index)
    assert [(s, w) for s, w in zip(scores["split"], scores["wnid"], strict=True)] == sorted(
        per_class
    )
    for row in scores.itertuples():
        images = per_class[(row.split, row.wnid)]
        assert row.center_score == pytest.approx(sum(i[0] for i in images) / len(images))
        assert row.size_score == pytest.approx(sum(i[1] for i in images) / len(images))
        assert row.n_images == len(images)
        assert row.n_objects == sum(i[2] for i in images)
        assert 0.5 <= row.center_score <= 1.0


def test_center_offsets():
    index = handmade_index()
    # val records in order: va1 centre (5/50, 70/80), vb1 centre (1/100, 50/100)
    assert center_offsets(index, "val") == pytest.approx(np.array([[0.1, 0.875], [0.01, 0.5]]))
    everything = center_offsets(index)
    assert everything.shape == (6, 2)  # 1 + 2 + 1 train boxes, 2 val boxes
    assert everything[0] == pytest.approx([0.5, 0.5])  # a1
    assert center_offsets(index, "test").shape == (0, 2)


def test_bad_boxes_raise_with_the_image_path():
    swapped = _record("train", A, "bad", 100, 100, [(60, 10, 40, 30)])
    index = SourceIndex(Path("/nowhere"), [ClassInfo(0, A, "alpha")], [swapped])
    with pytest.raises(ValueError, match=r"train/n00000001/bad\.JPEG.*box_errors"):
        bias_scores(index)
    outside = _record("train", A, "out", 100, 100, [(10, 10, 130, 30)])
    with pytest.raises(ValueError, match=r"out\.JPEG"):
        object_scores(outside)
    no_size = _record("train", A, "nosize", 0, 100, [(10, 10, 30, 30)])
    with pytest.raises(ValueError, match=r"nosize\.JPEG.*not positive"):
        object_scores(no_size)


def test_empty_index_gives_empty_table():
    index = SourceIndex(Path("/nowhere"), [], [_record("val", A, "x", 10, 10)])
    scores = bias_scores(index)
    assert list(scores.columns) == SCORE_COLUMNS and len(scores) == 0


def test_tables_written(tmp_path):
    index = handmade_index()
    paths = write_score_tables(index, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["counts.csv", "scores.csv", "skipped.csv"]
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert skipped.values.tolist() == [
        ["train/n00000002/broken.JPEG", "cannot decode image"],
        ["train/n00000001/a2.xml", "box dropped: zero-area box (3, 3, 3, 9)"],
    ]
    counts = pd.read_csv(tmp_path / "counts.csv")
    assert counts.values.tolist() == [["train", 4, 3, 1], ["val", 2, 2, 0]]
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert scores.loc[0, "center_score"] == pytest.approx(0.8375)
    assert skipped_table(index).equals(skipped) and counts_table(index).equals(counts)


def test_extreme_classes():
    scores = pd.DataFrame(
        {
            "wnid": ["c", "a", "b", "d"],
            "split": ["val"] * 4,
            "center_score": [0.9, 0.6, 0.8, 0.7],
            "size_score": [0.3, 0.2, 0.5, 0.4],
        }
    )
    # centre: lowest a, highest c; size: lowest a (already named), highest b
    assert extreme_classes(scores) == ["a", "c", "b"]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_figures_written_and_reproducible(tmp_path):
    index = random_index(300)
    scores = bias_scores(index)
    offsets = center_offsets(index)
    names = {A: "alpha", B: "beta"}
    makers = {
        "scatter": lambda p: plot_center_vs_size(scores, p, split="val", names=names),
        "heatmap": lambda p: plot_center_heatmap(offsets, p),
        "histograms": lambda p: plot_score_histograms(scores, p),
    }
    for name, make in makers.items():
        first, second = tmp_path / f"{name}_1.png", tmp_path / f"{name}_2.png"
        assert make(first) == first
        make(second)
        data = first.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
        assert b"Software" not in data  # no matplotlib version stamp
        assert data == second.read_bytes(), f"{name}: same input, different PNG bytes"
        width, height = _png_size(first)
        assert width > 300 and height > 300
    # The heat map depends on its input (guards against a blank figure passing the checks above).
    plot_center_heatmap(offsets[: len(offsets) // 2], tmp_path / "half.png")
    assert (tmp_path / "half.png").read_bytes() != (tmp_path / "heatmap_1.png").read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_figures_of_an_empty_index(tmp_path):
    empty = bias_scores(SourceIndex(Path("/nowhere"), [], []))
    plot_center_vs_size(empty, tmp_path / "s.png")
    plot_center_heatmap(np.empty((0, 2)), tmp_path / "h.png")
    plot_score_histograms(empty, tmp_path / "x.png")
    for name in ("s.png", "h.png", "x.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)


def test_many_boxes_are_all_scored():
    """Every box of many images is counted (the speed on a million: benchmarks/bench_scores.py)."""
    rng = np.random.default_rng(1)
    n = 5_000  # images, 4 boxes each
    x0 = rng.uniform(0, 50, size=(n, 4))
    y0 = rng.uniform(0, 50, size=(n, 4))
    records = [
        ImageRecord(
            f"i{i}",
            "train",
            A if i % 2 else B,
            i % 2,
            f"train/i{i}.JPEG",
            100,
            100,
            tuple((x0[i, j], y0[i, j], x0[i, j] + 50, y0[i, j] + 50) for j in range(4)),
        )
        for i in range(n)
    ]
    index = SourceIndex(Path("/nowhere"), [], records)
    scores = bias_scores(index)
    assert scores["n_objects"].sum() == 4 * n
    assert scores["n_images"].sum() == n
    # every box is 50x50 in a 100x100 image
    assert scores["size_score"].tolist() == pytest.approx([0.25, 0.25])


# --- hsi-scores end to end on a tiny ImageNet-layout tree -----------------------------------------


def _voc_xml(filename: str, wnid: str, size: tuple[int, int], boxes) -> str:
    return voc_xml(filename, size, [(wnid, box) for box in boxes])


def write_tiny_imagenet(root: Path) -> None:
    """Two classes; train in class folders, flat val, VOC XML under boxes/<split>/.

    Also one undecodable JPEG (skipped) and one zero-area box (dropped, image kept).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(f"{A} alpha, first\n{B} beta\n")
    images = [
        # (split, class folder or None for flat val, image id, wnid, size, boxes)
        ("train", A, f"{A}_1", A, (200, 100), [(50, 25, 150, 75), (10, 10, 10, 50)]),
        ("train", A, f"{A}_2", A, (100, 100), [(0, 0, 20, 20), (50, 0, 100, 100)]),
        ("train", B, f"{B}_1", B, (80, 60), [(0, 0, 40, 30)]),
        ("val", None, "ILSVRC2012_val_00000001", A, (50, 80), [(0, 60, 10, 80)]),
    ]
    for split, folder, image_id, wnid, size, boxes in images:
        sub = f"{split}/{folder}" if folder else split
        image = root / sub / f"{image_id}.JPEG"
        xml = root / "boxes" / sub / f"{image_id}.xml"
        image.parent.mkdir(parents=True, exist_ok=True)
        xml.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 90, 60)).save(image, format="JPEG")
        xml.write_text(_voc_xml(image.name, wnid, size, boxes))
    (root / "train" / B / f"{B}_2.JPEG").write_bytes(b"this is not a JPEG")


@pytest.mark.slow
def test_cli_end_to_end_on_imagenet_layout(tmp_path):
    pytest.importorskip("hsi.sources.imagenet", reason="the ImageNet reader is not present")
    root = tmp_path / "imagenet"
    write_tiny_imagenet(root)
    out = tmp_path / "scores"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsi.cli.scores",
            "source=imagenet",
            f"source.root={root}",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert str(out.resolve()) in result.stdout
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS
    rows = {(r.split, r.wnid): r for r in scores.itertuples()}
    assert sorted(rows) == [("train", A), ("train", B), ("val", A)]
    # A/train as in handmade_index: (1.0 + 0.675) / 2 and (0.25 + 0.27) / 2
    assert rows[("train", A)].center_score == pytest.approx(0.8375)
    assert rows[("train", A)].size_score == pytest.approx(0.26)
    assert (rows[("train", A)].n_images, rows[("train", A)].n_objects) == (2, 3)
    # B/train: 80x60, box (0,0,40,30): centre (20/80, 15/60) = (0.25, 0.25) -> 0.75;
    # size 40*30 / 4800 = 0.25
    assert rows[("train", B)].center_score == pytest.approx(0.75)
    assert rows[("train", B)].size_score == pytest.approx(0.25)
    assert rows[("val", A)].center_score == pytest.approx(0.6)
    assert rows[("val", A)].size_score == pytest.approx(0.05)
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped.columns) == ["path", "reason"]
    assert skipped["path"].tolist() == [f"train/{B}/{B}_2.JPEG", f"train/{A}/{A}_1.JPEG"]
    assert not skipped.loc[0, "reason"].startswith("box dropped:")
    assert skipped.loc[1, "reason"].startswith("box dropped:")
    counts = pd.read_csv(out / "counts.csv").set_index("split")
    assert counts.loc["train"].tolist() == [3, 3, 0]  # the undecodable image is not counted
    assert counts.loc["val"].tolist() == [1, 1, 0]
    for name in ("center_vs_size.png", "center_heatmap.png", "score_histograms.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)


def test_config_composes_with_the_synthetic_source_by_default(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hsi.sources.synthetic import SyntheticSource

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("scores", overrides=[f"source.root={tmp_path}"])
    assert cfg.source._target_ == "hsi.sources.synthetic.SyntheticSource"
    assert cfg.scatter_split == "val" and cfg.heatmap_split is None
    source = instantiate(cfg.source)
    assert isinstance(source, SyntheticSource) and source.root == tmp_path
    assert source.generation["num_classes"] == cfg.source.num_classes


def _scores_from_files(root: Path) -> dict[tuple[str, str], tuple[float, float, int, int]]:
    """Class scores straight from the VOC XML files and the JPEG sizes, without hsi's reader."""
    import xml.etree.ElementTree as ET

    per_image: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for xml in sorted((root / "boxes").rglob("*.xml")):
        split = xml.relative_to(root / "boxes").parts[0]
        tree = ET.parse(xml).getroot()
        image = next((root / split).rglob(f"{xml.stem}.JPEG"))
        with Image.open(image) as im:
            width, height = im.size
        centers, sizes, wnid = [], [], None
        for obj in tree.iter("object"):
            wnid = obj.findtext("name")
            x0, y0, x1, y1 = (
                float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            centers.append(1 - max(abs(0.5 - cx), abs(0.5 - cy)))
            sizes.append((x1 - x0) * (y1 - y0) / (width * height))
        if centers:
            per_image.setdefault((split, wnid), []).append(
                (sum(centers) / len(centers), sum(sizes) / len(sizes), len(centers))
            )
    return {
        key: (
            sum(i[0] for i in images) / len(images),
            sum(i[1] for i in images) / len(images),
            len(images),
            sum(i[2] for i in images),
        )
        for key, images in per_image.items()
    }


@pytest.mark.slow
def test_cli_on_a_tiny_synthetic_source(tmp_path):
    root, out = tmp_path / "synthetic", tmp_path / "scores"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsi.cli.scores",
            f"source.root={root}",
            "source.num_classes=2",
            "source.train_per_class=3",
            "source.val_per_class=2",
            "source.progress=false",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(out / "scores.csv")
    expected = _scores_from_files(root)
    assert len(expected) == 4  # 2 classes x 2 splits
    assert sorted(zip(scores["split"], scores["wnid"], strict=True)) == sorted(expected)
    for row in scores.itertuples():
        center, size, n_images, n_objects = expected[(row.split, row.wnid)]
        assert row.center_score == pytest.approx(center)
        assert row.size_score == pytest.approx(size)
        assert (row.n_images, row.n_objects) == (n_images, n_objects)
    assert pd.read_csv(out / "skipped.csv").empty
    assert pd.read_csv(out / "counts.csv")["images"].tolist() == [6, 4]
