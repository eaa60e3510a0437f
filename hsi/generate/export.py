"""Export a built dataset as plain image files plus a metadata table, for tools that want files.

Layout under the export folder (export.dir; its default and the names of its two bookkeeping
files, the metadata table and the settings, are hsi.generate.layout's):

    <split>/<size>/<placement>/<wnid>/<sample_id>.png   (or .JPEG with export.format=jpeg)
    the metadata table: the recipe's columns plus `path`, relative to the export folder

PNG pixels are exactly `hsi.generate.compose.compose`'s output; JPEG adds only its own encoding loss.
Sharded like the build (`shard_items` over the recipe sorted by sample_id) and resumable: a file
that exists is kept when it holds exactly the bytes this export makes, and replaced (and named in
the report) otherwise, so the folder never adopts a file it did not write.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image

from hsi.generate.compose import Composer
from hsi.generate.layout import (
    EXPORT_METADATA_FILE,
    EXPORT_SETTINGS_FILE,
    DatasetFolder,
    csv_bytes,
    hold_lock,
)
from hsi.io import atomic_write_bytes, png_bytes, remove_stale_temps, shard_items, write_once
from hsi.workers import ordered_map

FORMATS = {"png": "png", "jpeg": "JPEG"}  # export.format -> file extension (ImageNet's .JPEG)


def export_dir(cfg: DictConfig) -> Path:
    """export.dir, or the built dataset's default export folder when null."""
    chosen = cfg.get("export", {}).get("dir")
    return Path(chosen) if chosen else DatasetFolder(cfg.out).default_export_dir


def export_relpath(row, fmt: str = "png") -> str:
    """<split>/<size>/<placement>/<wnid>/<sample_id>.<ext> of one recipe row."""
    if fmt not in FORMATS:
        raise ValueError(f"export.format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return f"{row['split']}/{int(row['size'])}/{row['placement']}/{row['wnid']}/{row['sample_id']}.{FORMATS[fmt]}"


def metadata(recipe: pd.DataFrame, fmt: str) -> pd.DataFrame:
    """The recipe with a `path` column (relative to the export folder)."""
    paths = [export_relpath(row, fmt) for row in recipe.to_dict("records")]
    return recipe.assign(path=paths)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


@dataclass(frozen=True)
class ExportSettings:
    out: str
    dest: str
    fmt: str
    quality: int


class Exporter:
    """One worker's state: the export settings and a composer of the built dataset."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self.composer = Composer.from_output(settings.out)


def export_one(exporter: Exporter, task: tuple[dict, str]) -> tuple[str, str]:
    """(relpath, written | kept | replaced): an existing file is kept only if it is these bytes."""
    row, relpath = task
    settings = exporter.settings
    image = exporter.composer(row)
    data = png_bytes(image) if settings.fmt == "png" else encode_jpeg(image, settings.quality)
    path = Path(settings.dest) / relpath
    status = "written"
    if path.is_file():
        if path.read_bytes() == data:
            return relpath, "kept"
        status = "replaced"
    atomic_write_bytes(path, data)
    return relpath, status


@dataclass
class ExportSummary:
    dest: Path
    shard: int
    num_shards: int
    samples: int
    written: int = 0
    skipped: int = 0  # already there with the right bytes
    replaced: list[str] = field(default_factory=list)  # there with other bytes: not ours
    seconds: float = 0.0

    def report(self) -> str:
        text = (
            f"hsi-generate export, shard {self.shard} of {self.num_shards}: {self.samples} samples -> "
            f"{self.written} written, {self.skipped} skipped (already there), "
            f"replaced {len(self.replaced)} in {self.seconds:.1f} s\n"
            f"  files:    {self.dest}\n  metadata: {self.dest / EXPORT_METADATA_FILE}"
        )
        if self.replaced:
            shown = ", ".join(self.replaced[:10])
            more = f" and {len(self.replaced) - 10} more" if len(self.replaced) > 10 else ""
            text += f"\n  replaced files this export did not write: {shown}{more}"
        return text


def _check_assets(composer: Composer, rows: list[dict]) -> None:
    kinds = DatasetFolder(composer.out).spec().asset_kinds
    needed = sorted(
        {(k, r["fg_image"]) for r in rows for k in kinds if k != "bg"}
        | {("bg", r["bg_image"]) for r in rows}
    )
    missing = [
        composer.store.path(kind, key)
        for kind, key in needed
        if not composer.store.path(kind, key).is_file()
    ]
    if missing:
        shown = "\n  ".join(map(str, missing[:10]))
        raise FileNotFoundError(
            f"{len(missing)} asset files are missing, e.g.\n  {shown}\n"
            f"run `hsi-generate build out={composer.out}` (every shard) and `hsi-generate validate` first"
        )


def run_export(cfg: DictConfig) -> ExportSummary:
    """Write this shard's samples and the metadata table; the settings come from the build."""
    start = time.perf_counter()
    out, shard, num_shards = Path(cfg.out), int(cfg.shard), int(cfg.num_shards)
    fmt = str(cfg.export.format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"export.format must be one of {sorted(FORMATS)}, got {fmt!r}")
    dest = export_dir(cfg)
    composer = Composer.from_output(out)
    table = metadata(composer.recipe, fmt)
    meta_bytes = csv_bytes(table)
    meta_path = dest / EXPORT_METADATA_FILE
    if meta_path.is_file() and meta_path.read_bytes() != meta_bytes:
        raise ValueError(
            f"{meta_path} belongs to another export (other recipe or format); "
            f"delete {dest} or set export.dir to another folder"
        )
    # What decides the pixels of the files: a rerun with other settings (quality, another build
    # behind the same export.dir) must not keep the files of the first as if they were its own.
    settings_doc = {
        "format": fmt,
        "quality": int(cfg.export.quality) if fmt == "jpeg" else None,
        "build_config_sha256": DatasetFolder(out).config_sha256(),
    }
    settings_bytes = (json.dumps(settings_doc, indent=2) + "\n").encode()
    hint = f"delete {dest} or set export.dir to another folder"
    write_once(dest / EXPORT_SETTINGS_FILE, settings_bytes, hint)
    # two processes on one shard would write the same files: the second fails naming the first
    with hold_lock(dest, "export", shard, num_shards):
        rows = sorted(table.to_dict("records"), key=lambda r: r["sample_id"])
        mine = shard_items(rows, shard, num_shards)
        _check_assets(composer, mine)
        remove_stale_temps(dest / r["path"] for r in mine)

        summary = ExportSummary(dest=dest, shard=shard, num_shards=num_shards, samples=len(mine))
        tasks = [({k: v for k, v in row.items() if k != "path"}, row["path"]) for row in mine]
        settings = ExportSettings(
            out=str(out), dest=str(dest), fmt=fmt, quality=int(cfg.export.quality)
        )
        for done in ordered_map(
            export_one,
            tasks,
            workers=int(cfg.workers),
            init=Exporter,
            init_args=(settings,),
            progress=bool(cfg.get("progress", True)),
            desc=f"export shard {shard}/{num_shards}",
            unit="img",
        ):
            relpath, status = done
            if status == "kept":
                summary.skipped += 1
            else:
                summary.written += 1
                if status == "replaced":
                    summary.replaced.append(relpath)
        write_once(meta_path, meta_bytes, f"delete {dest} or set export.dir to another folder")
    summary.seconds = time.perf_counter() - start
    return summary
