"""A cached source index: a second read of an unchanged ImageNet tree starts in seconds.

Reading ImageNet opens 1.28M image headers and parses 544k XML files (minutes). What that read
gives depends only on the reader's settings (its paths) and on the files, so the result is
kept in one JSON file per settings (JSON, not pickle: a cache
folder may be shared, and loading a pickle can run code) and reused while the tree's *listing* is unchanged:

    listing = every path under the image folders, the box folder or CSV and the synset file,
              with its size and mtime (ns), in sorted order; hidden entries are left out, as
              the reader leaves them out; an entry the file system cannot give counts with its
              errno (so a folder that becomes readable again invalidates the cache).

Any added, removed, renamed, resized or touched file changes the listing's digest, and the
index is read again and the cache replaced (written atomically: a crashed or concurrent writer
never leaves half a file; several shards starting at once each write the same content). A
file rewritten in place with the same size within the file system's timestamp granularity is
not seen, as with make or rsync; `source.cache=false` reads everything every time.

Where: `source.cache_dir`, or by default `$XDG_CACHE_HOME/hsi/sources` (`~/.cache/hsi/sources`).
Point it at a shared folder so that every job of a SLURM array finds the same cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from pathlib import Path

from hsi.io import atomic_write_bytes
from hsi.sources.record import ClassInfo, ImageRecord, Skip, SourceIndex

log = logging.getLogger(__name__)

# Bump when the reader's output for the same files changes (new skip reasons, new fields).
FORMAT = 3  # 3: JSON instead of pickle
_ENC = "utf-8"  # file names that are not UTF-8 go in through surrogateescape


_RECORD_FIELDS = tuple(f.name for f in fields(ImageRecord))


def astuple_shallow(record: ImageRecord) -> tuple:
    """The record's fields in order (dataclasses.astuple would deep-copy the boxes)."""
    return tuple(getattr(record, name) for name in _RECORD_FIELDS)


