"""ImageNet classes from `LOC_synset_mapping.txt`, and names -> wnid for annotations that use labels.

Each line is `n01440764 tench, Tinca tinca`: the wnid, then comma-separated synonyms. Class index =
position in sorted wnid order (the order every ImageNet-1k model uses).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from hsi.sources.record import ClassInfo

WNID = re.compile(r"n\d{8}")


def read_synsets(path: str | os.PathLike) -> list[ClassInfo]:
    """Classes sorted by wnid, index = position; malformed or repeated lines raise ValueError naming the file."""
    entries: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            wnid, _, names = line.partition(" ")
            if not WNID.fullmatch(wnid):
                raise ValueError(f"{path} line {number}: {wnid!r} is not a wnid (n + 8 digits)")
            if wnid in entries:
                raise ValueError(f"{path} line {number}: {wnid} is listed twice")
            synonyms = tuple(s.strip() for s in names.split(",") if s.strip())
            entries[wnid] = synonyms or (wnid,)
    if not entries:
        raise ValueError(f"{path}: no classes (expected lines like 'n01440764 tench, Tinca tinca')")
    return [
        ClassInfo(index=i, wnid=wnid, name=entries[wnid][0], synonyms=entries[wnid])
        for i, wnid in enumerate(sorted(entries))
    ]


def normalise_name(name: str) -> str:
    """Case, underscores and runs of spaces do not distinguish class names."""
    return " ".join(name.replace("_", " ").split()).casefold()


class UnknownClassName(LookupError):
    """A name that matches no class, or several (ImageNet has e.g. two classes called "crane")."""


class SynsetNames:
    """Resolve a wnid or any synonym of a class (case-insensitive) to its wnid."""

    def __init__(self, classes: Iterable[ClassInfo]):
        classes = list(classes)
        self._wnids = {c.wnid for c in classes}
        self._by_name: dict[str, set[str]] = {}
        for c in classes:
            for synonym in c.synonyms:
                self._by_name.setdefault(normalise_name(synonym), set()).add(c.wnid)

    def resolve(self, name: str) -> str:
        """The wnid for `name`; raises UnknownClassName saying whether it is unknown or ambiguous."""
        name = name.strip()
        if name in self._wnids:
            return name
        wnids = self._by_name.get(normalise_name(name), set())
        if len(wnids) == 1:
            return next(iter(wnids))
        if wnids:
            raise UnknownClassName(
                f"name {name!r} is ambiguous: synonym of {', '.join(sorted(wnids))}"
            )
        raise UnknownClassName(
            f"name {name!r} is neither a wnid nor a class name in the synset file"
        )
