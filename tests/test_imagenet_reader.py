"""The ImageNet reader on small dirty trees: every kind of dirt ImageNet has, both layouts, both box formats."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from imagenet_factory import (
    CRANE_BIRD,
    CRANE_MACHINE,
    GOLDFISH,
    MALFORMED_XML,
    TENCH,
    TRAIN_CASES,
    VAL_CASES,
    image_bytes,
    voc_xml,
    write_image,
    write_loc_csv,
    write_synsets,
    write_tree,
)
from PIL import Image

from hsi.scores import bias_scores
from hsi.sources import imagenet
from hsi.sources.imagenet import ImageNetSource, SourceLayoutError, normalise_boxes
from hsi.sources.images import ImageReadError, load_rgb, read_size
from hsi.sources.kaggle import read_loc_solution
from hsi.sources.synsets import SynsetNames, UnknownClassName, read_synsets
from hsi.sources.voc import parse_voc

# ---- images -------------------------------------------------------------------------------------


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    path = write_image(tmp_path / "cmyk.JPEG", (16, 8), "cmyk", color=(0, 255, 255, 0))
    assert Image.open(path).mode == "CMYK"
    rgb = load_rgb(path)
    assert rgb.shape == (8, 16, 3) and rgb.dtype == np.uint8
    # C=0, M=Y=255, K=0 is red; JPEG loses a little.
    assert np.abs(rgb[4, 8].astype(int) - (255, 0, 0)).max() <= 12


def test_grayscale_jpeg_loads_as_three_equal_channels(tmp_path):
    path = write_image(tmp_path / "gray.JPEG", (10, 6), "gray", color=90)
    rgb = load_rgb(path)
    assert rgb.shape == (6, 10, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert abs(int(rgb[3, 5, 0]) - 90) <= 3


def test_png_named_jpeg_is_read_by_content(tmp_path):
    path = write_image(tmp_path / "n02105855_2933.JPEG", (7, 5), "png", color=(12, 34, 56))
    assert read_size(path) == (7, 5)
    rgb = load_rgb(path)
    assert rgb.shape == (5, 7, 3)
    assert (rgb == np.array([12, 34, 56], dtype=np.uint8)).all()  # PNG is lossless: exact


def test_palette_and_rgba_become_rgb(tmp_path):
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("RGB", (4, 3), (200, 100, 50)).convert("P").save(tmp_path / "p.png")
    assert (load_rgb(tmp_path / "rgba.png") == [10, 20, 30]).all()
    assert load_rgb(tmp_path / "p.png").shape == (3, 4, 3)
    assert (np.abs(load_rgb(tmp_path / "p.png").astype(int) - [200, 100, 50]) <= 30).all()


def test_header_read_catches_garbage_but_not_a_truncated_body(tmp_path):
    garbage = write_image(tmp_path / "bad.JPEG", (10, 10), "garbage")
    with pytest.raises(ImageReadError, match="bad.JPEG"):
        read_size(garbage)
    truncated = write_image(tmp_path / "cut.JPEG", (64, 48), "truncated")
    assert read_size(truncated) == (64, 48)  # the header is intact
    with pytest.raises(ImageReadError, match="cut.JPEG"):
        load_rgb(truncated)  # only the full decode sees the missing body


# ---- annotation files ---------------------------------------------------------------------------


def test_parse_voc_keeps_values_and_fixes_template_filename(tmp_path):
    path = tmp_path / "n01440764_5.xml"
    path.write_text(voc_xml("%s", (64, 48), [("tench", (1, 2, 3, 4)), (TENCH, (40, 30, 10, 5))]))
    ann = parse_voc(path)
    assert ann.filename == "n01440764_5"
    assert ann.size == (64, 48)
    assert [tuple(o) for o in ann.objects] == [
        ("tench", (1.0, 2.0, 3.0, 4.0)),
        (TENCH, (40.0, 30.0, 10.0, 5.0)),
    ]


def test_parse_voc_malformed_names_the_file(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text(MALFORMED_XML)
    with pytest.raises(ValueError, match="broken.xml"):
        parse_voc(path)
    path.write_text(
        "<annotation><object><name>x</name><bndbox><xmin>a</xmin></bndbox></object></annotation>"
    )
    with pytest.raises(ValueError, match="broken.xml.*xmin"):
        parse_voc(path)


def test_read_loc_solution(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n01443537 1 2 30 40 n01443537 5 6 7 8 \n"
        "ILSVRC2012_val_00000001,n01440764 10 20 30 40\n"
        "ILSVRC2012_val_00000003,n01440764 10 20 30\n"
    )
    with pytest.raises(ValueError, match="line 4"):
        read_loc_solution(path)
    errors: dict[str, str] = {}
    boxes = read_loc_solution(path, errors=errors)
    assert boxes == {
        "ILSVRC2012_val_00000001": [(TENCH, (10.0, 20.0, 30.0, 40.0))],
        "ILSVRC2012_val_00000002": [
            (GOLDFISH, (1.0, 2.0, 30.0, 40.0)),
            (GOLDFISH, (5.0, 6.0, 7.0, 8.0)),
        ],
    }
    assert (
        list(errors) == ["ILSVRC2012_val_00000003"]
        and "groups of 5" in errors["ILSVRC2012_val_00000003"]
    )
    path.write_text("id,boxes\nx,n01440764 1 2 3 4\n")
    with pytest.raises(ValueError, match="LOC_val_solution.csv.*header"):
        read_loc_solution(path)


def test_synsets_sorted_and_names_resolved(tmp_path):
    classes = read_synsets(
        write_synsets(tmp_path / "LOC_synset_mapping.txt")
    )  # written in reverse order
    assert [c.wnid for c in classes] == [TENCH, GOLDFISH, CRANE_BIRD, CRANE_MACHINE]
    assert [c.index for c in classes] == [0, 1, 2, 3]
    assert classes[0].name == "tench" and classes[0].synonyms == ("tench", "Tinca tinca")
    names = SynsetNames(classes)
    assert names.resolve("TINCA  tinca") == TENCH
    assert names.resolve("Goldfish") == GOLDFISH
    assert names.resolve(CRANE_MACHINE) == CRANE_MACHINE
    with pytest.raises(UnknownClassName, match="ambiguous"):
        names.resolve("crane")
    with pytest.raises(UnknownClassName, match="neither"):
        names.resolve("unicorn")
    (tmp_path / "bad.txt").write_text("n01440764 tench\nfish n2\n")
    with pytest.raises(ValueError, match="bad.txt line 2"):
        read_synsets(tmp_path / "bad.txt")


def test_normalise_boxes_by_hand():
    # <size> 200x100 vs a 100x50 image: x and y halve; then (60,40,20,10) swaps; -> clip to 100x50.
    kept, dropped, fixes = normalise_boxes(
        [(20, 10, 60, 40), (120, 80, 40, 20), (250, 10, 300, 20), (-20, -20, 400, 20)],
        (100, 50),
        (200, 100),
    )
    assert kept == [(10.0, 5.0, 30.0, 20.0), (20.0, 10.0, 60.0, 40.0), (0.0, 0.0, 100.0, 10.0)]
    assert [i for i, _ in dropped] == [2] and "zero area" in dropped[0][1]
    assert fixes["swapped"] == 1 and fixes["clipped"] == 2 and fixes["rescaled"] == 4
    kept, dropped, _ = normalise_boxes([(1, 2, float("nan"), 4)], (10, 10))
    assert kept == [] and "non-finite" in dropped[0][1]


# ---- the reader ---------------------------------------------------------------------------------


def load(root, **kw):
    return ImageNetSource(root, progress=False, **kw).load()


def by_id(index):
    return {(r.split, r.image_id): r for r in index.records}


def skip_reasons(index):
    return {s.path: s.reason for s in index.skipped}


@pytest.fixture
def dirty_root(tmp_path):
    return write_tree(tmp_path / "imagenet", TRAIN_CASES + VAL_CASES)


def test_train_dirt_is_normalised(dirty_root):
    index = load(dirty_root)
    rec = by_id(index)
    assert [c.wnid for c in index.classes] == [TENCH, GOLDFISH, CRANE_BIRD, CRANE_MACHINE]
    # <size> 200x100, image 100x50: (20,10,60,40) * 0.5
    assert rec["train", "n01440764_1"].boxes == ((10.0, 5.0, 30.0, 20.0),)
    assert (rec["train", "n01440764_1"].width, rec["train", "n01440764_1"].height) == (100, 50)
    assert rec["train", "n01440764_2"].boxes == ((10.0, 5.0, 40.0, 30.0),)  # swapped
    assert rec["train", "n01440764_3"].boxes == ((0.0, 10.0, 80.0, 60.0),)  # clipped to 80x60
    assert rec["train", "n01440764_4"].boxes == ((5.0, 5.0, 20.0, 20.0),)  # two zero-area dropped
    dropped = [e for e in index.box_errors if e.path == "train/n01440764/n01440764_4.JPEG"]
    assert len(dropped) == 2 and all("zero area" in e.reason for e in dropped)
    assert len(index.box_errors) == 2
    # "%s" in <filename> does not matter; both boxes kept
    assert rec["train", "n01440764_5"].boxes == ((1.0, 2.0, 3.0, 4.0), (10.0, 10.0, 30.0, 30.0))
    cmyk = rec["train", "n01443537_1"]
    assert (cmyk.wnid, cmyk.label, cmyk.width, cmyk.height) == (GOLDFISH, 1, 60, 40)
    assert cmyk.boxes == ((0.0, 0.0, 30.0, 20.0),)
    assert (
        rec["train", "n01443537_2"].boxes == () and rec["train", "n01443537_2"].width == 50
    )  # grayscale
    png = rec["train", "n01443537_3"]
    assert (png.width, png.height, png.path) == (40, 30, "train/n01443537/n01443537_3.JPEG")
    assert rec["train", "n01440764_7"].path == "train/n01440764/n01440764_7.jpg"


def test_train_skips_are_recorded_and_the_run_goes_on(dirty_root):
    index = load(dirty_root)
    reasons = skip_reasons(index)
    assert "broken header" in reasons["train/n01443537/n01443537_4.JPEG"]
    assert "malformed XML" in reasons["train/n01443537/n01443537_5.JPEG"]
    assert "n01443537_5.xml" in reasons["train/n01443537/n01443537_5.JPEG"]
    assert "n09999999" in reasons["train/n09999999/n09999999_1.JPEG"]
    assert "not a .JPEG" in reasons["train/n01440764/notes.txt"]
    # 14 train files - 4 skipped = 10 records; boxed: _1.._5 of tench, _1 and _3 of goldfish.
    assert index.counts()["train"] == {"images": 10, "with_boxes": 7, "without_boxes": 3}
    assert len(index.split("train")) == 7 and len(index.split("train", with_boxes=False)) == 10


def test_flat_val_labels_from_box_names(dirty_root):
    index = load(dirty_root)
    rec = by_id(index)
    val = {i: r for (s, i), r in rec.items() if s == "val"}
    assert sorted(val) == [f"ILSVRC2012_val_{n:08d}" for n in (1, 2, 3, 8)]
    assert (val["ILSVRC2012_val_00000002"].wnid, val["ILSVRC2012_val_00000002"].label) == (
        GOLDFISH,
        1,
    )
    assert val["ILSVRC2012_val_00000003"].wnid == TENCH
    assert val["ILSVRC2012_val_00000003"].boxes == ((1.0, 1.0, 5.0, 5.0), (6.0, 6.0, 30.0, 20.0))
    assert (val["ILSVRC2012_val_00000008"].label, val["ILSVRC2012_val_00000008"].path) == (
        3,
        "val/ILSVRC2012_val_00000008.JPEG",
    )
    reasons = skip_reasons(index)
    assert "several classes" in reasons["val/ILSVRC2012_val_00000004.JPEG"]
    assert "unicorn" in reasons["val/ILSVRC2012_val_00000005.JPEG"]
    assert "label unknown" in reasons["val/ILSVRC2012_val_00000006.JPEG"]
    assert "ambiguous" in reasons["val/ILSVRC2012_val_00000007.JPEG"]
    keys = [(r.split, r.image_id) for r in index.records]
    assert keys == sorted(keys)


def test_val_per_class_layout_labels_from_folders(tmp_path):
    root = write_tree(
        tmp_path / "in", TRAIN_CASES + VAL_CASES, val_layout="per_class", val_xml_layout="per_class"
    )
    val = {r.image_id: r for r in load(root).split("val", with_boxes=False)}
    assert len(val) == 8  # the folder tells every label
    assert (val["ILSVRC2012_val_00000004"].label, len(val["ILSVRC2012_val_00000004"].boxes)) == (
        0,
        2,
    )
    assert (
        val["ILSVRC2012_val_00000006"].boxes == ()
        and val["ILSVRC2012_val_00000006"].wnid == GOLDFISH
    )
    assert val["ILSVRC2012_val_00000007"].wnid == CRANE_BIRD
    assert val["ILSVRC2012_val_00000001"].path == f"val/{TENCH}/ILSVRC2012_val_00000001.JPEG"


def test_flat_val_with_per_class_xml_folder(tmp_path):
    root = write_tree(tmp_path / "in", TRAIN_CASES + VAL_CASES, val_xml_layout="per_class")
    flat = load(write_tree(tmp_path / "flat", TRAIN_CASES + VAL_CASES))
    assert load(root).records == flat.records


def test_xml_and_kaggle_csv_give_identical_records(tmp_path):
    xml = load(write_tree(tmp_path / "xml", TRAIN_CASES + VAL_CASES, boxes="xml"))
    csv = load(write_tree(tmp_path / "csv", TRAIN_CASES + VAL_CASES, boxes="csv"))
    # The malformed-XML case has no CSV row: skipped with XML, an unboxed image with CSV.
    malformed = ("train", "n01443537_5")
    assert malformed not in by_id(xml) and by_id(csv)[malformed].boxes == ()
    assert [r for r in csv.records if (r.split, r.image_id) != malformed] == xml.records
    assert len(xml.records) == 14
    # and so the bias scores agree (the malformed image has no box either way)
    pd.testing.assert_frame_equal(bias_scores(xml), bias_scores(csv), check_exact=False, rtol=1e-12)


def test_bad_csv_row_skips_only_that_image(tmp_path):
    root = write_tree(tmp_path / "csv", TRAIN_CASES + VAL_CASES, boxes="csv")
    csv_path = root / "LOC_val_solution.csv"
    csv_path.write_text(csv_path.read_text().replace("n01440764 2 2 20 20", "n01440764 2 2 20"))
    index = load(root)
    reason = skip_reasons(index)["val/ILSVRC2012_val_00000001.JPEG"]
    assert "LOC_val_solution.csv line" in reason
    assert len(index.split("val")) == 3


def test_workers_do_not_change_the_result(dirty_root, monkeypatch):
    one = load(dirty_root, workers=1, cache=False)
    # even this tiny tree is read by 2 worker processes
    monkeypatch.setattr(imagenet, "MIN_TASKS_PER_WORKER", 0)
    two = ImageNetSource(dirty_root, workers=2, progress=True, cache=False).load()
    assert one.records == two.records
    assert one.skipped == two.skipped and one.box_errors == two.box_errors
    assert len(one.skipped) == 8


def test_duplicate_image_id_is_skipped(dirty_root):
    write_image(dirty_root / "train" / TENCH / "n01440764_6.jpg", (40, 30))
    index = load(dirty_root)
    assert "duplicate image id" in skip_reasons(index)["train/n01440764/n01440764_6.jpg"]
    assert by_id(index)["train", "n01440764_6"].path == "train/n01440764/n01440764_6.JPEG"


def test_explicit_paths(tmp_path):
    src = write_tree(tmp_path / "src", TRAIN_CASES + VAL_CASES, boxes="csv")
    root = tmp_path / "root"
    root.mkdir()
    shutil.move(src / "train", tmp_path / "images_train")
    shutil.move(src / "LOC_train_solution.csv", tmp_path / "tb.CSV")
    index = load(
        root,
        train_dir=tmp_path / "images_train",
        val_dir=src / "val",
        train_boxes=tmp_path / "tb.CSV",
        val_boxes=src / "LOC_val_solution.csv",
        synsets=src / "LOC_synset_mapping.txt",
    )
    assert index.counts()["train"]["images"] == 11  # the malformed-XML case is a plain image here
    assert by_id(index)["train", "n01440764_2"].path == "../images_train/n01440764/n01440764_2.JPEG"
    assert (root / by_id(index)["train", "n01440764_2"].path).is_file()


# ---- layout errors ------------------------------------------------------------------------------


def test_missing_train_and_val_name_path_and_key(dirty_root):
    shutil.rmtree(dirty_root / "train")
    with pytest.raises(SourceLayoutError) as err:
        load(dirty_root)
    msg = str(err.value)
    assert (
        str(dirty_root / "train") in msg
        and "source.train_dir" in msg
        and "train/<wnid>/*.JPEG" in msg
    )
    assert "source.val_dir" not in msg
    with pytest.raises(SourceLayoutError, match="source.val_dir") as err:
        load(dirty_root, train_dir=dirty_root / "val", val_dir=dirty_root / "nowhere")
    assert str(dirty_root / "nowhere") in str(err.value)


def test_missing_synsets_names_path_and_key(dirty_root):
    (dirty_root / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(SourceLayoutError) as err:
        load(dirty_root)
    assert str(dirty_root / "LOC_synset_mapping.txt") in str(err.value) and "source.synsets" in str(
        err.value
    )
    assert isinstance(err.value, FileNotFoundError)


def test_missing_boxes_name_both_defaults_and_key(dirty_root):
    shutil.rmtree(dirty_root / "boxes" / "train")
    with pytest.raises(SourceLayoutError) as err:
        load(dirty_root)
    msg = str(err.value)
    assert (
        str(dirty_root / "boxes" / "train") in msg
        and str(dirty_root / "LOC_train_solution.csv") in msg
    )
    assert "source.train_boxes" in msg and "source.val_boxes" not in msg
    with pytest.raises(SourceLayoutError, match="source.val_boxes") as err:
        load(dirty_root, train_boxes=dirty_root / "boxes" / "val", val_boxes=dirty_root / "val.csv")
    assert str(dirty_root / "val.csv") in str(err.value) and "CSV file" in str(err.value)


def test_missing_root_and_kaggle_hint(tmp_path):
    with pytest.raises(SourceLayoutError, match="source.root"):
        load(tmp_path / "absent")
    (tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "train").mkdir(parents=True)
    with pytest.raises(SourceLayoutError) as err:
        load(tmp_path)
    assert str(tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "train") in str(err.value)


def test_reads_the_headers_of_many_files(tmp_path):
    """300 files on one worker, every one counted with its box (speed: benchmarks/bench_scores.py)."""
    write_synsets(tmp_path / "LOC_synset_mapping.txt")
    data = image_bytes((500, 375))
    for i in range(300):
        (tmp_path / "train" / TENCH).mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / TENCH / f"{TENCH}_{i}.JPEG").write_bytes(data)
    (tmp_path / "val").mkdir()
    write_loc_csv(
        tmp_path / "LOC_train_solution.csv",
        {f"{TENCH}_{i}": [(TENCH, (1, 2, 3, 4))] for i in range(300)},
    )
    write_loc_csv(tmp_path / "LOC_val_solution.csv", {})
    index = load(tmp_path)
    assert index.counts()["train"] == {"images": 300, "with_boxes": 300, "without_boxes": 0}


def test_config_instantiates_the_reader(dirty_root):
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "source" / "imagenet.yaml")
    assert OmegaConf.is_missing(cfg, "root")
    cfg.root, cfg.progress = str(dirty_root), False
    source = instantiate(cfg)
    assert isinstance(source, ImageNetSource) and source.workers == 1
    assert source.load().records == load(dirty_root).records
