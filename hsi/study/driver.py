"""`hsi-study`'s work: where each stage stands, then the stages still to run, here or on SLURM.

Local: in order, in the foreground, stopping at the first failure. SLURM: every stage still to
run is submitted as a job that waits for the jobs of the stages it needs; the driver then
follows them (`wait=true`) or leaves them to the cluster (`wait=false`). Either way the driver
can be rerun at any time: finished stages are skipped, queued ones are attached to, and a study
killed halfway finishes the rest with the same results (every command resumes or rewrites its
outputs from the same config and seeds).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hsi.study.local import run_local
from hsi.study.slurm import SlurmStages, is_slurm
from hsi.study.stages import DONE, PLACEHOLDER, TODO, WAITING, Stage, StudyError, load_stages


def status_lines(stages: Sequence[Stage], jobs: Mapping[str, str] | None = None) -> list[str]:
    """One line per stage: its name, where it stands and what it waits for or lacks."""
    done = {s.name for s in stages if s.done()}
    width = max(len(s.name) for s in stages)
    lines = []
    for stage in stages:
        if stage.placeholder:
            what, detail = PLACEHOLDER, stage.note or "no command yet"
        elif stage.name in done:
            what, detail = DONE, f"{len(stage.expected())} output(s) present"
        elif jobs and stage.name in jobs:
            what, detail = jobs[stage.name], ""
        else:
            needs = [n for n in stage.after if n not in done]
            what = WAITING if needs else TODO
            missing = stage.missing()
            detail = f"after {', '.join(needs)}" if needs else ""
            if stage.outputs:
                detail += f"{'; ' if detail else ''}{len(missing)} of {len(stage.expected())} output(s) missing"
                if len(stage.combos()) > 1:
                    detail += f" ({len(stage.todo())} of {len(stage.combos())} commands to run)"
            else:
                detail += f"{'; ' if detail else ''}no outputs: runs every time"
        lines.append(f"  {stage.name:<{width}}  {what:<11}  {detail}".rstrip())
    return lines


def dry_run_lines(stages: Sequence[Stage]) -> list[str]:
    """Every command the study would launch now, in order (done stages are named, not listed)."""
    lines = []
    for stage in stages:
        if stage.placeholder:
            lines.append(f"# {stage.name}: placeholder ({stage.note or 'no command yet'})")
        elif stage.done():
            lines.append(f"# {stage.name}: done, skipped")
        else:
            todo = stage.todo()
            head = f"# {stage.name}" + (f" (after {', '.join(stage.after)})" if stage.after else "")
            if len(stage.combos()) > 1:
                head += f": {len(todo)} of {len(stage.combos())} commands"
            lines.append(head)
            lines += [stage.shell(c) for c in todo]
    return lines


def run_study(
    cfg: DictConfig,
    launcher: Mapping[str, Any] | None = None,
    cli_keys: Sequence[str] = (),
) -> str | None:
    """Run (or show) the study of `cfg.study`; return the summary text when it ran through.
    `launcher` is hydra.launcher; `cli_keys` its keys set on the command line, which win over
    `study.launcher` (and lose to a stage's own `launcher` keys)."""
    stages = load_stages(cfg.study.stages)
    out = Path(str(cfg.out))
    slurm = is_slurm(launcher)
    print(f"study {cfg.study.name} -> {out} ({'SLURM jobs' if slurm else 'local, in order'})")
    if cfg.dry_run:
        print("\n".join(dry_run_lines(stages)))
        return None
    jobs = _queued(stages, _slurm_stages(out, launcher, cfg, cli_keys)) if slurm else None
    print("\n".join(status_lines(stages, jobs)), flush=True)
    if cfg.show_status:
        return None
    started = time.time()
    if slurm:
        if not _drive_slurm(stages, _slurm_stages(out, launcher, cfg, cli_keys), cfg):
            return None
    else:
        for stage in stages:
            if stage.placeholder:
                print(f"\n[{stage.name}] placeholder, not run: {stage.note or 'no command yet'}")
            elif stage.done():
                print(f"\n[{stage.name}] done before: {', '.join(stage.expected()[:2])}")
            else:
                run_local(stage)
    text = summary(cfg)
    if text:
        print("\n" + "=" * 78 + "\n" + text)
    print(
        f"\nstudy {cfg.study.name} finished in {time.time() - started:.0f} s; outputs under {out.resolve()}"
    )
    return text


def summary(cfg: DictConfig) -> str | None:
    """The study's closing text (`study.summary`, a callable's node returning a string)."""
    node = cfg.study.get("summary")
    if not node:
        return None
    nodes = node if OmegaConf.is_list(node) else [node]
    return "\n\n".join(str(instantiate(n)) for n in nodes)


def _slurm_stages(
    out: Path, launcher: Mapping[str, Any], cfg: DictConfig, cli_keys: Sequence[str] = ()
) -> SlurmStages:
    if isinstance(launcher, DictConfig):
        launcher = OmegaConf.to_container(launcher, resolve=True)
    study = OmegaConf.to_container(cfg.study.get("launcher") or OmegaConf.create(), resolve=True)
    study = {k: v for k, v in study.items() if k not in set(cli_keys)}
    return SlurmStages(out, launcher, study)


def _queued(stages: Sequence[Stage], slurm: SlurmStages) -> dict[str, str]:
    """stage -> SLURM's state of its recorded job, for the stages whose job is queued or running."""
    states = {}
    for stage in stages:
        if stage.placeholder or stage.done():
            continue
        job_id = slurm.job_id(stage)
        state = slurm.live(job_id)
        if state:
            states[stage.name] = f"{state} (job {job_id})"
    return states


def _drive_slurm(stages: Sequence[Stage], slurm: SlurmStages, cfg: DictConfig) -> bool:
    """Submit what is left; with cfg.wait follow the jobs to the end. True when all are done."""
    done = {s.name for s in stages if s.done()}
    jobs: dict[str, str] = {}
    for stage in stages:
        if stage.placeholder or stage.name in done:
            continue
        job_id = slurm.job_id(stage)
        if slurm.live(job_id):
            jobs[stage.name] = job_id
            print(f"[{stage.name}] already queued as job {job_id}")
            continue
        after = []
        for need in stage.after:
            if need in jobs:
                after.append(jobs[need])
            elif need not in done:
                raise StudyError(
                    f"stage {stage.name!r} needs {need!r}, which is neither done nor queued"
                )
        jobs[stage.name] = slurm.submit(stage, after)
        print(
            f"[{stage.name}] submitted as job {jobs[stage.name]}"
            + (f" after {', '.join(after)}" if after else ""),
            flush=True,
        )
    if not cfg.wait:
        print("jobs submitted; rerun hsi-study (show_status=true) to see where they stand")
        return False
    shown: dict[str, str] = {}
    while True:
        states = {name: slurm.live(job_id) for name, job_id in jobs.items()}
        for name, state in states.items():
            now = state or "ended"
            if shown.get(name) != now:
                print(f"[{name}] job {jobs[name]}: {now}", flush=True)
                shown[name] = now
        if not any(states.values()):
            break
        time.sleep(float(cfg.poll_s))
    failed = [s for s in stages if s.name in jobs and not _succeeded(slurm, s)]
    if failed:
        names = ", ".join(f"{s.name} (log {slurm.log(s)})" for s in failed)
        raise StudyError(f"stages failed on SLURM: {names}; rerun hsi-study to resubmit them")
    return True


def _succeeded(slurm: SlurmStages, stage: Stage) -> bool:
    """A stage with outputs: they exist. Without: every task of its job wrote success."""
    return stage.done() if stage.outputs else slurm.succeeded(stage)
