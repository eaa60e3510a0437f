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
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
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
from hsi.io import item_rng
from hsi.methods.base import GroupEvalModule, Method, as_groups, group_sizes
from hsi.methods.jtt import check_stage1

log = logging.getLogger(__name__)
OFFICIAL_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # the public DFR script's grid


# --------------------------------------------------------------------------- paper recipe
def fit_dfr_paper(
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 1000,
    lr: float = 1.0,
    l2: float = 100.0,
    seed: int = 0,
) -> tuple[StandardScaler, nn.Linear]:
    """The paper's DFR: a linear layer trained from scratch on the standardised val embeddings.

    ``StandardScaler().fit_transform`` on ``X_val`` (apply the returned scaler's ``transform``
    to test); ``nn.Linear(D, num_classes)`` initialised from ``seed``; ``epochs`` full-batch SGD
    steps (no momentum) with learning rate ``lr`` annealed by a cosine schedule to 0.

    The l2 penalty follows the DFR authors' multi-class ImageNet code: SGD ``weight_decay =
    l2 / N`` on weight and bias (N = number of val samples), i.e. the objective

        mean_i CE(W x_i + b, y_i) + l2 / (2 N) * (||W||² + ||b||²)
        = (1 / N) * [ sum_i CE_i + (l2 / 2) * ||θ||² ],

    so ``l2 = 100`` is the coefficient of ``||θ||² / 2`` against the *summed* cross-entropy
    (sklearn's ``C = 1 / l2`` = 0.01, except that sklearn leaves the intercept unpenalised).
    Each step shrinks θ by the factor ``1 - lr_t * l2 / N``, which stays in (0, 1) when
    ``lr * l2 < N``; otherwise the update overshoots and ValueError is raised. (λ as a plain
    weight decay of 100 at lr 1 would multiply θ by -99 per step.)

    The loop is plain torch rather than a Lightning fit: 1000 full-batch steps of one matrix
    product take about a second, and a Trainer would add its per-epoch overhead 1000 times.
    """
    X_val, y_val = np.asarray(X_val), np.asarray(y_val, dtype=np.int64)
    n = len(X_val)
    if X_val.ndim != 2 or n != len(y_val) or n == 0:
        raise ValueError(
            f"X_val must be [N, D] with one label each; got X {X_val.shape}, y {y_val.shape}"
        )
    if y_val.min() < 0 or y_val.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}; got {y_val.min()}..{y_val.max()}"
        )
    if lr * l2 >= n:
        raise ValueError(
            f"DFR paper recipe: method.variant.lr * method.variant.l2 = {lr * l2:g} >= N = {n} val "
            f"samples, so each SGD step would overshoot the l2 term (factor 1 - lr*l2/N <= 0); "
            f"lower method.variant.lr or method.variant.l2, or use more val samples"
        )
    scaler = StandardScaler()
    x = torch.as_tensor(scaler.fit_transform(X_val), dtype=torch.float32)
    y = torch.as_tensor(y_val)
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the global generator alone
        torch.manual_seed(seed)
        linear = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr, weight_decay=l2 / n)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(linear(x), y).backward()
        optimizer.step()
        schedule.step()
    if not all(torch.isfinite(p).all() for p in linear.parameters()):
        raise FloatingPointError(
            "DFR paper recipe diverged (non-finite weights); lower method.variant.lr"
        )
    return scaler, linear.requires_grad_(False)


