"""`hsi-train key=value ...`: one training job (or a sweep with -m) from conf/train.yaml.

    hsi-train                                        ERM, resnet18, Hard-Spurious-ImageNet
    hsi-train method=dfr method.erm_checkpoint=outputs/train/runs/<erm run>
    hsi-train data=source model=resnet18             source pretraining
    hsi-train model.checkpoint=<that run folder>     fine-tune it (its best.ckpt, else last.ckpt)
    hsi-train -m method=erm,erm_all seed=0,1         four jobs, four run folders
    hsi-train -m hydra/launcher=slurm ckpt_path=last seed=0,1,2

The logic lives in hsi.train; a failed job exits non-zero.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run the job; return val worst-group accuracy (what a hyper-parameter sweeper optimises)."""
    from hsi.train import single_console_log, train  # here: --help and --cfg stay fast

    single_console_log()
    results = train(cfg)
    if not results["selects_on_val"]:
        return None  # e.g. DFR's last layer is fit on val: its val accuracy is no selection signal
    return results["val"].get("worst_group_acc")


if __name__ == "__main__":
    main()
