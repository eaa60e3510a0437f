"""hsi-generate on the synthetic source at 64 px: recipe, assets, shards, resume, validate, export."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CONF, TINY, make_cfg, source_overrides, tree
from hydra import compose, initialize_config_dir
from PIL import Image

from hsi.cli.generate import run, verb_to_override
from hsi.generate.assets import AssetStore, capped_size, choose_core_box, crop, resize_rgb
from hsi.generate.build import make_recipe, run_build
from hsi.generate.compose import Composer
from hsi.generate.compose import compose as compose_sample
from hsi.generate.export import run_export
from hsi.generate.inpaint.inpainters import LamaInpainter, OpenCVInpainter
from hsi.generate.inpaint.masks import BoxMasker
from hsi.generate.layout import (
    RUNTIME_KEYS,
    DatasetFolder,
    LockedError,
    generation_config,
    hold_lock,
    without_runtime_keys,
)
from hsi.generate.recipe import COLUMNS, needed_images
from hsi.generate.validate import validate_output
from hsi.groups import placement_xy
from hsi.sources import load_source
from hsi.sources.images import load_rgb
from hsi.sources.synthetic import SynthParams, wnid_of

C0, C1, C2 = (wnid_of(k) for k in range(3))
# Only the test split, one image per class: 2 source images for 2 classes.
MINIMAL = [
    f"dataset.classes=[{C0},{C1}]",
    "dataset.counts.train.easy=0",
    "dataset.counts.train.medium=0",
    "dataset.counts.train.hard=0",
    "dataset.counts.val=0",
    "dataset.counts.test=1",
]


def distinct_images() -> int:
    """Distinct source images of the TINY recipe: per class its boxed train images up to the
    16 + 12 that train and val take (dataset.coverage=reuse repeats, never adds), and 2 test ones.
    The synthetic source boxes a per-class fraction of its 30 train images (source_overrides)."""
    params = SynthParams(num_classes=3, train_per_class=30, val_per_class=4)
    boxed = [round(params.class_box_fraction(wnid_of(k)) * 30) for k in range(3)]
    return sum(min(b, 16 + 12) for b in boxed) + 3 * 2


NEEDED = distinct_images()


def cli(*args: str, cwd: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hsi.cli.generate", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def merged_manifest(out: Path) -> pd.DataFrame:
    frame = DatasetFolder(out).read_manifests().drop(columns="manifest")
    return frame.sort_values("key").reset_index(drop=True)


@pytest.fixture(scope="session")
def source_root(tmp_path_factory) -> Path:
    """The synthetic source, generated once; later runs only read it."""
    root = tmp_path_factory.mktemp("synthetic")
    load_source(make_cfg(root / "unused", root).source)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, source_root) -> Path:
    """An uninterrupted build: 1 shard, 1 worker."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_build(make_cfg(out, source_root))
    assert (summary.items, summary.done, summary.failed) == (NEEDED, NEEDED, 0)
    return out


@pytest.fixture(scope="module")
def recipe(reference) -> pd.DataFrame:
    return Composer.from_output(reference).recipe


# ---------------------------------------------------------------------------- the recipe
def test_counts_and_categories_per_split(recipe):
    per_class = recipe.groupby(["split", "wnid"]).size().unstack("split")
    assert (
        (per_class["train"] == 16).all()
        and (per_class["val"] == 12).all()
        and (per_class["test"] == 24).all()
    )
    # paper 000, §4, by size rank (16/24/32): Easy = own background at the two larger sizes, Hard =
    # random background at the two smaller, Medium the rest.
    expected = {
        "CeO_16": "medium",
        "CoO_16": "medium",
        "CeR_16": "hard",
        "CoR_16": "hard",
        "CeO_24": "easy",
        "CoO_24": "easy",
        "CeR_24": "hard",
        "CoR_24": "hard",
        "CeO_32": "easy",
        "CoO_32": "easy",
        "CeR_32": "medium",
        "CoR_32": "medium",
    }
    assert dict(zip(recipe["group"], recipe["category"], strict=True)) == expected
    train = recipe[recipe["split"] == "train"]
    per_group = train.groupby(["wnid", "group"]).size().unstack("group")
    assert all((per_group[g] == (2 if c == "easy" else 1)).all() for g, c in expected.items())
    # train and val come from disjoint source images; each test image is in all 12 groups
    fg = {s: set(recipe.loc[recipe["split"] == s, "fg_image"]) for s in ("train", "val", "test")}
    assert not fg["train"] & fg["val"] and all(
        k.startswith("train/") for k in fg["train"] | fg["val"]
    )
    test = recipe[recipe["split"] == "test"]
    assert (test.groupby("fg_image")["group"].nunique() == 12).all()
    assert len(fg["test"]) == 3 * 2 and all(k.startswith("val/") for k in fg["test"])


