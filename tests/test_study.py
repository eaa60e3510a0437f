"""hsi-study: the stage model, the demo and paper studies' commands (each one composes), a study
run here that skips and resumes, and the same study as SLURM jobs on the local one-node cluster."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import BIN, CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hsi.results import read_results
from hsi.study import StudyError, dry_run_lines, load_stages, status_lines

HSI_STUDY = BIN / "hsi-study"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
ENV["OMP_NUM_THREADS"] = "1"


def study_cfg(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("study", list(overrides))


def hsi_study(*args: str, cwd: Path, check: bool = True, timeout: int = 600):
    proc = subprocess.run(
        [str(HSI_STUDY), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ============================================================================ the stage model
def test_order_sweeps_outputs_and_status(tmp_path):
    stages = load_stages(
        {
            "b": {
                "command": ["hsi-train", "x={seed}"],
                "after": ["a"],
                "sweep": {"seed": "range(0,3)"},
                "outputs": [f"{tmp_path}/b{{seed}}.txt", f"{tmp_path}/shared.txt"],
            },
            "a": {"command": ["hsi-synth"], "outputs": [f"{tmp_path}/a/*.json"]},
            "c": {"command": None, "note": "later"},
            "d": {"command": ["hsi-generate", "validate"], "after": ["b"]},
        }
    )
    assert [s.name for s in stages] == ["a", "b", "c", "d"]  # `a` moved before `b`, which needs it
    b = stages[1]
    assert [c["seed"] for c in b.combos()] == ["0", "1", "2"]
    assert b.argv({"seed": "2"}) == ["hsi-train", "x=2", "seed=2"]
    assert len(b.expected()) == 4  # three per-seed files and the shared one once
    (tmp_path / "b1.txt").write_text("")
    (tmp_path / "shared.txt").write_text("")
    assert [c["seed"] for c in b.todo()] == ["0", "2"] and not b.done()
    lines = status_lines(stages)
    assert "to run" in lines[0] and "1 of 1 output(s) missing" in lines[0]
    assert (
        "waiting" in lines[1] and "after a" in lines[1] and "(2 of 3 commands to run)" in lines[1]
    )
    assert "placeholder" in lines[2] and "later" in lines[2]
    assert "no outputs: runs every time" in lines[3]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text("{}")  # the glob now matches
    assert stages[0].done() and stages[0].todo() == []
    shown = dry_run_lines(stages)
    assert "# a: done, skipped" in shown and "# b (after a): 2 of 3 commands" in shown
    assert "hsi-train x=0 seed=0" in shown and "hsi-train x=1 seed=1" not in shown
    assert d_runs_always(stages[3])


def test_slurm_success_is_read_from_json_markers_never_from_pickles(tmp_path, monkeypatch):
    """A stage without outputs is done when each task's command wrote its JSON marker; submitit's
    result pickles (in a folder that may be shared) are never loaded."""
    import pickle

    import hsi.study.slurm as slurm_mod

    monkeypatch.setattr(slurm_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    (stage,) = load_stages({"check": {"command": ["hsi-generate", "validate", "out=x"]}})
    stages = slurm_mod.SlurmStages(tmp_path, {})
    argv = [sys.executable, "-c", "pass"]
    record = {"stage": "check", "job_id": "7", "commands": [stage.argv()], "executables": [argv]}
    (tmp_path / ".study" / "jobs").mkdir(parents=True)
    (tmp_path / ".study" / "jobs" / "check.json").write_text(json.dumps(record))
    # a planted result pickle that would run code when loaded
    job = tmp_path / ".study" / "slurm" / "7"
    job.mkdir(parents=True)
    planted = tmp_path / "unpickled"
    payload = (os.system, (f"touch {planted}",))

    class Evil:
        def __reduce__(self):
            return payload

    (job / "7_0_result.pkl").write_bytes(pickle.dumps(Evil()))
    assert not stages.succeeded(stage)  # no marker yet
    marker = tmp_path / ".study" / "done" / "check" / "0.json"
    with pytest.raises(RuntimeError, match="exited with 1"):
        slurm_mod.run_command(
            [sys.executable, "-c", "raise SystemExit(1)"], str(tmp_path), str(marker)
        )
    assert not marker.exists() and not stages.succeeded(stage)  # a failed command leaves none
    assert slurm_mod.run_command(argv, str(tmp_path), str(marker)) == 0
    assert stages.succeeded(stage)
    marker.write_text(json.dumps({"argv": ["something", "else"], "returncode": 0}))
    assert not stages.succeeded(stage)  # another command's marker
    marker.write_text("{damaged")
    assert not stages.succeeded(stage)
    assert not planted.exists()


def d_runs_always(stage) -> bool:
    return not stage.done() and stage.todo() == [{}]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"a": {"command": ["python", "x.py"]}}, "study.stages.a.command: must start with one of"),
        (
            {"a": {"command": ["hsi-synth"], "after": ["zz"]}},
            "study.stages.a.after: no stage named 'zz'",
        ),
        (
            {
                "a": {"command": ["hsi-synth"], "after": ["b"]},
                "b": {"command": ["hsi-synth"], "after": ["a"]},
            },
            "`after` forms a cycle among \\['a', 'b'\\]",
        ),
        (
            {"p": {"command": None}, "a": {"command": ["hsi-synth"], "after": ["p"]}},
            "'p' is a placeholder",
        ),
        (
            {"a": {"command": ["hsi-synth"], "output": "x"}},
            "study.stages.a: unknown keys \\['output'\\]",
        ),
        (
            {"a": {"command": ["hsi-synth"], "sweep": {"seed": []}}},
            "study.stages.a.sweep: every swept key",
        ),
        ({}, "study.stages is empty"),
    ],
)
def test_bad_stages_name_the_key(stages, message):
    with pytest.raises(StudyError, match=message):
        load_stages(stages)


def test_a_stage_of_a_command_not_installed_is_named(tmp_path, monkeypatch):
    import hsi.study.local as local

    monkeypatch.setattr(local, "BIN", tmp_path)  # an environment without the console scripts
    stage = load_stages({"rank": {"command": ["hsi-rank", "x=1"]}})[0]
    with pytest.raises(StudyError, match="study.stages.rank.command: hsi-rank is not installed"):
        local.run_local(stage)


def test_a_bad_study_is_one_line(tmp_path):
    proc = hsi_study(
        "study=smoke",
        f"out={tmp_path}",
        "study.stages.train.after=[nope]",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "hsi-study: study.stages.train.after: no stage named 'nope' (stages: ['synth', 'scores', 'train'])"
    ]


# ============================================================================ the studies' commands
def commands(cfg) -> dict[str, list[list[str]]]:
    """stage -> its command lines, from the composed study (nothing exists under `out`)."""
    return {
        s.name: [s.argv(c) for c in s.todo()]
        for s in load_stages(cfg.study.stages)
        if not s.placeholder
    }


CONFIG_OF = {
    "hsi-synth": "synth",
    "hsi-scores": "scores",
    "hsi-generate": "generate",
    "hsi-train": "train",
    "hsi-benchmark": "benchmark",
    "hsi-analyze": "analyze",
    "hsi-report": "report",
    "hsi-detect": "detect",
    "hsi-rank": "rank",
}


def composes(argv: list[str]) -> None:
    """The command's own config composes with these overrides (Hydra would accept them)."""
    args = [a for a in argv[1:] if a not in ("build", "validate", "export", "-m")]
    if argv[0] == "hsi-report":
        args = [a for a in args if "=" in a]  # positional run folders
    cfg = compose(CONFIG_OF[argv[0]], args, return_hydra_config=True)
    OmegaConf.resolve(cfg.hydra.run)


