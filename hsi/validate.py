"""Check that a build is complete and intact (`hsi-generate validate`).

Checks: config.yaml and recipe.csv are present; manifests exist and no shard of a sharding is
missing; every image the recipe needs has an `ok` manifest row; each of its asset files exists,
has the sha256 the manifest recorded, decodes, and has the right shape (background
resolution x resolution x 3, core crop HxWx3, alpha HxW of 0/255 matching the crop). Every
problem is reported with the file it concerns; any problem makes the exit code non-zero.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from hsi.assets import AssetStore
from hsi.build import asset_kinds, map_in_workers, read_manifests
from hsi.compose import read_recipe
from hsi.io import sha256_file
from hsi.recipe import needed_images

_SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.csv$")


@dataclass
class ValidationReport:
    out: Path
    needed: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, limit: int = 50) -> str:
        head = (
            f"hsi-generate validate {self.out}: {self.needed} source images needed, "
            f"{self.checked} checked, {len(self.problems)} problem(s)"
        )
        lines = [head] + [f"  PROBLEM {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        lines.append(
            "  OK"
            if self.ok
            else "  FAILED: rebuild the images named above (rerun `hsi-generate build`)"
        )
        return "\n".join(lines)


def _decode_problem(path: Path, kind: str, resolution: int) -> tuple[str | None, tuple[int, ...]]:
    """(problem or None, decoded shape) of one asset file."""
    try:
        # verify() checks every chunk's CRC: load() alone can decode a damaged stream into
        # garbage pixels without complaint once it has read enough rows.
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
        return f"corrupted asset {path}: cannot decode ({type(e).__name__}: {e})", ()
    shape = array.shape
    if kind == "bg" and shape != (resolution, resolution, 3):
        return f"wrong shape {path}: {shape}, expected ({resolution}, {resolution}, 3)", shape
    if kind == "core" and (array.ndim != 3 or shape[2] != 3 or min(shape[:2]) < 1):
        return f"wrong shape {path}: {shape}, expected an HxWx3 RGB crop", shape
    if kind == "alpha":
        if array.ndim != 2:
            return f"wrong shape {path}: {shape}, expected an HxW mask", shape
        if not np.isin(array, (0, 255)).all():
            return f"bad values in {path}: an alpha mask holds only 0 and 255", shape
    return None, shape


def check_image_assets(task: tuple[str, str, dict[str, str], Sequence[str], int]) -> list[str]:
    """Problems of one source image's assets: existence, sha256 against the manifest, decoding, shape."""
    out, key, expected, kinds, resolution = task
    store = AssetStore(out, cache_size=0)
    problems, shapes = [], {}
    for kind in kinds:
        path = store.path(kind, key)
        if not path.is_file():
            problems.append(f"missing asset {path} (image {key})")
            continue
        digest = sha256_file(path)
        if digest != expected.get(kind):
            problems.append(
                f"hash mismatch {path}: sha256 on disk {digest[:12]}..., manifest "
                f"{(expected.get(kind) or 'none')[:12]}... (changed or corrupted after the build)"
            )
        problem, shapes[kind] = _decode_problem(path, kind, resolution)
        if problem:
            problems.append(problem)
    if shapes.get("alpha") and shapes.get("core") and shapes["alpha"] != shapes["core"][:2]:
        problems.append(
            f"alpha {store.path('alpha', key)} is {shapes['alpha']} but its core crop is {shapes['core'][:2]}"
        )
    return problems


def _manifest_problems(out: Path) -> list[str]:
    """Missing manifest files: none at all, or a shard of a sharding that wrote the others."""
    folder = out / "manifest"
    found: dict[int, set[int]] = {}
    for path in sorted(folder.glob("shard-*-of-*.csv")):
        match = _SHARD_NAME.search(path.name)
        if match:
            found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not found:
        return [f"no manifest in {folder}: run `hsi-generate build out={out}` (every shard) first"]
    return [
        f"missing manifest {folder / f'shard-{i}-of-{n}.csv'} (shard {i} of {n} has not finished)"
        for n, shards in sorted(found.items())
        for i in range(n)
        if i not in shards
    ]


def validate_output(
    out: str | os.PathLike, workers: int = 1, progress: bool = False
) -> ValidationReport:
    """Check the build in `out`; the report lists every problem (none = complete and intact)."""
    out = Path(out)
    report = ValidationReport(out=out)
    config_path, recipe_path = out / "config.yaml", out / "recipe.csv"
    for path in (config_path, recipe_path):
        if not path.is_file():
            report.problems.append(f"missing {path}: run `hsi-generate build out={out}` first")
    if report.problems:
        return report
    dataset = OmegaConf.load(config_path).dataset
    kinds = asset_kinds(dataset)
    needed = needed_images(read_recipe(recipe_path))
    report.needed = len(needed)
    missing_manifests = _manifest_problems(out)
    if missing_manifests and missing_manifests[0].startswith("no manifest"):
        report.problems += missing_manifests
        return report

    manifests = read_manifests(out)
    ok_rows = manifests[manifests["status"] == "ok"]
    # The last ok row per image wins (manifest files are read sorted by name).
    expected = {
        row["key"]: {k: row.get(f"{k}_sha256", "") for k in kinds}
        for row in ok_rows.to_dict("records")
    }
    failed = manifests[(manifests["status"] != "ok") & ~manifests["key"].isin(set(expected))]
    for row in failed.to_dict("records"):
        report.problems.append(f"failed image {row['key']} ({row['manifest']}): {row['reason']}")
    failed_keys = set(failed["key"])
    unlisted = [k for k in needed if k not in expected and k not in failed_keys]
    if unlisted:
        # A missing shard manifest matters only when images are missing: the manifests of an
        # earlier, abandoned sharding of a complete build are harmless leftovers.
        report.problems += missing_manifests
        report.problems.append(
            f"{len(unlisted)} needed images are in no manifest, e.g. {unlisted[:5]}; "
            "finish every shard of the build"
        )

    tasks = [
        (str(out), k, expected[k], kinds, int(dataset.resolution)) for k in needed if k in expected
    ]
    for problems in map_in_workers(
        check_image_assets, tasks, workers, _no_init, (), progress=progress, desc="validate"
    ):
        report.checked += 1
        report.problems += problems
    return report


def _no_init() -> None:
    """Checking needs no per-process state."""