def test_r_background_is_another_class_and_really_that_image(recipe, reference, source_root):
    r_rows = recipe[recipe["background"] == "R"]
    o_rows = recipe[recipe["background"] == "O"]
    assert (r_rows["bg_wnid"] != r_rows["wnid"]).all()
    assert (o_rows["bg_image"] == o_rows["fg_image"]).all()
    index = load_source(make_cfg(reference, source_root).source)
    records = {r.key: r for r in index.records}
    assert all(
        records[k].wnid == w for k, w in zip(r_rows["bg_image"], r_rows["bg_wnid"], strict=True)
    )
    # The stored background of an R row is the inpainting of that very image, recomputed here.
    store = AssetStore(reference)
    for key in sorted(set(r_rows["bg_image"]))[:3]:
        record = records[key]
        image = load_rgb(index.root / record.path)
        filled = OpenCVInpainter(radius=3, method="telea")(
            image, BoxMasker(dilation=15)(image, record.boxes)
        )
        assert (store.load("bg", key) == resize_rgb(filled, 64, 64)).all()
        core = crop(image, choose_core_box(record.boxes, "largest"))
        # stored with its shorter side capped at the largest size (32 px), aspect kept
        width, height = capped_size(core.shape[1], core.shape[0], 32)
        assert min(core.shape[:2]) > 32 and min(width, height) == 32
        assert (store.load("core", key) == resize_rgb(core, width, height)).all()


