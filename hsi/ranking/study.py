"""What every task of ``hsi-rank`` after scoring shares, and two of them (paper 004, §3.1).

The Study holds the ranking (scores.csv) and, lazily, the frozen model and the heads: one linear
head per ``kind``-``k`` subset of the *train* ranking, trained on the frozen model's cached
embeddings (:mod:`hsi.ranking.heads`), and evaluated on the *val* ranking: the i-th ranked val
image of every class gives the accuracy at rank i (Figs. 3 and 6).

    subsets  subsets.csv and overlaps.csv (run_subsets)
    retrain  accuracy_vs_rank.csv / .png and retrain.csv (run_retrain)

The other tasks take a Study too: noise (:mod:`hsi.ranking.noise`), ood (:mod:`hsi.ranking.ood`)
and grids (:mod:`hsi.ranking.grids`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from hsi.embeddings import EmbeddingCache
from hsi.io import atomic_write_bytes, atomic_write_csv
from hsi.ranking.features import Frozen, embeddings, load_frozen
from hsi.ranking.heads import Head, fit_head, load_head, save_head
from hsi.ranking.rank import KINDS, membership, overlaps, subsets
from hsi.ranking.score import records_of
from hsi.sources.record import ImageRecord, SourceIndex


@dataclass
class Study:
    """What the tasks share: the config, the source, the ranking and (lazily) model and heads."""

    cfg: DictConfig
    out: Path
    index: SourceIndex
    scores: pd.DataFrame
    _frozen: Frozen | None = None
    _heads: dict[str, Head] | None = None
    _val: tuple[np.ndarray, np.ndarray] | None = None
    results: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    def split(self, split: str) -> pd.DataFrame:
        frame = self.scores[self.scores["split"] == split].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"scores hold no {split} images; run the score task on this source")
        return frame

    def kinds(self) -> list[str]:
        kinds = [str(k) for k in self.cfg.subsets.kinds]
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"subsets.kinds={kinds}: each must be one of {list(KINDS)}")
        return kinds

    def ks(self) -> list[int]:
        ks = [int(k) for k in self.cfg.subsets.ks]
        if not ks or min(ks) < 1:
            raise ValueError(f"subsets.ks={ks}: give one or more k >= 1")
        return ks

    def chosen(self) -> dict[str, pd.DataFrame]:
        return subsets(self.split("train"), self.kinds(), self.ks(), int(self.cfg.seed))

    # ------------------------------------------------------------------ model and heads
    @property
    def frozen(self) -> Frozen:
        if self._frozen is None:
            from hsi.benchmark import pick_device

            self._frozen = load_frozen(
                self.cfg.model,
                self.num_classes,
                int(self.cfg.resolution),
                pick_device(str(self.cfg.device)),
            )
        return self._frozen

    def cache(self) -> EmbeddingCache:
        root = self.cfg.embeddings.cache or (self.out / "cache" / "embeddings")
        return EmbeddingCache(root)

    def embed(self, records: list[ImageRecord], tag: str, root: Path | None = None):
        return embeddings(
            self.frozen,
            records,
            Path(root or self.index.root),
            self.cache(),
            tag,
            int(self.cfg.batch_size),
            int(self.cfg.workers or 0),
        )

    def heads(self) -> dict[str, Head]:
        """One head per subset, loaded from heads/ when the same fit was saved before."""
        if self._heads is not None:
            return self._heads
        chosen = self.chosen()
        train = self.split("train")
        union = train[train["key"].isin(set().union(*(set(f["key"]) for f in chosen.values())))]
        X, y = self.embed(records_of(union, self.index), "train")
        position = {key: i for i, key in enumerate(union["key"])}
        r = self.cfg.retrain
        weights_key = self.cache().checkpoint_key(self.frozen.weights)
        self._heads = {}
        for name, frame in chosen.items():
            rows = np.array([position[k] for k in frame["key"]], dtype=np.int64)
            settings = [weights_key, int(r.epochs), float(r.lr), float(r.l2), int(self.cfg.seed)]
            digest = hashlib.sha256(
                json.dumps([settings, frame["key"].tolist()]).encode("utf-8")
            ).hexdigest()[:12]
            path = self.out / "heads" / f"{name}-{digest}.pt"
            if path.is_file():
                self._heads[name] = load_head(path)
                continue
            head = fit_head(
                X[rows],
                y[rows],
                self.num_classes,
                int(r.epochs),
                float(r.lr),
                float(r.l2),
                int(self.cfg.seed),
            )
            save_head(path, head)
            self._heads[name] = head
        return self._heads

    def val_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self._val is None:
            self._val = self.embed(records_of(self.split("val"), self.index), "val")
        return self._val


# --------------------------------------------------------------------------- subsets
def run_subsets(study: Study) -> dict:
    train = study.split("train")
    chosen = study.chosen()
    table = membership(chosen)
    shared = overlaps(train, study.ks(), int(study.cfg.seed))
    atomic_write_csv(study.out / "subsets.csv", table)
    atomic_write_csv(study.out / "overlaps.csv", shared)
    sizes = table.groupby("subset", sort=False)["key"].size()
    return {"subsets": sizes.to_dict(), "overlaps": shared}


# --------------------------------------------------------------------------- retrain
def accuracy_vs_rank(val: pd.DataFrame, predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per val rank i: the classes with an i-th image and each head's accuracy on those images."""
    labels = val["label"].to_numpy()
    table = pd.DataFrame({"rank": val["rank"].to_numpy()})
    for name, pred in predictions.items():
        table[name] = (pred == labels).astype(np.float64)
    grouped = table.groupby("rank", sort=True)
    out = grouped.mean().reset_index()
    out.insert(1, "images", grouped.size().to_numpy())
    return out


def plot_accuracy_vs_rank(
    table: pd.DataFrame, means: dict[str, float], title: str, path: Path
) -> Path:
    """Figs. 3 / 6: accuracy by val rank, one line per head, its mean as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(means):
        colour = f"C{i % 10}"
        ax.plot(table["rank"], table[name], color=colour, lw=1, label=name)
        ax.axhline(means[name], color=colour, ls="--", lw=1)
    ax.set_xlabel("spuriousness rank of the val image (0 = highest detector score)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def run_retrain(study: Study) -> dict:
    heads = study.heads()
    X_val, y_val = study.val_embeddings()
    val = study.split("val")
    predictions = {name: head.predict(X_val) for name, head in heads.items()}
    table = accuracy_vs_rank(val, predictions)
    means = {name: float((pred == y_val).mean()) for name, pred in predictions.items()}
    atomic_write_csv(study.out / "accuracy_vs_rank.csv", table)
    summary = pd.DataFrame(
        [
            {"head": n, "kind": n.split("-")[0], "k": int(n.split("-")[1]), "val_acc": a}
            for n, a in means.items()
        ]
    )
    atomic_write_csv(study.out / "retrain.csv", summary)
    figure = plot_accuracy_vs_rank(
        table,
        means,
        f"{study.frozen.name}: heads retrained on ranked subsets",
        study.out / "accuracy_vs_rank.png",
    )
    return {"table": table, "means": means, "figure": figure}
