"""The built dataset folder (`out` of `hsi-generate`): its spec, its files, its completeness.

This module is the only one that knows the file names inside a built dataset:

    config.yaml                  the generation keys that decide the output (seed, source, mask,
                                 inpaint, dataset), resolved; every shard writes the same bytes
    recipe.csv                   one row per sample (hsi.generate.recipe)
    pairs.csv                    v2 only: the class pairs used
    coverage.csv                 per class and split: boxed/unboxed images, what the recipe takes,
                                 the box-coverage action (the rows of `hsi-generate plan`)
    detected_boxes.csv           dataset.coverage=detect only: the detector boxes the recipe
                                 uses (key, box, box_source)
    assets/<kind>/<split>/<image_id>.png    per source image (hsi.generate.assets)
    manifest/shard-<i>-of-<n>.csv           per build shard: status and sha256 of every asset
    skipped.csv                  source entries the reader skipped and images that failed to
                                 decode or inpaint (columns path, reason, as hsi-scores')
    .lock-<what>-<i>-of-<n>      held by the process working on that shard (pid inside)
    .journal-build-<i>-of-<n>    while a shard builds: key and hashes of each image it finished
                                 (what a rerun after a crash may trust); removed with the manifest
    export/                      `hsi-generate export`'s default folder (metadata.csv, export.json)

The spec of what is built (`DatasetSpec`, the build's keys) is hsi.generate.spec's; it is
re-exported here so that users of a built folder need one import.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hsi.generate.recipe import needed_images
from hsi.generate.spec import (
    ASSET_KINDS,
    CORE_BOXES,
    GENERATION_KEYS,
    PASTE_MODES,
    RESIZE_MODES,
    RUNTIME_KEYS,
    ConfigError,
    DatasetSpec,
    generation_config,
    without_runtime_keys,
)
from hsi.io import atomic_write_bytes, write_once

CONFIG_FILE = "config.yaml"
RECIPE_FILE = "recipe.csv"
PAIRS_FILE = "pairs.csv"
DETECTED_FILE = "detected_boxes.csv"
COVERAGE_FILE = "coverage.csv"
ASSETS_DIR = "assets"
MANIFEST_DIR = "manifest"
SKIPPED_FILE = "skipped.csv"
EXPORT_DIR = "export"
EXPORT_METADATA_FILE = "metadata.csv"
EXPORT_SETTINGS_FILE = "export.json"

MANIFEST_COLUMNS = ("key", "status", "reason", "bg_sha256", "core_sha256", "alpha_sha256")
SKIPPED_COLUMNS = ("path", "reason")
_SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.csv$")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The exact bytes hsi.io.atomic_write_csv writes for `frame`."""
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def read_recipe(path: str | os.PathLike) -> pd.DataFrame:
    """A recipe CSV with wnids kept as strings and the boolean column restored."""
    recipe = pd.read_csv(path, dtype={"wnid": str, "bg_wnid": str, "sample_id": str})
    if "reused" in recipe.columns:
        recipe["reused"] = recipe["reused"].astype(bool)
    return recipe


def read_export_recipe(export_dir: str | os.PathLike) -> pd.DataFrame:
    """The recipe of an export folder (its metadata.csv: the recipe plus `path`)."""
    return read_recipe(Path(export_dir) / EXPORT_METADATA_FILE)


