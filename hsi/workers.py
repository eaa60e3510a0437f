"""One process pool for every parallel loop (build, export, validate, source reading, synthesis).

    for result in ordered_map(work, tasks, workers=4, init=Builder, init_args=(settings,)):
        ...

`init(*init_args)` runs once per process and returns the worker's state (an object: models,
an asset store, counters); `work(state, task)` is called for each task. Results come back in
the order of `tasks`, whatever the number of workers, so outputs are the same for any count.
Workers are spawned (clean, with no copied torch/OpenCV thread state), at most a bounded window
of tasks is in flight (memory stays flat for a million images), and each worker exits by itself
when its parent dies, even by SIGKILL, so no orphan keeps a GPU or writes into a folder.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hsi.progress import Progress

PARENT_CHECK_S = 0.5  # how often a worker looks whether its parent is still alive


class _Worker:
    """The state of one worker process: what `init` returned, and `work`."""

    current: _Worker | None = None

    def __init__(self, work: Callable, state: Any) -> None:
        self.work, self.state = work, state


def _exit_with_parent(parent_pid: int) -> None:
    """A daemon thread that ends this process as soon as its parent is gone (re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _start_worker(parent_pid: int, work: Callable, init: Callable | None, init_args: tuple) -> None:
    _exit_with_parent(parent_pid)
    _Worker.current = _Worker(work, init(*init_args) if init is not None else None)


def _run_batch(batch: list) -> list:
    worker = _Worker.current
    return [worker.work(worker.state, task) for task in batch]


def ordered_map(
    work: Callable[[Any, Any], Any],
    tasks: Sequence,
    *,
    workers: int = 1,
    init: Callable[..., Any] | None = None,
    init_args: tuple = (),
    progress: bool = True,
    desc: str = "",
    unit: str = "item",
    chunk: int = 1,
    window: int = 4,
) -> Iterator:
    """`work(state, task)` over `tasks` in order, here (workers <= 1) or in spawned processes.

    `work` and `init` must be importable module-level functions (or classes). A worker that
    dies (killed, out of memory) stops the loop with an error naming the cause; what was
    written stays, and a rerun resumes from it. `chunk` tasks travel together (cheap tasks such
    as reading an image header); `window` chunks per worker are in flight at most.
    """
    with Progress(len(tasks), desc, unit, enabled=progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            state = init(*init_args) if init is not None else None
            for task in tasks:
                yield work(state, task)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)),
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), work, init, init_args),
        ) as pool:
            chunk = max(1, int(chunk))
            batches = (list(tasks[i : i + chunk]) for i in range(0, len(tasks), chunk))
            pending = deque(
                pool.submit(_run_batch, b) for b in itertools.islice(batches, window * workers)
            )
            try:
                while pending:
                    results = pending.popleft().result()
                    for batch in itertools.islice(batches, 1):
                        pending.append(pool.submit(_run_batch, batch))
                    for result in results:
                        yield result
                        bar.update()
            except BrokenProcessPool as e:
                raise RuntimeError(
                    "a worker process died (killed or out of memory); finished files are kept, "
                    "rerun the same command to resume"
                ) from e
            finally:
                for future in pending:
                    future.cancel()


__all__ = ["ordered_map"]
