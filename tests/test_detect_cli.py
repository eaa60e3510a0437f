"""hsi-detect: the config, the tasks boxes and audit on a tiny synthetic source (a tiny OWLv2
folder, the cam detector through the console script), the cache across runs, bad input."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from hsi.detectors import hf
from hsi.detectors.app import DETECTIONS_FILE, run_tasks
from hsi.detectors.audit import CLASSES_FILE, FIGURE_FILE, IMAGES_FILE
from hsi.sources import load_source
from tests.detector_factory import save_cam_checkpoint, save_tiny_owl
from tests.helpers import BIN, CONF, source_overrides

HSI_DETECT = BIN / "hsi-detect"


def detect_cfg(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("detect", list(overrides))


@pytest.mark.parametrize("kind", ["cam", "owlvit", "owlv2", "grounding_dino"])
def test_every_detector_config_composes(kind):
    cfg = detect_cfg(f"detector={kind}", "out=x")
    assert cfg.detector.kind == kind and "{}" in cfg.detector.template
    assert cfg.tasks == ["boxes", "audit"] and cfg.audit.threshold == 0.8


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect") / "source"
    cfg = detect_cfg(*source_overrides(root), "out=x")
    load_source(cfg.source)  # generated once for the module
    return root


@pytest.mark.slow  # two runs of a tiny OWLv2 over 12 images
def test_boxes_and_audit_with_a_cached_rerun(source, tmp_path, monkeypatch, capsys):
    folder = save_tiny_owl(tmp_path / "owlv2", "owlv2")
    calls = []
    real = hf.OpenVocabDetector.detect
    monkeypatch.setattr(
        hf.OpenVocabDetector,
        "detect",
        lambda self, im, q: calls.append(len(im)) or real(self, im, q),
    )
    common = [
        *source_overrides(source),
        "detector=owlv2",
        f"detector.path={folder}",
        "detector.batch_size=5",
        "detector.device=cpu",
        "splits=[val]",
        f"cache={tmp_path / 'cache'}",
        "progress=false",
    ]
    done = run_tasks(detect_cfg(*common, f"out={tmp_path / 'a'}"))
    assert calls == [5, 5, 2]  # 3 classes x 4 val images, in batches of 5
    frame = pd.read_csv(tmp_path / "a" / DETECTIONS_FILE)
    index = load_source(detect_cfg(*source_overrides(source), "out=x").source)
    val = {r.key: r for r in index.records if r.split == "val"}
    assert sorted(frame["key"]) == sorted(val) and (frame["gt_boxes"] > 0).all()
    assert frame["score"].between(0, 1).all()
    for row in frame.itertuples():
        r = val[row.key]
        assert row.label == r.label and row.wnid == r.wnid
        if not pd.isna(row.xmin):  # random weights: some boxes are empty (no box: NaN)
            assert 0 <= row.xmin < row.xmax <= r.width and 0 <= row.ymin < row.ymax <= r.height
    prompts = pd.read_csv(tmp_path / "a" / "prompts.csv")
    assert prompts["prompt"].is_unique and len(prompts) == 3
    for name in (IMAGES_FILE, CLASSES_FILE, FIGURE_FILE):
        assert (tmp_path / "a" / name).is_file()
    audit = done["audit"]
    assert len(audit.images) == 12 and len(audit.classes) == 3
    assert audit.images["no_box"].sum() == frame["xmin"].isna().sum()
    out = capsys.readouterr().out
    assert audit.summary() in out and "box audit (owlv2): mIoU" in out
    # a second run: everything from the cache, the same bytes
    run_tasks(detect_cfg(*common, f"out={tmp_path / 'b'}"))
    assert calls == [5, 5, 2]
    for name in (DETECTIONS_FILE, IMAGES_FILE, CLASSES_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow  # the console script: imports, a resnet10t and Grad-CAM
def test_the_console_script_with_the_cam_detector(source, tmp_path):
    save_cam_checkpoint(tmp_path / "model.ckpt", num_classes=3)
    args = [
        str(HSI_DETECT),
        *source_overrides(source),
        "detector=cam",
        f"detector.checkpoint={tmp_path / 'model.ckpt'}",
        "detector.model=resnet10t",
        "detector.resolution=64",
        "detector.device=cpu",
        "splits=[val]",
        "per_class=2",
        "tasks=[audit]",
        "cache=null",
        f"out={tmp_path / 'out'}",
        "progress=false",
    ]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "box audit (cam): " in run.stdout
    images = pd.read_csv(tmp_path / "out" / IMAGES_FILE)
    assert len(images) == 6 and images["iou"].between(0, 1).all()
    assert not (tmp_path / "out" / DETECTIONS_FILE).exists()  # audit alone writes no boxes table


@pytest.mark.slow  # two starts of the console script
def test_a_missing_model_folder_exits_with_the_key_and_no_traceback(tmp_path):
    args = [
        str(HSI_DETECT),
        "detector=owlv2",
        f"detector.path={tmp_path / 'absent'}",
        f"out={tmp_path}",
    ]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "hsi-detect: detector.path=" in run.stderr and "absent" in run.stderr
    assert "huggingface-cli download google/owlv2" in run.stderr
    assert "Traceback" not in run.stderr
    bad = subprocess.run(
        [*args[:1], "tasks=[nope]", "detector=cam", f"detector.checkpoint={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
