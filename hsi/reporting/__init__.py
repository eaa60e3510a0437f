"""The papers' tables and figures from run folders: discovery, tables, writers, figures, W&B.

from hsi.reporting import load_runs, category_tables, group_table, size_table, build_report
"""

from hsi.reporting.report import Report, build_report, log_to_wandb
from hsi.reporting.runs import RunSelectionError, load_runs, mixed_keys, run_files
from hsi.reporting.tables import (
    CATEGORY_COLUMNS,
    category_tables,
    format_table,
    group_table,
    mean_std_table,
    size_table,
)

__all__ = [
    "CATEGORY_COLUMNS",
    "Report",
    "RunSelectionError",
    "build_report",
    "category_tables",
    "format_table",
    "group_table",
    "load_runs",
    "log_to_wandb",
    "mean_std_table",
    "mixed_keys",
    "run_files",
    "size_table",
]
