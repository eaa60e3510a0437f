"""Build the assets of a recipe: sharded, parallel, resumable, with a manifest per shard.

`run_build(cfg)` (what `hsi-generate build` runs):
1. reads the source, computes the recipe and writes the generation config and the recipe into
   `out` (every shard computes the same bytes; an existing different file is an error, so a
   folder never mixes two configurations; hsi.generate.layout names the files);
2. takes its slice of the sorted `needed_images(recipe)` (`shard_items(..., shard, num_shards)`);
3. skips every image whose assets all exist (writes are atomic, so a file that exists is whole),
   makes the others in `workers` processes, each with ONE masker and ONE inpainter (models load
   lazily inside them, once per process);
4. writes the shard's manifest: one row per image of the shard with status ok|failed, the
   failure's reason and the sha256 of every asset file, and the list of skipped inputs (the
   reader's skips and the images that failed, columns as hsi-scores').

Before anything is read, the settings are checked (sizes, shard range, `out`, components and
their checkpoints) and the shard's lock is taken: a second process on the same shard fails at
once, naming the holder. An existing asset is kept only when its bytes have the sha256 that
this build recorded when it wrote them (in a manifest, or in the journal an interrupted run
leaves); any other file at an asset's path (swapped, truncated, foreign) is made again, so a
rerun always ends with the bytes of a clean build.

Each image depends only on itself, so the assets and the merged manifests are the same for any
number of shards or workers, and a rerun after a crash ends byte-identical to an unbroken run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hsi.generate.assets import AssetStore, asset_bytes, make_assets
from hsi.generate.coverage import detected_table, make_selection
from hsi.generate.inpaint.weights import check_checkpoints
from hsi.generate.layout import (
    ConfigError,
    DatasetFolder,
    DatasetSpec,
    append_journal,
    check_out,
    generation_config,
)
from hsi.generate.pairs import resolve_pairs
from hsi.generate.recipe import Selection, needed_images
from hsi.io import remove_stale_temps, sha256_file, shard_items
from hsi.sources.record import Box, SourceIndex
from hsi.workers import ordered_map


# ----------------------------------------------------------------------------- configuration
def make_recipe(cfg: DictConfig, index: SourceIndex) -> pd.DataFrame:
    """The recipe the config asks for (hsi.generate.recipe.select_images with the config's
    keys, its box-coverage policy included: a `detect` policy runs the detector here)."""
    return make_selection(cfg, index).recipe()


def check_settings(cfg: DictConfig) -> DatasetSpec:
    """Everything cheap to check, before any source is read or any file written."""
    spec = DatasetSpec.from_config(cfg.dataset)
    shard, num_shards = cfg.shard, cfg.num_shards
    for key, value in (("shard", shard), ("num_shards", num_shards), ("workers", cfg.workers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: must be a whole number")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(
            f"shard={shard} num_shards={num_shards}: need 0 <= shard < num_shards; "
            f"set shard to one of 0..{max(num_shards - 1, 0)} (or num_shards >= 1)"
        )
    check_out(cfg.out)
    check_components(cfg)
    return spec


def check_components(cfg: DictConfig) -> None:
    """Fail at once, before any image, on a configuration that cannot work."""
    spec = DatasetSpec.from_config(cfg.dataset)
    if spec.paste == "alpha" and not str(cfg.mask.get("_target_", "")).endswith("SamMasker"):
        raise ValueError(
            f"dataset={spec.name} pastes the object's Segment-Anything mask, but mask is "
            f"{cfg.mask.get('_target_')}; use mask=sam mask.checkpoint=/path/sam_vit_b_01ec64.pth"
        )
    # Unset keys, missing files and files of the wrong kind, named with the file expected.
    check_checkpoints(cfg)
    # The components check their own settings (checkpoint files included) when built; models
    # load lazily, so building them here is cheap and fails before any image is touched.
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    for group in ("mask", "inpaint"):
        try:
            instantiate(cfg[group])
        except InstantiationException as e:
            # the component's own message names the key and the file; Hydra's wrapper hides it
            if isinstance(e.__cause__, (ValueError, OSError)):
                raise e.__cause__ from None
            raise


def prepare_output(cfg: DictConfig, index: SourceIndex) -> tuple[pd.DataFrame, Selection]:
    """Write the generation config, the recipe, its coverage table (v2's pairs, the detector
    boxes used) into `out`; return the recipe and the selection it came from."""
    # Everything that can fail on the configuration comes before the first write, so a failed
    # first run leaves no config behind to refuse the corrected one.
    selection = make_selection(cfg, index)
    recipe = selection.recipe()
    pairs = resolve_pairs(DatasetSpec.from_config(cfg.dataset), index)
    folder = DatasetFolder(cfg.out)
    detected = detected_table(selection) if selection.detected else None
    folder.write_definition(generation_config(cfg), recipe, pairs, detected, selection.table())
    return recipe, selection


# ----------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class AssetTask:
    key: str
    path: str  # absolute path of the source image
    width: int
    height: int
    boxes: tuple[Box, ...]


@dataclass
class ItemResult:
    key: str
    status: str  # ok | failed
    reason: str = ""
    hashes: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSettings:
    mask: dict
    inpaint: dict
    out: str
    resolution: int
    core_box: str
    with_alpha: bool
    crop_cap: int | None
    journal: str  # where each finished image's hashes go (hsi.generate.layout)


class AssetMaker:
    """One worker's state: one masker and one inpainter (their models load lazily, on first use)."""

    def __init__(self, settings: WorkerSettings) -> None:
        from hydra.utils import instantiate

        self.settings = settings
        self.masker = instantiate(settings.mask)
        self.inpainter = instantiate(settings.inpaint)
        self.store = AssetStore(settings.out, cache_size=0)
        self.images = 0
        # class-level load counters may already count loads of earlier runs in this process
        self.base_mask_loads = getattr(type(self.masker), "loads", 0)
        self.base_inpaint_loads = getattr(type(self.inpainter), "loads", 0)

    def counters(self) -> dict[str, int]:
        return {
            "mask_loads": getattr(type(self.masker), "loads", 0) - self.base_mask_loads,
            "inpaint_loads": getattr(type(self.inpainter), "loads", 0) - self.base_inpaint_loads,
            "inpaint_calls": getattr(self.inpainter, "calls", 0),
            "images": self.images,
        }


