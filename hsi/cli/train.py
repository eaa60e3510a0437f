"""`hsi-train key=value ...`: one training job (or a sweep with -m) from conf/train.yaml.

    hsi-train                                        ERM, resnet18, Hard-Spurious-ImageNet
    hsi-train method=dfr method.erm_checkpoint=outputs/train/runs/<erm run>
    hsi-train data=source model=resnet18             source pretraining
    hsi-train model.checkpoint=<that run folder>     fine-tune it (its best.ckpt, else last.ckpt)
    hsi-train -m method=erm,erm_all seed=0,1         four jobs, four run folders
    hsi-train -m hydra/launcher=slurm ckpt_path=last seed=0,1,2

The logic lives in hsi.train; a failed job exits non-zero. A bad input (a key, a file, a
folder) or a diverged fit prints one line naming the key or file to change, without a
traceback (HYDRA_FULL_ERROR=1 shows it).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console

EXIT_BAD_INPUT = 2


class OncePerSweep(logging.Filter):
    """Let submitit's "Bypassing sacct error" warning through once: it repeats on every poll of
    a sweep's jobs (a cluster without accounting), saying nothing new."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        seen, self.seen = self.seen, True
        return not seen


logging.getLogger("submitit").addFilter(OncePerSweep())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the job; return val worst-group accuracy (what a hyper-parameter sweeper optimises)."""
    quiet_console(cfg.verbose)
    from hsi.train import single_console_log, train  # here: --help and --cfg stay fast
    from hsi.train.checks import RunLockedError
    from hsi.train.job import TrainingDiverged

    single_console_log()
    try:
        results = train(cfg)
    # a config node that refuses its values reaches here wrapped in InstantiationException
    except (ValueError, OSError, RunLockedError, TrainingDiverged, InstantiationException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"hsi-train: error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    if not results["selects_on_val"]:
        return None  # e.g. DFR's last layer is fit on val: its val accuracy is no selection signal
    return results["val"].get("worst_group_acc")


if __name__ == "__main__":
    main()
