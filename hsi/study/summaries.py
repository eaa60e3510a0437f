"""Closing texts of studies (`study.summary`): what the driver prints once every stage is done."""

from __future__ import annotations

from collections.abc import Mapping

from hsi.findings import check_findings, format_findings
from hsi.reporting import category_tables, format_table, group_table
from hsi.results import read_results


def table3(runs: Mapping[str, str], source: str | None = None) -> str:
    """Table 3 by category, the 12 groups of Pretrained / ERM / ERM_all (Tables 1 and 4), paper
    000's findings checked on these runs (hsi.findings), and the source model's clean accuracy."""
    results = {name: read_results(folder) for name, folder in runs.items()}
    for name, res in results.items():
        res["label"] = name
    mean, _ = category_tables(results.values(), label="label")
    title = "Test accuracy (%) by category (cf. paper 000, Table 3), one seed each:"
    parts = [format_table(mean.drop(columns="seeds").rename_axis(None), title)]
    for name in ("Pretrained", "ERM", "ERM_all"):
        if name in results:
            title = f"{name}: test accuracy (%) of the 12 groups (cf. Tables 1 and 4):"
            parts.append(format_table(group_table(results[name]), title))
    parts.append(format_findings(check_findings(results)))
    if source is not None:
        clean = read_results(source)["test"]["acc"]  # its val is held-out train images
        parts.append(
            f"\nClean accuracy of the source-pretrained model (source val): {100 * clean:.2f}%"
        )
    return "\n".join(parts)


def box_audit(folder: str, detector: str = "", threshold: float = 0.8) -> str:
    """The one-line box audit (paper 000, App. D) of an `hsi-detect tasks=[audit]` run folder."""
    from hsi.detectors.audit import read_audit

    return "\n" + read_audit(folder, threshold, detector).summary()


def background(csv: str) -> str:
    """Background-only accuracy per class (paper 000, §3.3) from `background_accuracy.csv`, and
    how many classes are above chance."""
    import pandas as pd

    frame = pd.read_csv(csv)
    above = int((frame["accuracy"] > frame["chance"]).sum())
    lines = [
        f"\nBackground-only accuracy of the source model (objects inpainted away; chance "
        f"{frame['chance'].iloc[0]:.2f}): {above} of {len(frame)} classes above chance"
    ]
    lines += [f"  {row.wnid} {row.name:<24} {row.accuracy:.2f}" for row in frame.itertuples()]
    return "\n".join(lines)


def outputs(**folders: str) -> str:
    """Where a study wrote what: one line per named folder."""
    width = max(map(len, folders), default=0)
    return "\n".join(
        f"  {name.replace('_', ' '):<{width}}  {path}" for name, path in folders.items()
    )
