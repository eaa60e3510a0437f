"""Check that a build is complete and intact (`hsi-generate validate`).

Checks: the build's config and recipe are present; manifests exist and no shard of a sharding is
missing; every image the recipe needs has an `ok` manifest row; each of its asset files exists,
has the sha256 the manifest recorded, decodes, and has the right shape (background
resolution x resolution x 3, core crop HxWx3, alpha HxW of 0/255 matching the crop). Every
problem is reported with the file it concerns; any problem makes the exit code non-zero.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hsi.generate.layout import DatasetFolder
from hsi.generate.recipe import needed_images
from hsi.io import sha256_file
from hsi.workers import ordered_map


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


def check_image_assets(
    _state: None, task: tuple[str, str, dict[str, str], Sequence[str], int]
) -> list[str]:
    """Problems of one source image's assets: existence, sha256 against the manifest, decoding, shape."""
    out, key, expected, kinds, resolution = task
    folder = DatasetFolder(out)
    problems, shapes = [], {}
    for kind in kinds:
        path = folder.asset_path(kind, key)
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
            f"alpha {folder.asset_path('alpha', key)} is {shapes['alpha']} but its core crop is {shapes['core'][:2]}"
        )
    return problems


def validate_output(
    out: str | os.PathLike, workers: int = 1, progress: bool = False
) -> ValidationReport:
    """Check the build in `out`; the report lists every problem (none = complete and intact)."""
    out = Path(out)
    folder = DatasetFolder(out)
    report = ValidationReport(out=out)
    for path in folder.missing_files():
        report.problems.append(f"missing {path}: run `hsi-generate build out={out}` first")
    if report.problems:
        return report
    spec = folder.spec()
    kinds = spec.asset_kinds
    needed = needed_images(folder.read_recipe())
    report.needed = len(needed)
    missing_manifests = folder.manifest_problems()
    if missing_manifests and missing_manifests[0].startswith("no manifest"):
        report.problems += missing_manifests
        return report

    expected = folder.ok_hashes(kinds)
    failed = folder.failures()
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

    tasks = [(str(out), k, expected[k], kinds, spec.resolution) for k in needed if k in expected]
    for problems in ordered_map(
        check_image_assets, tasks, workers=workers, progress=progress, desc="validate", unit="img"
    ):
        report.checked += 1
        report.problems += problems
    return report
