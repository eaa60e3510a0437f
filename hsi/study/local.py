"""Stages run one after another on this machine, each command echoed, as `make demo` shows them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from hsi.study.stages import Stage, StudyError

BIN = Path(sys.executable).parent  # the console scripts of the environment hsi-study runs in


def executable(stage: Stage, combo: Mapping[str, str] | None = None) -> list[str]:
    """One command line of the stage with its command resolved in this environment's bin."""
    argv = stage.argv(combo)
    command = BIN / argv[0]
    if not command.is_file():  # e.g. a stage of a command that is not installed yet
        raise StudyError(
            f"study.stages.{stage.name}.command: {argv[0]} is not installed in {BIN}; "
            "reinstall hsi (pip install -e .) or drop the stage"
        )
    return [str(command), *argv[1:]]


def run_local(stage: Stage) -> float:
    """Run the stage's combinations still to run, in the foreground; a non-zero exit or a missing
    output is a StudyError saying which stage to look at."""
    started = time.time()
    for combo in stage.todo():
        print(f"\n[{stage.name}] $ {stage.shell(combo)}", flush=True)
        done = subprocess.run(executable(stage, combo), check=False)
        if done.returncode != 0:
            raise StudyError(
                f"stage {stage.name!r}: `{stage.argv()[0]}` failed with exit code "
                f"{done.returncode}; see its output above (rerun hsi-study to retry from there)"
            )
    missing = stage.missing()
    if stage.outputs and missing:
        raise StudyError(
            f"stage {stage.name!r} ran but did not write {missing[:3]}; fix "
            f"study.stages.{stage.name}.outputs or the command's output keys"
        )
    seconds = time.time() - started
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds
