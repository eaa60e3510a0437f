"""Atomic writes and stable per-item randomness: the two habits every stage relies on."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, frame) -> Path:
    """A pandas DataFrame as CSV, index dropped, '\\n' line ends: the same frame gives the same bytes."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return atomic_write_text(path, buf.getvalue())


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 HxW or HxWxC array as PNG bytes; PIL writes no timestamp, so they are reproducible."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def atomic_save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """uint8 HxW or HxWxC array as a PNG file (`png_bytes`), written atomically."""
    return atomic_write_bytes(path, png_bytes(array))


def stable_seed(*keys: object) -> int:
    """A 64-bit seed from any keys, the same on every machine and process (never Python's hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def item_rng(*keys: object) -> np.random.Generator:
    """The generator of one item, e.g. item_rng(seed, "recipe", split, wnid)."""
    return np.random.default_rng(stable_seed(*keys))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_items(items: Iterable, shard: int, num_shards: int) -> list:
    """Round-robin slice of an already sorted list; the union over shards is the list itself."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    return [x for i, x in enumerate(items) if i % num_shards == shard]


def write_once(path: str | os.PathLike, data: bytes, hint: str) -> None:
    """Write `data` if `path` is absent; accept an identical file; refuse a different one.

    Processes writing the same bytes at once are harmless (atomic writes). The error shows the
    first differing lines and `hint` (what to do).
    """
    import difflib

    path = Path(path)
    if path.is_file():
        old = path.read_bytes()
        if old == data:
            return
        lines_old = old.decode("utf-8", "replace").splitlines(True)[:2000]
        lines_new = data.decode("utf-8", "replace").splitlines(True)[:2000]
        diff = difflib.unified_diff(lines_old, lines_new, "on disk", "this run", n=0)
        shown = "".join(list(diff)[:40])
        raise ValueError(f"{path} exists and differs from what this run produces; {hint}\n{shown}")
    atomic_write_bytes(path, data)


def remove_stale_temps(paths: Iterable[Path]) -> int:
    """Delete temp files a killed run left for exactly these target files (this module's naming).

    Only these targets' temps are touched, so other processes writing into the same folders at
    the same time are never disturbed. One directory listing per folder.
    """
    by_dir: dict[Path, set[str]] = {}
    for p in paths:
        p = Path(p)
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
