"""Just Train Twice (JTT): paper 000, §5.2–5.3.

Stage 1 is an ERM model at epoch T (``method.erm``: the ERM method's settings, composed from
conf/method/erm.yaml; or ``method.erm_checkpoint``). Its error set is the train samples it misclassifies
in a separate pass in eval mode with eval transforms (no augmentation, no dropout). Stage 2
trains a fresh model with the paper's ERM recipe on the train split in which every error
example appears ``lambda_up`` times **in total** and every other example once (public JTT
code counts the factor differently per repository; this is the one definition used here).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from hsi.io import atomic_write_csv, atomic_write_text
from hsi.methods.base import Method, evaluating, split_batch
from hsi.methods.erm import ERM, ERMModule
from hsi.train.ddp import from_main_process, is_main_process

log = logging.getLogger(__name__)

MINORITY = ("medium", "hard")  # the groups JTT's error set is meant to find


def compute_error_set(
    model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu"
) -> pd.DataFrame:
    """One row per sample of ``loader`` (in its order): ``index, label, pred, group_id, error``.

    ``loader`` must iterate the train split in a fixed order with eval transforms (e.g.
    ``HSIDataModule.train_eval_dataloader()``); ``index`` is the position in that order. The
    model runs in eval mode without gradients and is handed back in its former mode.
    """
    labels, preds, group_ids = [], [], []
    with evaluating(model, device):
        for batch in loader:
            x, y, g = split_batch(batch)
            if y is None:
                raise ValueError("the error-set loader must yield (x, y, group_id) batches")
            preds.append(model(x.to(device)).argmax(dim=1).cpu())
            labels.append(y.cpu())
            group_ids.append(torch.zeros_like(y) if g is None else g.cpu())
    label = torch.cat(labels).numpy().astype(np.int64)
    pred = torch.cat(preds).numpy().astype(np.int64)
    return pd.DataFrame(
        {
            "index": np.arange(len(label), dtype=np.int64),
            "label": label,
            "pred": pred,
            "group_id": torch.cat(group_ids).numpy().astype(np.int64),
            "error": pred != label,
        }
    )


def error_set_report(
    errors: pd.DataFrame | Sequence[bool], categories: Sequence[str]
) -> dict[str, Any]:
    """How well the error set finds the minority (Medium ∪ Hard) train samples.

    ``errors``: :func:`compute_error_set`'s frame (its ``error`` column) or a boolean per sample;
    ``categories``: each sample's category (easy/medium/hard) in the same order. Returns
    ``size``, ``num_samples``, ``num_minority``, ``minority_in_error_set``, ``precision``
    (share of the error set that is minority; None for an empty set), ``recall`` (share of the
    minority samples in the error set; None without minority samples) and ``size_by_category``.
    """
    is_error = np.asarray(
        errors["error"] if isinstance(errors, pd.DataFrame) else errors, dtype=bool
    )
    categories = np.asarray(categories, dtype=object)
    if is_error.shape != categories.shape:
        raise ValueError(f"{len(is_error)} error flags but {len(categories)} categories")
    unknown = sorted(set(categories) - {"easy", "medium", "hard"})
    if unknown:
        raise ValueError(f"categories must be easy/medium/hard; got {unknown}")
    minority = np.isin(categories, MINORITY)
    size, num_minority = int(is_error.sum()), int(minority.sum())
    hits = int((is_error & minority).sum())
    return {
        "size": size,
        "num_samples": int(len(is_error)),
        "num_minority": num_minority,
        "minority_in_error_set": hits,
        "precision": hits / size if size else None,
        "recall": hits / num_minority if num_minority else None,
        "size_by_category": {
            c: int((is_error & (categories == c)).sum()) for c in ("easy", "medium", "hard")
        },
    }


def check_lambda_up(lambda_up: int) -> int:
    """``lambda_up`` (total appearances of an error example) as an int >= 1, or ValueError."""
    if isinstance(lambda_up, bool) or int(lambda_up) != lambda_up or lambda_up < 1:
        raise ValueError(
            f"method.lambda_up={lambda_up}: the total appearances of an error example must be an "
            f"integer >= 1"
        )
    return int(lambda_up)


def _checked_errors(
    n: int, error_indices: Sequence[int] | np.ndarray, lambda_up: int
) -> np.ndarray:
    check_lambda_up(lambda_up)
    errors = np.asarray(error_indices, dtype=np.int64).ravel()
    if errors.size == 0:
        raise ValueError(
            "the JTT error set is empty: the stage-1 ERM model classifies every train sample "
            "correctly, so there is nothing to upsample. Take an earlier ERM checkpoint (fewer "
            "epochs, jtt.stage1 at a smaller epoch) or check the train data (labels, groups)"
        )
    if errors.min() < 0 or errors.max() >= n:
        raise ValueError(
            f"error indices must lie in 0..{n - 1}; got {errors.min()}..{errors.max()}"
        )
    if len(np.unique(errors)) != errors.size:
        raise ValueError("error indices must be distinct")
    return errors


def upsample_repeats(
    n: int, error_indices: Sequence[int] | np.ndarray, lambda_up: int
) -> np.ndarray:
    """Appearances per sample: ``lambda_up`` for the error set, 1 for the rest (length ``n``).

    What the data module's ``upsample_train`` hook takes.
    """
    errors = _checked_errors(n, error_indices, lambda_up)
    repeats = np.ones(n, dtype=np.int64)
    repeats[errors] = int(lambda_up)
    return repeats


def write_error_set(
    out_dir: str | Path, errors: pd.DataFrame, report: dict[str, Any]
) -> tuple[Path, Path]:
    """Save ``error_set.csv`` (the frame) and ``error_set.json`` (the report) atomically."""
    out_dir = Path(out_dir)
    csv = atomic_write_csv(out_dir / "error_set.csv", errors)
    js = atomic_write_text(
        out_dir / "error_set.json", json.dumps(report, indent=2, sort_keys=True) + "\n"
    )
    return csv, js


class JTTModule(ERMModule):
    """Stage 2 of JTT: the ERM recipe on the upsampled train split (the data module upsamples).

    Its own class so that checkpoints and hparams carry ``lambda_up``, the stage-1 checkpoint
    and the error-set report.
    """

    def __init__(
        self,
        *args: Any,
        lambda_up: int = 50,
        stage1_checkpoint: str | None = None,
        error_set: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """ERMModule's arguments, plus JTT's own (recorded in the hyper-parameters)."""
        kwargs.setdefault("method", "jtt")
        super().__init__(*args, **kwargs)


class JTT(Method):
    """JTT (``method=jtt``): the stage-1 model's error set, then ERM on the upsampled train split.

    Keys: ``name``, ``epochs`` (stage 2), ``lambda_up``, ``module``, ``optimizer``,
    ``lr_scheduler`` (stage 2), ``erm`` (stage 1: an ERM method node), ``erm_checkpoint``.
    """

    def __init__(self, cfg: DictConfig, key: str = "method") -> None:
        super().__init__(cfg, key)
        self.lambda_up = check_lambda_up(cfg.lambda_up)  # the one place lambda_up is read
        self.stage2 = ERM(cfg, key)

    def check(self, cfg: DictConfig) -> None:
        self.stage2.check(cfg)
        sampling = cfg.data.get("sampling")
        if sampling != "standard":
            raise ValueError(
                f"method=jtt upsamples the train split as built: use data=hsi (hsi_v2, hsi_sam) "
                f"with data.sampling=standard (got data.sampling={sampling})"
            )
        check_stage1(self.cfg, cfg)

    def run(self, job: Any) -> dict[str, Any]:
        cfg, dm = job.cfg, job.datamodule
        stage1, stage1_record = job.erm_stage1(self.cfg)
        errors = compute_error_set(
            job.stage1_network(stage1, require_head=True),
            dm.train_eval_dataloader(),
            job.eval_device(),
        )
        errors = from_main_process(errors)
        train_set = dm.dataset("train")
        errors.insert(1, "sample_id", train_set.sample_ids)
        errors["category"] = [job.groups[g].category for g in errors["group_id"]]
        errors["group"] = [job.groups[g].name for g in errors["group_id"]]
        report = error_set_report(errors, errors["category"])
        repeats = upsample_repeats(
            len(errors), np.flatnonzero(errors["error"].to_numpy()), self.lambda_up
        )
        report["epoch_size"] = dm.upsample_train(repeats)
        errors["multiplicity"] = repeats
        report["lambda_up"] = self.lambda_up
        if is_main_process():  # under DDP every process computed the same error set
            write_error_set(job.out, errors, report)
        log.info(
            "JTT error set: %d of %d train samples (precision %.3f, recall %s against Medium+Hard)",
            report["size"],
            report["num_samples"],
            report["precision"] or 0.0,
            report["recall"],
        )

        L.seed_everything(
            int(cfg.seed), workers=True
        )  # stage 2 starts from stage 1's initial weights
        module = self.stage2.build_module(
            job, stage1_checkpoint=str(stage1), lambda_up=self.lambda_up, error_set=report
        )
        outcome = job.fit(module, job.out, job.loggers, None, cfg.ckpt_path, job.main_callbacks())
        results = {
            "epochs": outcome.epochs,
            "global_step": outcome.global_step,
            **job.evaluate(outcome),
        }
        results["checkpoints"] = job.checkpoint_paths(
            best=outcome.best, last=outcome.last, stage1=stage1
        )
        results["stage1"] = stage1_record
        results["error_set"] = {**report, "file": str(job.out / "error_set.csv")}
        return results


def check_stage1(method_cfg: DictConfig, cfg: DictConfig) -> None:
    """Stage 1 given (``method.erm_checkpoint``) or trainable (``method.erm.epochs`` >= 1)."""
    if method_cfg.get("erm_checkpoint"):
        return
    ERM(method_cfg.erm, key="method.erm").check(cfg)