def _record(fields: list) -> ImageRecord:
    """An ImageRecord from its stored field list (JSON turns the box tuples into lists)."""
    *head, boxes = fields
    return ImageRecord(*head, tuple(tuple(b) for b in boxes))


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/hsi/sources`, else `~/.cache/hsi/sources`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hsi" / "sources"


def settings_key(settings: Mapping[str, object]) -> str:
    """A short name for one reader configuration (its resolved paths and the cache format)."""
    text = repr(sorted((k, str(v)) for k, v in settings.items())) + f"|format={FORMAT}"
    return hashlib.blake2b(text.encode(_ENC, "surrogateescape"), digest_size=10).hexdigest()


def _feed_error(digest, path: str, error: OSError) -> None:
    digest.update(f"{path}\0!{error.errno}\n".encode(_ENC, "surrogateescape"))


def _walk(path: str, digest) -> int:
    """Feed `path` (a file, or a folder and everything below it) into `digest`; entries seen."""
    try:
        info = os.stat(path)
    except OSError as e:
        _feed_error(digest, path, e)
        return 1
    if not stat.S_ISDIR(info.st_mode):
        digest.update(
            f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode(_ENC, "surrogateescape")
        )
        return 1
    digest.update(f"{path}/\n".encode(_ENC, "surrogateescape"))
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        _feed_error(digest, path, e)
        return 1
    seen = 1
    lines = []
    for entry in entries:
        name = entry.name
        if name[0] == ".":
            continue
        try:
            if entry.is_dir():
                seen += _walk(entry.path, digest)
                continue
            info = entry.stat()
            lines.append(f"{name}\0{info.st_size}\0{info.st_mtime_ns}")
        except OSError as e:
            lines.append(f"{name}\0!{e.errno}")
        seen += 1
    # The files of one folder go in at once: one hash update per folder, not per file.
    digest.update(("\n".join(lines) + "\n").encode(_ENC, "surrogateescape"))
    return seen


def listing_digest(paths: Iterable[str | os.PathLike]) -> tuple[str, int]:
    """The digest of the listing of `paths` (see the module docstring) and its entry count."""
    digest = hashlib.blake2b(digest_size=20)
    seen = 0
    for path in paths:
        digest.update(f"== {os.fspath(path)}\n".encode(_ENC, "surrogateescape"))
        seen += _walk(os.fspath(path), digest)
    return digest.hexdigest(), seen


class IndexCache:
    """One reader configuration's cached index in `folder` (`index-<settings key>-<variant>.json`).

    `variant` names what else shaped the stored index (the decode check's mode); files that do
    not depend on it (`sibling`) are shared by every variant.
    """

    def __init__(
        self, folder: str | os.PathLike, settings: Mapping[str, object], variant: str = ""
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.key = settings_key(settings)
        self.path = self.folder / f"index-{self.key}-{variant}.json"

    def sibling(self, kind: str) -> Path:
        """Another cache file of the same configuration (the decode check's)."""
        return self.folder / f"{kind}-{self.key}.json"

    def load(self, listing: str, root: Path) -> SourceIndex | None:
        """The cached index when it was made from this listing; None otherwise (or unreadable)."""
        if not self.path.is_file():
            return None
        try:
            with open(self.path, encoding="ascii") as f:
                data = json.load(f)
        except Exception as e:  # noqa: BLE001 - a damaged cache is a miss, never a failure
            log.warning(
                "source cache %s is unreadable (%s); reading the source again", self.path, e
            )
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        if data.get("listing") != listing:
            log.info("source cache %s: the tree changed; reading the source again", self.path)
            return None
        return SourceIndex(
            root=root,
            classes=[ClassInfo(i, w, n, tuple(syn)) for i, w, n, syn in data["classes"]],
            records=[_record(fields) for fields in data["records"]],
            skipped=[Skip(*fields) for fields in data["skipped"]],
            box_errors=[Skip(*fields) for fields in data["box_errors"]],
        )

    def save(self, listing: str, index: SourceIndex) -> None:
        """Store `index` for `listing`, atomically; a folder that cannot be written is a warning."""
        data = {
            "format": FORMAT,
            "listing": listing,
            "classes": [[c.index, c.wnid, c.name, list(c.synonyms)] for c in index.classes],
            # plain lists: faster to load than one object per record
            "records": [astuple_shallow(r) for r in index.records],
            "skipped": [(s.path, s.reason) for s in index.skipped],
            "box_errors": [(s.path, s.reason) for s in index.box_errors],
        }
        try:
            # ensure_ascii: file names that are not UTF-8 (surrogates) round-trip as escapes
            atomic_write_bytes(self.path, json.dumps(data, separators=(",", ":")).encode("ascii"))
        except OSError as e:
            log.warning(
                "cannot write the source cache %s (%s); set source.cache_dir to a writable folder "
                "(or source.cache=false)",
                self.path,
                e.strerror or e,
            )


def load_cached(
    read: Callable[[], SourceIndex],
    root: Path,
    paths: Mapping[str, Path],
    *,
    cache_dir: Path | None,
    decode_check: str,
    workers: int = 1,
    progress: bool = True,
) -> SourceIndex:
    """`read()` decode-checked (hsi.sources.decode_check), or its cached result.

    `paths`: what the reader reads (its folders and files, by key); their resolved names key
    the cache file, their listing its content. `cache_dir=None`: no cache, read every time.
    """
    from hsi.sources.decode_check import check_decodes

    cache = listing = None
    if cache_dir is not None:
        resolved = {key: str(Path(os.path.abspath(p))) for key, p in paths.items()}
        cache = IndexCache(cache_dir, resolved, decode_check)
        # the root itself is not listed: only what lies in the read folders counts
        listing, entries = listing_digest(p for key, p in sorted(paths.items()) if key != "root")
        index = cache.load(listing, root)
        if index is not None:
            log.info("source %s: %d entries unchanged, index from %s", root, entries, cache.path)
            return index
    index = read()
    summary = check_decodes(
        index,
        decode_check,
        cache.sibling("decode") if cache is not None else None,
        workers=workers,
        progress=progress,
    )
    if summary.failed:
        log.warning(
            "source %s: %d of %d checked images do not decode; left out as skips",
            root,
            summary.failed,
            summary.checked,
        )
    if cache is not None:
        cache.save(listing, index)
    return index


__all__ = [
    "FORMAT",
    "IndexCache",
    "default_cache_dir",
    "listing_digest",
    "load_cached",
    "settings_key",
]