def make_item(maker: AssetMaker, task: AssetTask) -> ItemResult:
    """Decode, mask, inpaint once, resize, crop, save; a failure is returned with its reason."""
    from hsi.sources.images import load_rgb

    settings = maker.settings
    maker.images += 1

    def failed(reason: str) -> ItemResult:
        return ItemResult(
            task.key, "failed", " ".join(reason.split()), pid=os.getpid(), counters=maker.counters()
        )

    try:
        image = load_rgb(task.path)
    except Exception as e:  # recorded in the manifest, the run goes on
        return failed(f"decode: {type(e).__name__}: {e}")
    if image.shape[:2] != (task.height, task.width):
        return failed(
            f"decode: {task.path} decodes to {image.shape[1]}x{image.shape[0]}, the index says "
            f"{task.width}x{task.height}; re-read the source"
        )
    try:
        assets = make_assets(
            image,
            task.boxes,
            maker.masker,
            maker.inpainter,
            settings.resolution,
            core_box=settings.core_box,
            with_alpha=settings.with_alpha,
            crop_cap=settings.crop_cap,
        )
    except Exception as e:  # recorded in the manifest, the run goes on
        return failed(f"inpaint: {type(e).__name__}: {e}")
    hashes = maker.store.save(task.key, assets)
    append_journal(settings.journal, task.key, hashes)
    return ItemResult(task.key, "ok", "", hashes, pid=os.getpid(), counters=maker.counters())


# ----------------------------------------------------------------------------- the build
@dataclass
class BuildSummary:
    out: Path
    shard: int
    num_shards: int
    items: int  # images of this shard
    done: int = 0
    skipped: int = 0  # already complete from an earlier run
    rebuilt: list[str] = field(
        default_factory=list
    )  # files there that this build did not vouch for
    failures: list[tuple[str, str]] = field(default_factory=list)
    workers: dict[int, dict[str, int]] = field(default_factory=dict)  # pid -> counters
    seconds: float = 0.0
    coverage: list[str] = field(default_factory=list)  # box-coverage lines of the report
    asset_bytes: dict[str, int] = field(default_factory=dict)  # kind -> bytes of the ok images

    @property
    def bytes_per_image(self) -> float:
        """Asset bytes per source image of this shard (all kinds), over the images that are ok."""
        ok = self.done + self.skipped
        return sum(self.asset_bytes.values()) / ok if ok else 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def report(self) -> str:
        folder = DatasetFolder(self.out)
        lines = [
            f"hsi-generate build, shard {self.shard} of {self.num_shards}: {self.items} source images "
            f"-> {self.done} done, {self.skipped} skipped (already complete), {self.failed} failed "
            f"in {self.seconds:.1f} s",
            f"  assets:   {folder.assets_dir}",
            f"  recipe:   {folder.recipe_path}",
            *self.coverage,
            f"  manifest: {folder.manifest_path(self.shard, self.num_shards)}",
        ]
        if self.rebuilt:
            lines.append(
                f"  {len(self.rebuilt)} images made again: their files differed from the hashes "
                f"this build recorded, or had none (e.g. {', '.join(self.rebuilt[:5])})"
            )
        if self.asset_bytes:
            kinds = " + ".join(f"{kind} {n / 1024:.1f}" for kind, n in self.asset_bytes.items())
            lines.append(
                f"  storage:  {self.bytes_per_image / 1024:.1f} KiB per source image "
                f"({kinds} KiB in all)"
            )
        lines.append(f"  skipped:  {folder.skipped_path}")
        for key, reason in self.failures[:20]:
            lines.append(f"  FAILED {key}: {reason}")
        if self.failed > 20:
            lines.append(f"  ... and {self.failed - 20} more failures, all listed in the manifest")
        if self.failed:
            lines.append("  failed images have no assets; fix the cause and rerun the same command")
        return "\n".join(lines)