@pytest.mark.parametrize("study", ["demo", "paper", "smoke"])
def test_every_command_of_a_study_composes(study, tmp_path):
    lines = commands(study_cfg(f"study={study}", f"out={tmp_path}")).values()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for argv in lines:
            composes(argv[0])  # one per stage: its combinations differ by one key


def test_demo_study_is_the_demo_chain(tmp_path):
    """The steps of the former hsi.demo script, in its order, with its keys."""
    out = tmp_path
    cfg = study_cfg("study=demo", f"out={out}")
    stages = load_stages(cfg.study.stages)
    assert [s.name for s in stages] == [
        "synth",
        "scores",
        "source",
        "pretrained",
        "validate",
        "erm",
        "erm_all",
        "jtt",
        "dfr",
        "background",
        "gradcam",
        "benchmark",
        "zoo_convnext",
        "benchmark_convnext",
        "detect",
        "rank",
        "report",
    ]
    lines = {name: cmds[0] for name, cmds in commands(cfg).items()}
    assert lines["synth"] == [
        "hsi-synth",
        f"out={out}/synthetic",
        "num_classes=10",
        "train_per_class=300",
        "val_per_class=20",
    ]
    assert lines["dfr"][:2] == ["hsi-train", "experiment=demo_dfr"]
    assert f"method.erm_checkpoint={out}/runs/erm" in lines["dfr"]
    assert f"hydra.run.dir={out}/runs/dfr" in lines["dfr"]
    assert lines["validate"] == ["hsi-generate", "validate", f"out={out}/hsi64"]
    assert lines["report"][-4:-2] == [f"out={out}/report", "print=[table5,table3]"]
    assert f"samples.dataset={out}/hsi64" in lines["report"]
    assert not [s.name for s in stages if s.placeholder]
    assert lines["detect"][:3] == [
        "hsi-detect",
        "detector=cam",
        f"detector.checkpoint={out}/runs/source",
    ]
    assert lines["rank"][:2] == ["hsi-rank", "experiment=rank_demo"]
    # two architectures in the benchmark table (Table 5 layout)
    assert f"model.checkpoint={out}/runs/zoo_convnext" in lines["benchmark_convnext"]
    assert {f"{out}/benchmark/resnet18", f"{out}/benchmark/convnext_atto"} <= set(lines["report"])
    # the rank stage reads the detect stage's val detections from the shared cache
    assert f"cache={out}/cache/detections" in lines["detect"]
    assert f"detections_cache={out}/cache/detections" in lines["rank"]
    summary = cfg.study.summary[0]
    assert summary._target_ == "hsi.study.summaries.table3"
    assert set(summary.runs) == {"Pretrained", "ERM", "ERM_all", "JTT", "DFR"}


