"""The Hard-Spurious-ImageNet recipe: counts, groups, backgrounds, splits, determinism, v2 pairs."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from hsi.generate.pairs import PAPER_V2_FOREGROUNDS, PAPER_V2_PAIRS
from hsi.generate.recipe import RecipeCounts, build_recipe, needed_images, summarize
from hsi.sources.record import ClassInfo, ImageRecord, SourceIndex

BOX = ((4.0, 6.0, 60.0, 50.0),)
PAPER = RecipeCounts()  # 80/10/10 train, 20 val, 50 test
SMALL = RecipeCounts(train_easy=3, train_medium=2, train_hard=1, val=2, test=4)

# paper 000, §4, written out for 56/84/112: Easy = CeO/CoO at 84, 112; Hard = CeR/CoR at 56, 84.
EXPECTED_CATEGORY = {
    "CeO_56": "medium",
    "CoO_56": "medium",
    "CeR_56": "hard",
    "CoR_56": "hard",
    "CeO_84": "easy",
    "CoO_84": "easy",
    "CeR_84": "hard",
    "CoR_84": "hard",
    "CeO_112": "easy",
    "CoO_112": "easy",
    "CeR_112": "medium",
    "CoR_112": "medium",
}


def make_index(
    n_train: dict[str, int] | int,
    n_val: dict[str, int] | int,
    wnids: tuple[str, ...] = ("n00000010", "n00000020", "n00000030", "n00000040"),
    unboxed: int = 5,
) -> SourceIndex:
    """Classes with `n_train` boxed train images (+ `unboxed` without boxes) and `n_val` val images.

    Source labels are 100 + 7 * i so that they differ from the recipe's labels 0..K-1.
    """
    classes = [ClassInfo(100 + 7 * i, w, f"name{i}", (f"name{i}",)) for i, w in enumerate(wnids)]
    records, val_id = [], 0
    for c in classes:
        nt = n_train[c.wnid] if isinstance(n_train, dict) else n_train
        nv = n_val[c.wnid] if isinstance(n_val, dict) else n_val
        for n in range(nt + unboxed):
            records.append(
                ImageRecord(
                    f"{c.wnid}_{n}",
                    "train",
                    c.wnid,
                    c.index,
                    f"train/{c.wnid}/{c.wnid}_{n}.JPEG",
                    120,
                    90,
                    BOX if n < nt else (),
                )
            )
        for _ in range(nv):
            val_id += 1
            name = f"ILSVRC2012_val_{val_id:08d}"
            records.append(
                ImageRecord(name, "val", c.wnid, c.index, f"val/{name}.JPEG", 100, 100, BOX)
            )
    records.sort(key=lambda r: (r.split, r.image_id))
    return SourceIndex(Path("."), classes, records)


def wnid_of(index: SourceIndex) -> dict[str, str]:
    return {r.key: r.wnid for r in index.records}


@pytest.fixture(scope="module")
def paper_index() -> SourceIndex:
    return make_index(n_train=700, n_val=60, wnids=("n00000010", "n00000020", "n00000030"))


@pytest.fixture(scope="module")
def paper_recipe(paper_index) -> pd.DataFrame:
    return build_recipe(paper_index, seed=3, resolution=224, counts=PAPER)


def test_columns_and_row_order(paper_recipe):
    assert list(paper_recipe.columns) == [
        "sample_id",
        "split",
        "label",
        "wnid",
        "source_label",
        "group_id",
        "group",
        "placement",
        "size",
        "position",
        "background",
        "category",
        "fg_image",
        "bg_image",
        "bg_wnid",
        "reused",
        "box_source",
    ]
    assert paper_recipe["sample_id"].is_unique
    split_rank = paper_recipe["split"].map({"train": 0, "val": 1, "test": 2})
    k = paper_recipe["sample_id"].str.rsplit("-", n=1).str[1].astype(int)
    keys = list(zip(split_rank, paper_recipe["wnid"], paper_recipe["group_id"], k, strict=True))
    assert keys == sorted(keys)
    assert paper_recipe["reused"].dtype == bool and not paper_recipe["reused"].any()
    assert set(paper_recipe["box_source"]) == {"annotation"}


def test_paper_counts_per_class(paper_recipe):
    per_class = paper_recipe.groupby(["wnid", "split", "category"]).size()
    for wnid in ("n00000010", "n00000020", "n00000030"):
        # 4 groups per category: train 4x80 easy, 4x10 medium, 4x10 hard; val and test per group.
        assert per_class[(wnid, "train", "easy")] == 320
        assert per_class[(wnid, "train", "medium")] == 40
        assert per_class[(wnid, "train", "hard")] == 40
        for category in ("easy", "medium", "hard"):
            assert per_class[(wnid, "val", category)] == 80
            assert per_class[(wnid, "test", category)] == 200
        rows = paper_recipe[paper_recipe["wnid"] == wnid]
        trainval = rows[rows["split"] != "test"]
        assert trainval["fg_image"].nunique() == 640 == len(trainval)  # 400 + 240, each image once
    per_group = paper_recipe.groupby(["split", "group"]).size()
    assert per_group[("train", "CeO_84")] == 3 * 80 and per_group[("train", "CeR_112")] == 3 * 10
    assert per_group[("val", "CoR_56")] == 3 * 20 and per_group[("test", "CoO_112")] == 3 * 50


def test_labels_and_source_labels(paper_recipe):
    # Recipe labels follow the sorted selected wnids; source labels are the source's own (100 + 7i).
    assert dict(zip(paper_recipe["wnid"], paper_recipe["label"], strict=True)) == {
        "n00000010": 0,
        "n00000020": 1,
        "n00000030": 2,
    }
    assert dict(zip(paper_recipe["wnid"], paper_recipe["source_label"], strict=True)) == {
        "n00000010": 100,
        "n00000020": 107,
        "n00000030": 114,
    }


def test_group_columns_follow_spec(paper_recipe):
    groups = paper_recipe.drop_duplicates("group").set_index("group")
    assert dict(groups["category"]) == EXPECTED_CATEGORY
    assert dict(groups["group_id"]) == {g: i for i, g in enumerate(EXPECTED_CATEGORY)}
    for name, row in groups.iterrows():
        placement, size = name.split("_")
        assert row["placement"] == placement and row["size"] == int(size)
        assert row["position"] == {"Ce": "center", "Co": "corner"}[placement[:2]]
        assert row["background"] == placement[2]


def test_small_counts_at_64px():
    index = make_index(n_train=60, n_val=6)
    recipe = build_recipe(index, seed=0, resolution=64, counts=SMALL)
    per_group = recipe[recipe["wnid"] == "n00000020"].groupby(["split", "group"]).size()
    expected_train = {  # medium 2, hard 1, easy 3 (sizes 16/24/32 at 64 px)
        "CeO_16": 2,
        "CoO_16": 2,
        "CeR_16": 1,
        "CoR_16": 1,
        "CeO_24": 3,
        "CoO_24": 3,
        "CeR_24": 1,
        "CoR_24": 1,
        "CeO_32": 3,
        "CoO_32": 3,
        "CeR_32": 2,
        "CoR_32": 2,
    }
    assert dict(per_group["train"]) == expected_train
    assert set(per_group["val"]) == {2} and set(per_group["test"]) == {4}
    assert len(per_group["val"]) == len(per_group["test"]) == 12
    assert len(recipe) == 4 * (24 + 24 + 48)


def test_backgrounds_own_or_other_class_same_split(paper_index, paper_recipe):
    owner = wnid_of(paper_index)
    own = paper_recipe[paper_recipe["background"] == "O"]
    assert (own["bg_image"] == own["fg_image"]).all() and (own["bg_wnid"] == own["wnid"]).all()
    other = paper_recipe[paper_recipe["background"] == "R"]
    # Per class: train 4 hard x 10 + 2 medium R x 10 = 60; val 6 x 20 = 120; test 6 x 50 = 300.
    assert len(other) == 3 * (60 + 120 + 300)
    assert (other["bg_wnid"] != other["wnid"]).all()
    assert (other["bg_image"].map(owner) == other["bg_wnid"]).all()
    for split in ("train", "val", "test"):
        rows = paper_recipe[paper_recipe["split"] == split]
        pool = set(rows["fg_image"])  # R backgrounds come from the same HSI split's images
        assert set(rows.loc[rows["background"] == "R", "bg_image"]) <= pool
    # Per-sample draws spread over both other classes, not one class for a whole class.
    first = other[(other["wnid"] == "n00000010") & (other["split"] == "train")]
    assert set(first["bg_wnid"]) == {"n00000020", "n00000030"}
    assert first["bg_image"].nunique() > 45  # 60 draws from 800 images: about 58 distinct


def test_only_boxed_images_and_disjoint_train_val(paper_index, paper_recipe):
    boxed = {r.key for r in paper_index.records if r.has_boxes}
    assert set(needed_images(paper_recipe)) <= boxed
    train = set(paper_recipe.loc[paper_recipe["split"] == "train", "fg_image"])
    val = set(paper_recipe.loc[paper_recipe["split"] == "val", "fg_image"])
    test = set(paper_recipe.loc[paper_recipe["split"] == "test", "fg_image"])
    assert not train & val
    assert all(k.startswith("train/") for k in train | val)
    assert all(k.startswith("val/") for k in test)


def test_each_test_image_in_all_twelve_groups(paper_recipe):
    test = paper_recipe[paper_recipe["split"] == "test"]
    groups_per_image = test.groupby("fg_image")["group"].agg(lambda g: sorted(g))
    assert all(groups == sorted(EXPECTED_CATEGORY) for groups in groups_per_image)
    assert test.groupby("wnid")["fg_image"].nunique().tolist() == [50, 50, 50]
    # k-th sample of every group is the same image of that class.
    by_k = test.assign(k=test["sample_id"].str[-3:]).groupby(["wnid", "k"])["fg_image"].nunique()
    assert (by_k == 1).all()


def test_shortfall_names_the_class_and_numbers():
    index = make_index(
        n_train={"n00000010": 700, "n00000020": 512}, n_val=60, wnids=("n00000010", "n00000020")
    )
    with pytest.raises(ValueError) as err:
        build_recipe(index, seed=0, resolution=224, counts=PAPER)
    message = str(err.value)
    assert (
        "class n00000020 (name1) has 512 boxed train images; the recipe needs 640 (400 train + 240 val)"
        in message
    )
    assert "dataset.counts" in message and "dataset.coverage=reuse" in message
    assert "n00000010" not in message

    short_val = make_index(
        n_train=700, n_val={"n00000010": 60, "n00000020": 30}, wnids=("n00000010", "n00000020")
    )
    with pytest.raises(
        ValueError,
        match=r"n00000020 \(name1\) has 30 boxed val images; the recipe needs 50 \(50 test\)",
    ):
        build_recipe(short_val, seed=0, resolution=224, counts=PAPER)


def test_replacement_fills_up_and_marks_repeats():
    index = make_index(
        n_train={"n00000010": 700, "n00000020": 500}, n_val=60, wnids=("n00000010", "n00000020")
    )
    recipe = build_recipe(index, seed=0, resolution=224, counts=PAPER, replacement=True)
    short = recipe[recipe["wnid"] == "n00000020"]
    assert (short["split"] == "train").sum() == 400 and (short["split"] == "val").sum() == 240
    # 500 distinct images split 400:240 -> 312.5 : 187.5 -> 313 train + 187 val (tie to train).
    train, val = short[short["split"] == "train"], short[short["split"] == "val"]
    assert train["fg_image"].nunique() == 313 and val["fg_image"].nunique() == 187
    assert train["reused"].sum() == 400 - 313 and val["reused"].sum() == 240 - 187
    assert not set(train["fg_image"]) & set(val["fg_image"])
    for part in (train, val):  # a repeat is an image the same split also uses un-repeated
        assert set(part.loc[part["reused"], "fg_image"]) <= set(
            part.loc[~part["reused"], "fg_image"]
        )
    # Repeats are spread over the groups, not all in the last ones.
    assert train.loc[train["reused"], "category"].nunique() == 3
    assert not recipe.loc[recipe["wnid"] == "n00000010", "reused"].any()


def test_replacement_cannot_make_train_and_val_disjoint_from_one_image():
    index = make_index(
        n_train={"n00000010": 700, "n00000020": 1}, n_val=60, wnids=("n00000010", "n00000020")
    )
    with pytest.raises(ValueError, match=r"n00000020 .*has 1 boxed train images.*distinct image"):
        build_recipe(index, seed=0, resolution=224, counts=PAPER, replacement=True)


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode()


def test_deterministic_and_independent_of_record_order():
    index = make_index(n_train=60, n_val=8)
    first = build_recipe(index, seed=11, sizes=(16, 24, 32), counts=SMALL)
    again = build_recipe(index, seed=11, sizes=(16, 24, 32), counts=SMALL)
    assert csv_bytes(first) == csv_bytes(again)
    other_seed = build_recipe(index, seed=12, sizes=(16, 24, 32), counts=SMALL)
    assert csv_bytes(first) != csv_bytes(other_seed)
    shuffled = list(index.records)
    random.Random(5).shuffle(shuffled)
    assert shuffled != index.records
    reordered = SourceIndex(index.root, list(reversed(index.classes)), shuffled)
    assert csv_bytes(
        build_recipe(reordered, seed=11, sizes=(16, 24, 32), counts=SMALL)
    ) == csv_bytes(first)


def test_rows_of_a_split_do_not_depend_on_other_splits_counts():
    """Guaranteed: train takes the first slice of each class's permutation and every R draw uses
    its own per-sample generator over its own split's pool, so val/test counts leave train alone."""
    index = make_index(n_train=60, n_val=8)
    base = build_recipe(index, seed=4, sizes=(16, 24, 32), counts=SMALL)
    more_val = build_recipe(
        index, seed=4, sizes=(16, 24, 32), counts=RecipeCounts(3, 2, 1, val=1, test=7)
    )
    assert csv_bytes(base[base["split"] == "train"]) == csv_bytes(
        more_val[more_val["split"] == "train"]
    )
    more_train = build_recipe(
        index, seed=4, sizes=(16, 24, 32), counts=RecipeCounts(5, 1, 1, val=2, test=4)
    )
    test_a = base[base["split"] == "test"].reset_index(drop=True)
    test_b = more_train[more_train["split"] == "test"].reset_index(drop=True)
    assert csv_bytes(test_a) == csv_bytes(test_b)