def coverage_lines(recipe: pd.DataFrame, selection: Selection) -> list[str]:
    """The build report's box-coverage lines: policy, repeats, detector boxes, dropped classes."""
    sources = recipe["box_source"].value_counts().to_dict()
    lines = [
        f"  coverage: dataset.coverage={selection.policy}: {int(recipe['reused'].sum())} rows "
        f"repeat an image; box sources of the samples: "
        + ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
    ]
    for wnid, why in selection.dropped.items():
        lines.append(f"  DROPPED class {wnid}: {why}")
    return lines


def _manifest_row(key: str, status: str, reason: str, hashes: Mapping[str, str]) -> dict:
    return {
        "key": key,
        "status": status,
        "reason": reason,
        **{f"{kind}_sha256": hashes.get(kind, "") for kind in ("bg", "core", "alpha")},
    }


def _vouched(store: AssetStore, key: str, kinds: tuple[str, ...], records: list[dict]) -> dict:
    """{kind: sha256} when every asset of `key` has the bytes a record of this build holds."""
    hashes = {}
    for kind in kinds:
        path = store.path(kind, key)
        if not path.is_file():
            return {}
        hashes[kind] = sha256_file(path)
    for record in records:
        if all(record.get(key, {}).get(kind) == hashes[kind] for kind in kinds):
            return hashes
    return {}


def run_build(cfg: DictConfig, index: SourceIndex | None = None) -> BuildSummary:
    """Make the assets of this shard (see the module docstring); returns the summary.

    `index`: the source already read by the caller (it is read here otherwise).
    """
    start = time.perf_counter()
    spec = check_settings(cfg)
    out, shard, num_shards = Path(cfg.out), int(cfg.shard), int(cfg.num_shards)
    folder = DatasetFolder(out)
    with folder.lock("build", shard, num_shards):
        return _build_shard(cfg, spec, folder, shard, num_shards, index, start)


def _build_shard(
    cfg: DictConfig,
    spec: DatasetSpec,
    folder: DatasetFolder,
    shard: int,
    num_shards: int,
    index: SourceIndex | None,
    start: float,
) -> BuildSummary:
    from hsi.scores import skipped_table
    from hsi.sources import load_source

    if index is None:
        index = load_source(cfg.source)
    recipe, selection = prepare_output(cfg, index)
    items = shard_items(needed_images(recipe), shard, num_shards)
    records = {r.key: r for r in index.records}
    kinds = spec.asset_kinds
    store = AssetStore(folder.out, cache_size=0)
    remove_stale_temps(store.path(kind, key) for key in items for kind in kinds)
    recorded = [
        folder.ok_hashes(kinds),
        folder.read_journal(shard, num_shards, kinds),
    ]

    summary = BuildSummary(out=folder.out, shard=shard, num_shards=num_shards, items=len(items))
    summary.coverage = coverage_lines(recipe, selection)
    rows: dict[str, dict] = {}
    tasks: list[AssetTask] = []
    for key in items:
        hashes = _vouched(store, key, kinds, recorded)
        if hashes:
            rows[key] = _manifest_row(key, "ok", "", hashes)
            summary.skipped += 1
            continue
        if any(store.path(kind, key).is_file() for kind in kinds):
            summary.rebuilt.append(key)
        r = records[key]
        path = str((Path(index.root) / r.path).resolve())
        # an unannotated image the recipe took under coverage=detect: the detector's box
        boxes = (selection.detected[key][0],) if key in selection.detected else r.boxes
        tasks.append(
            AssetTask(key, path, r.width, r.height, tuple(tuple(map(float, b)) for b in boxes))
        )

    settings = WorkerSettings(
        mask=OmegaConf.to_container(cfg.mask, resolve=True),
        inpaint=OmegaConf.to_container(cfg.inpaint, resolve=True),
        out=str(folder.out),
        resolution=spec.resolution,
        core_box=spec.core_box,
        with_alpha="alpha" in kinds,
        crop_cap=spec.crop_cap,
        journal=str(folder.journal_path(shard, num_shards)),
    )
    results = ordered_map(
        make_item,
        tasks,
        workers=int(cfg.workers),
        init=AssetMaker,
        init_args=(settings,),
        progress=bool(cfg.get("progress", True)),
        desc=f"assets shard {shard}/{num_shards}",
        unit="img",
    )
    for result in results:
        rows[result.key] = _manifest_row(result.key, result.status, result.reason, result.hashes)
        summary.workers[result.pid] = result.counters
        if result.status == "ok":
            summary.done += 1
        else:
            summary.failures.append((result.key, result.reason))

    ok_keys = [key for key, row in rows.items() if row["status"] == "ok"]
    summary.asset_bytes = asset_bytes(store, ok_keys, kinds)
    folder.write_manifest(shard, num_shards, list(rows.values()))
    folder.journal_path(shard, num_shards).unlink(missing_ok=True)
    reader_skips = list(skipped_table(index).itertuples(index=False, name=None))
    paths = {key: r.path for key, r in records.items()}
    with folder.lock("skipped", wait=True):  # shards ending at once: each writes the union
        folder.write_skipped(reader_skips, paths)
    summary.seconds = time.perf_counter() - start
    return summary
