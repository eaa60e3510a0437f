"""`hsi-rank key=value ...`: spuriousness rankings and last-layer retraining (paper 004;
conf/rank.yaml, docs/ranking.md).

    hsi-rank tasks=[score,subsets,retrain]  detector=owlvit detector.path=<folder> model=resnet50
    hsi-rank tasks=[noise,ood,grids] scores=<earlier run>/scores.csv ood.folder=/data/imagenet-a

The logic lives in hsi.ranking.app; bad input exits non-zero with a message saying what to fix.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="rank")
def main(cfg: DictConfig) -> None:
    quiet_console(cfg.verbose)
    from hsi.ranking.app import run_tasks

    try:
        run_tasks(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:  # bad input: says what to fix
        sys.exit(f"hsi-rank: {err}")


if __name__ == "__main__":
    main()