def test_v2_backgrounds_come_from_the_paired_class():
    fg = [w for w, _ in PAPER_V2_FOREGROUNDS[:2]]
    bg = [PAPER_V2_PAIRS[w] for w in fg]
    index = make_index(n_train=60, n_val=8, wnids=tuple(sorted(fg + bg)))
    recipe = build_recipe(
        index, seed=2, resolution=64, counts=SMALL, classes=fg, pairs=PAPER_V2_PAIRS
    )
    assert set(recipe["wnid"]) == set(fg)
    assert dict(zip(recipe["wnid"], recipe["label"], strict=True)) == {
        sorted(fg)[0]: 0,
        sorted(fg)[1]: 1,
    }
    owner = wnid_of(index)
    r = recipe[recipe["background"] == "R"]
    assert (r["bg_wnid"] == r["wnid"].map(PAPER_V2_PAIRS)).all()
    assert (r["bg_image"].map(owner) == r["bg_wnid"]).all()
    assert r.loc[r["split"] != "test", "bg_image"].str.startswith("train/").all()
    assert r.loc[r["split"] == "test", "bg_image"].str.startswith("val/").all()
    # The paired class's train and val backgrounds are disjoint images, like the foregrounds.
    assert not set(r.loc[r["split"] == "train", "bg_image"]) & set(
        r.loc[r["split"] == "val", "bg_image"]
    )
    o = recipe[recipe["background"] == "O"]
    assert (o["bg_image"] == o["fg_image"]).all()
    assert len(recipe) == 2 * (24 + 24 + 48)


