"""`hsi-report`'s work: every table and figure that the given runs allow, written to one folder.

    <report folder>/
      README.md                  every table, in Markdown, with the list of runs it was made of
      tables/<name>.{md,csv,tex} one file per table and format
      figures/<name>.{png,pdf}   Fig. 6 (per dataset) and Fig. 7

Which runs feed which table (paper 000):

- ``method=benchmark`` runs (hsi-benchmark): Table 1 (clean accuracy per model) and the model x
  size layout of Tables 2/5 (``data=hsi``), 6 (``hsi_v2``) and 7 (``hsi_sam``); Fig. 6;
- training runs with groups (hsi-train, ``method=pretrained`` included): the Tables 3/8 layout
  (rows = method, with the model and the data when the runs hold several), Table 4 (the groups
  of each row, averaged over its seeds) and Fig. 7;
- runs without groups (source pretraining) are listed as not tabulated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hsi.io import atomic_write_text
from hsi.reporting.figures import (
    dfr_by_epochs,
    erm_variants,
    plot_accuracy_vs_size,
    plot_fig7,
    save_figure,
)
from hsi.reporting.runs import COMPLETE, check_complete
from hsi.reporting.tables import (
    CLEAN,
    category_tables,
    mean_group_table,
    mean_std_table,
    pooled_rows,
    size_table,
)
from hsi.reporting.writers import to_markdown, write_table

log = logging.getLogger(__name__)

BENCHMARK = "benchmark"  # results["method"] of hsi-benchmark runs
SIZE_TABLE_NAMES = {"hsi": "table5", "hsi_v2": "table6", "hsi_sam": "table7"}
SIZE_TABLE_REFS = {"hsi": "Tables 2 and 5", "hsi_v2": "Table 6", "hsi_sam": "Table 7"}
DATA_TITLES = {
    "hsi": "Hard-Spurious-ImageNet",
    "hsi_v2": "Hard-Spurious-ImageNet-v2",
    "hsi_sam": "Hard-Spurious-ImageNet (SAM masks)",
}


@dataclass
class Report:
    """What a report holds: titled tables (name -> (title, frame)) and the files written."""

    folder: Path
    tables: dict[str, tuple[str, pd.DataFrame]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, name: str, title: str, table: pd.DataFrame) -> None:
        self.tables[name] = (title, table)
        self.files += write_table(table, self.folder / "tables", name, title)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def method_label(runs: Sequence[Mapping[str, Any]]) -> Any:
    """Row labels: the method, plus the model and the data when the runs hold more than one, plus
    the status of an incomplete run (so it is never pooled with complete ones)."""
    several_models = len({r.get("model") for r in runs}) > 1
    several_data = len({r.get("data") for r in runs}) > 1

    def label(run: Mapping[str, Any]) -> str:
        text = str(run.get("method"))
        if several_models:
            text += f" ({run.get('model')})"
        if several_data:
            text += f" [{run.get('data')}]"
        if run.get("status") != COMPLETE:
            text += f" <{run.get('status')}>"
        return text

    return label


def model_label(run: Mapping[str, Any]) -> str:
    text = str(run.get("model"))
    return text if run.get("status") == COMPLETE else f"{text} <{run.get('status')}>"


def _size_tables(report: Report, runs: Sequence[Mapping[str, Any]], include: bool) -> None:
    by_data: dict[str, list] = {}
    for run in runs:
        by_data.setdefault(str(run.get("data")), []).append(run)
    clean_rows = []
    for data, members in by_data.items():
        table = size_table(members, label=model_label, include_incomplete=include)
        name = SIZE_TABLE_NAMES.get(data, f"size_table_{_slug(data)}")
        title = (
            f"Test accuracy (%) per group and clean accuracy on {DATA_TITLES.get(data, data)} "
            f"(data={data}; cf. {SIZE_TABLE_REFS.get(data, 'Table 5')})"
        )
        report.add(name, title, table)
        report.files += save_figure(
            plot_accuracy_vs_size(table, f"data={data} (cf. Fig. 6)"),
            report.folder / "figures" / f"fig6_{_slug(data)}",
        )
        clean = table[CLEAN].groupby(level=0, sort=False).first()
        clean_rows += [(model, data, value) for model, value in clean.items()]
    clean_table = pd.DataFrame(clean_rows, columns=["model", "data", CLEAN]).drop_duplicates(
        ["model"]
    )
    report.add(
        "table1",
        "Clean accuracy (%) on the source's val images (cf. Table 1)",
        clean_table.set_index("model")[[CLEAN]],
    )


def _method_tables(report: Report, runs: Sequence[Mapping[str, Any]], include: bool) -> None:
    label = method_label(runs)
    mean, std = category_tables(runs, label=label, include_incomplete=include)
    mean.index.name = std.index.name = "method"
    shown = mean_std_table(mean, std)
    report.tables["table3"] = (
        "Test accuracy (%) by category, mean ± std over seeds (cf. Tables 3 and 8)",
        shown,
    )
    full = mean.drop(columns="seeds").join(std.add_suffix(" std")).join(mean["seeds"])
    report.files += write_table(full, report.folder / "tables", "table3_values", "Table 3 values")
    report.files += write_table(
        shown, report.folder / "tables", "table3", report.tables["table3"][0]
    )
    for row, members in pooled_rows(runs, label, include).items():
        table, seeds = mean_group_table(members)
        report.add(
            f"table4_{_slug(row)}",
            f"{row}: test accuracy (%) of the 12 groups, {seeds} seed(s) (cf. Table 4)",
            table,
        )
    by_epochs, variants = dfr_by_epochs(runs), erm_variants(runs)
    if not (by_epochs.empty and variants.empty):
        report.files += save_figure(
            plot_fig7(by_epochs, variants, "cf. Fig. 7"), report.folder / "figures" / "fig7"
        )


def build_report(
    runs: Iterable[Mapping[str, Any]], folder: str | Path, include_incomplete: bool = False
) -> Report:
    """Every table and figure ``runs`` allow, written under ``folder`` (see the module doc)."""
    runs = check_complete(list(runs), include_incomplete)
    if not runs:
        raise ValueError("no runs to report")
    report = Report(Path(folder))
    bench = [r for r in runs if r.get("method") == BENCHMARK]
    trained = [r for r in runs if r.get("method") != BENCHMARK and r.get("groups")]
    report.skipped = [
        str(r.get("run_dir")) for r in runs if r.get("method") != BENCHMARK and not r.get("groups")
    ]
    if bench:
        _size_tables(report, bench, include_incomplete)
    if trained:
        _method_tables(report, trained, include_incomplete)
    if not report.tables:
        raise ValueError(
            "none of the runs has group accuracies (source pretraining runs only?); give "
            "hsi-benchmark or hsi-train runs on data=hsi, hsi_v2 or hsi_sam"
        )
    report.files.append(atomic_write_text(report.folder / "README.md", summary(report, runs)))
    return report


def summary(report: Report, runs: Sequence[Mapping[str, Any]]) -> str:
    parts = ["# Report", ""]
    parts += [to_markdown(table, title) for title, table in report.tables.values()]
    figures = sorted({p.with_suffix("").name for p in report.files if p.parent.name == "figures"})
    if figures:
        parts += ["**Figures** (figures/, PNG and PDF): " + ", ".join(figures), ""]
    extra = sorted(p.name for p in report.files if p.parent.name == "extra")
    if extra:
        parts += ["**Other stages' images** (figures/extra/): " + ", ".join(extra), ""]
    parts += ["**Runs**", ""]
    parts += [
        f"- {r.get('method')} {r.get('model')} data={r.get('data')} seed={r.get('seed')} "
        f"status={r.get('status')}: {r.get('run_dir')}"
        for r in runs
    ]
    if report.skipped:
        parts += ["", "Not tabulated (no group accuracies): " + ", ".join(report.skipped)]
    return "\n".join(parts) + "\n"


def log_to_wandb(report: Report, project: str, name: str | None = None, **init: Any) -> str:
    """Every table of ``report`` as a ``wandb.Table`` in a new W&B run (job_type "report");
    returns the run's folder. Offline unless W&B is configured to sync (WANDB_MODE)."""
    import wandb

    run = wandb.init(
        project=project,
        name=name,
        job_type="report",
        dir=str(report.folder),
        reinit="create_new",
        **init,
    )
    try:
        for key, (_, table) in report.tables.items():
            frame = table.reset_index()
            frame.columns = [str(c) for c in frame.columns]
            run.log({key: wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))})
        for path in report.files:
            if path.suffix == ".png":
                run.log({f"figures/{path.stem}": wandb.Image(str(path))})
    finally:
        run.finish()
    return str(Path(run.dir).parent)


