"""From a model to Hard-Spurious-ImageNet-v2 in one step (paper 000, §4.1).

    background-only accuracy of every source class (hsi.analysis.background)
      -> the pairing rule (hsi.generate.pairs.select_pairs: the `count` classes with the highest
         accuracy are the spurious backgrounds, the `count` lowest of the others the core-reliant
         foregrounds, the i-th most core-reliant paired with the i-th most spurious)
      -> v2_pairs.csv (fg_wnid, bg_wnid, both accuracies) in the run folder
      -> `dataset.pairs_from=<run folder>/background_accuracy.csv` and, with `v2.build=true`,
         the v2 build itself (hsi.generate.build.run_build, the code of `hsi-generate build`).

docs/analysis.md says how this reads the paper and where the paper is ambiguous.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hsi.analysis.background import ACCURACY_FILE, background_accuracy, generation_settings
from hsi.generate.pairs import select_pairs
from hsi.io import atomic_write_csv

PAIRS_FILE = "v2_pairs.csv"


def pairs_table(accuracy: pd.DataFrame, count: int) -> pd.DataFrame:
    """The pairs of the paper's rule with both classes' names and accuracies, in pairing order."""
    pairs = select_pairs(accuracy, n_fg=count, n_bg=count)
    by_wnid = accuracy.astype({"wnid": str}).set_index("wnid")
    name = by_wnid["name"] if "name" in by_wnid else by_wnid.index.to_series()
    rows = [
        {
            "fg_wnid": fg,
            "fg_name": name[fg],
            "fg_accuracy": float(by_wnid.loc[fg, "accuracy"]),
            "bg_wnid": bg,
            "bg_name": name[bg],
            "bg_accuracy": float(by_wnid.loc[bg, "accuracy"]),
        }
        for fg, bg in pairs.items()
    ]
    return pd.DataFrame(rows)


def v2_generate_config(cfg: DictConfig, accuracy_csv: Path, count: int) -> DictConfig:
    """The v2 build's generation config: the analysed data's, pairs from `accuracy_csv`."""
    generate = generation_settings(cfg.data.generate)
    generate.dataset.name = "hsi_v2"
    generate.dataset.classes = None
    generate.dataset.pairs = None
    generate.dataset.pairs_from = str(Path(accuracy_csv).resolve())
    generate.dataset.pairs_count = int(count)
    generate.out = str(cfg.v2.out or Path(str(cfg.out)) / "hsi_v2")
    generate.shard, generate.num_shards = 0, 1
    generate.workers = int(cfg.workers or 1)
    generate.progress = bool(cfg.progress)
    return generate


def automatic_v2(cfg: DictConfig) -> dict:
    """Task `v2_pairs` of hsi-analyze; returns {pairs: table, csv, generate, build}."""
    if cfg.classes is not None:
        raise ValueError(
            "task v2_pairs ranks every class of the source: leave classes=null (it is "
            f"{OmegaConf.to_container(cfg.classes)})"
        )
    accuracy = background_accuracy(cfg)
    count = int(cfg.v2.count)
    table = pairs_table(accuracy, count)
    out = Path(str(cfg.out))
    csv = atomic_write_csv(out / PAIRS_FILE, table)
    generate = v2_generate_config(cfg, out / ACCURACY_FILE, count)
    built = None
    if cfg.v2.build:
        from hsi.generate.build import run_build

        built = run_build(generate)
    return {"pairs": table, "csv": csv, "generate": generate, "build": built}
