"""`hsi-detect key=value ...`: a detector's boxes for a source and their audit (conf/detect.yaml).

    hsi-detect detector=cam detector.checkpoint=<hsi-train run>           the offline detector
    hsi-detect detector=owlv2 detector.path=/models/owlv2 source=imagenet source.root=...
    hsi-detect tasks=[audit] splits=[val] detector=grounding_dino ...     paper 000, App. D

The logic lives in hsi.detectors.app; bad input exits non-zero with a message saying what to fix.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="detect")
def main(cfg: DictConfig) -> None:
    quiet_console(cfg.verbose)
    if not cfg.verbose and str(cfg.detector.kind) != "cam":
        import transformers

        # the per-shard "Loading weights" bars and config notes say nothing about the job
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    from hsi.detectors.app import run_tasks

    try:
        run_tasks(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:  # bad input: says what to fix
        sys.exit(f"hsi-detect: {err}")


if __name__ == "__main__":
    main()
