"""A study's stages: one of the project's commands each, the outputs that prove it ran, and the
stages it needs first (conf/study/*.yaml).

A stage is *done* when every one of its outputs exists (a glob must match at least one file), so
a rerun skips it; a stage without outputs runs every time (cheap checks such as validate). A stage
whose command is null is a placeholder: shown, never run, and nothing may depend on it.
"""

from __future__ import annotations

import glob
import itertools
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# the project's own console scripts (pyproject [project.scripts]); anything else is refused
COMMANDS = (
    "hsi-synth",
    "hsi-scores",
    "hsi-generate",
    "hsi-train",
    "hsi-benchmark",
    "hsi-analyze",
    "hsi-report",
    "hsi-rank",
    "hsi-detect",
)

DONE, TODO, WAITING, PLACEHOLDER = "done", "to run", "waiting", "placeholder"


class StudyError(ValueError):
    """A study config that cannot run; the message names the stage and key to fix."""


@dataclass(frozen=True)
class Stage:
    """One step of a study: `command` (argv, the first word a project command), its `outputs`
    (paths or globs), the stages it comes `after`, and the hydra.launcher keys its SLURM job
    overrides (`launcher`). A `sweep` ({key: values}) makes it one command per combination of
    values, `key=value` appended and `{key}` replaced in the command and the outputs: a loop here,
    a job array on SLURM, each combination skipped once its own outputs exist."""

    name: str
    command: tuple[str, ...] | None
    outputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    sweep: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    launcher: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def placeholder(self) -> bool:
        return self.command is None

    def combos(self) -> list[dict[str, str]]:
        """Every combination of the swept values ([{}] without a sweep), in the sweep's order."""
        names = list(self.sweep)
        return [dict(zip(names, c, strict=True)) for c in itertools.product(*self.sweep.values())]

    def argv(self, combo: Mapping[str, str] | None = None) -> list[str]:
        """The command line of one combination (of the only one without a sweep)."""
        if self.command is None:
            return []
        combo = combo or {}
        args = [_fill(a, combo) for a in self.command]
        return [*args, *(f"{k}={v}" for k, v in combo.items())]

    def shell(self, combo: Mapping[str, str] | None = None) -> str:
        return shlex.join(self.argv(combo))

    def outputs_of(self, combo: Mapping[str, str]) -> list[str]:
        return [_fill(p, combo) for p in self.outputs]

    def expected(self) -> list[str]:
        """Every output path or glob of every combination."""
        out: list[str] = []
        for combo in self.combos():
            out += [p for p in self.outputs_of(combo) if p not in out]
        return out

    def missing(self) -> list[str]:
        """The outputs not there yet (a glob: when it matches nothing)."""
        return [p for p in self.expected() if not _exists(p)]

    def todo(self) -> list[dict[str, str]]:
        """The combinations still to run: all of them when the stage declares no outputs."""
        return [c for c in self.combos() if not self.outputs or not _all_exist(self.outputs_of(c))]

    def done(self) -> bool:
        return bool(self.outputs) and not self.missing()


def _fill(text: str, combo: Mapping[str, str]) -> str:
    """`{key}` -> the combination's value, for the swept keys only (other braces stay)."""
    for key, value in combo.items():
        text = text.replace("{" + key + "}", value)
    return text


def _all_exist(patterns: list[str]) -> bool:
    return all(_exists(p) for p in patterns)


def _exists(pattern: str) -> bool:
    if glob.has_magic(pattern):
        return any(Path(p).exists() for p in glob.glob(pattern))
    return Path(pattern).exists()


_RANGE = re.compile(r"^range\((-?\d+),\s*(-?\d+)(?:,\s*(-?\d+))?\)$")


def _values(value: Any, where: str) -> tuple[str, ...]:
    """A sweep's values: a list, one value, or Hydra's `range(a,b[,step])`."""
    match = _RANGE.match(value.strip()) if isinstance(value, str) else None
    if match:
        start, stop, step = (int(g) if g else 1 for g in match.groups())
        return tuple(str(i) for i in range(start, stop, step))
    return _strings(value, where)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | int | float):
        return (str(value),)
    if isinstance(value, list | tuple | ListConfig):
        # a nested list (an interpolated list of shared keys, e.g. "${study.data_keys}") is spliced
        return tuple(
            str(w) for v in value for w in (v if isinstance(v, list | tuple | ListConfig) else [v])
        )
    raise StudyError(f"{where}: expected a string or a list of strings, got {value!r}")


KEYS = {"command", "outputs", "after", "sweep", "launcher", "note"}


def load_stages(stages: Mapping[str, Any] | DictConfig) -> list[Stage]:
    """The stages of `study.stages` in an order that runs each after those it needs (the config's
    order where it allows); a bad stage is a StudyError naming `study.stages.<name>.<key>`."""
    if isinstance(stages, DictConfig):
        stages = OmegaConf.to_container(stages, resolve=True)
    if not stages:
        raise StudyError("study.stages is empty: a study lists at least one stage")
    loaded: dict[str, Stage] = {}
    for name, spec in stages.items():
        where = f"study.stages.{name}"
        if spec is None:  # removed on the command line (~study.stages.x) or by a child config
            continue
        if not isinstance(spec, Mapping):
            raise StudyError(f"{where}: expected a mapping with a `command`, got {spec!r}")
        unknown = sorted(set(spec) - KEYS)
        if unknown:
            raise StudyError(f"{where}: unknown keys {unknown}; a stage has {sorted(KEYS)}")
        command = spec.get("command")
        if command is not None:
            command = _strings(command, f"{where}.command")
            if not command or command[0] not in COMMANDS:
                raise StudyError(
                    f"{where}.command: must start with one of the project's commands "
                    f"{list(COMMANDS)}, got {list(command)[:1]}"
                )
        sweep = {
            str(k): _values(v, f"{where}.sweep.{k}") for k, v in (spec.get("sweep") or {}).items()
        }
        if any(not v for v in sweep.values()):
            raise StudyError(f"{where}.sweep: every swept key needs at least one value")
        loaded[str(name)] = Stage(
            name=str(name),
            command=command,
            outputs=_strings(spec.get("outputs"), f"{where}.outputs"),
            after=_strings(spec.get("after"), f"{where}.after"),
            sweep=sweep,
            launcher=dict(spec.get("launcher") or {}),
            note=str(spec.get("note") or ""),
        )
    for stage in loaded.values():
        for need in stage.after:
            if need not in loaded:
                raise StudyError(
                    f"study.stages.{stage.name}.after: no stage named {need!r} "
                    f"(stages: {list(loaded)})"
                )
            if loaded[need].placeholder and not stage.placeholder:
                raise StudyError(
                    f"study.stages.{stage.name}.after: {need!r} is a placeholder (no command); "
                    "give it a command or drop it from `after`"
                )
    return _ordered(loaded)


def _ordered(stages: dict[str, Stage]) -> list[Stage]:
    """Kahn's order, taking the earliest ready stage in config order each time."""
    order: list[Stage] = []
    placed: set[str] = set()
    pending = list(stages.values())
    while pending:
        ready = next((s for s in pending if set(s.after) <= placed), None)
        if ready is None:
            names = [s.name for s in pending]
            raise StudyError(f"study.stages: `after` forms a cycle among {names}")
        order.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    return order


def state(stage: Stage, done: set[str]) -> str:
    """Where a stage stands given the names of the stages done."""
    if stage.placeholder:
        return PLACEHOLDER
    if stage.done():
        return DONE
    return TODO if set(stage.after) <= done else WAITING