# --------------------------------------------------------------------------- official recipe
def balanced_subset(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices with the same number of samples from every group present in ``g`` (the smallest
    group's size), drawn without replacement by ``rng``; grouped by ascending group id.

    Groups absent from ``g`` are ignored (the public script would take 0 per group then).
    """
    g = np.asarray(g)
    members = [np.flatnonzero(g == group) for group in np.unique(g)]
    smallest = min(len(m) for m in members)
    return np.concatenate([rng.permutation(m)[:smallest] for m in members])


def official_splits(
    g_val: np.ndarray, n_subsets: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Every random draw of :func:`fit_dfr_official`, each from its own seeded generator.

    Returns ``(tune_fit, tune_eval, subsets)``: a seeded permutation of val split in halves
    (the first ``N // 2`` indices evaluate, as in the public script), ``tune_fit`` = a balanced
    subset of the other half; ``subsets`` = ``n_subsets`` balanced subsets of all of val.
    """
    g_val = np.asarray(g_val)
    order = item_rng(seed, "dfr-official", "halves").permutation(len(g_val))
    half = len(g_val) // 2
    tune_eval, fit_half = order[:half], order[half:]
    tune_fit = fit_half[
        balanced_subset(g_val[fit_half], item_rng(seed, "dfr-official", "tune-subset"))
    ]
    subsets = [
        balanced_subset(g_val, item_rng(seed, "dfr-official", "subset", i))
        for i in range(n_subsets)
    ]
    return tune_fit, tune_eval, subsets


def _logistic_regression(C: float, seed: int) -> OneVsRestClassifier:
    # liblinear with the L1 penalty, as the public DFR script; that script's sklearn ran
    # liblinear one-vs-rest on several classes, which sklearn now asks for explicitly.
    return OneVsRestClassifier(
        LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=seed)
    )


def _fit_coef(
    clf: OneVsRestClassifier, X: np.ndarray, y: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        # liblinear's iteration cap is the public recipe's too; its warning is expected noise
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    if list(clf.classes_) != list(range(num_classes)):
        raise ValueError(
            f"a group-balanced DFR subset holds classes {list(clf.classes_)}, not all of 0..{num_classes - 1}; "
            f"the val split has too few samples per group for every class to appear"
        )
    coef = np.vstack([est.coef_ for est in clf.estimators_])
    intercept = np.concatenate([np.ravel(est.intercept_) for est in clf.estimators_])
    return coef, intercept


def _worst_group_acc(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    return min(float((pred[g == group] == y[g == group]).mean()) for group in np.unique(g))


def fit_dfr_official(
    X_val: np.ndarray,
    y_val: np.ndarray,
    g_val: np.ndarray,
    *,
    n_subsets: int = 10,
    c_grid: Sequence[float] = OFFICIAL_C_GRID,
    seed: int = 0,
    num_classes: int | None = None,
    scaler_X: np.ndarray | None = None,
) -> tuple[StandardScaler, np.ndarray, np.ndarray, float]:
    """The public DFR(val) recipe with every subsampling seeded (see :func:`official_splits`).

    1. Tune: StandardScaler fit on a group-balanced subset of one half of val; for each C in
       ``c_grid`` an L1 logistic regression (liblinear, one-vs-rest for more than two classes)
       on it; worst-group accuracy on the other half; the first C with the best value wins.
    2. Fit: StandardScaler fit on ``scaler_X`` (default: all of val; the public script passes
       the train split's embeddings), the chosen C on ``n_subsets`` group-balanced subsets of
       val, coefficients and intercepts averaged.

    Returns ``(scaler, coef, intercept, chosen_C)``; ``coef`` is [1, D] for two classes (the
    positive class's score) and [K, D] otherwise; see :func:`predict_linear`.
    """
    X_val, y_val, g_val = (
        np.asarray(X_val, np.float64),
        np.asarray(y_val, np.int64),
        np.asarray(g_val, np.int64),
    )
    if not (X_val.ndim == 2 and len(X_val) == len(y_val) == len(g_val)):
        raise ValueError(
            f"X_val [N, D], y_val [N], g_val [N] expected; got {X_val.shape}, {y_val.shape}, {g_val.shape}"
        )
    if not c_grid or n_subsets < 1:
        raise ValueError("fit_dfr_official needs a non-empty c_grid and n_subsets >= 1")
    num_classes = int(y_val.max()) + 1 if num_classes is None else int(num_classes)
    tune_fit, tune_eval, subsets = official_splits(g_val, n_subsets, seed)

    tune_scaler = StandardScaler().fit(X_val[tune_fit])
    x_fit, x_eval = tune_scaler.transform(X_val[tune_fit]), tune_scaler.transform(X_val[tune_eval])
    scores = []
    for C in c_grid:
        coef, intercept = _fit_coef(
            _logistic_regression(C, seed), x_fit, y_val[tune_fit], num_classes
        )
        pred = predict_linear(None, coef, intercept, x_eval)
        scores.append(_worst_group_acc(pred, y_val[tune_eval], g_val[tune_eval]))
    chosen_C = float(c_grid[int(np.argmax(scores))])

    scaler = StandardScaler().fit(X_val if scaler_X is None else np.asarray(scaler_X, np.float64))
    x_all = scaler.transform(X_val)
    fits = [
        _fit_coef(_logistic_regression(chosen_C, seed), x_all[s], y_val[s], num_classes)
        for s in subsets
    ]
    coef = np.mean([c for c, _ in fits], axis=0)
    intercept = np.mean([b for _, b in fits], axis=0)
    return scaler, coef, intercept, chosen_C


def predict_linear(
    scaler: StandardScaler | None, coef: np.ndarray, intercept: np.ndarray, X: np.ndarray
) -> np.ndarray:
    """Class indices of a (scaler, linear) classifier as sklearn predicts them.

    ``coef`` [1, D] is a binary classifier (class 1 where the score is > 0); [K, D] takes the
    argmax. ``scaler=None`` means ``X`` is already standardised.
    """
    x = np.asarray(X, np.float64) if scaler is None else scaler.transform(X)
    scores = x @ np.asarray(coef, np.float64).T + np.asarray(intercept, np.float64)
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.int64)
    return scores.argmax(axis=1).astype(np.int64)


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

    def fit(self, embeddings: dict[str, Embeddings], *, num_classes: int, groups: Any,
            seed: int, checkpoint: str, method: str) -> DFRModule:  # fmt: skip
        X, y, _ = embeddings["val"]
        scaler, linear = fit_dfr_paper(X, y, num_classes=num_classes, seed=seed, **self.options)
        return DFRModule.from_paper(scaler, linear, groups, checkpoint=checkpoint, method=method)

    def record(self) -> dict[str, Any]:
        return dict(self.options)


class OfficialRecipe:
    """The public DFR(val) recipe (``method/variant=official``): :func:`fit_dfr_official`."""

    name = "official"
    SCALER_ON = ("val", "train")

    def __init__(self, n_subsets: int = 10, c_grid: Sequence[float] = OFFICIAL_C_GRID,
                 scaler_on: str = "val") -> None:  # fmt: skip
        if int(n_subsets) < 1 or not list(c_grid) or scaler_on not in self.SCALER_ON:
            raise ValueError(
                f"method.variant (official): n_subsets={n_subsets}, c_grid={list(c_grid)}, "
                f"scaler_on={scaler_on}; need n_subsets >= 1, a non-empty c_grid and scaler_on "
                f"one of {self.SCALER_ON}"
            )
        self.n_subsets, self.c_grid, self.scaler_on = int(n_subsets), list(c_grid), scaler_on
        self.splits = ("val", "test", "train") if scaler_on == "train" else ("val", "test")

    def fit(self, embeddings: dict[str, Embeddings], *, num_classes: int, groups: Any,
            seed: int, checkpoint: str, method: str) -> DFRModule:  # fmt: skip
        X, y, g = embeddings["val"]
        scaler_X = embeddings["train"][0] if "train" in embeddings else None
        scaler, coef, intercept, C = fit_dfr_official(
            X, y, g, n_subsets=self.n_subsets, c_grid=self.c_grid, seed=seed,
            num_classes=num_classes, scaler_X=scaler_X,
        )  # fmt: skip
        return DFRModule.from_official(
            scaler, coef, intercept, groups, chosen_C=C, checkpoint=checkpoint, method=method
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
        self.recipe = instantiate(cfg.variant)  # validated here, once

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
                "DFR: %s embeddings %s %s", split, "read from the cache" if hit else "cached at", path
            )
        module = self.recipe.fit(embeddings, num_classes=job.num_classes, groups=job.groups,
                                 seed=int(cfg.seed), checkpoint=str(stage1), method=self.name)  # fmt: skip
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
