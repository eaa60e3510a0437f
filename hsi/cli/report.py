"""`hsi-report RUN ... [key=value ...]`: tables and figures of finished runs (conf/report.yaml).

    hsi-report outputs/train/multiruns/<sweep>              a sweep's Table 3/4 layouts, Fig. 7
    hsi-report outputs/benchmark/multiruns/<sweep> out=r/   Tables 1/5/6/7 layouts, Fig. 6
    hsi-report 'outputs/demo/runs/*' include_incomplete=true
    hsi-report <runs> samples.dataset=outputs/demo/hsi64 'figures=[outputs/demo/analysis/**/*.png]'

Positional arguments (no `=`) are run folders, multirun folders, results.json files or globs.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console


def positional_to_runs(argv: list[str]) -> list[str]:
    """["prog", "a", "b/*", "out=x"] -> ["prog", "out=x", "runs=['a','b/*']"]."""
    paths = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    if not paths:
        return list(argv)
    rest = [a for a in argv[1:] if a not in paths]
    quoted = ",".join("'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths)
    return [argv[0], *rest, f"runs=[{quoted}]"]


def run(cfg: DictConfig) -> str:
    """Build the report; return what the console shows."""
    from hsi.reporting import build_report, load_runs, log_to_wandb
    from hsi.reporting.report import add_extras, wandb_project
    from hsi.reporting.writers import to_markdown

    sources = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs)
    if not sources:
        raise ValueError("no runs given: hsi-report <run or multirun folder> ... (or runs=[...])")
    include = bool(cfg.include_incomplete)
    runs = load_runs(sources, include_incomplete=include)
    report = build_report(runs, cfg.out, include_incomplete=include)
    figures = [cfg.figures] if isinstance(cfg.figures, str) else list(cfg.figures)
    add_extras(report, runs, cfg.samples, figures, bool(cfg.html))
    lines = [
        to_markdown(report.tables[n][1], report.tables[n][0])
        for n in cfg.print
        if n in report.tables
    ]
    project = cfg.wandb_project or wandb_project(runs)
    if cfg.wandb is True or (cfg.wandb == "auto" and project):
        where = log_to_wandb(report, project or "hsi")
        lines.append(f"W&B tables: {where}")
    lines.append(f"{len(runs)} runs -> {len(report.files)} files in {report.folder.resolve()}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
def _app(cfg: DictConfig) -> None:
    quiet_console(cfg.verbose)
    try:
        print(run(cfg))
    except (FileNotFoundError, ValueError) as err:  # bad input: the message says what to fix
        sys.exit(f"hsi-report: {err}")


def main() -> None:
    sys.argv = positional_to_runs(sys.argv)
    _app()


if __name__ == "__main__":
    main()
