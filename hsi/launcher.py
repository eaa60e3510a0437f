"""sbatch's refusals as one line naming the launcher key to change (conf/hydra/launcher/slurm.yaml).

The launcher class that uses it lives in ``hydra_plugins/hsi_launcher/``: Hydra instantiates
launchers only from the ``hydra_plugins`` namespace package."""

from __future__ import annotations

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