def test_composed_samples_have_the_group_geometry(recipe, reference):
    composer = Composer.from_output(reference)
    store = composer.store
    for row in recipe.groupby("group").head(2).to_dict("records"):
        s = row["size"]
        x, y = ((64 - s) // 2, (64 - s) // 2) if row["position"] == "center" else (64 - s, 0)
        image = composer(row)
        bg = store.load("bg", row["bg_image"])
        inside = np.zeros((64, 64), dtype=bool)
        inside[y : y + s, x : x + s] = True
        assert (image[~inside] == bg[~inside]).all()
        core = store.load("core", row["fg_image"])
        assert (image[y : y + s, x : x + s] == resize_rgb(core, s, s)).all()


def test_v2_pairs_explicit_and_from_an_accuracy_table(source_root, tmp_path):
    cfg = make_cfg(
        tmp_path / "v2", source_root, "dataset=v2", f"dataset.pairs={{{C0}: {C2}, {C1}: {C2}}}"
    )
    index = load_source(cfg.source)
    table = make_recipe(cfg, index)
    assert sorted(table["wnid"].unique()) == [C0, C1]
    r_rows = table[table["background"] == "R"]
    assert (r_rows["bg_wnid"] == C2).all()
    # Automatic: the most spurious class (highest background-only accuracy) is the background,
    # the least (lowest) the foreground.
    csv = tmp_path / "acc.csv"
    csv.write_text(f"wnid,accuracy\n{C0},0.9\n{C1},0.2\n{C2},0.5\n")
    cfg = make_cfg(
        tmp_path / "auto",
        source_root,
        "dataset=v2",
        f"dataset.pairs_from={csv}",
        "dataset.pairs_count=1",
    )
    auto = make_recipe(cfg, index)
    assert set(auto["wnid"]) == {C1}
    assert set(auto.loc[auto["background"] == "R", "bg_wnid"]) == {C0}
    paper = make_cfg(tmp_path / "paper", source_root, "dataset=v2")
    with pytest.raises(ValueError, match="dataset.pairs_from"):
        make_recipe(paper, index)
    # the failed build writes nothing, so the corrected config can use the same folder
    with pytest.raises(ValueError, match="dataset.pairs_from"):
        run_build(paper)
    assert not (tmp_path / "paper" / "config.yaml").exists()
    fixed = make_cfg(
        tmp_path / "paper",
        source_root,
        "dataset=v2",
        "dataset.classes=null",
        f"dataset.pairs={{{C0}: {C2}, {C1}: {C2}}}",
    )
    assert make_recipe(fixed, index) is not None and run_build(fixed).failed == 0


# ---------------------------------------------------------------------------- the build
@pytest.mark.slow
def test_same_bytes_for_any_number_of_shards_and_workers(reference, source_root, tmp_path):
    sharded = tmp_path / "sharded"
    parts = [
        run_build(make_cfg(sharded, source_root, f"shard={i}", "num_shards=3")) for i in range(3)
    ]
    sizes = [p.items for p in parts]
    assert sum(sizes) == NEEDED and max(sizes) - min(sizes) <= 1
    pooled = tmp_path / "pooled"
    summary = run_build(make_cfg(pooled, source_root, "workers=2"))
    want = tree(reference / "assets")
    assert len(want) == 2 * NEEDED  # bg + core per image
    assert tree(sharded / "assets") == want and tree(pooled / "assets") == want
    for out in (sharded, pooled):
        assert (out / "recipe.csv").read_bytes() == (reference / "recipe.csv").read_bytes()
        assert (out / "config.yaml").read_bytes() == (reference / "config.yaml").read_bytes()
        assert merged_manifest(out).equals(merged_manifest(reference))
    # two spawned workers, each one inpainting call per image it made
    assert len(summary.workers) == 2
    assert sum(c["images"] for c in summary.workers.values()) == NEEDED
    assert all(
        c["inpaint_calls"] == c["images"] and c["inpaint_loads"] == 0
        for c in summary.workers.values()
    )


def test_rerun_skips_and_rebuilds_only_what_is_missing(reference, source_root, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    manifest = (out / "manifest" / "shard-0-of-1.csv").read_bytes()
    # the source's progress bar is no part of the configuration: the rerun is accepted
    summary = run_build(make_cfg(out, source_root, "source.progress=true"))
    assert (summary.done, summary.skipped) == (0, NEEDED)
    key = needed_images(Composer.from_output(out).recipe)[5]
    AssetStore(out).path("core", key).unlink()
    summary = run_build(make_cfg(out, source_root))
    assert (summary.done, summary.skipped) == (1, NEEDED - 1)
    assert tree(out / "assets") == tree(reference / "assets")
    assert (out / "manifest" / "shard-0-of-1.csv").read_bytes() == manifest


def test_another_config_in_the_same_folder_is_refused(reference, source_root):
    with pytest.raises(ValueError, match="config.yaml exists and differs"):
        run_build(make_cfg(reference, source_root, "seed=1"))


SLOW_INPAINTER = """
import time
from hsi.generate.inpaint.inpainters import OpenCVInpainter


class SlowInpainter(OpenCVInpainter):
    '''OpenCV's result, later: leaves time to kill a build half-way.'''

    def __call__(self, image, mask):
        time.sleep(0.02)
        return super().__call__(image, mask)
"""


def spawned_workers(pid: int) -> list[int]:
    """Pool workers among a process's children (Linux /proc), the resource tracker left out."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
        if parent == pid and b"resource_tracker" not in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["build", "worker"])
def test_killed_build_resumes_to_identical_bytes(
    victim, reference, source_root, tmp_path, monkeypatch
):
    """SIGKILL the whole build (1 worker, in-process) or one of its 2 spawned workers mid-run."""
    if victim == "worker" and not Path("/proc/self/stat").exists():
        pytest.skip("finding the pool's worker processes needs Linux /proc")
    (tmp_path / "slow_inpaint.py").write_text(SLOW_INPAINTER)
    out = tmp_path / "killed"
    workers = 1 if victim == "build" else 2
    overrides = [
        f"out={out}",
        *source_overrides(source_root),
        *TINY,
        "inpaint._target_=slow_inpaint.SlowInpainter",
        f"workers={workers}",
    ]
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    proc = cli(
        "build", *overrides, cwd=tmp_path, env={"PYTHONPATH": pythonpath}, start_new_session=True
    )
    bg_dir = out / "assets" / "bg"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if bg_dir.is_dir() and sum(1 for _ in bg_dir.rglob("*.png")) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, (
        f"the build ended before it could be killed:\n{proc.communicate()[0]}"
    )
    if victim == "build":
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        pool = spawned_workers(proc.pid)
        assert len(pool) == 2, pool
        os.kill(pool[0], signal.SIGKILL)
        text = proc.communicate(timeout=120)[0]
        assert proc.returncode != 0 and "a worker process died" in text, text
    written = sum(1 for _ in bg_dir.rglob("*.png"))
    assert 10 <= written < NEEDED and not (out / "manifest").exists()

    monkeypatch.syspath_prepend(str(tmp_path))
    summary = run_build(make_cfg(out, source_root, "inpaint._target_=slow_inpaint.SlowInpainter"))
    # at most one image per worker was half-written when the kill came
    assert summary.skipped >= written - workers and summary.done + summary.skipped == NEEDED
    assert tree(out / "assets") == tree(reference / "assets")  # no half files, no temp files left
    assert (out / "manifest" / "shard-0-of-1.csv").read_bytes() == (
        reference / "manifest" / "shard-0-of-1.csv"
    ).read_bytes()


def test_a_broken_source_image_is_recorded_and_reported(source_root, tmp_path):
    """Without the decode check, a truncated body is found at build time, as a failed row."""
    src = tmp_path / "src"
    shutil.copytree(source_root, src)
    out = tmp_path / "out"
    cfg = make_cfg(out, src, *MINIMAL, "source.decode_check=none")
    index = load_source(cfg.source)
    broken, fine = needed_images(make_recipe(cfg, index))
    path = src / {r.key: r for r in index.records}[broken].path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, body truncated
    assert run(cfg) == 1  # the CLI's exit code
    manifest = DatasetFolder(out).read_manifests().set_index("key")
    assert manifest.loc[fine, "status"] == "ok"
    assert manifest.loc[broken, "status"] == "failed"
    assert (
        manifest.loc[broken, "reason"].startswith("decode:")
        and path.name in manifest.loc[broken, "reason"]
    )
    report = validate_output(out)
    assert not report.ok and any(broken in p and "failed image" in p for p in report.problems)


# ---------------------------------------------------------------------------- validate
def test_validate_catches_deleted_corrupted_and_missing_files(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    assert validate_output(out).ok
    keys = needed_images(Composer.from_output(out).recipe)
    store = AssetStore(out)
    deleted, corrupted = store.path("bg", keys[0]), store.path("core", keys[1])
    deleted.unlink()
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)
    corrupted.write_bytes(bytes(data))
    proc = cli("validate", f"out={out}", cwd=tmp_path)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, text
    assert f"missing asset {deleted}" in text
    assert f"corrupted asset {corrupted}" in text and f"hash mismatch {corrupted}" in text, text

    # a valid PNG with other pixels: decodes, but its hash differs from the manifest's
    shutil.copy(store.path("bg", keys[3]), store.path("bg", keys[2]))
    report = validate_output(out)
    assert any(p.startswith(f"hash mismatch {store.path('bg', keys[2])}") for p in report.problems)

    # a complete build beside the manifest of an abandoned 2-shard run: harmless leftovers
    whole = out / "manifest" / "shard-0-of-1.csv"
    half = pd.read_csv(whole, keep_default_na=False).iloc[::2]
    half.to_csv(out / "manifest" / "shard-0-of-2.csv", index=False)
    assert not any("missing manifest" in p for p in validate_output(out).problems)
    # without the complete one, the 2-shard run is unfinished: its missing shard is named
    whole.unlink()
    problems = validate_output(out).problems
    assert any("missing manifest" in p and "shard-1-of-2.csv" in p for p in problems)
    assert any("needed images are in no manifest" in p for p in problems)
    shutil.rmtree(out / "manifest")
    assert any(p.startswith("no manifest") for p in validate_output(out).problems)
    (out / "recipe.csv").unlink()
    assert any(p.startswith(f"missing {out / 'recipe.csv'}") for p in validate_output(out).problems)


# ---------------------------------------------------------------------------- export
def test_export_png_is_compose_bit_exact(reference, source_root, recipe, tmp_path):
    dest = tmp_path / "exported"
    cfg = make_cfg(reference, source_root, f"export.dir={dest}", "action=export")
    summary = run_export(cfg)
    assert (summary.written, summary.skipped) == (len(recipe), 0)
    meta = pd.read_csv(dest / "metadata.csv", dtype={"wnid": str, "bg_wnid": str})
    assert list(meta.columns) == [*COLUMNS, "path"]
    first = meta.iloc[0]
    assert first["path"] == (
        f"{first['split']}/{first['size']}/{first['placement']}/{first['wnid']}/{first['sample_id']}.png"
    )
    store = AssetStore(reference)
    for row in meta.to_dict("records"):
        exported = np.asarray(Image.open(dest / row["path"]))
        assert (exported == compose_sample(row, store, 64)).all(), row["path"]
    assert run_export(cfg).written == 0  # resumable: everything is there

    # two shards write the same files
    halves = tmp_path / "halves"
    for i in range(2):
        run_export(
            make_cfg(reference, source_root, f"export.dir={halves}", f"shard={i}", "num_shards=2")
        )
    unlocked = lambda folder: {k: v for k, v in tree(folder).items() if not k.startswith(".lock-")}  # noqa: E731
    assert unlocked(halves) == unlocked(dest)  # the same files but for each shard's lock file


def test_export_jpeg(reference, source_root, recipe, tmp_path):
    dest = tmp_path / "jpeg"
    run_export(
        make_cfg(
            reference, source_root, f"export.dir={dest}", "export.format=jpeg", "export.quality=90"
        )
    )
    meta = pd.read_csv(dest / "metadata.csv")
    assert meta["path"].str.endswith(".JPEG").all() and len(meta) == len(recipe)
    row = meta.iloc[len(meta) // 2].to_dict()
    with Image.open(dest / row["path"]) as im:
        assert im.format == "JPEG"
        decoded = np.asarray(im).astype(int)
    assert np.abs(decoded - compose_sample(row, reference, 64).astype(int)).mean() < 8
    # another quality into the same folder would keep the first run's files: refused
    other = make_cfg(
        reference, source_root, f"export.dir={dest}", "export.format=jpeg", "export.quality=10"
    )
    with pytest.raises(ValueError, match="export.json exists and differs"):
        run_export(other)


# ---------------------------------------------------------------------------- components
TINY_LAMA = """
import torch


class GreyFill(torch.nn.Module):
    '''The LaMa contract: image [1,3,H,W] in [0,1] and mask [1,1,H,W] -> [1,3,H,W].'''

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * (1 - mask) + 0.5 * mask
"""


def test_lama_path_with_a_torchscript_module(source_root, tmp_path):
    import torch

    # TorchScript compiles from source, so the module lives in a real file.
    (tmp_path / "tiny_lama.py").write_text(TINY_LAMA)
    spec = importlib.util.spec_from_file_location("tiny_lama", tmp_path / "tiny_lama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkpoint = tmp_path / "tiny-lama.pt"
    torch.jit.script(module.GreyFill()).save(str(checkpoint))
    out = tmp_path / "lama"
    cfg = make_cfg(out, source_root, *MINIMAL, "inpaint=lama", f"inpaint.checkpoint={checkpoint}")
    loads_before = LamaInpainter.loads
    summary = run_build(cfg)
    assert (summary.done, summary.failed) == (2, 0)
    assert LamaInpainter.loads - loads_before == 1  # one load for the worker, not one per image
    (counters,) = summary.workers.values()
    assert counters["inpaint_loads"] == 1 and counters["inpaint_calls"] == counters["images"] == 2
    index = load_source(cfg.source)
    for record in (
        r for r in index.records if r.key in needed_images(Composer.from_output(out).recipe)
    ):
        image = load_rgb(index.root / record.path)
        hole = BoxMasker(dilation=15)(image, record.boxes) > 0
        expected = np.where(hole[..., None], 128, image).astype(np.uint8)  # 0.5 * 255 rounds to 128
        assert (AssetStore(out).load("bg", record.key) == resize_rgb(expected, 64, 64)).all()
    assert validate_output(out).ok


def test_sam_variant_needs_the_sam_masker(source_root, tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        assert compose("generate", ["dataset=sam"]).mask._target_.endswith("SamMasker")
    with pytest.raises(ValueError, match="mask=sam"):
        run_build(make_cfg(tmp_path, source_root, "dataset=sam", "mask=box"))


@pytest.mark.slow
def test_sam_path_with_a_random_vit_b(source_root, tmp_path):
    """One image (shard 0 of 2) through the SAM variant: SAM's image encoder is slow on a CPU."""
    import torch
    from segment_anything import sam_model_registry

    from hsi.generate.inpaint.masks import SamMasker

    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_random_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), checkpoint)
    out = tmp_path / "sam"
    cfg = make_cfg(
        out,
        source_root,
        *MINIMAL,
        "dataset=sam",
        f"mask.checkpoint={checkpoint}",
        "num_shards=2",
    )
    loads_before = SamMasker.loads
    summary = run_build(cfg)
    assert (summary.items, summary.done, summary.failed) == (1, 1, 0)
    assert SamMasker.loads - loads_before == 1
    (counters,) = summary.workers.values()
    assert counters["mask_loads"] == 1 and counters["inpaint_calls"] == 1
    composer = Composer.from_output(out)
    assert composer.paste == "alpha"
    key = needed_images(composer.recipe)[0]  # shard 0's image
    store = composer.store
    alpha, core = store.load("alpha", key), store.load("core", key)
    assert alpha.shape == core.shape[:2] and set(np.unique(alpha)) <= {0, 255} and alpha.any()
    # validate: this image is intact; only shard 1 of 2 is missing
    problems = validate_output(out).problems
    assert len(problems) == 2 and "shard-1-of-2.csv" in problems[0], problems
    assert problems[1].startswith("1 needed images are in no manifest")
    # an own-background sample of this image: pixels outside the mask are the background's
    row = composer.recipe[
        (composer.recipe["fg_image"] == key) & (composer.recipe["background"] == "O")
    ].iloc[0]
    s = int(row["size"])
    x, y = placement_xy(row["position"], s, 64)
    keep = np.asarray(Image.fromarray(alpha).resize((s, s), Image.NEAREST)) > 127
    image, bg = composer(row), store.load("bg", key)
    assert (image[y : y + s, x : x + s][~keep] == bg[y : y + s, x : x + s][~keep]).all()
    assert (image[y : y + s, x : x + s][keep] == resize_rgb(core, s, s)[keep]).all()