def test_paper_dry_run_lists_the_whole_paper(tmp_path):
    proc = hsi_study("study=paper", "--dry-run", f"out={tmp_path}/paper", cwd=tmp_path)
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("hsi-")]
    by = {}
    for argv in lines:
        by.setdefault(argv[0], []).append(argv)
    generate = [a for a in by["hsi-generate"] if a[1] == "build"]
    assert sorted(int(a[-1].removeprefix("shard=")) for a in generate) == list(range(64))
    assert all({"mask=sam", "inpaint=lama", "num_shards=64"} <= set(a) for a in generate)
    assert [a for a in by["hsi-generate"] if a[1] == "validate"]
    zoo = {a[-1] for a in by["hsi-benchmark"]}
    assert zoo == {
        f"model={m}"
        for m in (
            "convnext_base",
            "resnet50",
            "resnet50_aug",
            "coatnet",
            "hiera_base",
            "mvitv2_small",
            "vit_b_clip",
        )
    }
    runs = {(a[1], a[-1]) for a in by["hsi-train"]}
    for method in ("paper_erm", "paper_erm_easy", "paper_erm_all", "paper_jtt", "paper_dfr"):
        assert {(f"experiment={method}", f"seed={s}") for s in range(3)} <= runs, method
    for argv in by["hsi-train"]:  # JTT and DFR start from the ERM run of their own seed
        if argv[1] in ("experiment=paper_jtt", "experiment=paper_dfr"):
            seed = argv[-1].removeprefix("seed=")
            assert f"method.erm_checkpoint={tmp_path}/paper/runs/erm/seed{seed}" in argv
    assert any("method=pretrained" in a for a in by["hsi-train"])
    tasks = {next(x for x in a if x.startswith("tasks=")) for a in by["hsi-analyze"]}
    assert tasks == {"tasks=[background,correlation]", "tasks=[gradcam]"}
    assert len(by["hsi-scores"]) == 1 and len(by["hsi-report"]) == 1
    assert len(lines) == 1 + 64 + 1 + 7 + 1 + 5 * 3 + 2 + 1
    assert not (tmp_path / "paper" / "runs").exists()  # nothing launched


