"""What an entry point prints: the job's own lines, not the chatter of the libraries under it.

Every command (``hsi-synth``, ``hsi-scores``, ``hsi-generate``, ``hsi-train``) calls
:func:`quiet_console` first, with its config's ``verbose`` key. By default it drops, by name,
the messages a user of hsi cannot act on:

- Lightning's device lines (``GPU available: …``, ``TPU available: …``) and its product tips
  (``💡 Tip: … litlogger / litmodels …``), logged through ``lightning.*.utilities.rank_zero``;
- Lightning's ``srun`` hint, printed on any machine with SLURM installed when a job was not
  started by ``srun`` (a run on a login node; hsi's SLURM jobs go through submitit);
- the ``LeafSpec`` FutureWarning that Lightning's own ``utilities/_pytree.py`` triggers in torch
  on every fit, and the few other warnings listed in :data:`QUIET_WARNINGS`.

The filters sit on the emitting loggers themselves (so they hold whether or not Hydra's job
logging is set up, and whether or not Lightning keeps its own console handler) and on the root
logger's handlers (Hydra's console and ``<job>.log``). ``verbose=true`` installs none of them.
The model summary table is the trainer's ``enable_model_summary: ${verbose}``
(conf/trainer/default.yaml); the training progress lines are :mod:`hsi.train.progress`.
"""

from __future__ import annotations

import logging
import re
import warnings

# (message regex matched at the start of the warning text, category): warnings that say nothing
# a user of hsi could change. Each is named; every other warning still prints.
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch deprecated LeafSpec; Lightning's utilities/_pytree.py still builds one on every batch
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Lightning on a machine with SLURM installed, for a job not started by srun: meant so
    (r"The `srun` command is available on your system but is not used", Warning),
    # Lightning, when an epoch (the demo's, a debug run's) has fewer batches than log_every_n_steps
    (r"The number of training batches \(\d+\) is smaller than the logging interval", Warning),
)

# Lightning's info lines that describe the machine or advertise a product, not the job.
QUIET_LOG_LINES: tuple[str, ...] = (
    r"GPU available: ",
    r"TPU available: ",
    r"HPU available: ",
    r"💡 Tip: ",
)

# Where Lightning's rank-zero messages are logged (the last import of the three names it).
LIGHTNING_LOGGERS: tuple[str, ...] = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class NoiseFilter(logging.Filter):
    """Drops log records whose message starts with one of ``patterns`` (regexes)."""

    def __init__(self, patterns: tuple[str, ...] = QUIET_LOG_LINES) -> None:
        super().__init__("hsi.console")
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's to report, not ours to drop
            return True
        return self.pattern.match(message) is None


_FILTER = NoiseFilter()


def quiet_console(verbose: bool = False) -> None:
    """Filter the third-party noise listed above out of this process's console and logs.

    ``verbose=True`` leaves everything as the libraries print it. Idempotent: a second call
    (a Hydra multirun calls the task once per job) adds nothing twice.
    """
    if verbose:
        return
    for pattern, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in LIGHTNING_LOGGERS:
        _add_filter(logging.getLogger(name))
    for handler in logging.getLogger().handlers:  # Hydra's console and job-file handlers
        _add_filter(handler)


def _add_filter(target: logging.Logger | logging.Handler) -> None:
    if _FILTER not in target.filters:
        target.addFilter(_FILTER)