def test_v2_pairs_must_cover_classes_and_stay_out_of_labels():
    index = make_index(n_train=60, n_val=8)
    with pytest.raises(ValueError, match=r"no background class for \['n00000020'\]"):
        build_recipe(
            index,
            seed=0,
            resolution=64,
            counts=SMALL,
            classes=["n00000010", "n00000020"],
            pairs={"n00000010": "n00000030"},
        )
    with pytest.raises(ValueError, match="must not be labelled classes"):
        build_recipe(
            index,
            seed=0,
            resolution=64,
            counts=SMALL,
            classes=["n00000010", "n00000020"],
            pairs={"n00000010": "n00000020", "n00000020": "n00000030"},
        )
    with pytest.raises(ValueError, match=r"not in the source's class list: \['n09999999'\]"):
        build_recipe(index, seed=0, resolution=64, counts=SMALL, classes=["n00000010", "n09999999"])


def test_summarize_and_needed_images():
    index = make_index(n_train=60, n_val=6)
    recipe = build_recipe(
        index, seed=1, resolution=64, counts=SMALL, classes=["n00000010", "n00000030"]
    )
    table = summarize(recipe)
    assert len(table) == 36  # 3 splits x 12 groups
    assert table["split"].tolist() == ["train"] * 12 + ["val"] * 12 + ["test"] * 12
    row = table[(table["split"] == "train") & (table["group"] == "CeO_24")].iloc[0]
    assert (row["category"], row["samples"], row["classes"], row["fg_images"]) == ("easy", 6, 2, 6)
    assert table["samples"].sum() == len(recipe) == 2 * 96
    images = needed_images(recipe)
    assert images == sorted(set(images))
    # train/val foregrounds: 2 x (24 + 24) distinct; test: 2 x 4; R backgrounds only reuse these.
    assert len(images) == 2 * 48 + 2 * 4
    assert set(images) == set(recipe["fg_image"])
