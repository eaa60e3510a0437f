"""Paper-style tables from results.json contents (hsi.report), values worked out by hand."""

import math

import pytest

from hsi.report import category_tables, format_table, group_table


def run(method: str, easy: float, medium: float, hard: float, acc: float, worst: float,
        seed: int = 0) -> dict:  # fmt: skip
    metrics = {"acc_easy": easy, "acc_medium": medium, "acc_hard": hard, "acc": acc,
               "worst_group_acc": worst}  # fmt: skip
    return {"method": method, "seed": seed, "test": metrics, "val": {}, "status": "complete"}


def test_category_tables_pool_seeds_into_mean_and_sample_std():
    runs = [run("erm", 0.70, 0.60, 0.50, 0.62, 0.10), run("dfr", 0.8, 0.7, 0.6, 0.7, 0.2),
            run("erm", 0.80, 0.64, 0.40, 0.66, 0.30, seed=1)]  # fmt: skip
    mean, std = category_tables(runs)
    assert list(mean.index) == ["erm", "dfr"]  # first-seen order
    assert list(mean.columns) == ["Easy", "Medium", "Hard", "Average", "Worst-group", "seeds"]
    assert mean.loc["erm", "Easy"] == pytest.approx(75.0)  # (70 + 80) / 2, in percent
    assert mean.loc["erm", "Hard"] == pytest.approx(45.0)
    assert mean.loc["erm", "seeds"] == 2 and mean.loc["dfr", "seeds"] == 1
    # sample std (ddof=1) of 70 and 80: sqrt(((-5)^2 + 5^2) / 1) = 7.071...
    assert std.loc["erm", "Easy"] == pytest.approx(math.sqrt(50))
    assert math.isnan(std.loc["dfr", "Easy"])  # one seed: no spread to report


def test_group_table_is_sizes_by_placements_in_percent():
    test = {f"group/{p}_{s}": (i + 1) / 100 for i, (s, p) in
            enumerate((s, p) for s in (16, 24, 32) for p in ("CeO", "CoO", "CeR", "CoR"))}  # fmt: skip
    del test["group/CoR_16"]  # an empty group is absent from results.json
    table = group_table({"test": {**test, "acc": 0.5}, "status": "complete"})
    assert list(table.index) == [16, 24, 32] and list(table.columns) == ["CeO", "CoO", "CeR", "CoR"]
    assert table.loc[24, "CeR"] == pytest.approx(7.0)  # the 7th group in size-major order
    assert math.isnan(table.loc[16, "CoR"])
    row_16 = next(line for line in format_table(table, "t").splitlines() if line.startswith("16"))
    assert row_16.split()[-1] == "-"  # NaN shown as '-'


def test_group_table_without_groups_says_so():
    with pytest.raises(ValueError, match="no group accuracies"):
        group_table({"test": {"acc": 0.9}, "status": "complete"})


def test_two_runs_of_one_seed_are_not_pooled_as_seeds():
    runs = [run("dfr", 0.6, 0.5, 0.4, 0.5, 0.1), run("dfr", 0.8, 0.5, 0.4, 0.5, 0.1)]
    with pytest.raises(ValueError, match="two runs of method='dfr' with seed 0"):
        category_tables(runs)


@pytest.mark.parametrize("status", ["diverged", None])
def test_runs_that_did_not_complete_are_refused_unless_asked(status):
    failed = {**run("erm", 0.1, 0.1, 0.1, 0.1, 0.0, seed=1), "status": status,
              "run_dir": "runs/erm-lr1e6", "error": "training diverged"}
    runs = [run("erm", 0.7, 0.6, 0.5, 0.6, 0.1), failed]
    with pytest.raises(ValueError, match="run runs/erm-lr1e6 has status .* not 'complete'"):
        category_tables(runs)
    with pytest.raises(ValueError, match="include_incomplete=True"):
        group_table(failed)
    mean, _ = category_tables(runs, include_incomplete=True)
    assert mean.loc["erm", "seeds"] == 2 and mean.loc["erm", "Easy"] == pytest.approx(40.0)
