"""A real two-job multirun on the local one-node SLURM through `hydra/launcher=slurm`.

`.ci/slurm-up.sh` starts the cluster (munge, slurmctld, slurmd); the test tries it when SLURM
does not answer and it runs as root, and skips, saying why, only when SLURM cannot start.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from helpers import (
    BIN,
    FAST,
    HSI_TRAIN,
    ROOT,
    TINY,
    check_results,
    compose_train,
    hsi_data,
    hsi_train,
    make_cfg,
    source_overrides,
    tree,
)
from hydra.utils import instantiate

from hsi.results import read_results

SLURM_UP = ROOT / ".ci" / "slurm-up.sh"
# starting the cluster may take up to 15 minutes (its own timeout), then the jobs queue
pytestmark = pytest.mark.timeout(1800)
# one CPU job of 2 GB and 10 minutes per task, no GPU
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]


def slurm_problem() -> str | None:
    """Why no job could run on SLURM here, or None when a node is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo/sbatch are not installed"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[:300]}"
    states = proc.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return f"no SLURM node is up (node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = slurm_problem()
    if problem and os.geteuid() == 0 and SLURM_UP.is_file():
        up = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=900)
        problem = slurm_problem() or None
        if problem:
            problem += f"; {SLURM_UP.name} said: {(up.stdout + up.stderr).strip()[-300:]}"
    if problem:
        pytest.skip(f"SLURM cannot start here: {problem}")


@pytest.mark.slow
def test_two_job_multirun_on_slurm_writes_both_results(slurm, tmp_path):
    # Build the dataset first: two jobs must not both build the same folder.
    instantiate(compose_train([*hsi_data(tmp_path), "out=/x"]).data).prepare_data()
    sweep = tmp_path / "sweep"
    sweep_args = ["-m", *LAUNCHER, "seed=0,1", "ckpt_path=last", f"hydra.sweep.dir={sweep}"]
    hsi_train([*sweep_args, *hsi_data(tmp_path), *FAST], tmp_path)
    job_ids = set()
    for job, seed in (("0", 0), ("1", 1)):
        results = read_results(sweep / job)
        check_results(results, "erm", sweep / job, seed=seed)
        assert results["slurm_job_id"], "the job did not run under SLURM"
        job_ids.add(results["slurm_job_id"])
    assert len(job_ids) == 2
    # submitit's logs of the array job sit beside the runs
    assert len(list((sweep / ".submitit").rglob("*_log.out"))) == 2


@pytest.mark.slow
def test_generation_shards_as_a_slurm_array_match_one_local_build(slurm, tmp_path):
    """The README's SLURM recipe: `hsi-generate -m hydra/launcher=slurm shard=0,1 num_shards=2`,
    then `validate`; the array's assets are the bytes of a one-process build."""
    from hsi.generate.build import run_build
    from hsi.sources import load_source

    source = tmp_path / "source"
    load_source(make_cfg(tmp_path / "unused", source).source)  # generated once, before the array
    reference = tmp_path / "reference"
    run_build(make_cfg(reference, source))
    out = tmp_path / "sharded"
    command = [
        str(BIN / "hsi-generate"),
        "-m",
        *LAUNCHER,
        f"out={out}",
        *source_overrides(source),
        *TINY,
        "num_shards=2",
        "shard=0,1",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifests = sorted(p.name for p in (out / "manifest").iterdir())
    assert manifests == ["shard-0-of-2.csv", "shard-1-of-2.csv"], manifests
    assert tree(out / "assets") == tree(reference / "assets")
    check = subprocess.run(
        [command[0], "validate", f"out={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


def test_an_sbatch_refusal_on_the_real_cluster_is_one_line(slurm, tmp_path):
    """A partition the cluster does not have: sbatch refuses the array, and hsi-train says so in
    one line naming the launcher key (exit 2), not in submitit's traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    args = ["-m", *LAUNCHER, "hydra.launcher.partition=no_such_partition", "seed=0"]
    args += [*hsi_data(tmp_path), *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    proc = subprocess.run([str(HSI_TRAIN), *args], **run)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hydra.launcher.partition" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
