"""The SLURM launcher of `hydra/launcher=slurm`: hydra-submitit-launcher's, with sbatch's
refusals shown as one line naming the launcher key to change (conf/hydra/launcher/slurm.yaml).

Not yet the configured launcher: Hydra accepts launchers only from the ``hydra_plugins``
namespace package, so conf/hydra/launcher/slurm.yaml names submitit's own until this class is
registered there."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Submitit
from submitit.core.utils import FailedJobError

EXIT_REFUSED = 2
# words of sbatch's error -> the key of conf/hydra/launcher/slurm.yaml behind it
_KEYS = (
    ("gres", "hydra.launcher.gpus_per_node (null on a CPU-only cluster)"),
    ("partition", "hydra.launcher.partition"),
    ("account", "hydra.launcher.account"),
    ("qos", "hydra.launcher.qos"),
    ("time limit", "hydra.launcher.timeout_min"),
    ("memory", "hydra.launcher.mem_gb"),
    ("cpu", "hydra.launcher.cpus_per_task"),
    ("node", "hydra.launcher.nodes"),
)


def explain_sbatch_error(stderr: str) -> str:
    """One line: sbatch's first error line and the launcher key to change."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    key = next((k for word, k in _KEYS if word in first.lower()), "the hydra.launcher.* keys")
    return f"sbatch refused the jobs ({first or 'no message'}); change {key}"


class SlurmLauncher(_Submitit):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        try:
            return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as err:
            if "sbatch" not in str(getattr(err.__cause__, "cmd", "")):
                raise
            print(f"error: {explain_sbatch_error(str(err))}", file=sys.stderr, flush=True)
            sys.exit(EXIT_REFUSED)
