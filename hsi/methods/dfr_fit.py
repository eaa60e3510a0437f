"""The two last-layer fits of DFR on embeddings (paper 000, §5.2–5.3), plain functions.

- :func:`fit_dfr_paper`: StandardScaler on val, a linear layer trained from scratch on all of
  val, full batch, SGD with a cosine schedule and an l2 penalty;
- :func:`fit_dfr_official`: the public DFR(val) recipe, every subsampling seeded.

:mod:`hsi.methods.dfr` wraps them as recipes (``method/variant=``) and a LightningModule.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from hsi.io import item_rng

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
    n_subsets: int = 20,
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