def test_cli_verbs():
    assert verb_to_override(["p", "export", "out=x"]) == ["p", "out=x", "action=export"]
    assert verb_to_override(["p", "build", "-m", "shard=0,1"]) == [
        "p",
        "-m",
        "shard=0,1",
        "action=build",
    ]
    assert verb_to_override(["p", "out=x"]) == ["p", "out=x"]
    assert verb_to_override(["p", "--multirun", "shard=0,1"]) == ["p", "--multirun", "shard=0,1"]
    with pytest.raises(SystemExit, match="unknown action 'bild'"):
        verb_to_override(["p", "bild"])


# ----------------------------------------------------------------------------- faults
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hsi.cli.generate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset.sizes=[-8,0,16]", "dataset.sizes"),
        ("dataset.sizes=[16,24,128]", "dataset.sizes"),
        ("dataset.sizes=[16,16,32]", "dataset.sizes"),
        ("dataset.resolution=0", "dataset.resolution"),
        ("dataset.paste=stamp", "dataset.paste"),
        ("dataset.counts.val=-1", "dataset.counts"),
        ("shard=2", "shard=2 num_shards=1"),
        ("mask=sam", "mask.checkpoint"),
    ],
)
def test_bad_settings_fail_before_the_source_is_read(override, key, tmp_path):
    """Nothing is read or written: the synthetic source would be generated if it were read."""
    source, out = tmp_path / "never-read", tmp_path / "out"
    with pytest.raises(ValueError) as error:
        run_build(make_cfg(out, source, override))
    assert key in str(error.value)
    assert not source.exists() and not out.exists()


