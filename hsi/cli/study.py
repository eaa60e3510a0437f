"""`hsi-study study=<name> [key=value ...]`: a whole study as one resumable command (conf/study.yaml).

    hsi-study study=demo                              the demo's stages here, in order (make demo)
    hsi-study study=demo hydra/launcher=slurm         each stage a SLURM job, after those it needs
    hsi-study study=paper --dry-run                   every command the paper's study would launch
    hsi-study study=paper show_status=true            where each stage stands, nothing launched

Rerun it at any time: finished stages are skipped, queued SLURM jobs are attached to. The logic
lives in hsi.study; a bad study exits non-zero with a message naming the key to fix.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hsi.cli import CONF_DIR

FLAGS = {"--dry-run": "dry_run=true", "--status": "show_status=true"}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="study")
def _app(cfg: DictConfig) -> None:
    from hsi.study import StudyError, run_study

    hydra_cfg = HydraConfig.get()
    launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
    # hydra.launcher.<key>=... given on the command line win over the study's `launcher` keys
    given = [o.split("=", 1)[0] for o in hydra_cfg.overrides.hydra]
    cli_keys = [k.removeprefix("hydra.launcher.") for k in given if k.startswith("hydra.launcher.")]
    try:
        run_study(cfg, launcher, cli_keys)
    except (StudyError, FileNotFoundError, ValueError) as err:  # says what to fix
        sys.exit(f"hsi-study: {err}")


def main() -> None:
    sys.argv = [FLAGS.get(a, a) for a in sys.argv]
    _app()


if __name__ == "__main__":
    main()
