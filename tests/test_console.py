"""The console: third-party noise filtered by name (verbose=true keeps it), training progress as
log lines when the output is piped, and a piped `hsi-train` whose output is the job's own."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import BIN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hsi.console import LIGHTNING_LOGGERS, NoiseFilter, quiet_console
from hsi.train.progress import ProgressLog


# --------------------------------------------------------------------------- quiet_console
@pytest.fixture
def clean_logging():
    """Undo the filters quiet_console adds to process-wide loggers and handlers."""
    yield
    targets = [logging.getLogger(n) for n in LIGHTNING_LOGGERS] + logging.getLogger().handlers
    for target in targets:
        for f in [f for f in target.filters if isinstance(f, NoiseFilter)]:
            target.removeFilter(f)


def test_noise_filter_drops_lightning_lines_and_keeps_the_rest():
    keep = NoiseFilter()

    def passes(message: str) -> bool:
        return keep.filter(logging.LogRecord("x", logging.INFO, __file__, 1, message, None, None))

    assert not passes("GPU available: False, used: False")
    assert not passes("TPU available: False, using: 0 TPU cores")
    assert not passes("💡 Tip: For seamless cloud logging and experiment tracking, try litlogger")
    assert passes("Seed set to 0")
    assert passes("`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert passes("the GPU available: is mentioned mid-line, not as the message")


@pytest.mark.usefixtures("clean_logging")
def test_quiet_console_filters_lightning_rank_zero_logger(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    caplog.set_level(logging.INFO)
    quiet_console(False)
    quiet_console(False)  # idempotent: still one filter
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, NoiseFilter) for f in rank_zero_logger.filters) == 1
    rank_zero_info("GPU available: False, used: False")
    rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try litmodels")
    rank_zero_info("Restoring states from the checkpoint path at x.ckpt")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Restoring states from the checkpoint path at x.ckpt"]


@pytest.mark.usefixtures("clean_logging")
def test_verbose_installs_no_filter(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    caplog.set_level(logging.INFO)
    quiet_console(True)
    assert not any(
        isinstance(f, NoiseFilter)
        for f in logging.getLogger("lightning.pytorch.utilities.rank_zero").filters
    )
    rank_zero_info("TPU available: False, using: 0 TPU cores")
    assert [r.getMessage() for r in caplog.records] == ["TPU available: False, using: 0 TPU cores"]


@pytest.mark.usefixtures("clean_logging")
def test_quiet_console_ignores_the_named_warnings_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console(False)
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, "
            "TreeSpec) and treespec.is_leaf()` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn(
            "The `srun` command is available on your system but is not used. HINT: ...",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("a warning about this job", UserWarning, stacklevel=1)
        warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "a warning about this job",
        "some other deprecation",
    ]


# --------------------------------------------------------------------------- ProgressLog
class TinyClassifier(L.LightningModule):
    """A linear classifier that logs train/loss (step and epoch) and train/acc (epoch), as ERM does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.layer(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_fit(callback: ProgressLog, tmp_path: Path, epochs: int = 2) -> L.Trainer:
    """40 random samples in batches of 8: 5 steps an epoch."""
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(40, 4, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        callbacks=[callback],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(TinyClassifier(), DataLoader(data, batch_size=8))
    return trainer


def test_progress_log_lines_when_piped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hsi.progress")
    trainer = tiny_fit(ProgressLog(every_n_steps=3, interval_s=1e9, tty=False), tmp_path)
    assert trainer.progress_bar_callback.is_disabled  # the lines replace the bar
    lines = [r.getMessage() for r in caplog.records if r.name == "hsi.progress"]
    step_lines = [line for line in lines if " done," not in line]
    epoch_lines = [line for line in lines if " done," in line]
    # 3 optimizer steps after the previous line, the epoch's closing line included
    assert [re.search(r"step (\d+)/10", line).group(1) for line in step_lines] == ["3", "8"]
    assert step_lines[0].startswith("train: epoch 1/2, step 3/10 (30.0%), loss ")
    assert step_lines[1].startswith("train: epoch 2/2, step 8/10 (80.0%), loss ")
    assert all("samples/s" in line and "ETA " in line for line in step_lines)
    assert len(epoch_lines) == 2
    assert epoch_lines[0].startswith("train: epoch 1/2 done, step 5/10 (50.0%), loss ")
    assert epoch_lines[1].startswith("train: epoch 2/2 done, step 10/10 (100.0%), loss ")
    assert re.search(r", acc (0|1)\.\d{4}, ", epoch_lines[1])  # train/acc once logged
    assert "ETA" in epoch_lines[0] and "ETA" not in epoch_lines[1]  # nothing left at the end
    # the epoch line's loss is the epoch mean the module logged
    loss = float(trainer.callback_metrics["train/loss_epoch"])
    assert f"loss {loss:.4g}" in epoch_lines[1]


def test_progress_log_leaves_a_terminal_to_the_bar(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hsi.progress")
    trainer = tiny_fit(ProgressLog(every_n_steps=1, interval_s=0, tty=True), tmp_path, epochs=1)
    assert not trainer.progress_bar_callback.is_disabled
    assert not [r for r in caplog.records if r.name == "hsi.progress"]


def test_progress_log_interval_from_environment(monkeypatch):
    monkeypatch.setenv("HSI_PROGRESS_INTERVAL", "7")
    assert ProgressLog(tty=False).interval_s == 7.0
    with pytest.raises(ValueError, match="every_n_steps=0"):
        ProgressLog(every_n_steps=0)


# --------------------------------------------------------------------------- a piped job
NOISE = ("LeafSpec", "srun", "TPU available", "GPU available", "💡", "Tip:", "\r")


def piped_train(tmp_path: Path, *extra: str) -> str:
    """A tiny source pretraining (trainer=debug) through the real hsi-train, stdout and stderr
    piped into one string. A fake `srun` on PATH makes Lightning believe it is on SLURM."""
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir(exist_ok=True)
    srun = fake_bin / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PYTHONWARNINGS"))}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PATH=f"{fake_bin}:{env['PATH']}")
    command = [
        str(BIN / "hsi-train"),
        "data=source",
        "data.resolution=32",
        "data.batch_size=16",
        f"data.source.root={tmp_path / 'source'}",
        "data.source.num_classes=3",
        "data.source.train_per_class=16",
        "data.source.val_per_class=2",
        "data.source.progress=false",
        "model=resnet10t",
        "trainer=debug",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_piped_hsi_train_prints_the_job_not_the_libraries(tmp_path):
    output = piped_train(tmp_path)
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the piped output:\n{output}"
    assert "┏" not in output and "Total params" not in output  # no model summary table
    assert re.search(r"erm resnet10t seed=0: val worst-group .* test acc \d\.\d{4}", output)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_piped_hsi_train_verbose_shows_everything(tmp_path):
    output = piped_train(tmp_path, "verbose=true")
    assert "GPU available: " in output and "TPU available: " in output
    assert "The `srun` command is available" in output
    assert "💡 Tip:" in output
