"""Checks before a training job starts, and the checkpoint paths it reads: cheap and early."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from hsi.results import RESULTS_FILE

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STAGE1_DIR = "stage1"


def requeue_ckpt_path(ckpt_path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """``last`` for a job that SLURM restarted (submitit's requeue on timeout or preemption sets
    SLURM_RESTART_COUNT) when no ckpt_path was given: the restart continues its own run instead
    of being refused by its own checkpoints."""
    if ckpt_path is None and int(environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        log.warning("SLURM restarted this job: resuming from its last checkpoint (ckpt_path=last)")
        return "last"
    return ckpt_path


def check_run_folder(out: Path, ckpt_path: str | None) -> None:
    """Refuse to start a fresh fit in a folder that holds an earlier run's checkpoints."""
    if ckpt_path is not None:
        return
    earlier = [out / RESULTS_FILE, *sorted(out.glob(f"{CHECKPOINT_DIR}/*.ckpt")),
               *sorted(out.glob(f"{STAGE1_DIR}/{CHECKPOINT_DIR}/*.ckpt"))]  # fmt: skip
    found = [p for p in earlier if p.exists()]
    if found:
        raise FileExistsError(
            f"run folder {out} already holds {found[0].relative_to(out)} of an earlier run: resume it "
            f"with ckpt_path=last, or start in a new folder (hydra.run.dir=...)"
        )


def check_weights(model_cfg: DictConfig) -> None:
    """Fail before any data is built when the model's weights are absent (never a network wait)."""
    if model_cfg.get("checkpoint"):
        resolve_checkpoint(model_cfg.checkpoint, "model.checkpoint", ("best.ckpt", "last.ckpt"))
    elif model_cfg.get("weights"):
        if not Path(str(model_cfg.weights)).expanduser().is_file():
            raise FileNotFoundError(
                f"model.weights={model_cfg.weights}: no such file; point it at a timm weight file"
            )
    elif model_cfg.get("pretrained"):
        from hsi.models import cached_weights

        cached_weights(str(model_cfg.name))


def resolve_checkpoint(path: str | Path, key: str, prefer: Sequence[str]) -> Path:
    """A .ckpt file as given, or the first of ``prefer`` in a run folder's checkpoints/."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for folder in (p / CHECKPOINT_DIR, p):
            for name in prefer:
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(
            f"{key}={path}: the folder has no {' or '.join(prefer)} under {CHECKPOINT_DIR}/; point {key} "
            f"at a .ckpt file or at an hsi-train run folder"
        )
    raise FileNotFoundError(f"{key}={path}: no such file or folder ({p.resolve()})")


def resume_checkpoint(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """What ``trainer.fit(ckpt_path=...)`` gets: None, the folder's last.ckpt, or a given file."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        last = checkpoint_dir / "last.ckpt"
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last: %s does not exist yet, starting a fresh fit", last)
        return None
    return str(resolve_checkpoint(ckpt_path, "ckpt_path", ("last.ckpt",)))
