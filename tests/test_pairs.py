"""v2 class pairs: the paper's list, selection from background-only accuracy, CSV in and out."""

from __future__ import annotations

import pandas as pd
import pytest

from hsi.generate.pairs import (
    PAPER_V2_BACKGROUNDS,
    PAPER_V2_PAIRS,
    read_accuracy_csv,
    read_pairs_csv,
    select_pairs,
    write_pairs_csv,
)


def test_paper_pairs_follow_the_paper_order():
    # ImageNet-1k synset ids (LOC_synset_mapping.txt), written out by hand.
    assert PAPER_V2_PAIRS == {
        "n02088632": "n04251144",  # bluetick - snorkel
        "n01669191": "n02860847",  # box turtle - bobsled
        "n02085620": "n03733131",  # Chihuahua - maypole
        "n02085782": "n03992509",  # Japanese spaniel - potter's wheel
        "n02085936": "n03447447",  # Maltese dog - gondola
        "n02086240": "n02817516",  # Shih-Tzu - bearskin
        "n02086646": "n04540053",  # Blenheim spaniel - volleyball
        "n02086910": "n02802426",  # papillon - basketball
        "n02087394": "n02951358",  # Rhodesian ridgeback - canoe
        "n02088238": "n09288635",  # basset - geyser
    }
    assert len(PAPER_V2_BACKGROUNDS) == 11
    assert PAPER_V2_BACKGROUNDS[-1] == ("n12057211", "yellow lady's slipper")
    assert "n12057211" not in PAPER_V2_PAIRS.values()


# Handmade: h > a > b = c > g > d = f > e. Ties: b before c (spurious), d before f (core).
ACCURACY = pd.DataFrame(
    {
        "wnid": ["n0a", "n0b", "n0c", "n0d", "n0e", "n0f", "n0g", "n0h"],
        "accuracy": [0.90, 0.80, 0.80, 0.10, 0.00, 0.10, 0.50, 0.95],
    }
)


def test_select_pairs_by_hand():
    pairs = select_pairs(ACCURACY, n_fg=3, n_bg=3)
    assert list(pairs.items()) == [("n0e", "n0h"), ("n0d", "n0a"), ("n0f", "n0b")]


def test_select_pairs_with_exclude_and_spare_backgrounds():
    assert list(select_pairs(ACCURACY, n_fg=3, n_bg=3, exclude=["n0h"]).items()) == [
        ("n0e", "n0a"),
        ("n0d", "n0b"),
        ("n0f", "n0c"),
    ]
    # Like the paper (11 spurious named, 10 used): the extra background stays unpaired.
    assert select_pairs(ACCURACY, n_fg=2, n_bg=3) == {"n0e": "n0h", "n0d": "n0a"}


def test_select_pairs_rejects_impossible_requests():
    with pytest.raises(ValueError, match="n_fg <= n_bg"):
        select_pairs(ACCURACY, n_fg=4, n_bg=3)
    with pytest.raises(ValueError, match="only 8 classes"):
        select_pairs(ACCURACY, n_fg=5, n_bg=5)
    with pytest.raises(ValueError, match=r"more than once: \['n0a'\]"):
        select_pairs(pd.concat([ACCURACY, ACCURACY.head(1)]), n_fg=1, n_bg=1)


def test_read_accuracy_csv(tmp_path):
    good = tmp_path / "bg_accuracy.csv"
    good.write_text("wnid,accuracy,n\nn0a,0.5,10\nn0b,0.25,8\n")
    table = read_accuracy_csv(good)
    assert table["accuracy"].tolist() == [0.5, 0.25] and table["wnid"].tolist() == ["n0a", "n0b"]

    bad = tmp_path / "no_accuracy.csv"
    bad.write_text("wnid,acc\nn0a,0.5\n")
    with pytest.raises(ValueError) as err:
        read_accuracy_csv(bad)
    assert str(bad) in str(err.value) and "'accuracy'" in str(err.value)

    text = tmp_path / "text.csv"
    text.write_text("wnid,accuracy\nn0a,0.5\nn0b,high\n")
    with pytest.raises(ValueError, match=r"not a number for \['n0b'\]"):
        read_accuracy_csv(text)


def test_pairs_csv_round_trip(tmp_path):
    path = tmp_path / "pairs.csv"
    write_pairs_csv({"n02088632": "n04251144", "n01669191": "n02860847"}, path)
    assert path.read_text() == "fg_wnid,bg_wnid\nn02088632,n04251144\nn01669191,n02860847\n"
    assert read_pairs_csv(path) == {"n02088632": "n04251144", "n01669191": "n02860847"}
    path.write_text("fg,bg\nn0a,n0b\n")
    with pytest.raises(ValueError, match="fg_wnid"):
        read_pairs_csv(path)
