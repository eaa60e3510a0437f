"""Build the assets of a recipe: sharded, parallel, resumable, with a manifest per shard.

`run_build(cfg)` (what `hsi-generate build` runs):
1. reads the source, computes the recipe and writes `config.yaml` and `recipe.csv` into `out`
   (every shard computes the same bytes; an existing different file is an error, so a folder
   never mixes two configurations);
2. takes its slice of the sorted `needed_images(recipe)` (`shard_items(..., shard, num_shards)`);
3. skips every image whose assets all exist (writes are atomic, so a file that exists is whole),
   makes the others in `workers` processes, each with ONE masker and ONE inpainter (models load
   lazily inside them, once per process);
4. writes `manifest/shard-<i>-of-<n>.csv`: one row per image of the shard with status ok|failed,
   the failure's reason and the sha256 of every asset file.

Each image depends only on itself, so the assets and the merged manifests are the same for any
number of shards or workers, and a rerun after a crash ends byte-identical to an unbroken run.
"""

from __future__ import annotations

import difflib
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from hsi.assets import AssetStore, make_assets
from hsi.groups import default_sizes
from hsi.io import atomic_write_bytes, sha256_file, shard_items
from hsi.recipe import RecipeCounts, build_recipe, needed_images
from hsi.sources.record import Box, SourceIndex

# The keys that decide what is built; run-time keys (shard, workers, action, ...) are left out
# so that every shard and every rerun writes the same config.yaml.
GENERATION_KEYS = ("seed", "source", "mask", "inpaint", "dataset")
SOURCE_RUNTIME_KEYS = ("workers", "progress")
MANIFEST_COLUMNS = ("key", "status", "reason", "bg_sha256", "core_sha256", "alpha_sha256")


# ----------------------------------------------------------------------------- configuration
def asset_kinds(dataset: Mapping) -> tuple[str, ...]:
    """Assets each image needs: the alpha mask only for `paste: alpha` (SAM variant)."""
    return ("bg", "core", "alpha") if dataset.get("paste", "rect") == "alpha" else ("bg", "core")


def resolve_sizes(dataset: Mapping) -> tuple[int, ...]:
    """dataset.sizes, or 1/4, 3/8, 1/2 of dataset.resolution when null."""
    sizes = dataset.get("sizes")
    if sizes is None:
        return default_sizes(int(dataset["resolution"]))
    return tuple(int(s) for s in sizes)


def recipe_counts(dataset: Mapping) -> RecipeCounts:
    """dataset.counts = {train: {easy, medium, hard}, val, test} (per class and group)."""
    counts = dataset["counts"]
    train = counts["train"]
    return RecipeCounts(
        train_easy=train["easy"],
        train_medium=train["medium"],
        train_hard=train["hard"],
        val=counts["val"],
        test=counts["test"],
    )


def resolve_pairs(dataset: Mapping, index: SourceIndex) -> dict[str, str] | None:
    """v2 pairs {fg_wnid: bg_wnid}: from `pairs_from` (an accuracy CSV) if set, else `pairs`.

    `pairs` is null (v1), `paper` (the paper's 10 ImageNet pairs) or an explicit mapping.
    """
    from hsi.pairs import PAPER_V2_PAIRS, read_accuracy_csv, select_pairs

    pairs_from = dataset.get("pairs_from")
    if pairs_from:
        if not Path(pairs_from).is_file():
            raise FileNotFoundError(
                f"dataset.pairs_from={pairs_from}: file not found; give a CSV with columns wnid,accuracy "
                "(per-class background-only accuracy)"
            )
        n = int(dataset.get("pairs_count", 10))
        return select_pairs(read_accuracy_csv(pairs_from), n_fg=n, n_bg=n)
    pairs = dataset.get("pairs")
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
    """The recipe the config asks for (hsi.recipe.build_recipe with the config's keys)."""
    dataset = cfg.dataset
    classes = dataset.get("classes")
    return build_recipe(
        index,
        seed=int(cfg.seed),
        sizes=resolve_sizes(dataset),
        counts=recipe_counts(dataset),
        classes=None if classes is None else [str(c) for c in classes],
        pairs=resolve_pairs(dataset, index),
        replacement=bool(dataset.get("replacement", False)),
        resolution=int(dataset.resolution),
    )


def generation_config(cfg: DictConfig) -> str:
    """The resolved YAML of the keys that decide the output (written as out/config.yaml).

    The source's own `workers` and `progress` change how it is read, not what it holds, so
    they are left out too.
    """
    chosen = OmegaConf.to_container(OmegaConf.masked_copy(cfg, list(GENERATION_KEYS)), resolve=True)
    for key in SOURCE_RUNTIME_KEYS:
        chosen["source"].pop(key, None)
    return OmegaConf.to_yaml(OmegaConf.create(chosen))


