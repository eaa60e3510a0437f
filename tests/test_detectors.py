"""hsi.detectors: IoU, prompts, OWL-ViT / OWLv2 / Grounding DINO from tiny local folders (box
rescaling against handmade outputs and against transformers' own post-processing), the cache,
the cam_box detector and the box audit on handmade detections."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hsi.detectors import (
    Detection,
    Detector,
    Query,
    box_audit,
    box_iou,
    build_detector,
    class_prompts,
    detect_records,
    detector_prompts,
    write_audit,
)
from hsi.detectors import run as run_module
from hsi.detectors.cam import cam_box
from hsi.sources.record import ClassInfo, ImageRecord
from tests.detector_factory import save_cam_checkpoint, save_tiny_detector, write_images

HF_KINDS = ("owlvit", "owlv2", "grounding_dino")


# --------------------------------------------------------------------------- IoU
@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
        ((0, 0, 2, 2), (1, 0, 3, 2), 2 / 6),  # half of each overlaps
        ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),  # one inside the other
        ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),  # touching edges
        ((0, 0, 2, 2), (5, 5, 6, 6), 0.0),
        ((10, 10, 20, 30), (15, 20, 25, 40), 50 / (200 + 200 - 50)),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes: no union
    ],
)
def test_box_iou_on_handmade_boxes(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)
    assert box_iou(b, a) == pytest.approx(iou)


# --------------------------------------------------------------------------- prompts
IMAGENET_REPEATS = [
    ClassInfo(0, "n02012849", "crane", ("crane",)),
    ClassInfo(1, "n02113186", "Cardigan", ("Cardigan", "Cardigan Welsh corgi")),
    ClassInfo(2, "n02963159", "cardigan", ("cardigan",)),
    ClassInfo(3, "n03126707", "crane", ("crane",)),
    ClassInfo(4, "n03710637", "maillot", ("maillot",)),
    ClassInfo(5, "n03710721", "maillot", ("maillot", "tank suit")),
    ClassInfo(6, "n01440764", "tench", ("tench", "Tinca tinca")),
]


def test_prompts_are_unique_where_imagenet_repeats_names():
    prompts = class_prompts(IMAGENET_REPEATS)
    assert len({p.lower() for p in prompts.values()}) == len(IMAGENET_REPEATS)
    assert prompts[6] == "a photo of a tench"  # a name nobody else has stays as it is
    assert prompts[5] == "a photo of a tank suit"
    assert "crane" in prompts[0] and "crane" in prompts[3] and prompts[0] != prompts[3]


def test_prompts_of_unknown_repeats_use_a_free_synonym_then_the_wnid():
    classes = [
        ClassInfo(0, "n09000001", "spot", ("spot",)),
        ClassInfo(1, "n09000002", "Spot", ("Spot", "blotch")),
        ClassInfo(2, "n09000003", "spot", ("spot", "spot")),
    ]
    prompts = class_prompts(classes, template="{}")
    assert prompts == {0: "spot", 1: "blotch", 2: "spot n09000003"}


def test_a_long_prompt_becomes_the_name_then_loses_leading_words():
    classes = [ClassInfo(0, "n09000001", "great white shark", ("great white shark",))]
    count = lambda text: 2 + len(text.split())  # noqa: E731 - start and end tokens + words
    assert class_prompts(classes, "a {}", 6, count) == {0: "a great white shark"}
    assert class_prompts(classes, "a photo of a {}", 6, count) == {0: "great white shark"}
    assert class_prompts(classes, "a photo of a {}", 4, count) == {0: "white shark"}
    assert class_prompts(classes, "a photo of a {}", 1, count) == {0: "shark"}
    two = [*classes, ClassInfo(1, "n09000002", "tiger shark", ("tiger shark",))]
    with pytest.raises(ValueError, match=r"both 'shark'"):
        class_prompts(two, "{}", 3, count)
    with pytest.raises(ValueError, match="template"):
        class_prompts(classes, "a photo")


# --------------------------------------------------------------------------- open-vocabulary
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    return {kind: save_tiny_detector(root / kind, kind) for kind in HF_KINDS}


def fake_outputs(kind, boxes, scores, text_len=8):
    """Model outputs with the given normalised (cx, cy, w, h) boxes and box probabilities."""
    logits = torch.logit(torch.tensor(scores, dtype=torch.float32).clamp(1e-6, 1 - 1e-6))
    if kind == "grounding_dino":  # (B, boxes, 32 text positions); only the query's count
        full = torch.full((*logits.shape, 32), -20.0)
        full[..., 1] = logits
        full[..., text_len:] = 30.0  # beyond the query's tokens: must be ignored
        logits = full
    else:
        logits = logits[..., None]
    return SimpleNamespace(logits=logits, pred_boxes=torch.tensor(boxes, dtype=torch.float32))


@pytest.mark.parametrize("kind", HF_KINDS)
def test_boxes_are_rescaled_to_source_pixels(folders, kind, monkeypatch):
    detector = build_detector({"kind": kind, "path": str(folders[kind]), "device": "cpu"})
    images = [Image.new("RGB", (80, 48)), Image.new("RGB", (30, 60))]
    # best box of image 0: (0.5, 0.5, 0.2, 0.2); of image 1: (0.25, 0.5, 0.5, 0.5)
    boxes = [
        [[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]],
        [[0.25, 0.5, 0.5, 0.5], [0.9, 0.9, 0.1, 0.1]],
    ]
    scores = [[0.3, 0.7], [0.9, 0.2]]
    seen = {}

    def model(**inputs):
        seen.update(inputs)
        return fake_outputs(kind, boxes, scores, int(inputs["input_ids"].shape[1]))

    monkeypatch.setattr(detector, "model", model)
    found = detector.detect(images, [Query(0, "a photo of a cat"), Query(1, "a photo of a dog")])
    assert [d.score for d in found] == pytest.approx([0.7, 0.9])
    if kind == "owlv2":  # padded to a square of side max(w, h) before resizing
        assert found[0].box == pytest.approx((32.0, 32.0, 48.0, 48.0))  # y clipped to 48
        assert found[1].box == pytest.approx((0.0, 15.0, 30.0, 45.0))
    else:  # squashed (OWL-ViT) or aspect kept and normalised by the unpadded image (DINO)
        assert found[0].box == pytest.approx((32.0, 19.2, 48.0, 28.8))
        assert found[1].box == pytest.approx((0.0, 15.0, 15.0, 45.0))
    if kind == "grounding_dino":
        assert seen["input_ids"].shape[0] == 2


@pytest.mark.parametrize("kind", HF_KINDS)
def test_a_tiny_model_agrees_with_transformers_post_processing(folders, kind):
    detector = build_detector({"kind": kind, "path": str(folders[kind]), "device": "cpu"})
    assert isinstance(detector, Detector) and kind in detector.name
    rng = np.random.default_rng(3)
    # Grounding DINO pads a batch to its largest image, which its convolutions see: sizes
    # differ only between batches; the OWLs resize every image to the same square
    sizes = [(80, 48), (80, 48)] if kind == "grounding_dino" else [(80, 48), (40, 64)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    queries = [Query(0, "a photo of a tench"), Query(1, "a photo of a crane")]
    found = detector.detect(images, queries)
    # the same batch one image at a time: batching changes nothing
    alone = [detector.detect([im], [q])[0] for im, q in zip(images, queries, strict=True)]
    for d, a in zip(found, alone, strict=True):
        assert d.score == pytest.approx(a.score, abs=1e-5)
        assert d.box == pytest.approx(a.box, abs=1e-3)
    # transformers' own post-processing of the same outputs, no threshold: the top box
    processor, model = detector.processor, detector.model
    if kind == "grounding_dino":  # an image of another shape too
        image = Image.fromarray(rng.integers(0, 255, (64, 40, 3), dtype=np.uint8))
        images, queries = [*images, image], [*queries, Query(2, "a photo of a pig")]
        found = [*found, detector.detect([image], queries[-1:])[0]]
    for image, query, d in zip(images, queries, found, strict=True):
        w, h = image.size
        with torch.no_grad():
            if kind == "grounding_dino":
                inputs = processor(
                    images=[image], text=[detector.text(query.prompt)], return_tensors="pt"
                )
                out = model(**inputs)
                post = processor.post_process_grounded_object_detection(
                    out,
                    inputs["input_ids"],
                    threshold=0.0,
                    text_threshold=0.0,
                    target_sizes=[(h, w)],
                )[0]
            else:
                inputs = processor(
                    text=[[query.prompt]],
                    images=[image],
                    return_tensors="pt",
                    padding="max_length",
                    truncation=True,
                    max_length=16,
                )
                out = model(**inputs)
                post = processor.image_processor.post_process_object_detection(
                    out, threshold=0.0, target_sizes=[(h, w)]
                )[0]
        top = int(post["scores"].argmax())
        assert 0.0 <= d.score <= 1.0
        assert d.score == pytest.approx(float(post["scores"][top]), abs=1e-5)
        expected = post["boxes"][top].tolist()
        expected = [min(max(v, 0.0), lim) for v, lim in zip(expected, (w, h, w, h), strict=True)]
        if d.box is None:
            assert expected[2] <= expected[0] or expected[3] <= expected[1]
        else:
            assert d.box == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("kind", ("owlvit", "owlv2"))
def test_prompts_fit_the_text_model(folders, kind):
    detector = build_detector({"kind": kind, "path": str(folders[kind]), "device": "cpu"})
    assert detector.max_tokens == 16
    classes = [ClassInfo(0, "n09000001", "long name", ()), ClassInfo(1, "n09000002", "x", ())]
    prompts = detector_prompts(detector, classes)  # the tiny tokenizer: a token per character
    assert prompts == {0: "long name", 1: "a photo of a x"}
    assert detector.count_tokens(prompts[0]) <= 16 < detector.count_tokens("a photo of a long name")
    # a query longer than the text model is truncated, not an error
    found = detector.detect([Image.new("RGB", (40, 40))], [Query(0, "x " * 40)])
    assert len(found) == 1


@pytest.mark.parametrize("kind", HF_KINDS)
def test_a_missing_folder_names_the_key_and_the_folder(tmp_path, kind):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ValueError, match=r"detector\.path=.*no_such_model.*no such folder"):
        build_detector({"kind": kind, "path": str(missing)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"detector\.path=.*empty.*no config\.json"):
        build_detector({"kind": kind, "path": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match=r"detector\.path is not set.*huggingface-cli download"):
        build_detector({"kind": kind, "path": "???"})
    (tmp_path / "empty" / "config.json").write_text("{}")  # no weights, no processor
    with pytest.raises(ValueError, match=rf"detector\.path=.*empty: cannot load a {kind} model"):
        build_detector({"kind": kind, "path": str(tmp_path / "empty")})


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"detector\.kind='yolo'.*owlv2"):
        build_detector({"kind": "yolo"})


# --------------------------------------------------------------------------- cache
class Counting:
    """A detector wrapper that counts its calls and the images it sees."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.sizes = inner, inner.name, 0, []

    def detect(self, images, queries):
        self.calls += 1
        self.sizes.append(len(images))
        return self.inner.detect(images, queries)


