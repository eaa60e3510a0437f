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
    earlier = [
        out / RESULTS_FILE,
        *sorted(out.glob(f"{CHECKPOINT_DIR}/*.ckpt")),
        *sorted(out.glob(f"{STAGE1_DIR}/{CHECKPOINT_DIR}/*.ckpt")),
    ]
    found = [p for p in earlier if p.exists()]
    if found:
        raise FileExistsError(
            f"run folder {out} already holds {found[0].relative_to(out)} of an earlier run: resume it "
            f"with ckpt_path=last, or start in a new folder (hydra.run.dir=...)"
        )


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


# --------------------------------------------------------------------------- before any data
def check_model(model_cfg: DictConfig) -> None:
    """The timm model name exists and the model's weights are here and load (weights only)."""
    import timm

    from hsi.models import cached_weights, load_torch_file

    name = str(model_cfg.get("name"))
    if not timm.is_model(name):
        raise ValueError(
            f"model.name={name}: timm has no such model; choose a model config (model=resnet18, "
            f"resnet50 ...) or a name from timm.list_models()"
        )
    if model_cfg.get("checkpoint"):
        path = resolve_checkpoint(
            model_cfg.checkpoint, "model.checkpoint", ("best.ckpt", "last.ckpt")
        )
        load_torch_file(path, "model.checkpoint", mmap=True)
    elif model_cfg.get("weights"):
        path = Path(str(model_cfg.weights)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"model.weights={model_cfg.weights}: no such file; point it at a timm weight file"
            )
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            except Exception as err:  # noqa: BLE001 - one message naming the file
                raise ValueError(
                    f"model.weights={path}: not a readable safetensors file ({err}); point it at "
                    f"another file"
                ) from None
        else:
            load_torch_file(path, "model.weights", mmap=True)
    elif model_cfg.get("pretrained"):
        cached_weights(name)


def check_inputs(cfg: DictConfig) -> None:
    """What is cheap to check before the data is read or built: each error names its key."""
    from hsi.models import load_torch_file

    check_model(cfg.model)
    if cfg.data.get("generate") is not None:
        # the dataset's weights (SAM, LaMa) are needed by prepare_data: named here, before it
        from hsi.generate.inpaint.weights import check_checkpoints

        check_checkpoints(cfg.data.generate, prefix="data.generate.")
    for key in ("batch_size", "eval_batch_size"):
        value = cfg.data.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"data.{key}={value}: must be an integer >= 1")
    erm_checkpoint = cfg.method.get("erm_checkpoint")
    if erm_checkpoint:
        path = resolve_checkpoint(
            erm_checkpoint, "method.erm_checkpoint", stage1_files(cfg.get("selection", "final"))
        )
        load_torch_file(path, "method.erm_checkpoint", mmap=True)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        out = Path(str(cfg.out))
        for folder in (out, out / STAGE1_DIR):
            last = folder / CHECKPOINT_DIR / "last.ckpt"
            if last.is_file():
                load_torch_file(last, "ckpt_path=last")
    elif ckpt_path is not None:
        load_torch_file(resolve_checkpoint(ckpt_path, "ckpt_path", ("last.ckpt",)), "ckpt_path")
    check_out(Path(str(cfg.out)))


def stage1_files(selection: str) -> tuple[str, str]:
    """The checkpoint of an ERM run folder that stage 1 uses: its final model, else its best."""
    return ("best.ckpt", "last.ckpt") if selection == "best" else ("last.ckpt", "best.ckpt")


def check_out(out: Path) -> None:
    """The run folder is a folder this process can write."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={out}: is a file; point out (or hydra.run.dir) at a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"out={out}: cannot create the run folder ({err.strerror}); point out (or "
            f"hydra.run.dir) at a writable folder"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(
            f"out={out}: the run folder is not writable; point out (or hydra.run.dir) at a "
            f"writable folder"
        )


# --------------------------------------------------------------------------- one writer
class RunLockedError(RuntimeError):
    """Another process trains in this run folder."""


class RunLock:
    """An exclusive lock on a run folder (``fcntl.flock`` on ``<out>/.lock``, holding the pid).

    A second hsi-train on the same folder fails at once, naming the process that holds it; the
    lock goes when the process ends, however it ends.
    """

    FILE = ".lock"

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / self.FILE
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"run folder {self.path.parent} is in use by process {holder} (lock {self.path}); "
                f"wait for it to end, or train in another folder (hydra.run.dir=...)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
