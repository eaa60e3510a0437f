"""hsi.reporting and hsi-report from fixture run folders whose numbers are written here."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hsi.groups import PLACEMENTS
from hsi.reporting import (
    RunSelectionError,
    build_report,
    category_tables,
    format_table,
    group_table,
    load_runs,
    mixed_keys,
    size_table,
)
from hsi.reporting.figures import dfr_by_epochs, erm_variants
from hsi.reporting.tables import mean_group_table
from hsi.reporting.writers import to_latex, to_markdown
from hsi.results import write_results

SIZES = (16, 24, 32)
REPO = Path(__file__).resolve().parents[1]


def groups_of(base: float) -> dict[str, float]:
    """group/<placement>_<size> = base + 0.01 * (its position in size-major order)."""
    names = [f"{p}_{s}" for s in SIZES for p in PLACEMENTS]
    return {f"group/{n}": round(base + 0.01 * i, 4) for i, n in enumerate(names)}


def run(
    method,
    seed,
    easy,
    medium,
    hard,
    acc,
    worst,
    model="resnet18",
    data="hsi",
    status="complete",
    lr=0.001,
    base=0.5,
    clean=None,
    **extra,
) -> dict:
    test = {
        "acc_easy": easy,
        "acc_medium": medium,
        "acc_hard": hard,
        "acc": acc,
        "worst_group_acc": worst,
        **groups_of(base),
    }
    results = {
        "status": status,
        "method": method,
        "algorithm": extra.pop("algorithm", method),
        "model": model,
        "data": data,
        "seed": seed,
        "num_classes": 10,
        "groups": [f"{p}_{s}" for s in SIZES for p in PLACEMENTS],
        "val": {},
        "test": test,
        "config": {
            "seed": seed,
            "out": f"/runs/{method}/{seed}",
            "method": {"module": {"lr": lr}},
            "data": {"num_workers": 2 + seed, "seed": seed},
        },
        **extra,
    }
    if clean is not None:
        results["clean"] = {"acc": clean}
    return results


def write_runs(folder: Path, runs: list[dict]) -> Path:
    for i, results in enumerate(runs):
        write_results(folder / str(i), results)
    return folder


# ERM: 2 seeds, DFR: 3 seeds, Pretrained: 1 seed; numbers chosen for hand-computable means/stds
TRAINED = [
    run("erm", 0, 0.70, 0.60, 0.50, 0.62, 0.10, base=0.40),
    run("erm", 1, 0.80, 0.64, 0.40, 0.66, 0.30, base=0.60),
    run("dfr", 0, 0.72, 0.66, 0.60, 0.66, 0.20, algorithm="dfr", stage1={"epochs": 10}),
    run("dfr", 1, 0.74, 0.66, 0.62, 0.67, 0.22, algorithm="dfr", stage1={"epochs": 10}),
    run("dfr", 2, 0.76, 0.66, 0.64, 0.68, 0.24, algorithm="dfr", stage1={"epochs": 20}),
    run("pretrained", 0, 0.65, 0.485, 0.1654, 0.4348, 0.01),
]


def test_category_tables_every_cell_std_and_seed_count():
    mean, std = category_tables(TRAINED)
    assert list(mean.index) == ["erm", "dfr", "pretrained"]  # first-seen order
    assert list(mean.columns) == ["Easy", "Medium", "Hard", "Average", "Worst-group", "seeds"]
    expected_mean = {
        "erm": [75.0, 62.0, 45.0, 64.0, 20.0, 2],
        "dfr": [74.0, 66.0, 62.0, 67.0, 22.0, 3],
        "pretrained": [65.0, 48.5, 16.54, 43.48, 1.0, 1],
    }
    # erm: sample std of (70, 80) = sqrt(50); (60, 64) -> sqrt(8); (50, 40) -> sqrt(50);
    # (62, 66) -> sqrt(8); (10, 30) -> sqrt(200). dfr: (72, 74, 76) -> 2; (66,)*3 -> 0;
    # (60, 62, 64) -> 2; (66, 67, 68) -> 1; (20, 22, 24) -> 2.
    expected_std = {
        "erm": [math.sqrt(50), math.sqrt(8), math.sqrt(50), math.sqrt(8), math.sqrt(200)],
        "dfr": [2.0, 0.0, 2.0, 1.0, 2.0],
    }
    for row, cells in expected_mean.items():
        assert mean.loc[row].tolist() == pytest.approx(cells)
    for row, cells in expected_std.items():
        assert std.loc[row].tolist() == pytest.approx(cells)
    assert std.loc["pretrained"].isna().all()  # one seed: no spread


def test_incomplete_runs_are_refused_unless_asked_for():
    runs = [*TRAINED, run("jtt", 0, 0.5, 0.5, 0.5, 0.5, 0.5, status="diverged")]
    with pytest.raises(RunSelectionError, match=r"1 run\(s\) did not complete.*'diverged'"):
        category_tables(runs)
    mean, _ = category_tables(runs, include_incomplete=True)
    assert mean.loc["jtt", "Easy"] == pytest.approx(50.0)
    no_status = {k: v for k, v in TRAINED[0].items() if k != "status"}
    with pytest.raises(RunSelectionError, match="status None"):
        group_table_runs = [no_status]
        category_tables(group_table_runs)


def test_job_folders_without_results_are_refused_unless_asked_for(tmp_path):
    runs = write_runs(tmp_path / "sweep", TRAINED[:2])
    (runs / "7" / ".hydra").mkdir(parents=True)  # a job that failed before writing results
    with pytest.raises(RunSelectionError, match=r"1 job folder\(s\) have no results.json.*sweep/7"):
        load_runs([runs])
    assert [r["seed"] for r in load_runs([runs], include_incomplete=True)] == [0, 1]
    with pytest.raises(FileNotFoundError, match="no results.json there"):
        load_runs([tmp_path / "nothing*"])


def test_mixed_settings_are_named_and_not_pooled():
    other_lr = run("erm", 2, 0.9, 0.9, 0.9, 0.9, 0.9, lr=0.01)
    assert mixed_keys([TRAINED[0], TRAINED[1]]) == []  # seed, out, num_workers may differ
    assert mixed_keys([TRAINED[0], other_lr]) == ["config.method.module.lr"]
    with pytest.raises(RunSelectionError, match=r"row 'erm'.*differ in config.method.module.lr"):
        category_tables([TRAINED[0], other_lr])
    other_model = run("erm", 2, 0.9, 0.9, 0.9, 0.9, 0.9, model="resnet50")
    with pytest.raises(RunSelectionError, match="differ in .*model"):
        category_tables([TRAINED[0], other_model])
    with pytest.raises(RunSelectionError, match="two runs with seed 0"):
        category_tables([TRAINED[0], TRAINED[0]])


def test_group_table_and_mean_over_seeds():
    table = group_table(TRAINED[0])
    assert list(table.index) == list(SIZES) and list(table.columns) == list(PLACEMENTS)
    for i, (size, placement) in enumerate((s, p) for s in SIZES for p in PLACEMENTS):
        assert table.loc[size, placement] == pytest.approx(40.0 + i)
    text = format_table(table, "t")
    assert text.splitlines()[3].split() == ["16", "40.00", "41.00", "42.00", "43.00"]
    mean, seeds = mean_group_table(TRAINED[:2])  # bases 40 and 60: mean 50 + position
    assert seeds == 2
    assert mean.loc[32, "CoR"] == pytest.approx(50.0 + 11)
    assert mean.loc[16, "CeO"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no group accuracies"):
        group_table({"test": {"acc": 0.9}})


BENCH = [
    run("benchmark", 0, 0.7, 0.5, 0.2, 0.5, 0.0, model="resnet10t", base=0.30, clean=0.91),
    run("benchmark", 0, 0.8, 0.6, 0.3, 0.6, 0.1, model="convnext_atto", base=0.50, clean=0.955),
    run(
        "benchmark",
        0,
        0.6,
        0.4,
        0.1,
        0.4,
        0.0,
        model="resnet10t",
        data="hsi_v2",
        base=0.10,
        clean=0.91,
    ),
    run("benchmark", 0, 0.6, 0.4, 0.1, 0.4, 0.0, model="resnet10t", data="hsi_sam", clean=0.91),
]


def test_size_table_is_model_by_size_with_clean_accuracy():
    table = size_table(BENCH[:2])
    assert list(table.columns) == ["Clean", *PLACEMENTS]
    assert list(table.index) == [(m, s) for m in ("resnet10t", "convnext_atto") for s in SIZES]
    for model, base, clean in (("resnet10t", 30.0, 91.0), ("convnext_atto", 50.0, 95.5)):
        for r, size in enumerate(SIZES):
            assert table.loc[(model, size), "Clean"] == pytest.approx(clean)
            for p, placement in enumerate(PLACEMENTS):
                assert table.loc[(model, size), placement] == pytest.approx(base + 4 * r + p)
    markdown = to_markdown(table, "T5").splitlines()
    assert markdown[4] == "| resnet10t | 16 | 91.00 | 30.00 | 31.00 | 32.00 | 33.00 |"
    assert markdown[5] == "|  | 24 |  | 34.00 | 35.00 | 36.00 | 37.00 |"  # clean once per model
    latex = to_latex(table, "T5")
    assert r"\toprule" in latex and r"\bottomrule" in latex and latex.count(r"\midrule") == 2
    assert "convnext\\_atto & 16 & 95.50 & 50.00 & 51.00 & 52.00 & 53.00 \\\\" in latex


def test_figure_data_for_fig7():
    by_epochs = dfr_by_epochs(TRAINED)
    assert by_epochs.index.tolist() == [10, 20]
    assert by_epochs.loc[10, "Average"] == pytest.approx(66.5)  # seeds 0 and 1: 66, 67
    assert by_epochs.loc[20, "Worst-group"] == pytest.approx(24.0)
    assert by_epochs["seeds"].tolist() == [2, 1]
    variants = erm_variants([*TRAINED, run("erm_all", 0, 0.7, 0.7, 0.7, 0.7, 0.6)])
    assert variants.index.tolist() == ["erm", "erm_all"]  # the paper's order, present ones
    assert variants.loc["erm", "Hard"] == pytest.approx(45.0)


def _read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.slow
def test_build_report_writes_every_table_and_figure_deterministically(tmp_path):
    runs = write_runs(tmp_path / "runs", [*BENCH, *TRAINED[:2], *TRAINED[5:]])
    write_results(
        tmp_path / "runs" / "source",
        {
            "status": "complete",
            "method": "erm",
            "model": "resnet18",
            "seed": 0,
            "groups": None,
            "test": {"acc": 0.9},
        },
    )
    loaded = load_runs([runs])
    assert len(loaded) == 8  # the source run too, listed as not tabulated
    report = build_report(loaded, tmp_path / "a")
    names = sorted(p.relative_to(tmp_path / "a").as_posix() for p in report.files)
    for stem in (
        "table1",
        "table5",
        "table6",
        "table3",
        "table3_values",
        "table4_erm",
        "table4_pretrained",
    ):
        for ext in ("md", "csv", "tex"):
            assert f"tables/{stem}.{ext}" in names
    assert "tables/table7.tex" in names  # data=hsi_sam
    for stem in ("fig6_hsi", "fig6_hsi_v2", "fig6_hsi_sam"):
        assert f"figures/{stem}.png" in names and f"figures/{stem}.pdf" in names
    assert "figures/fig7.png" in names  # its right panel: the ERM runs (no DFR runs: left says so)
    csv = pd.read_csv(tmp_path / "a" / "tables" / "table3_values.csv", index_col=0)
    assert csv.loc["erm", "Easy"] == pytest.approx(75.0)
    assert csv.loc["erm", "Easy std"] == pytest.approx(math.sqrt(50), abs=1e-4)
    assert csv.loc["erm", "seeds"] == 2
    table3 = (tmp_path / "a" / "tables" / "table3.md").read_text().splitlines()
    assert (
        table3[4]
        == "| erm | 75.00 ± 7.07 | 62.00 ± 2.83 | 45.00 ± 7.07 | 64.00 ± 2.83 | 20.00 ± 14.14 | 2 |"
    )
    table1 = pd.read_csv(tmp_path / "a" / "tables" / "table1.csv", index_col=0)
    assert table1["Clean"].to_dict() == pytest.approx({"resnet10t": 91.0, "convnext_atto": 95.5})
    readme = (tmp_path / "a" / "README.md").read_text()
    assert "Not tabulated (no group accuracies)" in readme and "source" in readme
    build_report(loaded, tmp_path / "b")
    for path in report.files:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        if path.name != "README.md":
            assert _read(path) == _read(twin), path.name  # same runs -> same bytes


def test_fig7_is_drawn_from_dfr_and_erm_variants(tmp_path):
    report = build_report(TRAINED, tmp_path)
    assert {p.name for p in report.files} >= {"fig7.png", "fig7.pdf"}


@pytest.mark.slow
def test_hsi_report_command_prints_tables_and_refuses_incomplete_runs(tmp_path):
    runs = write_runs(tmp_path / "runs", [*BENCH[:2], *TRAINED[:2]])
    cmd = [
        sys.executable,
        "-m",
        "hsi.cli.report",
        str(runs / "*"),
        f"out={tmp_path / 'rep'}",
        "wandb=false",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| resnet10t | 16 | 91.00 | 30.00 | 31.00 | 32.00 | 33.00 |" in done.stdout
    assert "| erm | 75.00 ± 7.07 |" in done.stdout
    assert (tmp_path / "rep" / "tables" / "table5.tex").is_file()
    write_results(runs / "9", run("jtt", 0, 0.5, 0.5, 0.5, 0.5, 0.5, status="diverged"))
    cmd[-2] = f"out={tmp_path / 'rep2'}"
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1
    assert "hsi-report: 1 run(s) did not complete" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_wandb_offline_run_gets_the_same_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from hsi.reporting import log_to_wandb

    report = build_report(BENCH[:2], tmp_path)
    where = Path(log_to_wandb(report, "hsi-test"))
    assert where.is_dir()
    synced = list(where.glob("*.wandb"))
    assert synced and synced[0].stat().st_size > 0
    tables = list((where / "files" / "media" / "table").glob("*.table.json"))
    names = sorted(p.name.split("_")[0] for p in tables)
    assert names == ["table1", "table5"]
    table5 = json.loads(next(p for p in tables if p.name.startswith("table5")).read_text())
    assert table5["columns"] == ["model", "size", "Clean", *PLACEMENTS]
    assert table5["data"][0] == ["resnet10t", 16, 91.0, 30.0, 31.0, 32.0, 33.0]