def test_detect_records_batches_caches_and_resumes(folders, tmp_path, monkeypatch):
    records = write_images(
        tmp_path / "src", [(40, 30), (30, 40), (50, 50), (24, 48), (64, 32)], [0, 1, 0, 1, 0]
    )
    prompts = {0: "a photo of a tench", 1: "a photo of a crane"}
    detector = Counting(
        build_detector({"kind": "owlv2", "path": str(folders["owlv2"]), "device": "cpu"})
    )
    cache = tmp_path / "cache"
    # a first run over three of the images, then the whole set: only the other two are detected
    first = detect_records(detector, records[:3], tmp_path / "src", prompts, cache, batch_size=2)
    assert detector.sizes == [2, 1] and set(first) == {r.key for r in records[:3]}
    decoded = []
    real_load = run_module.load_rgb
    monkeypatch.setattr(run_module, "load_rgb", lambda p: decoded.append(p) or real_load(p))
    full = detect_records(detector, records, tmp_path / "src", prompts, cache, batch_size=2)
    assert detector.sizes == [2, 1, 2] and len(decoded) == 2
    assert all(full[k] == v for k, v in first.items())  # read back exactly
    # a rerun: the model is called zero times and nothing is decoded
    again = detect_records(detector, records, tmp_path / "src", prompts, cache, batch_size=2)
    assert detector.calls == 3 and len(decoded) == 2 and again == full
    # the same without a cache equals what the cache gave (to float precision of the batches)
    fresh = detect_records(detector.inner, records, tmp_path / "src", prompts, None, batch_size=5)
    for key, d in fresh.items():
        assert d.score == pytest.approx(full[key].score, abs=1e-5)
    # another prompt of a class is another query: detected again
    other = {**prompts, 1: "a photo of a heron"}
    detect_records(detector, records, tmp_path / "src", other, cache, batch_size=8)
    assert detector.sizes[-1] == 2  # the two class-1 images
    assert all(isinstance(d, Detection) and 0 <= d.score <= 1 for d in full.values())
    for r in records:
        box = full[r.key].box
        assert box is None or (0 <= box[0] < box[2] <= r.width and 0 <= box[1] < box[3] <= r.height)


