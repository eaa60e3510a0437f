"""Deep Feature Reweighting (DFR): retrain the last layer of a frozen ERM model on val.

Paper 000, §5 (DFR row of Table 3, Fig. 7). Stage 1 is an ERM model at epoch T
(``method.erm`` or ``method.erm_checkpoint``); its embeddings come through
:mod:`hsi.embeddings` (extracted once per checkpoint and data). Two recipes, each a
``_target_`` node chosen with ``method/variant=paper|official``:

- :class:`PaperRecipe` (:func:`fit_dfr_paper`): StandardScaler fit on the val embeddings, a
  linear layer trained from scratch on all of val, full batch, SGD lr 1, cosine schedule,
  1000 epochs, l2 penalty 100 (the form is given in the function's docstring);
- :class:`OfficialRecipe` (:func:`fit_dfr_official`): the public DFR(val) recipe:
  group-balanced subsets of val, StandardScaler, L1 logistic regression, C chosen by
  worst-group accuracy on a held-out half, coefficients averaged over seeded subsets.

:class:`DFRModule` holds the result (scaler statistics + linear head) and is evaluated with
``trainer.test`` on an embedding loader (:func:`hsi.embeddings.embedding_loader`), logging the
same group metrics as the other methods.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from sklearn.preprocessing import StandardScaler
from torch import nn

from hsi.embeddings import (
    EmbeddingCache,
    Embeddings,
    data_key,
    embedding_loader,
    extract_embeddings,
)
from hsi.groups import Group
from hsi.methods.base import GroupEvalModule, Method, as_groups, group_sizes
from hsi.methods.dfr_fit import (
    OFFICIAL_C_GRID,
    balanced_subset,
    fit_dfr_official,
    fit_dfr_paper,
    official_splits,
    predict_linear,
)
from hsi.methods.jtt import check_stage1

__all__ = [
    "DFR",
    "DFRModule",
    "OfficialRecipe",
    "PaperRecipe",
    "balanced_subset",
    "fit_dfr_official",
    "fit_dfr_paper",
    "official_splits",
    "predict_linear",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- LightningModule
class DFRModule(GroupEvalModule):
    """The retrained last layer on standardised embeddings: ``linear((x - mean) / scale)``.

    Built by :meth:`from_paper` / :meth:`from_official` (a recipe's ``fit``); evaluated with
    ``trainer.test(module, embedding_loader(X, y, g))``, which logs ``test/...`` group metrics
    and fills ``last_metrics["test"]``. The scaler statistics are buffers, so a checkpoint
    holds the whole classifier.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        groups: Sequence[Group] | Sequence[int] | None = None,
        variant: str = "paper",
        chosen_C: float | None = None,
        checkpoint: str | None = None,
        method: str = "dfr",
    ) -> None:
        super().__init__()
        groups = as_groups(groups)
        self.save_hyperparameters(ignore=["groups"])
        self.save_hyperparameters({**self.hparams, "groups": group_sizes(groups)})
        # the scaler's statistics; set by from_paper / from_official, restored from checkpoints
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_scale", torch.ones(num_features))
        self.linear = nn.Linear(num_features, num_classes)
        self.init_group_metrics(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.feature_mean) / self.feature_scale)

    def _set_scaler(self, scaler: StandardScaler) -> None:
        with torch.no_grad():
            self.feature_mean.copy_(torch.as_tensor(scaler.mean_))
            self.feature_scale.copy_(torch.as_tensor(scaler.scale_))

    @classmethod
    def from_paper(
        cls, scaler: StandardScaler, linear: nn.Linear, groups=None, **hparams: Any
    ) -> DFRModule:
        module = cls(linear.in_features, linear.out_features, groups, "paper", **hparams)
        module._set_scaler(scaler)
        module.linear.load_state_dict(linear.state_dict())
        return module

    @classmethod
    def from_official(
        cls,
        scaler: StandardScaler,
        coef: np.ndarray,
        intercept: np.ndarray,
        groups=None,
        **hparams: Any,
    ) -> DFRModule:
        coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64).ravel()
        if (
            coef.shape[0] == 1
        ):  # binary: logits (0, score) -> argmax is class 1 exactly where score > 0
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        module = cls(coef.shape[1], coef.shape[0], groups, "official", **hparams)
        module._set_scaler(scaler)
        with torch.no_grad():
            module.linear.weight.copy_(torch.as_tensor(coef))
            module.linear.bias.copy_(torch.as_tensor(intercept))
        return module

    def configure_optimizers(self) -> None:
        return None  # fitted by fit_dfr_paper / fit_dfr_official, only evaluated by the Trainer


# --------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class HeadTask:
    """What a recipe's fitted head is for, and what it records beside its weights."""

    num_classes: int
    groups: Any
    seed: int
    checkpoint: str  # the stage-1 model whose embeddings the head is fit on
    method: str


class PaperRecipe:
    """The paper's recipe (``method/variant=paper``): :func:`fit_dfr_paper` on the val embeddings."""

    name = "paper"
    splits = ("val", "test")

    def __init__(self, epochs: int = 1000, lr: float = 1.0, l2: float = 100.0) -> None:
        if int(epochs) < 1 or float(lr) <= 0 or float(l2) < 0:
            raise ValueError(
                f"method.variant (paper): epochs={epochs}, lr={lr}, l2={l2}; need epochs >= 1, "
                f"lr > 0 and l2 >= 0"
            )
        self.options = {"epochs": int(epochs), "lr": float(lr), "l2": float(l2)}

    def fit(self, embeddings: dict[str, Embeddings], task: HeadTask) -> DFRModule:
        X, y, _ = embeddings["val"]
        scaler, linear = fit_dfr_paper(
            X, y, num_classes=task.num_classes, seed=task.seed, **self.options
        )
        return DFRModule.from_paper(
            scaler, linear, task.groups, checkpoint=task.checkpoint, method=task.method
        )

    def record(self) -> dict[str, Any]:
        return dict(self.options)


