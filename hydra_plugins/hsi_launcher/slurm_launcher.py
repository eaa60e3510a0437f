"""The launcher of `hydra/launcher=slurm`: hydra-submitit-launcher's SlurmLauncher, with sbatch's
refusals (a GPU asked of a CPU-only cluster, a partition that does not exist ...) shown as one
line naming the `hydra.launcher.*` key to change, exit 2, instead of submitit's traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from submitit.core.utils import FailedJobError

from hsi.launcher import EXIT_REFUSED, explain_sbatch_error


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        try:
            return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as err:
            if "sbatch" not in str(getattr(err.__cause__, "cmd", "")):
                raise
            print(f"error: {explain_sbatch_error(str(err))}", file=sys.stderr, flush=True)
            sys.exit(EXIT_REFUSED)
