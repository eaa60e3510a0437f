"""Box coverage: the synthetic source's ImageNet-like boxes, `dataset.coverage`, `hsi-generate plan`."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import BIN, make_cfg
from omegaconf import OmegaConf
from test_recipe import SMALL, make_index

from hsi.generate.build import make_recipe, run_build
from hsi.generate.coverage import make_plan, make_selection, shortfalls
from hsi.generate.layout import ConfigError, DatasetFolder, DatasetSpec
from hsi.generate.recipe import build_recipe, select_images
from hsi.sources import load_source
from hsi.sources.synthetic import SynthParams, read_hidden_boxes, wnid_of, write_synthetic

A, B, C, D = "n00000010", "n00000020", "n00000030", "n00000040"
# SMALL needs 3x4 + 2x4 + 1x4 = 24 train + 24 val = 48 boxed train images per class, 4 val ones
SHORT = make_index(n_train={A: 60, B: 30, C: 60, D: 60}, n_val=6, unboxed=40)


# ---------------------------------------------------------------------- the synthetic source
def test_synthetic_boxes_about_imagenets_share_per_class():
    params = SynthParams(num_classes=400, train_per_class=100)
    fractions = np.array([params.class_box_fraction(wnid_of(k)) for k in range(400)])
    assert ((0.3 <= fractions) & (fractions <= 0.55)).all()
    assert fractions.std() > 0.05  # uneven per class, as ImageNet's
    assert abs(fractions.mean() - 0.425) < 0.02  # ImageNet: 544k of 1.28M train images
    # one number: every class the same, as before the range existed
    assert SynthParams(train_box_fraction=0.5).class_box_fraction(wnid_of(3)) == 0.5
    with pytest.raises(ValueError, match="train_box_fraction"):
        SynthParams(train_box_fraction=(0.6, 0.2))


def test_synthetic_source_hides_the_true_boxes_of_unboxed_images(tmp_path):
    keys = dict(num_classes=3, train_per_class=20, val_per_class=2, progress=False)
    root = write_synthetic(tmp_path / "a", **keys)
    index = load_source(
        OmegaConf.create(
            {"_target_": "hsi.sources.synthetic.SyntheticSource", "root": str(root), **keys}
        )
    )
    params = SynthParams(**{k: v for k, v in keys.items() if k != "progress"})
    for k in range(3):
        records = [r for r in index.records if r.split == "train" and r.wnid == wnid_of(k)]
        boxed = sum(r.has_boxes for r in records)
        assert boxed == round(params.class_box_fraction(wnid_of(k)) * 20) and 0 < boxed < 20
    assert all(r.has_boxes for r in index.records if r.split == "val")  # val: all annotated
    hidden = read_hidden_boxes(root)
    unboxed = {r.key: r for r in index.records if not r.has_boxes}
    assert set(hidden) == set(unboxed)  # the truth of exactly the unannotated images
    for key, boxes in hidden.items():
        r = unboxed[key]
        assert boxes and all(0 <= b[0] < b[2] <= r.width and 0 <= b[1] < b[3] for b in boxes)
    # deterministic: the same keys write the same annotated set
    again = write_synthetic(tmp_path / "b", **keys)
    assert sorted(p.name for p in (again / "boxes/train").rglob("*.xml")) == sorted(
        p.name for p in (root / "boxes/train").rglob("*.xml")
    )


# ---------------------------------------------------------------------- the policies
def plan_vs_recipe(selection, recipe: pd.DataFrame) -> None:
    """Every plan row is what the recipe holds for that class and split."""
    table = selection.table()
    for row in table.itertuples():
        rows = recipe[(recipe["wnid"] == row.wnid) & (recipe["split"] == row.split)]
        assert len(rows) == row.samples, row
        if row.role == "label" and row.samples:
            assert rows["fg_image"].nunique() == row.takes, row
            assert int(rows["reused"].sum()) == row.repeats, row
            assert int((rows["box_source"] != "annotation").sum()) >= row.detected


def test_error_names_the_short_class_and_the_policies():
    with pytest.raises(ValueError) as err:
        build_recipe(SHORT, seed=0, resolution=64, counts=SMALL)
    message = str(err.value)
    assert f"class {B} (name1) has 30 boxed train images; the recipe needs 48" in message
    assert "dataset.coverage=reuse|drop|detect" in message and A not in message
    plan = select_images(SHORT, seed=0, resolution=64, counts=SMALL)
    assert plan.problems and set(shortfalls(plan.table())["wnid"]) == {B}


def test_reuse_repeats_boxed_images_and_marks_them():
    selection = select_images(SHORT, seed=0, resolution=64, counts=SMALL, coverage="reuse")
    recipe = selection.recipe()
    plan_vs_recipe(selection, recipe)
    short = recipe[(recipe["wnid"] == B) & (recipe["split"] != "test")]
    assert short["fg_image"].nunique() == 30 and short["reused"].sum() == 48 - 30
    assert not recipe.loc[recipe["wnid"] != B, "reused"].any()
    assert set(recipe["box_source"]) == {"annotation"}
    # the old key still means reuse
    old = build_recipe(SHORT, seed=0, resolution=64, counts=SMALL, replacement=True)
    pd.testing.assert_frame_equal(old, recipe)


def test_drop_leaves_the_class_out_and_lists_it():
    selection = select_images(SHORT, seed=0, resolution=64, counts=SMALL, coverage="drop")
    recipe = selection.recipe()
    plan_vs_recipe(selection, recipe)
    assert B not in set(recipe["wnid"]) and B not in set(recipe["bg_wnid"])
    assert list(selection.dropped) == [B]
    assert sorted(set(zip(recipe["wnid"], recipe["label"], strict=True))) == [
        (A, 0),
        (C, 1),
        (D, 2),
    ]
    assert (selection.table().query("wnid == @B")["action"].str.startswith("dropped")).all()
    # what the others take does not change with B left out
    full = select_images(SHORT, seed=0, resolution=64, counts=SMALL, coverage="reuse").recipe()
    kept = full[full["wnid"] != B]
    assert set(kept["fg_image"]) == set(recipe["fg_image"])
    # dropping down to one class cannot make R backgrounds
    two = make_index(n_train={A: 60, B: 30}, n_val=6, wnids=(A, B))
    with pytest.raises(ValueError, match="leaves 1 of 2 labelled classes"):
        build_recipe(two, seed=0, resolution=64, counts=SMALL, coverage="drop")


def test_drop_in_v2_leaves_out_the_class_whose_background_class_is_short():
    index = make_index(n_train={A: 60, B: 60, C: 60, D: 30}, n_val=6)
    pairs = {A: C, B: D}
    selection = select_images(
        index, seed=0, resolution=64, counts=SMALL, pairs=pairs, coverage="drop"
    )
    recipe = selection.recipe()
    plan_vs_recipe(selection, recipe)
    assert selection.dropped == {B: f"its background class {D} is short of boxed images"}
    assert set(recipe["wnid"]) == {A} and set(
        recipe.loc[recipe["background"] == "R", "bg_wnid"]
    ) == {C}
    actions = selection.table().groupby("wnid")["action"].agg(set)
    assert all(a.startswith("dropped") for a in actions[B] | actions[D]) and actions[A] == {"ok"}


def fake_detect(score_of):
    """A detect function (select_images' contract): a box for the images `score_of` passes."""
    calls = []

    def detect(records, wanted):
        calls.append((len(records), wanted))
        found = {}
        for r in records:
            if score_of(r) >= 0.5:
                found[r.key] = (1.0, 2.0, 30.0, 40.0)
            if len(found) >= wanted:
                break
        return found

    return detect, calls


def test_detect_fills_up_with_detector_boxes_then_falls_back():
    def score(r):
        return 0.9 if int(r.image_id.rsplit("_", 1)[1]) % 2 else 0.1

    detect, calls = fake_detect(score)
    selection = select_images(
        SHORT, seed=0, resolution=64, counts=SMALL, coverage="detect", detect=detect,
        detector_name="fake",
    )  # fmt: skip
    recipe = selection.recipe()
    plan_vs_recipe(selection, recipe)
    assert calls == [(40, 18)]  # only the short class, only its shortfall
    short = recipe[recipe["wnid"] == B]
    detected = short[short["box_source"] == "fake"]
    assert detected["fg_image"].nunique() == 18 and not short["reused"].any()
    assert set(selection.detected) >= set(detected["fg_image"])
    assert all(score(r) >= 0.5 for r in SHORT.records if r.key in selection.detected)
    # boxed and detected images are mixed over train and val, not stacked in one
    assert set(short.loc[short["box_source"] == "fake", "split"]) == {"train", "val"}
    # too few detections: the fallback decides
    stingy, _ = fake_detect(lambda r: 0.0)
    with pytest.raises(ValueError, match="has 30 boxed train images"):
        select_images(
            SHORT, seed=0, resolution=64, counts=SMALL, coverage="detect", detect=stingy
        ).check()
    fallback = select_images(
        SHORT, seed=0, resolution=64, counts=SMALL, coverage="detect", fallback="reuse",
        detect=stingy,
    )  # fmt: skip
    actions = fallback.table().query("wnid == @B").set_index("split")["action"]
    assert actions.to_dict() == {"train": "detect+reuse", "val": "detect+reuse", "test": "ok"}


def test_spec_keys_and_errors():
    base = OmegaConf.load(Path(__file__).parents[1] / "conf/dataset/v1.yaml")
    assert DatasetSpec.from_config(base).coverage == "error"
    assert DatasetSpec.from_config({**base, "replacement": True}).coverage == "reuse"
    with pytest.raises(ConfigError, match="dataset.coverage=detect needs a detector"):
        DatasetSpec.from_config({**base, "coverage": "detect"})
    with pytest.raises(ConfigError, match="contradicts dataset.coverage=drop"):
        DatasetSpec.from_config({**base, "coverage": "drop", "replacement": True})
    with pytest.raises(ConfigError, match="dataset.coverage='sometimes'"):
        DatasetSpec.from_config({**base, "coverage": "sometimes"})
    with pytest.raises(ConfigError, match="dataset.min_score"):
        DatasetSpec.from_config({**base, "min_score": 2})


# ---------------------------------------------------------------------- plan == build
@pytest.fixture(scope="module")
def source_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    load_source(make_cfg(root / "unused", root).source)
    return root


@pytest.mark.parametrize("policy", ["reuse", "drop", "error"])
def test_plan_predicts_the_recipe_on_the_synthetic_source(source_root, tmp_path, policy):
    # 3 classes with 9-16 of their 30 train images boxed; 12 + 12 per class needed
    counts = ["dataset.counts.train.easy=1", "dataset.counts.val=1", "dataset.counts.test=1"]
    cfg = make_cfg(tmp_path, source_root, f"dataset.coverage={policy}", *counts)
    index = load_source(cfg.source)
    plan = make_plan(cfg, index)
    assert plan.seconds < 5
    assert set(plan.what_if) == {"error", "reuse", "drop", "detect"}
    summary = plan.summary()
    assert f"dataset.coverage={policy};" in summary and "with dataset.coverage=detect" in summary
    short = shortfalls(plan.table())
    boxed = {r.wnid for r in index.records if r.split == "train" and r.has_boxes}
    assert set(short["wnid"]) == boxed  # every class is short at these counts
    if policy == "reuse":
        plan_vs_recipe(plan.selection, make_recipe(cfg, index))
        return
    # drop would leave no class, error stops: the plan says so, and so does the build
    assert plan.selection.problems and "the build stops" in summary
    with pytest.raises(ValueError) as err:
        make_recipe(cfg, index)
    assert all(problem in str(err.value) for problem in plan.selection.problems)


@pytest.mark.slow
def test_plan_and_build_commands_agree(source_root, tmp_path):
    """`hsi-generate plan` then `build` then `validate`: plan.csv holds the built recipe's counts."""
    args = [*make_cfg_args(tmp_path / "out", source_root), "dataset.coverage=reuse"]
    plan = subprocess.run(
        [str(BIN / "hsi-generate"), "plan", *args], capture_output=True, text=True, timeout=300
    )
    assert plan.returncode == 0, plan.stderr
    assert "this configuration: builds 3 classes" in plan.stdout
    built = subprocess.run(
        [str(BIN / "hsi-generate"), "build", *args], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr
    assert "coverage: dataset.coverage=reuse" in built.stdout
    table = pd.read_csv(tmp_path / "out" / "plan.csv", dtype={"wnid": str})
    # the built folder keeps the same table
    assert (tmp_path / "out" / "coverage.csv").read_bytes() == (
        tmp_path / "out" / "plan.csv"
    ).read_bytes()
    recipe = DatasetFolder(tmp_path / "out").read_recipe()
    per = recipe.groupby(["wnid", "split"]).agg(
        samples=("sample_id", "size"), takes=("fg_image", "nunique"), repeats=("reused", "sum")
    )
    planned = table.set_index(["wnid", "split"])[["samples", "takes", "repeats"]]
    pd.testing.assert_frame_equal(planned.sort_index(), per.sort_index(), check_dtype=False)
    check = subprocess.run(
        [str(BIN / "hsi-generate"), "validate", f"out={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def make_cfg_args(out: Path, source_root: Path) -> list[str]:
    from helpers import TINY, source_overrides

    return [f"out={out}", *source_overrides(source_root), *TINY]


# ---------------------------------------------------------------------- detect through a build
@dataclass(frozen=True)
class FakeDetection:
    score: float
    box: tuple[float, float, float, float] | None


class GreyObjectDetector:
    """A Detector (hsi.detectors' Protocol): the synthetic objects are grey on coloured habitats,
    so the box around the low-chroma pixels is the object; the score is a fixed function of the
    image size so that some images fall below the threshold."""

    name = "grey-object"

    def __init__(self) -> None:
        self.images = 0

    def detect(self, images, queries):
        assert len(images) == len(queries)
        out = []
        for image in images:
            self.images += 1
            pixels = np.asarray(image.convert("RGB")).astype(np.int16)
            # a habitat pixel keeps a channel span of at least 0.3 x 0.3 x 255 = 23 (S, V >= 0.3)
            grey = (pixels.max(axis=2) - pixels.min(axis=2)) < 20
            ys, xs = np.nonzero(grey)
            score = 0.2 if image.width % 4 == 0 else 0.9
            box = None if not len(xs) else (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
            out.append(FakeDetection(score, None if box is None else tuple(map(float, box))))
        return out


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_iou_on_handmade_boxes():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def install_detector(monkeypatch, detector) -> bool:
    """hsi.detectors with `build_detector` returning `detector` (a minimal stand-in for the
    package when it is absent: prompts per label, detection per record, no cache); True when
    the real package is there."""
    real = True
    try:
        import hsi.detectors as module
    except ImportError:
        real = False
        from PIL import Image

        module = types.ModuleType("hsi.detectors")
        module.class_prompts = lambda classes, template="a photo of a {}", max_tokens=None: {
            c.index: template.format(c.name) for c in classes
        }

        def detect_records(det, records, root, prompts, cache_dir, batch_size=8, progress=False):
            images = [Image.open(Path(root) / r.path) for r in records]
            queries = [
                types.SimpleNamespace(label=r.label, prompt=prompts[r.label]) for r in records
            ]
            return {r.key: d for r, d in zip(records, det.detect(images, queries), strict=True)}

        module.detect_records = detect_records
        monkeypatch.setitem(sys.modules, "hsi.detectors", module)
    monkeypatch.setattr(module, "build_detector", lambda cfg: detector, raising=False)
    return real


@pytest.mark.slow
def test_detect_build_uses_the_detector_boxes(source_root, tmp_path, monkeypatch):
    detector = GreyObjectDetector()
    real = install_detector(monkeypatch, detector)
    cfg = make_cfg(
        tmp_path / "out",
        source_root,
        "dataset.coverage=detect",
        "dataset.coverage_fallback=reuse",
        "+dataset.detector={kind: grey}",
        "dataset.min_score=0.5",
        "dataset.counts.train.easy=1",
        "dataset.counts.val=1",
        "dataset.counts.test=1",
    )
    index = load_source(cfg.source)
    selection = make_selection(cfg, index)
    recipe = selection.recipe()
    plan_vs_recipe(selection, recipe)
    hidden = read_hidden_boxes(source_root)
    used = recipe.loc[recipe["box_source"] == "grey", "fg_image"].unique()
    assert len(used) > 0 and set(used) <= set(hidden)  # only unannotated images get one
    for key in used:  # the detector box is about the hidden truth (the objects' hull)
        box, truth = selection.detected[key][0], hidden[key]
        hull = (*np.min(truth, axis=0)[:2], *np.max(truth, axis=0)[2:])
        assert iou(box, hull) > 0.7, (key, box, hull)
    # plan.detect=true runs the detector too: the plan is then exact for detect as well
    plan = make_plan(cfg, index, run_detector=True)
    assert plan.selection.detected == selection.detected and plan.detector_ran
    plan_vs_recipe(plan.selection, recipe)
    assert int(plan.table()["detected"].sum()) == len(used)
    # the build records them and makes the assets from them
    summary = run_build(cfg, index)
    assert summary.failed == 0
    detected = pd.read_csv(tmp_path / "out" / "detected_boxes.csv")
    assert set(detected["key"]) == set(selection.detected) and set(detected["box_source"]) == {
        "grey"
    }
    assert any("box sources of the samples" in line and "grey" in line for line in summary.coverage)
    unboxed = sum(not r.has_boxes for r in index.records)
    if real:  # hsi.detectors caches per (detector, image): the build and a rerun decode nothing
        seen = detector.images
        assert 0 < seen <= unboxed
        assert make_selection(cfg, index).detected == selection.detected
        assert detector.images == seen