class OfficialRecipe:
    """The public DFR(val) recipe (``method/variant=official``): :func:`fit_dfr_official`."""

    name = "official"
    SCALER_ON = ("val", "train")

    def __init__(
        self,
        n_subsets: int = 20,
        c_grid: Sequence[float] = OFFICIAL_C_GRID,
        scaler_on: str = "train",
    ) -> None:
        if int(n_subsets) < 1 or not list(c_grid) or scaler_on not in self.SCALER_ON:
            raise ValueError(
                f"method.variant (official): n_subsets={n_subsets}, c_grid={list(c_grid)}, "
                f"scaler_on={scaler_on}; need n_subsets >= 1, a non-empty c_grid and scaler_on "
                f"one of {self.SCALER_ON}"
            )
        self.n_subsets, self.c_grid, self.scaler_on = int(n_subsets), list(c_grid), scaler_on
        self.splits = ("val", "test", "train") if scaler_on == "train" else ("val", "test")

    def fit(self, embeddings: dict[str, Embeddings], task: HeadTask) -> DFRModule:
        X, y, g = embeddings["val"]
        scaler_X = embeddings["train"][0] if "train" in embeddings else None
        scaler, coef, intercept, C = fit_dfr_official(
            X,
            y,
            g,
            n_subsets=self.n_subsets,
            c_grid=self.c_grid,
            seed=task.seed,
            num_classes=task.num_classes,
            scaler_X=scaler_X,
        )
        return DFRModule.from_official(
            scaler,
            coef,
            intercept,
            task.groups,
            chosen_C=C,
            checkpoint=task.checkpoint,
            method=task.method,
        )

    def record(self) -> dict[str, Any]:
        return {"n_subsets": self.n_subsets, "c_grid": self.c_grid}


# --------------------------------------------------------------------------- the method
class DFR(Method):
    """DFR (``method=dfr``): the last layer of the frozen stage-1 model refit on val embeddings.

    Keys: ``name``, ``variant`` (a recipe node), ``cache_dir``, ``erm`` (stage 1: an ERM method
    node), ``erm_checkpoint``.
    """

    def __init__(self, cfg: DictConfig, key: str = "method") -> None:
        super().__init__(cfg, key)
        try:
            self.recipe = instantiate(cfg.variant)  # validated here, once
        except InstantiationException as err:
            cause = err.__cause__
            if isinstance(cause, (ValueError, TypeError)):
                raise ValueError(f"method.variant: {cause}") from None
            raise

    @property
    def selects_on_val(self) -> bool:
        return False  # the last layer is fit on val: its val accuracy is no selection signal

    def check(self, cfg: DictConfig) -> None:
        check_stage1(self.cfg, cfg)

    def run(self, job: Any) -> dict[str, Any]:
        cfg, dm = job.cfg, job.datamodule
        stage1, stage1_record = job.erm_stage1(self.cfg)
        cache, key = EmbeddingCache(self.cfg.cache_dir), data_key(cfg)
        loaders = {
            "train": dm.train_eval_dataloader,
            "val": dm.val_dataloader,
            "test": dm.test_dataloader,
        }
        network: list[torch.nn.Module] = []  # built on the first cache miss only

        def compute(split: str) -> Embeddings:
            if not network:
                network.append(job.stage1_network(stage1))
            log.info("DFR: extracting %s embeddings of %s", split, stage1)
            return extract_embeddings(network[0], loaders[split](), job.eval_device())

        embeddings, cache_files = {}, {}
        for split in self.recipe.splits:
            path = cache.path(stage1, split, key)
            hit = path.is_file()
            embeddings[split] = cache.get_or_compute(stage1, split, key, lambda s=split: compute(s))
            cache_files[split] = {"path": str(path), "hit": hit}
            log.info(
                "DFR: %s embeddings %s %s",
                split,
                "read from the cache" if hit else "cached at",
                path,
            )
        task = HeadTask(job.num_classes, job.groups, int(cfg.seed), str(stage1), self.name)
        module = self.recipe.fit(embeddings, task)
        trainer = job.make_trainer(job.out, job.loggers, checkpointing=False)
        trainer.validate(module, dataloaders=embedding_loader(*embeddings["val"]), verbose=False)
        trainer.test(module, dataloaders=embedding_loader(*embeddings["test"]), verbose=False)
        head = job.checkpoints / "dfr.ckpt"
        trainer.save_checkpoint(head)
        return {
            "epochs": None,  # no network is trained here (stage 1's epochs are under stage1)
            "global_step": None,
            "val": dict(module.last_metrics["val"]),  # on the val samples the layer was fit on
            "test": dict(module.last_metrics["test"]),
            "checkpoints": job.checkpoint_paths(dfr=head, stage1=stage1),
            "stage1": stage1_record,
            "dfr": {
                "variant": self.recipe.name,
                "chosen_C": module.hparams.get("chosen_C"),
                "data_key": key,
                "embeddings": cache_files,
                **self.recipe.record(),
            },
        }