def wandb_project(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The W&B project the runs logged to, when any did (their logger config)."""
    for run in runs:
        logger = (run.get("config") or {}).get("logger") or {}
        if "Wandb" in str(logger.get("_target_", "")):
            return str(logger.get("project") or "hsi")
    return None


def add_extras(
    report: Report,
    runs: Sequence[Mapping[str, Any]],
    samples: Mapping[str, Any] | None = None,
    figures: Sequence[str] = (),
    html: bool = True,
) -> Report:
    """Figs. 5 and 10 of a built dataset (`samples.dataset`), the images of other stages
    (`figures`: paths or globs, copied into figures/extra/), README.md again with them, and the
    HTML page (hsi.reporting.html)."""
    from hsi.reporting.html import collect_images, write_html
    from hsi.reporting.samples import fig5_samples, fig10_backgrounds

    folder = report.folder / "figures"
    if samples and samples.get("dataset"):
        dataset, seed = samples["dataset"], int(samples.get("seed") or 0)
        report.files += fig5_samples(
            dataset,
            folder / "fig5_samples",
            samples.get("image"),
            str(samples.get("split") or "test"),
            seed,
        )
        report.files += fig10_backgrounds(
            dataset, folder / "fig10_backgrounds", int(samples.get("backgrounds") or 4), seed=seed
        )
    report.files += collect_images(figures, report.folder)
    atomic_write_text(report.folder / "README.md", summary(report, runs))
    if html:
        report.files.append(write_html(report.folder, report.tables, runs))
    return report
