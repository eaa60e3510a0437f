"""ERM, JTT and DFR (hsi.methods) on tiny in-memory data, checked against hand computations."""

import hashlib
import json
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hsi.embeddings import EmbeddingCache, embedding_loader, extract_embeddings
from hsi.groups import make_groups
from hsi.methods import (
    DFRModule,
    ERMModule,
    HeadTask,
    JTTModule,
    OfficialRecipe,
    PaperRecipe,
    compute_error_set,
    error_set_report,
    fit_dfr_official,
    fit_dfr_paper,
    official_splits,
    predict_linear,
    upsample_repeats,
    write_error_set,
)
from hsi.methods.erm import PAPER_OPTIMIZER
from hsi.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SIZES = (16, 24, 32)
GROUPS = make_groups(SIZES)


class TinyNet(nn.Module):
    """timm's interface on vectors; batch norm and dropout make train and eval mode differ."""

    def __init__(
        self, in_dim: int = 8, num_features: int = 6, num_classes: int = 3, dropout: float = 0.0
    ):
        super().__init__()
        self.num_classes, self.num_features = num_classes, num_features
        self.body = nn.Sequential(
            nn.Linear(in_dim, num_features), nn.BatchNorm1d(num_features), nn.ReLU()
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def separable(n: int, seed: int, in_dim: int = 8, num_classes: int = 3):
    """Class k = a bump of +3 on feature k plus unit noise; group ids cycle through all 12."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.randn(n, in_dim, generator=gen)
    x[torch.arange(n), y] += 3.0
    g = (torch.arange(n) // num_classes) % len(GROUPS)
    return x, y, g


def loader(x, y, g, batch_size=16, shuffle=False):
    return DataLoader(TensorDataset(x, y, g), batch_size=batch_size, shuffle=shuffle)


def hand_group_metrics(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """Pooled, per-group and worst-group accuracy, counted directly."""
    per_group = {GROUPS[i].name: float((pred[g == i] == y[g == i]).mean()) for i in np.unique(g)}
    return {
        "acc": float((pred == y).mean()),
        "worst_group_acc": min(per_group.values()),
        **{f"group/{k}": v for k, v in per_group.items()},
    }


def trainer(tmp_path, **kw):
    kw.setdefault("logger", CSVLogger(tmp_path, name="run"))
    return L.Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kw,
    )


# =========================================================================== ERM
def test_erm_fit_lowers_loss_and_logs_group_metrics(tmp_path):
    torch.manual_seed(0)
    x, y, g = separable(96, seed=1)
    xv, yv, gv = separable(48, seed=2)
    module = ERMModule(model=TinyNet(), groups=GROUPS, optimizer={**PAPER_OPTIMIZER, "lr": 0.1})

    def train_loss():
        module.eval()
        with torch.no_grad():
            loss = float(F.cross_entropy(module(x), y))
        module.train()
        return loss

    before = train_loss()
    t = trainer(tmp_path, max_epochs=2)
    t.fit(module, loader(x, y, g, shuffle=True), loader(xv, yv, gv))
    assert train_loss() < 0.7 * before

    module.eval()
    with torch.no_grad():
        pred = module(xv).argmax(1).numpy()
    expected = hand_group_metrics(pred, yv.numpy(), gv.numpy())

    rows = pd.read_csv(Path(t.logger.log_dir) / "metrics.csv")
    for name in (
        "val/acc",
        "val/worst_group_acc",
        "val/mean_group_acc",
        "val/acc_easy",
        "val/acc_medium",
        "val/acc_hard",
        "val/acc_size_16",
        "val/group/CeO_16",
        "val/group/CoR_32",
        "train/loss_epoch",
        "train/acc",
    ):
        assert name in rows.columns, name
    last_val = rows.dropna(subset=["val/acc"]).iloc[-1]
    assert (
        len(rows.dropna(subset=["val/acc"])) == 2
    )  # one row per epoch; the sanity check is not logged
    for key, value in expected.items():
        assert last_val[f"val/{key}"] == pytest.approx(value, abs=1e-6), key
        assert module.last_metrics["val"][key] == pytest.approx(value, abs=1e-6), key

    xt, yt, gt = separable(36, seed=3)
    logged = t.test(module, loader(xt, yt, gt), verbose=False)[0]
    with torch.no_grad():
        expected = hand_group_metrics(module(xt).argmax(1).numpy(), yt.numpy(), gt.numpy())
    for key, value in expected.items():
        assert logged[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
        assert module.last_metrics["test"][key] == pytest.approx(value, abs=1e-6), key
    assert module.last_metrics["val"]["acc"] == pytest.approx(
        last_val["val/acc"]
    )  # untouched by test


def test_erm_optimizer_is_the_papers_sgd():
    optimizer = ERMModule(model=TinyNet()).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.9, 1e-3)

    # the optimizer and the schedule are _partial_ config nodes, as conf/method/erm.yaml gives
    cosine = ERMModule(
        model=TinyNet(),
        optimizer=OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.5}),
        lr_scheduler={"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 20},
    ).configure_optimizers()
    scheduler = cosine["lr_scheduler"]["scheduler"]
    assert isinstance(cosine["optimizer"], torch.optim.Adam)
    assert cosine["optimizer"].param_groups[0]["initial_lr"] == 0.5
    assert (
        isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 20
    )
    assert cosine["lr_scheduler"]["interval"] == "epoch"
    with pytest.raises(ValueError, match="optimizer must be a config node with a _target_"):
        ERMModule(model=TinyNet(), optimizer={"lr": 0.1})
    with pytest.raises(ValueError, match="num_classes"):
        ERMModule(model_factory=lambda num_classes: TinyNet(num_classes=num_classes))


def test_erm_checkpoint_holds_the_network_under_model_prefix(tmp_path):
    factory = hydra.utils.instantiate(OmegaConf.load(ROOT / "conf/model/resnet10t.yaml"))
    torch.manual_seed(0)
    module = ERMModule(model_factory=factory, num_classes=3, groups=GROUPS)
    images = torch.randn(8, 3, 32, 32)
    labels, gids = torch.arange(8) % 3, torch.arange(8)
    t = trainer(tmp_path, max_epochs=1, logger=False)
    t.fit(
        module,
        loader(images, labels, gids, batch_size=8),
        loader(images, labels, gids, batch_size=8),
    )
    path = tmp_path / "erm.ckpt"
    t.save_checkpoint(path)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["state_dict"] and all(k.startswith("model.") for k in raw["state_dict"])
    hp = raw["hyper_parameters"]
    assert (hp["method"], hp["model_name"], hp["num_classes"], hp["groups"]) == (
        "erm",
        "resnet10t",
        3,
        [16, 24, 32],
    )
    optimizer = hp["optimizer"]
    assert type(optimizer) is dict and hp["lr_scheduler"] is None  # plain, not config objects
    assert (optimizer["_target_"], optimizer["lr"], optimizer["momentum"]) == (
        "torch.optim.SGD",
        1e-3,
        0.9,
    )
    assert optimizer["weight_decay"] == 1e-3

    expected = module.model.state_dict()
    by_models = create_model("resnet10t", 3, checkpoint=str(path)).state_dict()
    reloaded = ERMModule.load_from_checkpoint(path)  # rebuilt from model_name, no factory needed
    assert [g.name for g in reloaded.groups] == [g.name for g in GROUPS]
    for key, value in expected.items():
        assert torch.equal(by_models[key], value), key
        assert torch.equal(reloaded.model.state_dict()[key], value), key


# =========================================================================== JTT
def test_upsample_multiplicity_is_exact():
    assert upsample_repeats(10, [5, 2], 50).tolist() == [1, 1, 50, 1, 1, 50, 1, 1, 1, 1]
    assert upsample_repeats(10, [2, 5], lambda_up=1).tolist() == [1] * 10


@pytest.mark.parametrize(
    ("errors", "lambda_up", "message"),
    [
        ([], 50, "error set is empty.*ERM checkpoint"),
        ([10], 50, "0..9"),
        ([1, 1], 50, "distinct"),
        ([1], 0, "lambda_up"),
        ([1], 2.5, "lambda_up"),
    ],
)
def test_upsample_rejects_bad_input(errors, lambda_up, message):
    with pytest.raises(ValueError, match=message):
        upsample_repeats(10, errors, lambda_up)


def test_error_set_report_counts_minority_by_hand(tmp_path):
    categories = ["easy", "easy", "medium", "hard", "medium", "easy", "hard", "hard"]
    errors = pd.DataFrame({"error": [True, False, True, True, False, True, False, False]})
    report = error_set_report(errors, categories)
    # errors {0, 2, 3, 5}; minority (medium/hard) {2, 3, 4, 6, 7}; both {2, 3}
    assert (
        report["size"] == 4 and report["num_minority"] == 5 and report["minority_in_error_set"] == 2
    )
    assert report["precision"] == pytest.approx(2 / 4) and report["recall"] == pytest.approx(2 / 5)
    assert report["size_by_category"] == {"easy": 2, "medium": 1, "hard": 1}
    empty = error_set_report([False] * 3, ["easy", "hard", "hard"])
    assert empty["precision"] is None and empty["recall"] == 0.0

    csv, js = write_error_set(tmp_path, errors, report)
    assert pd.read_csv(csv)["error"].tolist() == errors["error"].tolist()
    assert json.loads(js.read_text())["recall"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="easy/medium/hard"):
        error_set_report([True], ["minority"])


class ModeNet(nn.Module):
    """Train mode: always class 0. Eval mode: the class written in feature 0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        cls = torch.zeros(len(x), dtype=torch.long) if self.training else x[:, 0].long()
        return F.one_hot(cls, 3).float() * self.scale


def test_compute_error_set_uses_eval_mode_and_restores_it():
    predicted = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    labels = torch.tensor([0, 1, 1, 2, 0, 0, 2])  # wrong at 2, 4, 6
    groups = torch.tensor([3, 4, 5, 6, 7, 8, 9])
    model = ModeNet().train()
    frame = compute_error_set(
        model, loader(predicted[:, None].float(), labels, groups, batch_size=3)
    )
    assert model.training  # handed back as it came
    assert frame.columns.tolist() == ["index", "label", "pred", "group_id", "error"]
    assert frame["index"].tolist() == list(range(7))
    assert frame["pred"].tolist() == predicted.tolist()  # eval-mode predictions, not all zeros
    assert frame["group_id"].tolist() == groups.tolist()
    assert np.flatnonzero(frame["error"]).tolist() == [2, 4, 6]


def test_jtt_module_records_its_recipe():
    module = JTTModule(
        model=TinyNet(),
        groups=SIZES,
        lambda_up=20,
        stage1_checkpoint="runs/erm/epoch=3.ckpt",
        error_set={"size": 7},
    )
    hp = module.hparams
    assert (hp["method"], hp["lambda_up"], hp["stage1_checkpoint"], hp["error_set"]) == (
        "jtt",
        20,
        "runs/erm/epoch=3.ckpt",
        {"size": 7},
    )
    assert (hp["optimizer"]["lr"], hp["optimizer"]["weight_decay"]) == (1e-3, 1e-3)


# =========================================================================== DFR: embeddings
def test_extract_embeddings_in_eval_mode():
    torch.manual_seed(0)
    net = TinyNet(dropout=0.5)
    x, y, g = separable(20, seed=4)
    net.train()(x)  # move the batch-norm running statistics away from their initial values
    module = ERMModule(model=net)
    X, Y, G = extract_embeddings(module, loader(x, y, g, batch_size=7))
    assert net.training
    with torch.no_grad():
        bn = net.body[1]
        expected = torch.relu(
            (net.body[0](x) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
            + bn.bias
        )
    assert X.dtype == np.float32 and X.shape == (20, 6)
    np.testing.assert_allclose(X, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert Y.tolist() == y.tolist() and G.tolist() == g.tolist()


def test_embedding_cache_extracts_once_per_checkpoint(tmp_path):
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    first.write_bytes(b"checkpoint one")
    second.write_bytes(b"checkpoint two")
    calls = []

    def compute():
        calls.append(1)
        return np.full((4, 3), len(calls), np.float32), np.arange(4), np.arange(4) % 2

    cache = EmbeddingCache(tmp_path / "cache")
    X1, y1, g1 = cache.get_or_compute(first, "val", "hsi-64", compute)
    X2, y2, g2 = cache.get_or_compute(first, "val", "hsi-64", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(X1, X2)
    assert y2.tolist() == [0, 1, 2, 3] and g2.tolist() == [0, 1, 0, 1]
    digest = hashlib.sha256(b"checkpoint one").hexdigest()[:16]
    assert (tmp_path / "cache" / digest / "val-hsi-64.npz").is_file()

    X3, _, _ = EmbeddingCache(tmp_path / "cache").get_or_compute(second, "val", "hsi-64", compute)
    assert len(calls) == 2 and X3[0, 0] == 2.0  # another checkpoint, another key
    other = hashlib.sha256(b"checkpoint two").hexdigest()[:16]
    assert (tmp_path / "cache" / other / "val-hsi-64.npz").is_file()
    with pytest.raises(ValueError, match="data_key"):
        cache.get_or_compute(first, "val", "../escape", compute)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        cache.get_or_compute(tmp_path / "missing.ckpt", "val", "hsi-64", compute)


# =========================================================================== DFR: official
def grouped_features(seed: int, num_classes: int = 3, sizes=(90, 60, 45, 30), dim: int = 10):
    """4 groups of unequal size; the class shifts features 0..K-1, the group shifts feature 5."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(len(sizes)), sizes)
    y = rng.integers(0, num_classes, size=len(g))
    X = rng.normal(size=(len(g), dim))
    X[np.arange(len(g)), y] += 1.5
    X[:, 5] += g
    return X, y, g


def test_official_splits_are_seeded_and_group_balanced():
    _, _, g = grouped_features(0)
    tune_fit, tune_eval, subsets = official_splits(g, 4, seed=7)
    half = len(g) // 2
    assert len(tune_eval) == half and not set(tune_fit) & set(tune_eval)
    assert (
        np.bincount(g[tune_fit]).tolist()
        == [np.bincount(g[np.setdiff1d(np.arange(len(g)), tune_eval)]).min()] * 4
    )
    for subset in subsets:
        assert np.bincount(g[subset]).tolist() == [30, 30, 30, 30] and len(set(subset)) == 120
    assert any(set(subsets[0]) != set(s) for s in subsets[1:])
    again = official_splits(g, 4, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again[2], strict=True))
    assert not np.array_equal(official_splits(g, 4, seed=8)[1], tune_eval)


def test_fit_dfr_official_matches_direct_sklearn():
    X, y, g = grouped_features(1)
    grid, seed = (1.0, 0.3, 0.1, 0.03), 3
    scaler, coef, intercept, chosen = fit_dfr_official(X, y, g, n_subsets=5, c_grid=grid, seed=seed)

    # The same recipe written out with sklearn alone, on the same seeded index sets.
    tune_fit, tune_eval, subsets = official_splits(g, 5, seed)

    def logreg(C):
        return OneVsRestClassifier(
            LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=seed)
        )

    tune_scaler = StandardScaler().fit(X[tune_fit])
    worst = []
    for C in grid:
        clf = logreg(C).fit(tune_scaler.transform(X[tune_fit]), y[tune_fit])
        hit = clf.predict(tune_scaler.transform(X[tune_eval])) == y[tune_eval]
        worst.append(min(hit[g[tune_eval] == k].mean() for k in range(4)))
    assert chosen in grid and chosen == grid[int(np.argmax(worst))]

    full = StandardScaler().fit(X)
    coefs, intercepts = [], []
    for subset in subsets:
        clf = logreg(chosen).fit(full.transform(X[subset]), y[subset])
        coefs.append(np.vstack([e.coef_ for e in clf.estimators_]))
        intercepts.append(np.concatenate([e.intercept_ for e in clf.estimators_]))
    np.testing.assert_allclose(coef, np.mean(coefs, axis=0), atol=1e-8)
    np.testing.assert_allclose(intercept, np.mean(intercepts, axis=0), atol=1e-8)
    np.testing.assert_allclose(scaler.mean_, X.mean(axis=0))

    pred = predict_linear(scaler, coef, intercept, X)
    assert pred.tolist() == np.argmax(full.transform(X) @ coef.T + intercept, axis=1).tolist()
    assert (pred == y).mean() > 0.7


def test_official_binary_and_dfr_module_agree():
    X, y, g = grouped_features(2, num_classes=2)
    scaler, coef, intercept, _ = fit_dfr_official(X, y, g, n_subsets=3, c_grid=(1.0, 0.1))
    assert coef.shape == (1, X.shape[1])
    pred = predict_linear(scaler, coef, intercept, X)
    assert (
        pred.tolist() == ((scaler.transform(X) @ coef[0] + intercept[0]) > 0).astype(int).tolist()
    )
    module = DFRModule.from_official(scaler, coef, intercept).eval()
    with torch.no_grad():
        assert module(torch.as_tensor(X, dtype=torch.float32)).argmax(1).tolist() == pred.tolist()


# =========================================================================== DFR: paper
def blobs(n: int, seed: int, dim: int = 16, num_classes: int = 3):
    """Well separated classes (shift 4 on feature k), features at different offsets and scales."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    X = rng.normal(size=(n, dim))
    X[np.arange(n), y] += 4.0
    return (X * np.linspace(0.5, 3, dim) + np.linspace(-2, 5, dim)).astype(np.float32), y


@pytest.mark.slow
def test_fit_dfr_paper_scaler_penalty_and_determinism():
    X, y = blobs(300, seed=0)
    rng_state = torch.get_rng_state()
    scaler, linear = fit_dfr_paper(X, y, num_classes=3, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global generator is left alone
    np.testing.assert_allclose(scaler.mean_, X.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scaler.scale_, X.astype(np.float64).std(axis=0), rtol=1e-6)
    assert all(torch.isfinite(p).all() for p in linear.parameters())

    x = torch.as_tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    with torch.no_grad():
        assert (linear(x).argmax(1).numpy() == y).mean() > 0.97

    # The documented objective: mean CE + l2 / (2N) * (||W||^2 + ||b||^2); at its minimum the gradient is 0.
    W, b = (p.detach().clone().requires_grad_(True) for p in (linear.weight, linear.bias))
    objective = F.cross_entropy(x @ W.T + b, torch.as_tensor(y)) + 100 / (2 * 300) * (
        W.square().sum() + b.square().sum()
    )
    grads = torch.autograd.grad(objective, [W, b])
    assert max(float(gr.abs().max()) for gr in grads) < 1e-4

    _, again = fit_dfr_paper(X, y, num_classes=3, seed=0)
    assert torch.equal(again.weight, linear.weight) and torch.equal(again.bias, linear.bias)
    with pytest.raises(ValueError, match="method.variant.lr \\* method.variant.l2 = "):
        fit_dfr_paper(X[:90], y[:90], num_classes=3)


def test_dfr_module_tests_on_embeddings_with_val_statistics(tmp_path):
    X, y = blobs(240, seed=1)
    scaler, linear = fit_dfr_paper(X, y, num_classes=3, epochs=200)
    module = DFRModule.from_paper(scaler, linear, GROUPS, checkpoint="erm.ckpt")
    np.testing.assert_allclose(module.feature_mean.numpy(), scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(module.feature_scale.numpy(), scaler.scale_, rtol=1e-6)

    X_test, y_test = blobs(96, seed=2)
    X_test[:, 0] += 3.0  # test statistics differ: the val ones must be used
    g_test = np.arange(96) % 12
    logged = trainer(tmp_path, logger=False).test(
        module, embedding_loader(X_test, y_test, g_test, 40), verbose=False
    )[0]
    with torch.no_grad():
        pred = (
            linear(torch.as_tensor(scaler.transform(X_test), dtype=torch.float32)).argmax(1).numpy()
        )
    expected = hand_group_metrics(pred, y_test, g_test)
    for key, value in expected.items():
        assert logged[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
        assert module.last_metrics["test"][key] == pytest.approx(value, abs=1e-6), key

    copy = DFRModule(16, 3)
    copy.load_state_dict(module.state_dict())  # the scaler travels in the state dict
    with torch.no_grad():
        assert torch.equal(copy(torch.as_tensor(X_test)), module(torch.as_tensor(X_test)))
    assert module.hparams["method"] == "dfr" and module.hparams["checkpoint"] == "erm.ckpt"


def test_official_defaults_are_the_public_scripts_and_the_val_variant_keeps_its_own():
    """OfficialRecipe() is dfr_evaluate_spurious.py: 20 retrains, the final scaler fit on the train
    embeddings; official_val's choices (10 retrains, scaler on val) give another scaler."""
    recipe = OfficialRecipe()
    assert (recipe.n_subsets, recipe.scaler_on) == (20, "train") and "train" in recipe.splits
    X, y, g = grouped_features(3)
    X_train = grouped_features(4)[0] * 2.0 + 1.0  # another distribution than val
    task = HeadTask(3, SIZES, 0, "erm.ckpt", "dfr")
    module = recipe.fit({"val": (X, y, g), "train": (X_train, y, g)}, task)
    assert np.allclose(module.feature_mean.numpy(), X_train.mean(0))
    scaler, coef, intercept, _ = fit_dfr_official(X, y, g, n_subsets=20, scaler_X=X_train)
    again = DFRModule.from_official(scaler, coef, intercept)
    with torch.no_grad():
        x = torch.as_tensor(X, dtype=torch.float32)
        assert torch.allclose(module(x), again(x), atol=1e-6)
    fewer = fit_dfr_official(X, y, g, n_subsets=10, scaler_X=X_train)[1]
    assert not np.allclose(fewer, coef)  # the retrains count: 10 subsets average to other weights
    val = OfficialRecipe(n_subsets=10, scaler_on="val")
    assert val.splits == ("val", "test")
    on_val = val.fit({"val": (X, y, g)}, task)
    assert np.allclose(on_val.feature_mean.numpy(), X.mean(0))


def test_dfr_recipes_are_validated_once_and_fit_their_variant():
    X, y, g = grouped_features(3)
    embeddings = {"val": (X, y, g)}
    module = OfficialRecipe(n_subsets=2, c_grid=(1.0, 0.1), scaler_on="val").fit(
        embeddings, HeadTask(3, SIZES, 0, "erm.ckpt", "dfr")
    )
    assert module.hparams["variant"] == "official" and module.hparams["chosen_C"] in (1.0, 0.1)
    paper = PaperRecipe(epochs=5, lr=1.0, l2=1.0)
    module = paper.fit(embeddings, HeadTask(3, SIZES, 0, "erm.ckpt", "dfr"))
    assert module.hparams["variant"] == "paper" and paper.record() == {
        "epochs": 5,
        "lr": 1.0,
        "l2": 1.0,
    }
    with pytest.raises(ValueError, match="method.variant.*scaler_on"):
        OfficialRecipe(scaler_on="test")
    with pytest.raises(ValueError, match="method.variant.*lr > 0"):
        PaperRecipe(lr=0)
    with pytest.raises(ValueError, match="method.variant.lr or method.variant.l2"):
        PaperRecipe(lr=1.0, l2=1e6).fit(embeddings, HeadTask(3, SIZES, 0, "erm.ckpt", "dfr"))
