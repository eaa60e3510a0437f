"""`results.json`: what every training run leaves in its folder, and how to read it back.

One JSON object per run:

    status        "complete", or "diverged" (with "error"; no metrics): reports refuse those
    method, model, data, seed, epochs, global_step, run_dir, overrides
    selection     "final" (default: the last epoch's model, as the paper) or "best" (by val)
    val, test     metric dicts of the selected model, hsi.metrics names without the split prefix
                  (acc, worst_group_acc, mean_group_acc, acc_easy, acc_size_56, group/CeO_56, ...)
    models        final and best: checkpoint, epoch, global_step, val, test (training runs)
    checkpoints   paths (best, last, stage1, dfr, ...)
    stage1        JTT, DFR: the stage-1 checkpoint, its epoch and global step
    model_checkpoint  model.checkpoint's file, epoch and global step (null without one)
    dropped_samples   samples left out because their assets failed: total and per split
    error_set     JTT only: size, precision and recall against the Medium and Hard groups, ...
    dfr           DFR only: variant, chosen C, embedding cache files
    config        the resolved Hydra config of the job

The file is written atomically, so a reader sees either nothing or a complete run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hsi.io import atomic_write_text
from hsi.metrics import prefixed

RESULTS_FILE = "results.json"
METRIC_SPLITS = ("val", "test")


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch scalars to numbers, NaN/inf to None, paths to strings."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    raise TypeError(f"results.json cannot hold a {type(value).__name__}: {value!r}")


def write_results(
    run_dir: str | os.PathLike, results: Mapping[str, Any], filename: str = RESULTS_FILE
) -> Path:
    """Write ``run_dir/results.json`` (or another ``filename``) atomically, keys sorted."""
    text = json.dumps(_jsonable(results), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(Path(run_dir) / filename, text)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """A run's results from its ``results.json`` or its run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the run did not finish (see its folder's logs), or the path "
            f"is not an hsi-train run folder"
        )
    with path.open(encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}); rerun the job that wrote it"
            ) from err


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every ``results.json`` under ``root`` (a run folder, a multirun folder, outputs/), sorted."""
    return sorted(Path(root).rglob(RESULTS_FILE))


def flat_metrics(
    results: Mapping[str, Any], splits: Iterable[str] = METRIC_SPLITS
) -> dict[str, float]:
    """``{"val/acc": ..., "test/group/CeO_56": ...}``: the names under which runs log."""
    flat: dict[str, float] = {}
    for split in splits:
        flat.update(prefixed(dict(results.get(split) or {}), split))
    return flat
