"""`hsi-benchmark key=value ...`: models evaluated as they are on Hard-Spurious-ImageNet and the
source's val images (conf/benchmark.yaml), one results.json per model.

    hsi-benchmark model=resnet50 model.weights=/path/resnet50.safetensors
    hsi-benchmark -m model.checkpoint=<run A>,<run B> data=hsi_v2
    hsi-report outputs/benchmark/multiruns/<sweep>          the Table 5 layout

The logic lives in hsi.benchmark; bad input exits non-zero with a message saying what to fix.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="benchmark")
def main(cfg: DictConfig) -> float | None:
    """Evaluate one model; return its test worst-group accuracy (for a sweeper)."""
    quiet_console(cfg.verbose)
    from hsi.benchmark import benchmark, summary_line

    try:
        results = benchmark(cfg)
    except (FileNotFoundError, ValueError) as err:  # bad input: the message says what to fix
        sys.exit(f"hsi-benchmark: {err}")
    print(summary_line(results))
    return results["test"].get("worst_group_acc")


if __name__ == "__main__":
    main()