# ============================================================================ running a study
SMOKE_RESULTS = ("runs/seed0/results.json", "runs/seed1/results.json")


def metrics(folder: Path) -> dict:
    results = read_results(folder)
    return {k: results[k] for k in ("val", "test", "seed")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_study_rerun_finishes_with_the_same_results(tmp_path):
    whole = tmp_path / "whole"
    first = hsi_study("study=smoke", f"out={whole}", cwd=tmp_path)
    assert "[train] $ hsi-train" in first.stdout and "study smoke finished" in first.stdout
    again = hsi_study("study=smoke", f"out={whole}", cwd=tmp_path)
    assert "$ hsi-" not in again.stdout  # every stage done before: nothing runs
    assert again.stdout.count("done before") == 3

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(HSI_STUDY), "study=smoke", f"out={killed}"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / SMOKE_RESULTS[0]).exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the training of seed 1
    proc.wait()
    assert (killed / SMOKE_RESULTS[0]).exists() and not (killed / SMOKE_RESULTS[1]).exists()
    status = hsi_study("study=smoke", f"out={killed}", "--status", cwd=tmp_path)
    assert "(1 of 2 commands to run)" in status.stdout
    rerun = hsi_study("study=smoke", f"out={killed}", cwd=tmp_path)
    assert rerun.stdout.count("$ hsi-train") == 1 and "seed=1" in rerun.stdout
    for name in SMOKE_RESULTS:
        assert metrics((killed / name).parent) == metrics((whole / name).parent), name
    assert (killed / "scores/scores.csv").read_bytes() == (whole / "scores/scores.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_study_as_slurm_jobs(slurm, tmp_path):  # noqa: F811
    """Each stage a job, the sweep an array, `scores` and `train` after `synth`'s job."""
    out = tmp_path / "study"
    # the study's launcher keys (1 CPU, 2 GB) over slurm.yaml's, the command line's over both
    args = ["study=smoke", f"out={out}", "hydra/launcher=slurm", "hydra.launcher.timeout_min=9"]
    args.append("poll_s=2")
    submit = hsi_study(*args, "wait=false", cwd=tmp_path)
    assert submit.stdout.count("submitted as job") == 3, submit.stdout
    status = hsi_study(*args, "--status", cwd=tmp_path)
    assert "(job " in status.stdout, status.stdout  # a queued or running job, by its id
    proc = hsi_study(*args, cwd=tmp_path, timeout=1500)  # a second driver attaches to them
    assert "submitted" not in proc.stdout and "already queued as job" in proc.stdout, proc.stdout
    records = {p.stem: json.loads(p.read_text()) for p in (out / ".study" / "jobs").glob("*.json")}
    assert set(records) == {"synth", "scores", "train"}
    assert len(records["train"]["commands"]) == 2  # one array of two tasks
    # each task recorded its success as JSON (the driver reads these, not submitit's pickles)
    assert len(list((out / ".study" / "done" / "train").glob("*.json"))) == 2
    assert len({r["job_id"] for r in records.values()}) == 3
    for name in SMOKE_RESULTS:
        assert read_results(out / Path(name).parent)["status"] == "complete"
    assert (out / "scores" / "scores.csv").is_file()
    scripts = [p.read_text() for p in (out / ".study" / "slurm").rglob("*_submission.sh")]
    assert scripts and all("--time=9\n" in t and "--cpus-per-task=1\n" in t for t in scripts)
    assert any("--dependency=afterok:" + records["synth"]["job_id"] in t for t in scripts)
    logs = [p.read_text() for p in (out / ".study" / "slurm").rglob("*_log.out")]
    assert len(logs) == 4 and any("synthetic source at" in text for text in logs)  # streamed
    again = hsi_study(*args, cwd=tmp_path)
    assert "submitted" not in again.stdout and again.stdout.count("done") >= 3


from test_slurm import slurm  # noqa: E402, F401  (the one-node cluster fixture)
