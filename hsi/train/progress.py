"""Training progress in a pipe or a log file: one line per interval instead of a progress bar.

Lightning's bar is right on a terminal and wrong everywhere else: piped into a file it is either
carriage-return clutter or, for Rich, nothing until the epoch ends, so a long source pretraining
prints nothing for many minutes. :class:`ProgressLog` leaves the bar alone on a terminal; when
stderr is not one it turns the bar off and logs (logger ``hsi.progress``, which Hydra's job
logging sends to the console and the job's .log file) lines such as::

    train: epoch 2/30, step 310/4680 (6.6%), loss 1.912, 412 samples/s, ETA 21m10s
    train: epoch 2/30 done, step 312/4680, loss 1.887, acc 0.4312, val/acc 0.3990, ETA 21m02s

one every ``interval_s`` seconds (``HSI_PROGRESS_INTERVAL``, default 30) or every
``every_n_steps`` optimizer steps, whichever comes first, and one at the end of every epoch.
The loss of a step line is the mean over the steps since the previous line; the metrics named
in ``metrics`` are shown when the module logs them (train/acc once an epoch has ended).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from hsi.progress import default_interval, format_duration, log

DEFAULT_METRICS = ("train/acc", "val/acc", "val/worst_group_acc")


class ProgressLog(Callback):
    """Log lines of training progress when stderr is not a terminal (see the module's text).

    ``tty`` overrides the terminal test and ``stream`` is the stream tested (tests use both).
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        interval_s: float | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS,
        desc: str = "train",
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(
                f"ProgressLog every_n_steps={every_n_steps}: give a number >= 1 or null"
            )
        self.every_n_steps = int(every_n_steps) if every_n_steps is not None else None
        self.interval_s = default_interval() if interval_s is None else float(interval_s)
        self.metrics = tuple(metrics)
        self.desc = desc
        stream = stream if stream is not None else sys.stderr
        self.tty = bool(stream.isatty()) if tty is None else bool(tty)
        self._reset(0)

    @property
    def enabled(self) -> bool:
        return not self.tty

    def _reset(self, step: int) -> None:
        self._started = time.monotonic()
        self._first_step = step
        self._samples = 0
        self._line_at_time = self._started
        self._line_at_step = step
        self._loss_sum, self._loss_n = 0.0, 0

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if self.enabled and bar is not None:
            bar.disable()  # a bar in a pipe is clutter; these lines replace it

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(int(trainer.global_step))  # a resumed fit's rate counts only its own steps

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.enabled:
            return
        self._samples += _batch_size(batch)
        loss = _loss(outputs)
        if loss is not None:
            self._loss_sum += loss
            self._loss_n += 1
        step, now = int(trainer.global_step), time.monotonic()
        by_steps = (
            self.every_n_steps is not None and step - self._line_at_step >= self.every_n_steps
        )
        if by_steps or now - self._line_at_time >= self.interval_s:
            log.info(self._step_line(trainer, now))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            log.info(self._epoch_line(trainer, time.monotonic()))

    # ------------------------------------------------------------------ the lines
    def _step_line(self, trainer: L.Trainer, now: float) -> str:
        parts = [f"{self.desc}: {_epoch(trainer)}", _steps(trainer)]
        if self._loss_n:
            parts.append(f"loss {self._loss_sum / self._loss_n:.4g}")
        parts += self._rate_and_eta(trainer, now)
        self._line_at_time, self._line_at_step = now, int(trainer.global_step)
        self._loss_sum, self._loss_n = 0.0, 0
        return ", ".join(parts)

    def _epoch_line(self, trainer: L.Trainer, now: float) -> str:
        metrics = trainer.callback_metrics
        parts = [f"{self.desc}: {_epoch(trainer)} done", _steps(trainer)]
        loss = _metric(metrics, "train/loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        for name in self.metrics:
            value = _metric(metrics, name)
            if value is not None:
                parts.append(f"{name.removeprefix('train/')} {value:.4f}")
        parts += self._rate_and_eta(trainer, now)
        self._line_at_time, self._line_at_step = now, int(trainer.global_step)
        self._loss_sum, self._loss_n = 0.0, 0
        return ", ".join(parts)

    def _rate_and_eta(self, trainer: L.Trainer, now: float) -> list[str]:
        elapsed = max(now - self._started, 1e-9)
        parts = [f"{self._samples / elapsed:.4g} samples/s"] if self._samples else []
        total, step = _total_steps(trainer), int(trainer.global_step)
        done = step - self._first_step
        if total is not None and done > 0 and step < total:
            parts.append(f"ETA {format_duration((total - step) * elapsed / done)}")
        return parts


# --------------------------------------------------------------------------- helpers
def _epoch(trainer: L.Trainer) -> str:
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0:
        return f"epoch {trainer.current_epoch + 1}"
    return f"epoch {trainer.current_epoch + 1}/{max_epochs}"


def _total_steps(trainer: L.Trainer) -> int | None:
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # an iterable without a length: no total, hence no ETA
        return None
    return int(total) if total is not None and total != float("inf") else None


def _steps(trainer: L.Trainer) -> str:
    step, total = int(trainer.global_step), _total_steps(trainer)
    if total:
        return f"step {step}/{total} ({100 * step / total:.1f}%)"
    return f"step {step}"


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    """``name``'s value, or its epoch aggregate (``name_epoch``) when logged on step and epoch."""
    for key in (name, f"{name}_epoch"):
        value = metrics.get(key)
        if value is not None:
            return float(value.item() if isinstance(value, torch.Tensor) else value)
    return None


def _loss(outputs: Any) -> float | None:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return float(outputs.detach())
    return None


def _batch_size(batch: Any) -> int:
    """The leading size of the batch's first tensor (0 when it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 0
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size:
                return size
    return 0
