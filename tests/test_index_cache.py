"""The cached source index and the decode check, on ImageNet-layout trees made in the test."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
from imagenet_factory import GOLDFISH, TENCH, TRAIN_CASES, VAL_CASES, Case, write_image, write_tree

from hsi.sources import decode_check
from hsi.sources.imagenet import ImageNetSource
from hsi.sources.index_cache import IndexCache, listing_digest

BROKEN = (
    Case(
        "train",
        "n01440764_90",
        TENCH,
        size=(64, 48),
        kind="truncated",
        objects=((TENCH, (2, 2, 30, 30)),),
    ),
    Case("train", "n01443537_90", GOLDFISH, size=(64, 48), kind="truncated"),  # no boxes
)


def source(root, cache_dir, **kw):
    return ImageNetSource(root, progress=False, cache_dir=cache_dir, **kw)


def same(a, b) -> bool:
    return (a.classes, a.records, a.skipped, a.box_errors, a.root) == (
        b.classes,
        b.records,
        b.skipped,
        b.box_errors,
        b.root,
    )


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "imagenet", TRAIN_CASES + VAL_CASES + BROKEN)


@pytest.fixture
def reads(monkeypatch):
    """How many times the reader really reads the tree (headers and annotations)."""
    count = {"n": 0}
    real = ImageNetSource.read

    def counted(self, *args, **kwargs):
        count["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ImageNetSource, "read", counted)
    return count


def test_an_unchanged_tree_is_read_once(tree, tmp_path, reads):
    first = source(tree, tmp_path / "cache").load()
    assert reads["n"] == 1 and len(list((tmp_path / "cache").glob("index-*.json"))) == 1
    second = source(tree, tmp_path / "cache").load()
    assert reads["n"] == 1  # from the cache
    assert same(first, second)
    fresh = source(tree, tmp_path / "cache", cache=False).load()
    assert reads["n"] == 2 and same(first, fresh)  # the cache holds exactly what a read gives


@pytest.mark.parametrize("change", ["add", "remove", "rename", "resize", "touch", "xml", "synsets"])
def test_any_change_of_the_listing_reads_again(change, tree, tmp_path, reads):
    cache = tmp_path / "cache"
    before = source(tree, cache).load()
    image = tree / "train" / TENCH / "n01440764_6.JPEG"
    if change == "add":
        write_image(tree / "train" / TENCH / "n01440764_77.JPEG", (40, 30))
    elif change == "remove":
        image.unlink()
    elif change == "rename":
        image.rename(image.with_name("n01440764_66.JPEG"))
    elif change == "resize":
        write_image(image, (44, 30))
    elif change == "touch":
        info = image.stat()
        os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    elif change == "xml":
        xml = tree / "boxes" / "train" / TENCH / "n01440764_1.xml"
        xml.write_text(xml.read_text().replace("<xmin>20</xmin>", "<xmin>22</xmin>"))
    elif change == "synsets":
        path = tree / "LOC_synset_mapping.txt"
        path.write_text(path.read_text().replace("tench,", "Tench,"))
    after = source(tree, cache).load()
    assert reads["n"] == 2
    assert same(after, source(tree, cache, cache=False).load())
    if change in ("add", "remove", "rename", "resize", "xml", "synsets"):
        assert not same(before, after)
    # and the new listing is cached in turn
    source(tree, cache).load()
    assert reads["n"] == 3


def test_listing_digest_ignores_hidden_entries_and_counts_errors(tree, tmp_path):
    digest, entries = listing_digest([tree / "train"])
    (tree / "train" / TENCH / ".partial.tmp").write_bytes(b"x")
    assert listing_digest([tree / "train"]) == (digest, entries)
    assert listing_digest([tree / "nowhere"])[0] != listing_digest([tree / "elsewhere"])[0]


class Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_damaged_or_foreign_cache_is_a_miss(tree, tmp_path, reads, caplog):
    cache = tmp_path / "cache"
    first = source(tree, cache).load()
    (path,) = cache.glob("index-*.json")
    # a pickle that would create a marker when unpickled: the cache is JSON, nothing runs
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps(Touch(str(marker))))
    with caplog.at_level(logging.WARNING):
        assert same(source(tree, cache).load(), first)
    assert reads["n"] == 2 and "unreadable" in caplog.text and not marker.exists()
    path.write_text(json.dumps({"format": -1}))
    assert same(source(tree, cache).load(), first) and reads["n"] == 3
    assert json.loads(path.read_text())["format"] != -1  # replaced by a good one


def test_unwritable_cache_dir_is_a_warning(tree, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        index = source(tree, blocker / "cache").load()
    assert index.records and "source.cache_dir" in caplog.text


def test_cache_false_writes_nothing(tree, tmp_path):
    source(tree, tmp_path / "cache", cache=False).load()
    assert not (tmp_path / "cache").exists()


def test_settings_name_their_own_cache(tree, tmp_path):
    a = IndexCache(tmp_path, {"root": tree})
    b = IndexCache(tmp_path, {"root": tree / "other"})
    assert a.path != b.path and a.path.parent == tmp_path


# ---- the decode check ----------------------------------------------------------------------------
def reasons(index):
    return {s.path: s.reason for s in index.skipped}


BOXED = "train/n01440764/n01440764_90.JPEG"
UNBOXED = "train/n01443537/n01443537_90.JPEG"


@pytest.mark.parametrize(
    ("mode", "left_out"), [("boxed", {BOXED}), ("all", {BOXED, UNBOXED}), ("none", set())]
)
def test_undecodable_images_become_skips(mode, left_out, tree, tmp_path):
    index = source(tree, tmp_path / "cache", decode_check=mode).load()
    paths = {r.path for r in index.records}
    assert not left_out & paths and ({BOXED, UNBOXED} - left_out) <= paths
    why = reasons(index)
    for path in left_out:
        assert why[path].startswith("decode:") and "n0144" in why[path]
    assert index.skipped == sorted(index.skipped, key=lambda s: (s.path, s.reason))


def test_decode_results_are_cached_per_file(tree, tmp_path, monkeypatch):
    calls = []
    real = decode_check.decode_reason

    def counted(state, task):
        calls.append(os.path.basename(task[0]))
        return real(state, task)

    monkeypatch.setattr(decode_check, "decode_reason", counted)
    cache = tmp_path / "cache"
    first = source(tree, cache).load()
    boxed = [r for r in source(tree, cache, decode_check="none").load().records if r.has_boxes]
    assert len(calls) == len(boxed)  # every boxed image once, no unboxed one
    assert same(source(tree, cache).load(), first) and len(calls) == len(boxed)  # all cached
    write_image(tree / BOXED, (64, 48))  # repaired: only this file is decoded again
    repaired = source(tree, cache).load()
    assert calls[len(boxed) :] == ["n01440764_90.JPEG"]
    assert BOXED in {r.path for r in repaired.records} and BOXED not in reasons(repaired)


def test_decode_size_mismatch_is_a_skip(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "imagenet", TRAIN_CASES[:1] + VAL_CASES[:1])
    monkeypatch.setattr(decode_check, "load_rgb", lambda path: np.zeros((3, 3, 3), np.uint8))
    index = source(root, tmp_path / "cache", cache=False).load()
    assert index.records == []  # both images have boxes, neither decodes to its header's size
    mismatched = [r for r in reasons(index).values() if "decodes to 3x3, its header says" in r]
    assert len(mismatched) == 2


def test_bad_decode_check_names_the_key(tree, tmp_path):
    with pytest.raises(ValueError, match="source.decode_check='some'"):
        source(tree, tmp_path, decode_check="some")