def test_an_undecodable_image_is_left_out_and_not_cached(folders, tmp_path):
    records = write_images(tmp_path / "src", [(40, 30), (30, 40)], [0, 0])
    (tmp_path / "src" / records[1].path).write_bytes(b"not an image")
    detector = Counting(
        build_detector({"kind": "owlvit", "path": str(folders["owlvit"]), "device": "cpu"})
    )
    found = detect_records(detector, records, tmp_path / "src", {0: "a tench"}, tmp_path / "c")
    assert list(found) == [records[0].key]
    with pytest.raises(ValueError, match=r"no prompt for class labels \[0\]"):
        detect_records(detector, records, tmp_path / "src", {1: "x"}, None)


# --------------------------------------------------------------------------- cam_box
def test_cam_box_is_the_box_of_the_largest_region_above_the_threshold():
    cam = np.zeros((20, 30))
    cam[2:5, 3:6] = 1.0  # the peak, 9 pixels
    cam[10:18, 12:25] = 0.5  # larger, above 0.2 x peak
    cam[0, 29] = 0.1  # below the threshold
    assert cam_box(cam, 0.2) == (12, 10, 25, 18)
    assert cam_box(cam, 0.6) == (3, 2, 6, 5)
    assert cam_box(np.zeros((4, 4)), 0.2) is None