def check_components(cfg: DictConfig) -> None:
    """Fail at once, before any image, on a configuration that cannot work."""
    if cfg.dataset.get("paste") == "alpha" and not str(cfg.mask.get("_target_", "")).endswith(
        "SamMasker"
    ):
        raise ValueError(
            f"dataset={cfg.dataset.name} pastes the object's Segment-Anything mask, but mask is "
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


# ----------------------------------------------------------------------------- output folder
def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The exact bytes hsi.io.atomic_write_csv writes for `frame`."""
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def write_once(path: Path, data: bytes, hint: str) -> None:
    """Write `data` if `path` is absent; accept an identical file; refuse a different one.

    Shards running at once all compute the same bytes, so concurrent atomic writes are harmless.
    """
    if path.is_file():
        old = path.read_bytes()
        if old == data:
            return
        diff = "".join(
            list(difflib.unified_diff(
                old.decode("utf-8", "replace").splitlines(True)[:2000],
                data.decode("utf-8", "replace").splitlines(True)[:2000],
                "on disk", "this run", n=0,
            ))[:40]
        )  # fmt: skip
        raise ValueError(f"{path} exists and differs from what this run produces; {hint}\n{diff}")
    atomic_write_bytes(path, data)


def prepare_output(cfg: DictConfig, index: SourceIndex) -> pd.DataFrame:
    """Write config.yaml, recipe.csv (and pairs.csv for v2) into `out`; return the recipe."""
    from hsi.pairs import write_pairs_csv

    out = Path(cfg.out)
    hint = f"use the same configuration as the first run, or another out= than {out}"
    # Everything that can fail on the configuration comes before the first write, so a failed
    # first run leaves no config.yaml behind to refuse the corrected one.
    recipe = make_recipe(cfg, index)
    pairs = resolve_pairs(cfg.dataset, index)
    write_once(out / "config.yaml", generation_config(cfg).encode("utf-8"), hint)
    write_once(out / "recipe.csv", csv_bytes(recipe), hint)
    if pairs:
        pairs_path = out / "pairs.csv"
        if not pairs_path.is_file():
            write_pairs_csv(pairs, pairs_path)
    return recipe


def manifest_path(out: str | os.PathLike, shard: int, num_shards: int) -> Path:
    return Path(out) / "manifest" / f"shard-{shard}-of-{num_shards}.csv"


def read_manifests(out: str | os.PathLike) -> pd.DataFrame:
    """Every shard manifest of `out`, concatenated with a `manifest` column naming the file."""
    paths = sorted((Path(out) / "manifest").glob("shard-*-of-*.csv"))
    frames = [
        pd.read_csv(p, dtype=str, keep_default_na=False).assign(manifest=p.name) for p in paths
    ]
    if not frames:
        return pd.DataFrame(columns=[*MANIFEST_COLUMNS, "manifest"])
    return pd.concat(frames, ignore_index=True)


def remove_stale_temps(paths: Iterable[Path]) -> int:
    """Delete temp files a killed run left for exactly these target files (hsi.io naming).

    Only this shard's own targets are touched, so other shards writing into the same folders
    at the same time are never disturbed. One directory listing per folder.
    """
    by_dir: dict[Path, set[str]] = {}
    for p in paths:
        by_dir.setdefault(p.parent, set()).add(p.name)
    removed = 0
    for folder, names in sorted(by_dir.items()):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name.endswith(".tmp"):
                    target = name[1:-4].rsplit(".", 1)[0]
                    if target in names:
                        os.unlink(entry.path)
                        removed += 1
    return removed


# ----------------------------------------------------------------------------- workers
def map_in_workers(
    fn: Callable,
    tasks: Sequence,
    workers: int,
    initializer: Callable,
    initargs: tuple,
    progress: bool = True,
    desc: str = "",
) -> Iterator:
    """fn over tasks in order, in this process (workers <= 1) or in `workers` spawned processes.

    Every process runs `initializer(*initargs)` once. A worker that dies (killed, out of memory)
    stops the run with an error; what was written stays and a rerun resumes from it.
    """
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, unit="item", dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            initializer(*initargs)
            for task in tasks:
                yield fn(task)
                bar.update()
            return
        # spawn: workers start clean (no copied torch/OpenCV thread state); safest with torch.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)),
            mp_context=context,
            initializer=initializer,
            initargs=initargs,
        ) as pool:
            # A bounded window of submitted tasks, results in order: memory stays flat even
            # for a million images (Executor.map would create every future up front).
            queue = iter(tasks)
            pending = deque(pool.submit(fn, t) for t in itertools.islice(queue, 4 * workers))
            try:
                while pending:
                    result = pending.popleft().result()
                    for task in itertools.islice(queue, 1):
                        pending.append(pool.submit(fn, task))
                    yield result
                    bar.update()
            except BrokenProcessPool as e:
                raise RuntimeError(
                    "a worker process died (killed or out of memory); finished files are kept, "
                    "rerun the same command to resume"
                ) from e
    finally:
        bar.close()


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


_WORKER: dict = {}


def _init_worker(settings: WorkerSettings) -> None:
    """Once per process: one masker and one inpainter (their models load lazily, on first use)."""
    from hydra.utils import instantiate

    masker, inpainter = instantiate(settings.mask), instantiate(settings.inpaint)
    _WORKER.clear()
    _WORKER.update(
        settings=settings,
        masker=masker,
        inpainter=inpainter,
        store=AssetStore(settings.out, cache_size=0),
        # class-level load counters may already count loads of earlier runs in this process
        base_mask_loads=getattr(type(masker), "loads", 0),
        base_inpaint_loads=getattr(type(inpainter), "loads", 0),
    )


def _counters() -> dict[str, int]:
    masker, inpainter = _WORKER["masker"], _WORKER["inpainter"]
    return {
        "mask_loads": getattr(type(masker), "loads", 0) - _WORKER["base_mask_loads"],
        "inpaint_loads": getattr(type(inpainter), "loads", 0) - _WORKER["base_inpaint_loads"],
        "inpaint_calls": getattr(inpainter, "calls", 0),
        "images": _WORKER.get("images", 0),
    }


def _make_item(task: AssetTask) -> ItemResult:
    """Decode, mask, inpaint once, resize, crop, save; a failure is returned with its reason."""
    from hsi.sources.images import load_rgb

    settings: WorkerSettings = _WORKER["settings"]
    _WORKER["images"] = _WORKER.get("images", 0) + 1

    def failed(reason: str) -> ItemResult:
        return ItemResult(
            task.key, "failed", " ".join(reason.split()), pid=os.getpid(), counters=_counters()
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
            _WORKER["masker"],
            _WORKER["inpainter"],
            settings.resolution,
            core_box=settings.core_box,
            with_alpha=settings.with_alpha,
        )
    except Exception as e:  # recorded in the manifest, the run goes on
        return failed(f"inpaint: {type(e).__name__}: {e}")
    hashes = _WORKER["store"].save(task.key, assets)
    return ItemResult(task.key, "ok", "", hashes, pid=os.getpid(), counters=_counters())


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
        lines = [
            f"hsi-generate build, shard {self.shard} of {self.num_shards}: {self.items} source images "
            f"-> {self.done} done, {self.skipped} skipped (already complete), {self.failed} failed "
            f"in {self.seconds:.1f} s",
            f"  assets:   {self.out / 'assets'}",
            f"  recipe:   {self.out / 'recipe.csv'}",
            f"  manifest: {manifest_path(self.out, self.shard, self.num_shards)}",
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


def run_build(cfg: DictConfig) -> BuildSummary:
    """Make the assets of this shard (see the module docstring); returns the summary."""
    from hsi.sources import load_source

    start = time.perf_counter()
    check_components(cfg)
    out, shard, num_shards = Path(cfg.out), int(cfg.shard), int(cfg.num_shards)
    index = load_source(cfg.source)
    recipe = prepare_output(cfg, index)
    items = shard_items(needed_images(recipe), shard, num_shards)
    records = {r.key: r for r in index.records}
    kinds = asset_kinds(cfg.dataset)
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
        resolution=int(cfg.dataset.resolution),
        core_box=str(cfg.dataset.get("core_box", "largest")),
        with_alpha="alpha" in kinds,
    )
    results = map_in_workers(
        _make_item,
        tasks,
        int(cfg.workers),
        _init_worker,
        (settings,),
        progress=bool(cfg.get("progress", True)),
        desc=f"assets shard {shard}/{num_shards}",
    )
    for result in results:
        rows[result.key] = _manifest_row(result.key, result.status, result.reason, result.hashes)
        summary.workers[result.pid] = result.counters
        if result.status == "ok":
            summary.done += 1
        else:
            summary.failures.append((result.key, result.reason))

    manifest = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(MANIFEST_COLUMNS))
    atomic_write_bytes(manifest_path(out, shard, num_shards), csv_bytes(manifest))
    summary.seconds = time.perf_counter() - start
    return summary