def test_missing_checkpoint_is_named_before_the_source_is_read(tmp_path):
    missing = tmp_path / "sam_vit_b.pth"
    cfg = make_cfg(tmp_path / "out", tmp_path / "src", "dataset=sam", f"mask.checkpoint={missing}")
    with pytest.raises(FileNotFoundError, match="mask.checkpoint") as error:
        run_build(cfg)
    assert str(missing) in str(error.value) and not (tmp_path / "src").exists()


@pytest.mark.parametrize("kind", ["file", "below a file"])
def test_out_that_is_no_folder_is_refused_before_reading(kind, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me\n")
    out = blocker if kind == "file" else blocker / "hsi"
    with pytest.raises(ValueError, match="is a file, not a folder") as error:
        run_build(make_cfg(out, tmp_path / "src"))
    assert f"out={out}" in str(error.value) and str(blocker) in str(error.value)
    assert blocker.read_text() == "keep me\n" and not (tmp_path / "src").exists()


@pytest.mark.slow
def test_cli_bad_input_is_one_line_naming_the_key_and_exit_2(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me\n")
    cases = [
        (["out=" + str(tmp_path / "out"), "dataset.sizes=[-8,0,16]"], "dataset.sizes"),
        ([f"out={blocker}"], f"out={blocker}"),
    ]
    for args, key in cases:
        done = run_cli("build", *source_overrides(tmp_path / "src"), *TINY, *args, cwd=tmp_path)
        assert done.returncode == 2, (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert blocker.read_text() == "keep me\n" and not (tmp_path / "src").exists()
    # in `out` only the refused run's log folder
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["logs"]


@pytest.mark.slow
def test_a_second_build_of_the_same_shard_fails_naming_the_holder(reference, source_root, tmp_path):
    out = tmp_path / "busy"
    shutil.copytree(reference, out)
    folder = DatasetFolder(out)
    with folder.lock("build", 1, 2):
        pass  # another shard's lock does not block this one, and is released on leaving
    with folder.lock("build", 0, 1):
        before = tree(out)
        done = run_cli("build", f"out={out}", *source_overrides(source_root), *TINY, cwd=tmp_path)
        after = {k: v for k, v in tree(out).items() if not k.startswith("logs/")}
        assert after == before  # only the refused run's log folder is new
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"pid {os.getpid()}" in done.stderr and "shard 0 of 1" in done.stderr, done.stderr
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"), folder.lock("build", 0, 1):
        run_build(make_cfg(out, source_root))


def test_swapped_and_truncated_assets_are_rebuilt_to_clean_bytes(reference, source_root, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(reference, out)
    keys = needed_images(Composer.from_output(out).recipe)
    store = AssetStore(out)
    swapped, truncated = store.path("bg", keys[3]), store.path("core", keys[7])
    shutil.copyfile(store.path("bg", keys[4]), swapped)  # another valid PNG of the same shape
    truncated.write_bytes(truncated.read_bytes()[:40])
    problems = validate_output(out).problems
    assert any(str(swapped) in p for p in problems) and any(str(truncated) in p for p in problems)

    summary = run_build(make_cfg(out, source_root))
    assert (summary.done, summary.skipped) == (2, NEEDED - 2)
    assert sorted(summary.rebuilt) == sorted([keys[3], keys[7]])
    assert keys[3] in summary.report() and "made again" in summary.report()
    assert validate_output(out).ok
    assert tree(out / "assets") == tree(reference / "assets")
    assert tree(out / "manifest") == tree(reference / "manifest")


def test_assets_no_record_vouches_for_are_rebuilt(reference, source_root, tmp_path):
    """Files at the assets' paths but no manifest or journal of this build: none is trusted."""
    out = tmp_path / "foreign"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "manifest")
    key = needed_images(Composer.from_output(out).recipe)[0]
    Image.new("RGB", (64, 64), (1, 2, 3)).save(AssetStore(out).path("bg", key))
    summary = run_build(make_cfg(out, source_root))
    assert (summary.done, summary.skipped, len(summary.rebuilt)) == (NEEDED, 0, NEEDED)
    assert tree(out / "assets") == tree(reference / "assets")
    assert tree(out / "manifest") == tree(reference / "manifest")


def test_export_replaces_files_it_did_not_write(reference, source_root, tmp_path):
    dest = tmp_path / "exp"
    cfg = make_cfg(reference, source_root, f"export.dir={dest}")
    run_export(cfg)
    relpath = pd.read_csv(dest / "metadata.csv")["path"].iloc[0]
    clean = (dest / relpath).read_bytes()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(dest / relpath)
    summary = run_export(cfg)
    assert summary.replaced == [relpath] and summary.written == 1
    assert "replaced 1" in summary.report() and relpath in summary.report()
    assert (dest / relpath).read_bytes() == clean


def test_a_second_export_of_the_same_shard_fails_naming_the_holder(
    reference, source_root, tmp_path
):
    dest = tmp_path / "exp"
    cfg = make_cfg(reference, source_root, f"export.dir={dest}")
    with hold_lock(dest, "export", 0, 1):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}.*shard 0 of 1"):
            run_export(cfg)
        assert not (dest / "metadata.csv").exists()  # nothing of the refused shard written
    with hold_lock(dest, "export", 1, 2):  # another shard's lock does not block this one
        assert run_export(cfg).written > 0
    assert (dest / "metadata.csv").is_file()


def test_unreadable_entries_are_skips_listed_in_skipped_csv(source_root, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(source_root, source)
    class_dir = sorted(p for p in (source / "train").iterdir() if p.is_dir())[0]
    (class_dir / "loop.JPEG").symlink_to("loop.JPEG")  # a self-looping link
    (class_dir / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")  # a dangling link
    out = tmp_path / "out"
    cfg = make_cfg(out, source, *MINIMAL)
    summary = run_build(cfg)
    assert summary.failed == 0
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    assert list(skipped.columns) == ["path", "reason"]
    reasons = dict(zip(skipped["path"], skipped["reason"], strict=True))
    rel = class_dir.relative_to(source).as_posix()
    assert "Errno 40" in reasons[f"{rel}/loop.JPEG"]
    assert "Errno 2" in reasons[f"{rel}/gone.JPEG"] or "nowhere" in reasons[f"{rel}/gone.JPEG"]
    assert summary.done > 0 and summary.done == len(DatasetFolder(out).ok_hashes(("bg",)))
    # the other images of that class folder are still read
    assert any(r.path.startswith(f"{rel}/") for r in load_source(cfg.source).records)


def test_an_unlistable_class_folder_is_one_skip(source_root, tmp_path, monkeypatch):
    """os.scandir of a class folder raising (permissions, I/O) skips that folder, not the read."""
    from hsi.sources.imagenet import ImageNetSource

    real = os.scandir
    victim = sorted(p for p in (source_root / "train").iterdir() if p.is_dir())[1]

    def scandir(path="."):
        if Path(path) == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    index = ImageNetSource(source_root, progress=False).load()
    reasons = {s.path: s.reason for s in index.skipped}
    rel = victim.relative_to(source_root).as_posix()
    assert "PermissionError" in reasons[rel] and "Errno 13" in reasons[rel]
    assert index.records and not any(r.path.startswith(rel + "/") for r in index.records)


@pytest.mark.parametrize("decode_check", ["none", "boxed"])
def test_a_failed_image_is_in_skipped_csv(decode_check, source_root, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(source_root, source)
    out = tmp_path / "out"
    cfg = make_cfg(out, source, *MINIMAL, f"source.decode_check={decode_check}")
    before = make_recipe(cfg, load_source(cfg.source))
    victim = needed_images(before)[0]
    path = next(r.path for r in load_source(cfg.source).records if r.key == victim)
    data = (source / path).read_bytes()
    (source / path).write_bytes(data[: len(data) // 2])  # header intact, body cut
    summary = run_build(cfg)
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    row = skipped[skipped["path"] == path]
    assert len(row) == 1 and row["reason"].iloc[0].startswith("decode:")
    if decode_check == "none":  # found at build time: its samples are lost
        assert summary.failed == 1
        return
    # checked before the recipe: routed around, another image of its class takes its place
    after = Composer.from_output(out).recipe
    assert summary.failed == 0 and victim not in needed_images(after)
    assert len(after) == len(before)
    assert (
        after.groupby(["split", "wnid"]).size() == before.groupby(["split", "wnid"]).size()
    ).all()


@pytest.mark.slow
def test_workers_exit_when_their_parent_is_killed(source_root, tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("finding the pool's worker processes needs Linux /proc")
    (tmp_path / "slow_inpaint.py").write_text(SLOW_INPAINTER.replace("0.02", "2"))
    out = tmp_path / "orphans"
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    proc = cli(
        "build",
        f"out={out}",
        *source_overrides(source_root),
        *TINY,
        "inpaint._target_=slow_inpaint.SlowInpainter",
        "workers=2",
        cwd=tmp_path,
        env={"PYTHONPATH": pythonpath},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    pool: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None and len(pool) < 2:
        pool = spawned_workers(proc.pid)
        time.sleep(0.1)
    assert len(pool) == 2, proc.communicate()[0] if proc.poll() is not None else pool
    os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its process group
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in pool):
        time.sleep(0.1)
    left = [pid for pid in pool if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_runtime_keys_do_not_change_the_saved_config(tmp_path):
    base = make_cfg(tmp_path / "out", tmp_path / "src")
    runtime = ["workers=3", "num_shards=4", "shard=2", "source.workers=2", "source.progress=true"]
    other = make_cfg(tmp_path / "out", tmp_path / "src", *runtime)
    assert generation_config(other) == generation_config(base)
    assert "workers" not in generation_config(base) and "progress" not in generation_config(base)
    plain = without_runtime_keys({"out": "o", "shard": 1, "source": {"root": "r", "workers": 4}})
    assert plain == {"out": "o", "source": {"root": "r"}}
    assert set(RUNTIME_KEYS) == {
        "workers",
        "progress",
        "shard",
        "num_shards",
        "cache",
        "cache_dir",
        "detect_cache",
    }
    cached = make_cfg(
        tmp_path / "out",
        tmp_path / "src",
        "source.cache=false",
        "source.cache_dir=/x",
        "detect_cache=/y",
    )
    assert generation_config(cached) == generation_config(base)
