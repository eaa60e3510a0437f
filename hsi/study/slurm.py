"""Stages as SLURM jobs through submitit, with the settings of `hydra/launcher=slurm`.

Every stage still to run is submitted at once, each as one job (a stage's sweep runs inside
its job) that SLURM starts only after the jobs of the stages it needs end well
(`--dependency=afterok`, `--kill-on-invalid-dep=yes`). A stage's job id is recorded in
`<out>/.study/jobs/<stage>.json`, so a rerun of the driver attaches to jobs still queued or
running instead of submitting them twice; a stage is done when its outputs exist, whatever
SLURM's accounting says (the one-node test cluster keeps none). A stage without outputs is done
when each of its job's tasks wrote its JSON marker (`<out>/.study/done/<stage>/<i>.json`) after
its command exited 0: submitit's own result files are pickles, and this folder may be shared, so
the driver never unpickles them.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hsi.io import atomic_write_text
from hsi.launcher import explain_sbatch_error
from hsi.study.local import executable
from hsi.study.stages import Stage, StudyError

# keys of conf/hydra/launcher/slurm.yaml that are submitit's own, not `slurm_*` ones
_BASE = {
    "timeout_min",
    "nodes",
    "tasks_per_node",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "name",
}
_NOT_PARAMETERS = {"_target_", "submitit_folder", "max_num_timeout"}


def is_slurm(launcher: Mapping[str, Any] | None) -> bool:
    """True for `hydra/launcher=slurm` (the project's launcher or hydra-submitit's)."""
    return bool(launcher) and str(launcher.get("_target_", "")).endswith("SlurmLauncher")


def executor_parameters(launcher: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
    """submitit's parameters from the launcher config, the stage's `launcher` keys over them,
    named as hydra-submitit's launcher names them."""
    merged = {**launcher, **stage.launcher}
    params = {
        (k if k in _BASE else f"slurm_{k}"): v
        for k, v in merged.items()
        if k not in _NOT_PARAMETERS and v is not None
    }
    params["name"] = f"hsi-{stage.name}"
    return params


def run_command(argv: list[str], cwd: str, marker: str | None = None) -> int:
    """What a stage's job runs: the command, its output streamed to the job's log (submitit's
    CommandFunction would hold it all in memory); a non-zero exit fails the job. On success the
    JSON `marker` (if given) records the command, for the driver to read."""
    done = subprocess.run(argv, cwd=cwd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {done.returncode}")
    if marker is not None:
        atomic_write_text(Path(marker), json.dumps({"argv": argv, "returncode": 0}) + "\n")
    return done.returncode


class SlurmStages:
    """Submit, record and look up the jobs of a study's stages."""

    def __init__(
        self, out: Path, launcher: Mapping[str, Any], study: Mapping[str, Any] | None = None
    ):
        if shutil.which("sbatch") is None or shutil.which("squeue") is None:
            raise StudyError(
                "hydra/launcher=slurm: sbatch/squeue are not on PATH; run on a SLURM login node "
                "or drop hydra/launcher=slurm to run the stages here"
            )
        self.folder = out / ".study"
        # the study's own launcher keys (e.g. a GPU partition) over hydra/launcher=slurm's
        self.launcher = {**launcher, **(study or {})}

    def _record(self, stage: Stage) -> Path:
        return self.folder / "jobs" / f"{stage.name}.json"

    def job_id(self, stage: Stage) -> str | None:
        path = self._record(stage)
        return json.loads(path.read_text())["job_id"] if path.is_file() else None

    def live(self, job_id: str | None) -> str | None:
        """SLURM's state of a queued or running job (PENDING, RUNNING, ...); None once it ended."""
        if job_id is None:
            return None
        proc = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False
        )
        state = proc.stdout.strip().splitlines()
        return state[0] if proc.returncode == 0 and state else None

    def job_folders(self, stage: Stage) -> list[Path]:
        """submitit's folders of the stage's last job: `<id>` for a job, `<id>_<i>` for an array."""
        job_id = self.job_id(stage)
        if job_id is None:
            return []
        root = self.folder / "slurm"
        return sorted(p for p in root.glob(f"{job_id}*") if p.name.split("_")[0] == job_id)

    def log(self, stage: Stage) -> str:
        logs = [str(p) for f in self.job_folders(stage) for p in f.glob("*_log.err")]
        return ", ".join(logs[:3]) or f"none yet under {self.folder / 'slurm'}"

    def _markers(self, stage: Stage) -> Path:
        return self.folder / "done" / stage.name

    def succeeded(self, stage: Stage) -> bool:
        """Every task of the stage's last job ran its command to exit 0 (its JSON marker)."""
        path = self._record(stage)
        if not path.is_file():
            return False
        commands = json.loads(path.read_text()).get("executables") or []
        for i, argv in enumerate(commands):
            marker = self._markers(stage) / f"{i}.json"
            if not marker.is_file():
                return False
            try:
                ran = json.loads(marker.read_text())
            except json.JSONDecodeError:
                return False  # a marker is written atomically: a damaged one is not ours
            if not isinstance(ran, dict) or ran.get("argv") != argv or ran.get("returncode") != 0:
                return False
        return bool(commands)

    def submit(self, stage: Stage, after: list[str]) -> str:
        """Submit the stage's combinations still to run, one job (or one array) that starts after
        the given job ids end well; return its SLURM id."""
        import submitit
        from submitit.core.utils import FailedJobError

        executor = submitit.AutoExecutor(
            folder=self.folder / "slurm" / "%j",
            cluster="slurm",
            slurm_max_num_timeout=int(self.launcher.get("max_num_timeout") or 0),
        )
        params = executor_parameters(self.launcher, stage)
        extra = dict(params.pop("slurm_additional_parameters", None) or {})
        if after:
            extra["dependency"] = "afterok:" + ":".join(after)
            extra["kill_on_invalid_dep"] = "yes"
        executor.update_parameters(**params, slurm_additional_parameters=extra)
        combos = stage.todo()
        markers = self._markers(stage)
        shutil.rmtree(
            markers, ignore_errors=True
        )  # an earlier job's markers say nothing of this one
        try:
            with executor.batch():  # several combinations: one array job
                jobs = [
                    executor.submit(
                        run_command,
                        executable(stage, c),
                        str(Path.cwd()),
                        str(markers / f"{i}.json"),
                    )
                    for i, c in enumerate(combos)
                ]
        except FailedJobError as err:  # sbatch refused: one line naming the key to change
            raise StudyError(f"stage {stage.name!r}: {explain_sbatch_error(str(err))}") from None
        job_id = jobs[0].job_id.split("_")[0]
        record = {
            "stage": stage.name,
            "job_id": job_id,
            "commands": [stage.argv(c) for c in combos],
            "executables": [executable(stage, c) for c in combos],  # what the markers record
        }
        atomic_write_text(self._record(stage), json.dumps(record, indent=2) + "\n")
        return job_id
