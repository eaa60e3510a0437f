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
   failure's reason and the sha256 of every asset file.

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

from hsi.generate.assets import AssetStore, make_assets
from hsi.generate.layout import DatasetFolder, DatasetSpec, generation_config
from hsi.generate.recipe import build_recipe, needed_images
from hsi.io import remove_stale_temps, sha256_file, shard_items
from hsi.sources.record import Box, SourceIndex
from hsi.workers import ordered_map


# ----------------------------------------------------------------------------- configuration
def resolve_pairs(spec: DatasetSpec, index: SourceIndex) -> dict[str, str] | None:
    """v2 pairs {fg_wnid: bg_wnid}: from `pairs_from` (an accuracy CSV) if set, else `pairs`.

    `pairs` is null (v1), `paper` (the paper's 10 ImageNet pairs) or an explicit mapping.
    """
    from hsi.generate.pairs import PAPER_V2_PAIRS, read_accuracy_csv, select_pairs

    if spec.pairs_from:
        if not Path(spec.pairs_from).is_file():
            raise FileNotFoundError(
                f"dataset.pairs_from={spec.pairs_from}: file not found; give a CSV with columns "
                "wnid,accuracy (per-class background-only accuracy)"
            )
        n = spec.pairs_count
        return select_pairs(read_accuracy_csv(spec.pairs_from), n_fg=n, n_bg=n)
    pairs = spec.pairs
    if pairs is None:
        return None
    if pairs == "paper":
        missing = sorted((set(PAPER_V2_PAIRS) | set(PAPER_V2_PAIRS.values())) - set(index.wnids))
        if missing:
            raise ValueError(
                f"dataset.pairs=paper names ImageNet classes this source lacks ({len(missing)}, e.g. "
                f"{missing[:3]}); on another source set dataset.pairs={{fg_wnid: bg_wnid, ...}} or "
                "dataset.pairs_from=<background-accuracy CSV>"
            )
        return dict(PAPER_V2_PAIRS)
    if isinstance(pairs, str):
        raise ValueError(
            f"dataset.pairs must be null, 'paper' or a mapping fg_wnid: bg_wnid, got {pairs!r}"
        )
    return {str(k): str(v) for k, v in dict(pairs).items()}


def make_recipe(cfg: DictConfig, index: SourceIndex) -> pd.DataFrame:
    """The recipe the config asks for (hsi.generate.recipe.build_recipe with the config's keys)."""
    spec = DatasetSpec.from_config(cfg.dataset)
    return build_recipe(
        index,
        seed=int(cfg.seed),
        sizes=spec.sizes,
        counts=spec.counts,
        classes=None if spec.classes is None else list(spec.classes),
        pairs=resolve_pairs(spec, index),
        replacement=spec.replacement,
        resolution=spec.resolution,
    )


def check_components(cfg: DictConfig) -> None:
    """Fail at once, before any image, on a configuration that cannot work."""
    spec = DatasetSpec.from_config(cfg.dataset)
    if spec.paste == "alpha" and not str(cfg.mask.get("_target_", "")).endswith("SamMasker"):
        raise ValueError(
            f"dataset={spec.name} pastes the object's Segment-Anything mask, but mask is "
            f"{cfg.mask.get('_target_')}; use mask=sam mask.checkpoint=/path/sam_vit_b_01ec64.pth"
        )
    for group in ("mask", "inpaint"):
        node = cfg[group]
        # `"checkpoint" in node` is False for a `???` value: ask OmegaConf directly
        if OmegaConf.is_missing(node, "checkpoint") or (
            "checkpoint" in node and node.checkpoint is None
        ):
            raise ValueError(
                f"{group}.checkpoint is not set; add {group}.checkpoint=/path/to/the/file"
            )
    # The components check their own settings (checkpoint files included) when built; models
    # load lazily, so building them here is cheap and fails before any image is touched.
    from hydra.utils import instantiate

    instantiate(cfg.mask)
    instantiate(cfg.inpaint)


def prepare_output(cfg: DictConfig, index: SourceIndex) -> pd.DataFrame:
    """Write the generation config, the recipe (and v2's pairs) into `out`; return the recipe."""
    # Everything that can fail on the configuration comes before the first write, so a failed
    # first run leaves no config behind to refuse the corrected one.
    recipe = make_recipe(cfg, index)
    pairs = resolve_pairs(DatasetSpec.from_config(cfg.dataset), index)
    DatasetFolder(cfg.out).write_definition(generation_config(cfg), recipe, pairs)
    return recipe


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
        )
    except Exception as e:  # recorded in the manifest, the run goes on
        return failed(f"inpaint: {type(e).__name__}: {e}")
    hashes = maker.store.save(task.key, assets)
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
    failures: list[tuple[str, str]] = field(default_factory=list)
    workers: dict[int, dict[str, int]] = field(default_factory=dict)  # pid -> counters
    seconds: float = 0.0

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
            f"  manifest: {folder.manifest_path(self.shard, self.num_shards)}",
        ]
        for key, reason in self.failures[:20]:
            lines.append(f"  FAILED {key}: {reason}")
        if self.failed > 20:
            lines.append(f"  ... and {self.failed - 20} more failures, all listed in the manifest")
        if self.failed:
            lines.append("  failed images have no assets; fix the cause and rerun the same command")
        return "\n".join(lines)


def _manifest_row(key: str, status: str, reason: str, hashes: Mapping[str, str]) -> dict:
    return {
        "key": key,
        "status": status,
        "reason": reason,
        **{f"{kind}_sha256": hashes.get(kind, "") for kind in ("bg", "core", "alpha")},
    }


def run_build(cfg: DictConfig, index: SourceIndex | None = None) -> BuildSummary:
    """Make the assets of this shard (see the module docstring); returns the summary.

    `index`: the source already read by the caller (it is read here otherwise).
    """
    from hsi.sources import load_source

    start = time.perf_counter()
    check_components(cfg)
    spec = DatasetSpec.from_config(cfg.dataset)
    out, shard, num_shards = Path(cfg.out), int(cfg.shard), int(cfg.num_shards)
    folder = DatasetFolder(out)
    if index is None:
        index = load_source(cfg.source)
    recipe = prepare_output(cfg, index)
    items = shard_items(needed_images(recipe), shard, num_shards)
    records = {r.key: r for r in index.records}
    kinds = spec.asset_kinds
    store = AssetStore(out, cache_size=0)
    remove_stale_temps(store.path(kind, key) for key in items for kind in kinds)

    summary = BuildSummary(out=out, shard=shard, num_shards=num_shards, items=len(items))
    rows: dict[str, dict] = {}
    tasks: list[AssetTask] = []
    for key in items:
        if store.exists(key, kinds):
            hashes = {kind: sha256_file(store.path(kind, key)) for kind in kinds}
            rows[key] = _manifest_row(key, "ok", "", hashes)
            summary.skipped += 1
            continue
        r = records[key]
        path = str((Path(index.root) / r.path).resolve())
        tasks.append(
            AssetTask(key, path, r.width, r.height, tuple(tuple(map(float, b)) for b in r.boxes))
        )

    settings = WorkerSettings(
        mask=OmegaConf.to_container(cfg.mask, resolve=True),
        inpaint=OmegaConf.to_container(cfg.inpaint, resolve=True),
        out=str(out),
        resolution=spec.resolution,
        core_box=spec.core_box,
        with_alpha="alpha" in kinds,
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

    folder.write_manifest(shard, num_shards, list(rows.values()))
    summary.seconds = time.perf_counter() - start
    return summary
