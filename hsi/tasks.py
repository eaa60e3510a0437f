"""The `tasks=` key of the task-based apps (hsi-analyze, hsi-detect, hsi-rank)."""

from __future__ import annotations

from collections.abc import Sequence


def requested_tasks(value, known: Sequence[str]) -> list[str]:
    """`tasks=` as a list (one name or several); an empty or unknown one is a ValueError."""
    tasks = (
        [] if value is None else [str(t) for t in ([value] if isinstance(value, str) else value)]
    )
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"tasks={tasks}: each task must be one of {list(known)}")
    return tasks