@pytest.mark.slow  # builds and runs a resnet10t, Grad-CAM included
def test_the_cam_detector_scores_with_the_classifier_and_boxes_its_cam(tmp_path, monkeypatch):
    from hsi.analysis import gradcam
    from hsi.data.transforms import eval_transform

    path = tmp_path / "run" / "last.ckpt"
    net = save_cam_checkpoint(path, num_classes=3)
    cfg = {"kind": "cam", "checkpoint": str(path), "model": "resnet10t", "resolution": 64}
    detector = build_detector({**cfg, "device": "cpu"})
    assert detector.name.startswith("cam_box|") and detector.net.num_classes == 3
    rng = np.random.default_rng(0)
    sizes = [(128, 96), (40, 80)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    queries = [Query(2, "a photo of a x"), Query(0, "a photo of a y")]
    found = detector.detect(images, queries)
    x = torch.stack([eval_transform(resize=64)(im) for im in images])
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1)
    assert [d.score for d in found] == pytest.approx(
        [float(probs[0, 2]), float(probs[1, 0])], abs=1e-5
    )
    # the box is the one around the query class's Grad-CAM, scaled from 64 px to the image
    assert detector.target_layer == "layer2"  # 8 x 8 at 64 px (layer4 would be 2 x 2)
    maps, _ = gradcam.cam_maps(net, x, [2, 0], "layer2")
    for d, cam, (w, h) in zip(found, maps, sizes, strict=True):
        expected = cam_box(cam, 0.2)
        if expected is None:
            assert d.box is None
        else:
            x0, y0, x1, y1 = expected
            assert d.box == pytest.approx((x0 * w / 64, y0 * h / 64, x1 * w / 64, y1 * h / 64))
    # a handmade map: the region [8:16, 4:12] of 32 x 32 is x 4-12, y 8-16
    cam = np.zeros((2, 32, 32))
    cam[:, 8:16, 4:12] = 1.0
    monkeypatch.setattr(gradcam, "cam_maps", lambda *a, **k: (cam, np.zeros(2)))
    found = detector.detect(images, queries)
    assert found[0].box == pytest.approx((16.0, 24.0, 48.0, 48.0))  # x 128/32 = 4, y 96/32 = 3
    assert found[1].box == pytest.approx((5.0, 20.0, 15.0, 40.0))  # x 40/32, y 80/32
    with pytest.raises(ValueError, match=r"outside its 3-way head"):
        detector.detect(images[:1], [Query(7, "z")])