def append_journal(path: str | os.PathLike, key: str, hashes: Mapping[str, str]) -> None:
    """One line per finished image, one write() each: lines of workers never interleave."""
    line = "\t".join([key, *hashes.values()]) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def check_out(out: str | os.PathLike) -> None:
    """`out` must be a folder (or creatable as one) this process can write into; nothing is made."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder; set out= to a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"out={out}: {existing} is a file, not a folder; set out= to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"out={out}: {existing} is not writable; set out= to a writable folder")


# ----------------------------------------------------------------------------- the folder
class LockedError(RuntimeError):
    """Another process holds the lock of this shard."""


class DatasetFolder:
    """The files of one built dataset (`out`): paths, reading, writing, completeness."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)

    # ---- paths
    @property
    def config_path(self) -> Path:
        return self.out / CONFIG_FILE

    @property
    def recipe_path(self) -> Path:
        return self.out / RECIPE_FILE

    @property
    def pairs_path(self) -> Path:
        return self.out / PAIRS_FILE

    @property
    def assets_dir(self) -> Path:
        return self.out / ASSETS_DIR

    @property
    def manifest_dir(self) -> Path:
        return self.out / MANIFEST_DIR

    @property
    def skipped_path(self) -> Path:
        return self.out / SKIPPED_FILE

    @property
    def default_export_dir(self) -> Path:
        return self.out / EXPORT_DIR

    def manifest_path(self, shard: int, num_shards: int) -> Path:
        return self.manifest_dir / f"shard-{shard}-of-{num_shards}.csv"

    def journal_path(self, shard: int, num_shards: int) -> Path:
        return self.out / f".journal-build-{shard}-of-{num_shards}"

    def asset_path(self, kind: str, key: str) -> Path:
        """assets/<kind>/<split>/<image_id>.png for an ImageRecord key "<split>/<image_id>"."""
        if kind not in ASSET_KINDS:
            raise ValueError(f"unknown asset kind {kind!r}; expected one of {ASSET_KINDS}")
        split, sep, image_id = key.partition("/")
        if not sep or not image_id or "/" in image_id:
            raise ValueError(f"asset keys look like 'train/<image_id>', got {key!r}")
        return self.assets_dir / kind / split / f"{image_id}.png"

    # ---- config and recipe
    def missing_files(self) -> list[Path]:
        return [p for p in (self.config_path, self.recipe_path) if not p.is_file()]

    def require_built(self) -> None:
        missing = self.missing_files()
        if missing:
            raise FileNotFoundError(
                f"{missing[0]} not found; run `hsi-generate build out={self.out}` first"
            )

    def spec(self) -> DatasetSpec:
        """The dataset spec this folder was built with (from config.yaml)."""
        return DatasetSpec.from_config(OmegaConf.load(self.config_path).dataset)

    def config_sha256(self) -> str:
        from hsi.io import sha256_file

        return sha256_file(self.config_path)

    def read_recipe(self) -> pd.DataFrame:
        return read_recipe(self.recipe_path)

    def write_definition(
        self,
        config_text: str,
        recipe: pd.DataFrame,
        pairs: Mapping | None,
        detected: pd.DataFrame | None = None,
        coverage: pd.DataFrame | None = None,
    ) -> None:
        """Write config.yaml, recipe.csv (and pairs.csv): absent, identical, or an error.

        Shards running at once all compute the same bytes, so concurrent atomic writes are
        harmless; a folder never mixes two configurations.
        """
        from hsi.generate.pairs import write_pairs_csv

        hint = f"use the same configuration as the first run, or another out= than {self.out}"
        write_once(self.config_path, config_text.encode("utf-8"), hint)
        write_once(self.recipe_path, csv_bytes(recipe), hint)
        if pairs and not self.pairs_path.is_file():
            write_pairs_csv(pairs, self.pairs_path)
        if detected is not None:
            write_once(self.out / DETECTED_FILE, csv_bytes(detected), hint)
        if coverage is not None:
            write_once(self.out / COVERAGE_FILE, csv_bytes(coverage), hint)

    # ---- manifests
    def read_manifests(self) -> pd.DataFrame:
        """Every shard manifest, concatenated with a `manifest` column naming the file."""
        paths = sorted(self.manifest_dir.glob("shard-*-of-*.csv"))
        frames = [
            pd.read_csv(p, dtype=str, keep_default_na=False).assign(manifest=p.name) for p in paths
        ]
        if not frames:
            return pd.DataFrame(columns=[*MANIFEST_COLUMNS, "manifest"])
        return pd.concat(frames, ignore_index=True)

    def write_manifest(self, shard: int, num_shards: int, rows: Sequence[Mapping]) -> Path:
        """One shard's manifest (rows sorted by key), written atomically."""
        frame = pd.DataFrame(sorted(rows, key=lambda r: r["key"]), columns=list(MANIFEST_COLUMNS))
        return atomic_write_bytes(self.manifest_path(shard, num_shards), csv_bytes(frame))

    def manifest_problems(self) -> list[str]:
        """Missing manifest files: none at all, or a shard of a sharding that wrote the others."""
        found: dict[int, set[int]] = {}
        for path in sorted(self.manifest_dir.glob("shard-*-of-*.csv")):
            match = _SHARD_NAME.search(path.name)
            if match:
                found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
        if not found:
            return [
                f"no manifest in {self.manifest_dir}: run `hsi-generate build out={self.out}` "
                "(every shard) first"
            ]
        return [
            f"missing manifest {self.manifest_path(i, n)} (shard {i} of {n} has not finished)"
            for n, shards in sorted(found.items())
            for i in range(n)
            if i not in shards
        ]

    def ok_hashes(self, kinds: Sequence[str]) -> dict[str, dict[str, str]]:
        """{image key: {kind: sha256}} of every `ok` manifest row (the last one per key wins)."""
        manifests = self.read_manifests()
        ok_rows = manifests[manifests["status"] == "ok"]
        return {
            row["key"]: {k: row.get(f"{k}_sha256", "") for k in kinds}
            for row in ok_rows.to_dict("records")
        }

    def failures(self) -> pd.DataFrame:
        """Manifest rows of images that failed and never succeeded in another manifest."""
        manifests = self.read_manifests()
        ok = set(manifests.loc[manifests["status"] == "ok", "key"])
        return manifests[(manifests["status"] != "ok") & ~manifests["key"].isin(ok)]

    def failed_images(self, recipe: pd.DataFrame) -> dict[str, str]:
        """{source image key: reason} of the recipe's images without assets, from the manifests.

        Raises FileNotFoundError when an image has no manifest row at all (the build did not run).
        """
        manifests = self.read_manifests()
        ok = set(manifests.loc[manifests["status"] == "ok", "key"])
        failed = self.failures()
        reasons = dict(zip(failed["key"], failed["reason"], strict=True))
        unbuilt = [k for k in needed_images(recipe) if k not in ok and k not in reasons]
        if unbuilt:
            raise FileNotFoundError(
                f"{self.out}: {len(unbuilt)} source images of the recipe have no assets and no "
                f"manifest entry (e.g. {unbuilt[:3]}); call prepare_data() or run "
                f"`hsi-generate build out={self.out}` for every shard"
            )
        return reasons

    def is_complete(self, generate: DictConfig | Mapping) -> bool:
        """True when the folder holds this very configuration and a manifest row for every image.

        Reads only config.yaml, recipe.csv and the manifests (no source, no hashing), so it is
        fast at any scale. Images recorded as failed count as done: rebuilding would fail again.
        `hsi-generate validate` is the deep check.
        """
        if self.missing_files():
            return False
        if self.config_path.read_text(encoding="utf-8") != generation_config(generate):
            return False  # the build then explains the difference (or rejects the folder)
        covered = set(self.read_manifests()["key"])
        return set(needed_images(self.read_recipe())) <= covered

    def read_journal(self, shard: int, num_shards: int, kinds: Sequence[str]) -> dict:
        """{key: {kind: sha256}} of the images an interrupted run of this shard finished.

        A line cut by a kill does not parse and is ignored: that image is simply made again.
        """
        path = self.journal_path(shard, num_shards)
        if not path.is_file():
            return {}
        found = {}
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            fields = line.split("\t")
            if len(fields) != 1 + len(kinds) or not all(_is_sha256(f) for f in fields[1:]):
                continue
            found[fields[0]] = dict(zip(kinds, fields[1:], strict=True))
        return found

    # ---- skipped inputs
    def write_skipped(self, reader_skips: Sequence[tuple[str, str]], path_of: Mapping) -> Path:
        """skipped.csv: the reader's skips, then every failed image of all manifests so far.

        `path_of` maps an image key to its source path. Called under the folder's lock, so
        shards finishing at once each write the union of what is on disk then.
        """
        rows = list(reader_skips)
        for row in self.failures().sort_values("key").to_dict("records"):
            rows.append((path_of.get(row["key"], row["key"]), row["reason"]))
        frame = pd.DataFrame(rows, columns=list(SKIPPED_COLUMNS))
        return atomic_write_bytes(self.skipped_path, csv_bytes(frame))

    # ---- locks
    def lock(
        self, what: str, shard: int | None = None, num_shards: int | None = None, wait: bool = False
    ) -> contextlib.AbstractContextManager:
        """Hold `what`'s lock in this folder (e.g. build shard 0 of 4); see `hold_lock`."""
        return hold_lock(self.out, what, shard, num_shards, wait)


