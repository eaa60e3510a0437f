"""Finding runs and deciding which of them may be pooled into one table row.

A run is what its ``results.json`` holds (hsi.results). Runs are found from run folders, multirun
folders, ``results.json`` files or glob patterns. Two rules guard every table:

- a run whose ``status`` is not ``complete`` (a diverged or unfinished job) is refused unless the
  caller asks for it (``include_incomplete=True``): its numbers are not a result;
- runs pooled into one row (seeds of one setting) must agree on everything but the seed and the
  paths of their files; otherwise the differing keys are named and nothing is pooled.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hsi.results import RESULTS_FILE, find_results, read_results

COMPLETE = "complete"
log = logging.getLogger(__name__)

# Config keys that may differ between seeds of one setting: the seed itself, where files go or
# come from (each seed has its own run folder and stage-1 ERM checkpoint; model.checkpoint, the
# starting model, is part of the setting), and how the job was served
# (loaders, progress bars, logging) which does not change the numbers.
FREE_KEYS = {"seed", "out", "ckpt_path", "task_name", "run_dir"}
FREE_SUFFIXES = (
    ".seed",
    "erm_checkpoint",
    ".root",
    ".out",
    ".save_dir",
    ".dir",
    ".progress",
    ".workers",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "eval_batch_size",
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    ".shard",
    ".num_shards",
    "export_dir",
)
FREE_PREFIXES = ("logger.", "hydra.", "trainer.accelerator", "trainer.devices")


class RunSelectionError(ValueError):
    """Runs that cannot be tabulated as asked (incomplete, or mixed settings in one row)."""


def run_files(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Every results.json of ``sources``: run or multirun folders, results.json files, globs.

    Sorted and without duplicates; a source that matches nothing is an error naming it.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: dict[Path, None] = {}
    for source in sources:
        text = os.fspath(source)
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        files: list[Path] = []
        for match in matches:
            path = Path(match)
            if path.is_file() and path.name == RESULTS_FILE:
                files.append(path)
            elif path.is_dir():
                files.extend(find_results(path))
        if not files:
            raise FileNotFoundError(
                f"{text}: no {RESULTS_FILE} there; give run folders, a multirun folder, "
                f"results.json files or a glob that matches them"
            )
        found.update((f.resolve(), None) for f in files)
    return sorted(found)


def unfinished_runs(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Job folders under ``sources`` (they hold ``.hydra/``) without a results.json: jobs that
    failed or still run. A sweep with one of them has fewer seeds than it was launched with."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: set[Path] = set()
    for source in sources:
        text = os.fspath(source)
        for match in sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]:
            if Path(match).is_dir():
                for hydra_dir in Path(match).rglob(".hydra"):
                    job = hydra_dir.parent
                    if not (job / RESULTS_FILE).is_file():
                        found.add(job.resolve())
    return sorted(found)


def load_runs(
    sources: str | os.PathLike | Iterable[str | os.PathLike], include_incomplete: bool = False
) -> list[dict[str, Any]]:
    """The runs of ``sources`` (see :func:`run_files`); runs that did not complete, and job
    folders without a results.json, are refused unless ``include_incomplete`` (then the folders
    without results are left out with a warning)."""
    runs = []
    for path in run_files(sources):
        results = read_results(path)
        results.setdefault("run_dir", str(path.parent))
        runs.append(results)
    unfinished = unfinished_runs(sources)
    if unfinished and not include_incomplete:
        raise RunSelectionError(
            f"{len(unfinished)} job folder(s) have no {RESULTS_FILE} (failed or still running): "
            f"{'; '.join(map(str, unfinished[:5]))}. Wait for them, rerun them, leave them out, "
            f"or pass include_incomplete=true to report without them"
        )
    for job in unfinished:
        log.warning("left out: %s has no %s (failed or still running)", job, RESULTS_FILE)
    return check_complete(runs, include_incomplete)


def _where(run: Mapping[str, Any]) -> str:
    return str(
        run.get("run_dir") or f"{run.get('method')} {run.get('model')} seed={run.get('seed')}"
    )


def check_complete(
    runs: Sequence[Mapping[str, Any]], include_incomplete: bool = False
) -> list[Mapping[str, Any]]:
    """``runs`` unchanged, or an error naming every run whose status is not ``complete``."""
    if include_incomplete:
        return list(runs)
    bad = [f"{_where(r)} (status {r.get('status')!r})" for r in runs if r.get("status") != COMPLETE]
    if bad:
        raise RunSelectionError(
            f"{len(bad)} run(s) did not complete: {'; '.join(bad[:5])}. Their numbers are not "
            f"results; rerun them, leave them out, or pass include_incomplete=true to show them"
        )
    return list(runs)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _free(key: str) -> bool:
    return key in FREE_KEYS or key.endswith(FREE_SUFFIXES) or key.startswith(FREE_PREFIXES)


def setting(run: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree between runs pooled as seeds: the run's identity and its config, less the
    seed, paths and serving keys."""
    keys = {k: run.get(k) for k in ("method", "model", "data", "num_classes")}
    keys["groups"] = tuple(run.get("groups") or ())
    for key, value in flatten(run.get("config") or {}).items():
        if not _free(key):
            keys[f"config.{key}"] = tuple(value) if isinstance(value, list) else value
    return keys


def mixed_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The setting keys on which ``runs`` disagree (empty: they may be pooled)."""
    settings = [setting(r) for r in runs]
    keys = sorted(set().union(*settings)) if settings else []
    return [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]


def check_poolable(runs: Sequence[Mapping[str, Any]], row: str) -> None:
    """Refuse to pool runs of different settings (or two runs of one seed) into row ``row``."""
    seeds = [r.get("seed") for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        raise RunSelectionError(
            f"row {row!r}: two runs with seed {repeated[0]} ({', '.join(_where(r) for r in runs if r.get('seed') == repeated[0])}): "
            f"they are not seeds of one setting; give each setting its own row label"
        )
    differ = mixed_keys(runs)
    if differ:
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise RunSelectionError(
            f"row {row!r} would pool runs of different settings (they differ in {shown}); "
            f"report them as separate rows or leave some out"
        )
