"""`hsi-analyze key=value ...`: background reliance and Grad-CAM (conf/analyze.yaml).

    hsi-analyze model.checkpoint=<run> tasks=[background,correlation]     Fig. 3
    hsi-analyze model.checkpoint=<run> tasks=[v2_pairs]                    automatic v2
    hsi-analyze tasks=[gradcam] gradcam.models=[<run A>,<run B>]           Figs. 1, 8, 9

The logic lives in hsi.analysis; bad input exits non-zero with a message saying what to fix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console
from hsi.tasks import requested_tasks

TASKS = ("background", "correlation", "v2_pairs", "gradcam")


def run_tasks(cfg: DictConfig) -> dict:
    """Every task of `cfg.tasks`, in the order of TASKS; prints one block per task."""
    tasks = requested_tasks(cfg.tasks, TASKS)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    done: dict = {}
    if "background" in tasks or "correlation" in tasks:
        from hsi.analysis.background import background_accuracy, summary_line

        table = background_accuracy(cfg)
        done["background"] = table
        print(summary_line(table))
        for row in table.itertuples(index=False):
            print(
                f"  {row.wnid} {row.name:<24} acc {row.accuracy:.3f}  p(true) "
                f"{row.mean_true_prob:.3f}  ({row.images} images)"
            )
    if "correlation" in tasks:
        from hsi.analysis.correlation import format_table, write_correlations

        correlations, written = write_correlations(
            done["background"], _scores(cfg), str(cfg.correlation.split), out
        )
        done["correlation"] = correlations
        print(f"Fig. 3 correlations (split {cfg.correlation.split}):\n{format_table(correlations)}")
        print(f"  -> {written['correlation']}, {written['figure']}")
    if "v2_pairs" in tasks:
        from hsi.analysis.auto_pairs import automatic_v2

        result = automatic_v2(cfg)
        done["v2_pairs"] = result
        print(f"v2 pairs (foreground <- background) -> {result['csv']}")
        for row in result["pairs"].itertuples(index=False):
            print(
                f"  {row.fg_wnid} {row.fg_name} ({row.fg_accuracy:.3f}) <- "
                f"{row.bg_wnid} {row.bg_name} ({row.bg_accuracy:.3f})"
            )
        if result["build"] is not None:
            print(result["build"].report())
        else:
            print(
                f"  build it: hsi-generate dataset=v2 "
                f"dataset.pairs_from={result['generate'].dataset.pairs_from}"
            )
    if "gradcam" in tasks:
        from hsi.analysis.gradcam import run_gradcam

        result = run_gradcam(cfg)
        done["gradcam"] = result
        print(f"Grad-CAM grid -> {result['grid']}")
        if result.get("shares") is not None:
            print(f"CAM-in-box share -> {result['shares_csv']}")
            print(result["summary"].to_string(index=False))
    return done


def _scores(cfg: DictConfig):
    import pandas as pd

    if cfg.correlation.scores:
        path = Path(str(cfg.correlation.scores))
        if not path.is_file():
            raise FileNotFoundError(
                f"correlation.scores={path}: file not found; give hsi-scores' scores.csv or null"
            )
        return pd.read_csv(path, dtype={"wnid": str})
    from hsi.analysis.background import generation_settings
    from hsi.scores import bias_scores
    from hsi.sources import load_source

    return bias_scores(load_source(generation_settings(cfg.data.generate).source))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="analyze")
def main(cfg: DictConfig) -> None:
    quiet_console(cfg.verbose)
    try:
        run_tasks(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:  # bad input: says what to fix
        sys.exit(f"hsi-analyze: {err}")


if __name__ == "__main__":
    main()
