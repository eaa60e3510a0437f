"""Progress of a long loop: a bar on a terminal, one log line per interval everywhere else.

A tqdm bar written into a pipe or a log file is carriage-return clutter, and a silent pipe
leaves a user of a 20-minute job guessing. So::

    with Progress(total=len(tasks), desc="build", unit="img") as progress:
        for result in results:
            progress.update(1, failed=n_failed)

shows a tqdm bar when stderr is a terminal, and otherwise logs (logger ``hsi.progress``, which
Hydra's job logging sends to the console and the job's .log file) a line such as
``build: 1200/6900 img (17.4%), 35.2 img/s, ETA 2m42s, failed=0`` at most every
``interval_s`` seconds (``HSI_PROGRESS_INTERVAL``, default 30), and a closing line with the
total and the elapsed time in both cases.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger("hsi.progress")

DEFAULT_INTERVAL_S = 30.0


def default_interval() -> float:
    """Seconds between two progress lines in a log (``HSI_PROGRESS_INTERVAL``, default 30)."""
    raw = os.environ.get("HSI_PROGRESS_INTERVAL")
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"HSI_PROGRESS_INTERVAL={raw!r}: give a number of seconds") from None
    if value < 0:
        raise ValueError(f"HSI_PROGRESS_INTERVAL={raw!r}: give a number of seconds >= 0")
    return value


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


class Progress:
    """Counts done items of a loop of ``total`` (None: unknown) and reports as described above.

    ``enabled=False`` reports nothing but the closing line; ``stream`` (default stderr) decides
    terminal or not, and ``tty`` overrides that test (tests use it).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        interval_s: float | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.interval_s = default_interval() if interval_s is None else float(interval_s)
        stream = stream if stream is not None else sys.stderr
        self.tty = bool(stream.isatty()) if tty is None else tty
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.started = time.monotonic()
        self._last_line = self.started
        self._closed = False
        self._bar = None
        if enabled and self.tty:
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)

    # ------------------------------------------------------------------ counting
    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        if self._bar is not None:
            if fields:
                self._bar.set_postfix(fields, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self._last_line >= self.interval_s:
            self._last_line = now
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``desc: done/total unit (pct), rate unit/s, ETA …, fields``."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text = f"{self.desc}: {self.done} {self.unit}"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        if self.fields:
            text += f", {_fields(self.fields)}"
        return text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elapsed = time.monotonic() - self.started
        text = f"{self.desc}: {self.done} {self.unit} in {format_duration(elapsed)}"
        if self.fields:
            text += f" ({_fields(self.fields)})"
        log.info(text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