def test_the_cam_layer_is_the_deepest_with_a_map_of_seven_pixels_or_more():
    import timm

    from hsi.detectors.cam import auto_target_layer

    resnet = timm.create_model("resnet10t", num_classes=2).eval()
    # ResNet strides: layer1 /4, layer2 /8, layer3 /16, layer4 /32
    assert [auto_target_layer(resnet, r) for r in (32, 64, 112, 224)] == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert auto_target_layer(resnet, 16) == "layer1"  # nothing is 7 px: the finest stage


def test_the_cam_detector_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"detector\.checkpoint=.*nowhere.*no such file or folder"):
        build_detector({"kind": "cam", "checkpoint": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match=r"detector\.checkpoint is not set.*demo_source"):
        build_detector({"kind": "cam", "checkpoint": "???"})
    save_cam_checkpoint(tmp_path / "bare.ckpt", 2)
    with pytest.raises(ValueError, match=r"detector\.model=<timm name>"):
        build_detector({"kind": "cam", "checkpoint": str(tmp_path / "bare.ckpt")})


# --------------------------------------------------------------------------- audit
def record(key, label, boxes):
    return ImageRecord(key, "val", f"n{label:08d}", label, f"val/{key}.png", 100, 100, tuple(boxes))


def test_the_audit_on_handmade_detections(tmp_path):
    records = [
        record("a1", 0, [(0, 0, 10, 10)]),
        record("a2", 0, [(0, 0, 10, 10)]),
        record("a3", 0, [(0, 0, 10, 10)]),
        record("b1", 1, [(50, 50, 60, 60), (0, 0, 20, 20)]),  # two objects: the better match
        record("b2", 1, [(5, 5, 15, 15)]),
        record("c1", 2, []),  # no ground truth: not audited
        record("b3", 1, [(0, 0, 1, 1)]),  # no detection: not audited
    ]
    detections = {
        "val/a1": Detection(0.9, (0, 0, 10, 10)),  # 1.0
        "val/a2": Detection(0.8, (0, 0, 10, 5)),  # 0.5
        "val/a3": Detection(0.1, None),  # no box: 0.0
        "val/b1": Detection(0.7, (0, 0, 20, 20)),  # 1.0 with the second box
        "val/b2": Detection(0.6, (5, 5, 15, 15)),  # 1.0
        "val/c1": Detection(0.5, (0, 0, 5, 5)),
    }
    classes = [
        ClassInfo(0, "n00000000", "ant"),
        ClassInfo(1, "n00000001", "bee"),
        ClassInfo(2, "n00000002", "cat"),
    ]
    audit = box_audit(records, detections, classes, threshold=0.8, detector="handmade")
    assert audit.images["key"].tolist() == ["val/a1", "val/a2", "val/a3", "val/b1", "val/b2"]
    assert audit.images["iou"].tolist() == pytest.approx([1.0, 0.5, 0.0, 1.0, 1.0])
    assert audit.classes["miou"].tolist() == pytest.approx([0.5, 1.0])
    assert audit.classes["name"].tolist() == ["ant", "bee"]
    assert audit.miou == pytest.approx(0.75) and audit.miou_images == pytest.approx(0.7)
    assert audit.below == ["n00000000"]
    line = audit.summary()
    assert "mIoU 0.7500 over 2 classes" in line and "1 classes below 0.8: n00000000" in line
    assert "1 without a detected box" in line
    files = write_audit(audit, tmp_path)
    assert files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["classes"].read_text().splitlines()[0] == "label,wnid,name,images,miou,below"
    assert len(files["images"].read_text().splitlines()) == 6
    before = {k: p.read_bytes() for k, p in files.items()}
    write_audit(box_audit(records, detections, classes, 0.8, "handmade"), tmp_path)
    assert {k: p.read_bytes() for k, p in files.items()} == before  # same input, same bytes
    empty = box_audit(records[5:], detections, classes)
    assert math.isnan(empty.miou) and "no image has both" in empty.summary()