@contextlib.contextmanager
def hold_lock(
    folder: Path,
    what: str,
    shard: int | None = None,
    num_shards: int | None = None,
    wait: bool = False,
) -> Iterator:
    """Hold `what`'s lock (`.lock-<what>[-<i>-of-<n>]` in `folder`) or fail at once naming the
    holder's pid. `wait=True` waits for the holder instead (short critical sections such as
    skipped.csv). Build shards lock in the dataset folder, export shards in the export folder."""
    name = f".lock-{what}" + (f"-{shard}-of-{num_shards}" if shard is not None else "")
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            where = f"shard {shard} of {num_shards}" if shard is not None else "it"
            raise LockedError(
                f"another process (pid {holder}) is running {what} on {where} of {folder} "
                f"(lock {path}); wait for it to end or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (unlinking it would race)


__all__ = [
    "ASSET_KINDS",
    "CORE_BOXES",
    "GENERATION_KEYS",
    "PASTE_MODES",
    "RESIZE_MODES",
    "RUNTIME_KEYS",
    "ConfigError",
    "append_journal",
    "check_out",
    "DatasetFolder",
    "DatasetSpec",
    "LockedError",
    "hold_lock",
    "csv_bytes",
    "generation_config",
    "read_export_recipe",
    "read_recipe",
    "without_runtime_keys",
]
