"""The tasks of ``hsi-rank`` after scoring: subsets, retrain, noise, ood, grids (paper 004, §3).

Every task reads the ranking (scores.csv) and, past ``subsets``, the heads: one linear head per
``kind``-``k`` subset of the *train* ranking, trained on the frozen model's cached embeddings
(:mod:`hsi.ranking.heads`), and evaluated on the *val* ranking: the i-th ranked val image of
every class gives the accuracy at rank i (Figs. 3 and 6).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image

from hsi.embeddings import EmbeddingCache
from hsi.io import atomic_write_bytes, atomic_write_csv
from hsi.ranking import noise as noise_mod
from hsi.ranking.features import Frozen, embed_tensors, embeddings, load_frozen
from hsi.ranking.heads import Head, fit_head, load_head, save_head
from hsi.ranking.rank import KINDS, membership, overlaps, subsets
from hsi.ranking.score import BOX_COLUMNS, records_of
from hsi.sources.images import load_rgb
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


# --------------------------------------------------------------------------- noise
def noise_mask(
    row: pd.Series, record: ImageRecord, source: str, resolution: int
) -> np.ndarray | None:
    """The foreground mask of one val image: the detector's box or the ground-truth boxes."""
    if source == "detector":
        box = tuple(float(row[c]) for c in BOX_COLUMNS)
        if any(np.isnan(box)):
            return None
        return noise_mod.box_mask(box, record.width, record.height, resolution)
    if source == "gt":
        if not record.boxes:
            return None
        return noise_mod.union_mask(record.boxes, record.width, record.height, resolution)
    raise ValueError(f"noise.mask={source!r} must be detector or gt")


def spread_ranks(frame: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """At most ``per_class`` images of each class, at evenly spaced ranks (first and last kept)."""
    parts = []
    for _, rows in frame.groupby("label", sort=True):
        rows = rows.sort_values("rank")
        take = np.unique(
            np.linspace(0, len(rows) - 1, min(len(rows), per_class)).round().astype(int)
        )
        parts.append(rows.iloc[take])
    return pd.concat(parts).reset_index(drop=True)


def run_noise(study: Study) -> dict:
    """Fig. 4: each head's accuracy on val images with fg / bg noise of each α (and clean)."""
    cfg = study.cfg.noise
    heads = study.heads()
    frozen = study.frozen
    val = study.split("val")
    if cfg.per_class is not None:
        val = spread_ranks(val, int(cfg.per_class))
    records = records_of(val, study.index)
    transform = frozen.transform()
    alphas = [float(a) for a in cfg.alphas]
    settings = [("clean", 0.0)] + [(region, a) for a in alphas for region in noise_mod.REGIONS]
    correct = {(name, r, a): 0 for name in heads for r, a in settings}
    counted = {(r, a): 0 for r, a in settings}
    skipped = {(r, a): 0 for r, a in settings}
    batch: dict[tuple[str, float], list] = {s: [] for s in settings}
    labels: dict[tuple[str, float], list] = {s: [] for s in settings}

    def flush(setting):
        if not batch[setting]:
            return
        X = embed_tensors(frozen, torch.stack(batch[setting]))
        y = np.asarray(labels[setting])
        for name, head in heads.items():
            correct[(name, *setting)] += int((head.predict(X) == y).sum())
        counted[setting] += len(y)
        batch[setting].clear()
        labels[setting].clear()

    for (_, row), record in zip(val.iterrows(), records, strict=True):
        mask = noise_mask(row, record, str(cfg.mask), frozen.resolution)
        x = transform(Image.fromarray(load_rgb(Path(study.index.root) / record.path)))
        for setting in settings:
            region, alpha = setting
            if region == "clean":
                noisy = x if mask is not None else None
            else:
                noisy = (
                    None
                    if mask is None
                    else noise_mod.perturb(x, mask, alpha, region, int(study.cfg.seed), record.key)
                )
            if noisy is None:
                skipped[setting] += 1
                continue
            batch[setting].append(noisy)
            labels[setting].append(record.label)
            if len(batch[setting]) >= int(study.cfg.batch_size):
                flush(setting)
    for setting in settings:
        flush(setting)
    rows = [
        {
            "head": name,
            "region": r,
            "alpha": a,
            "acc": correct[(name, r, a)] / counted[(r, a)] if counted[(r, a)] else float("nan"),
            "images": counted[(r, a)],
            "skipped": skipped[(r, a)],
        }
        for name in heads
        for r, a in settings
    ]
    table = pd.DataFrame(rows)
    table["mask"] = str(cfg.mask)
    atomic_write_csv(study.out / "noise.csv", table)
    return {"table": table}


# --------------------------------------------------------------------------- OOD
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


def folder_records(root: Path, index: SourceIndex) -> list[ImageRecord]:
    """An ImageNet-A style folder (``<root>/<wnid>/<image>``) as records labelled in the
    source's label space; a wnid the source lacks is an error."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"ood.folder={root}: no such folder (ImageNet-A layout: <wnid>/<images>)"
        )
    labels = {c.wnid: c.index for c in index.classes}
    unknown = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in labels)
    if unknown:
        raise ValueError(
            f"ood.folder={root}: {len(unknown)} wnids are not classes of the source (e.g. {unknown[:3]}); "
            f"the OOD head is the source's head restricted to the folder's wnids"
        )
    records = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        for path in sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES):
            with Image.open(path) as im:
                width, height = im.size
            records.append(
                ImageRecord(
                    path.stem,
                    "ood",
                    folder.name,
                    labels[folder.name],
                    f"{folder.name}/{path.name}",
                    width,
                    height,
                )
            )
    if not records:
        raise ValueError(f"ood.folder={root}: no images under <wnid>/ folders")
    return records


def run_ood(study: Study) -> dict:
    """Fig. 5: each head's accuracy on the OOD images (restricted to their classes) and on val."""
    from hsi.sources import load_source

    cfg = study.cfg.ood
    if cfg.folder:
        root = Path(str(cfg.folder))
        records = folder_records(root, study.index)
        name = str(cfg.name or "ImageNet-A")
    elif cfg.source is not None:
        shifted = load_source(cfg.source)
        root = Path(shifted.root)
        labels = {c.wnid: c.index for c in study.index.classes}
        records = [r for r in shifted.split("val", with_boxes=False) if r.wnid in labels]
        records = [
            ImageRecord(
                r.image_id, "ood", r.wnid, labels[r.wnid], r.path, r.width, r.height, r.boxes
            )
            for r in records
        ]
        name = str(cfg.name or "shifted source")
        if not records:
            raise ValueError(f"ood.source at {root}: no val images of the ranked source's classes")
    elif cfg.hsi:
        return _hsi_ood(study, Path(str(cfg.hsi)), str(cfg.name or "HSI test groups"))
    else:
        raise ValueError(
            "the ood task needs ood.folder=<ImageNet-A folder>, ood.hsi=<a built "
            "Hard-Spurious-ImageNet folder> or an ood.source node"
        )
    heads = study.heads()
    X, y = study.embed(records, "ood", root)
    # the benchmark's subset-head protocol: only the logits of the OOD set's classes compete
    columns = sorted({int(v) for v in y})
    X_val, y_val = study.val_embeddings()
    rows = [
        {
            "head": h,
            "ood": name,
            "ood_acc": float((head.predict(X, columns) == y).mean()),
            "ood_images": len(y),
            "ood_classes": len(columns),
            "in_dist_acc": float((head.predict(X_val) == y_val).mean()),
        }
        for h, head in heads.items()
    ]
    table = pd.DataFrame(rows)
    atomic_write_csv(study.out / "ood.csv", table)
    return {"table": table, "name": name}


def _hsi_ood(study: Study, folder: Path, name: str) -> dict:
    """The test split of a built Hard-Spurious-ImageNet dataset as the OOD set (a fresh
    machine's stand-in for ImageNet-A): overall, worst-group and per-group accuracy per head,
    each head restricted to the dataset's classes (hsi.benchmark's subset-head protocol)."""
    from omegaconf import OmegaConf

    from hsi.benchmark import subset_columns
    from hsi.data.modules import HSIDataModule
    from hsi.embeddings import extract_embeddings
    from hsi.generate.layout import DatasetFolder
    from hsi.generate.spec import without_runtime_keys

    built = DatasetFolder(folder)
    if not built.config_path.is_file():
        raise FileNotFoundError(
            f"ood.hsi={folder}: no {built.config_path.name}; point it at an hsi-generate output"
        )
    generate = OmegaConf.load(built.config_path)
    generate.out = str(folder)
    frozen = study.frozen
    dm = HSIDataModule(
        generate, eval_batch_size=int(study.cfg.batch_size), mean=frozen.mean, std=frozen.std
    )
    dm.setup("test")
    columns = subset_columns(dm.recipe)
    node = {"generate": without_runtime_keys(OmegaConf.to_container(generate, resolve=True))}
    node.update(mean=frozen.mean, std=frozen.std)
    digest = hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()
    X, y, g = study.cache().get_or_compute(
        frozen.weights,
        "hsi-test",
        f"hsi-{digest[:16]}",
        lambda: extract_embeddings(frozen.net, dm.test_dataloader(), frozen.device),
    )
    truth = np.asarray(columns, np.int64)[y]  # dataset labels -> the source's labels
    names = {grp.id: grp.name for grp in dm.groups}
    X_val, y_val = study.val_embeddings()
    rows, group_rows = [], []
    for h, head in study.heads().items():
        right = head.predict(X, columns) == truth
        per_group = {names[int(i)]: float(right[g == i].mean()) for i in np.unique(g)}
        rows.append(
            {
                "head": h,
                "ood": name,
                "ood_acc": float(right.mean()),
                "ood_worst_group_acc": min(per_group.values()),
                "ood_images": len(y),
                "ood_classes": len(columns),
                "in_dist_acc": float((head.predict(X_val) == y_val).mean()),
            }
        )
        group_rows += [{"head": h, "group": k, "acc": v} for k, v in per_group.items()]
    table = pd.DataFrame(rows)
    atomic_write_csv(study.out / "ood.csv", table)
    atomic_write_csv(study.out / "ood_groups.csv", pd.DataFrame(group_rows))
    return {"table": table, "name": name}


# --------------------------------------------------------------------------- grids
def run_grids(study: Study) -> dict:
    """Figs. 1 / 7: per chosen class, its least (first row) and most (second row) spurious
    images of one split with their detector scores and boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    cfg = study.cfg.grids
    frame = study.split(str(cfg.split))
    names = {c.wnid: c.name for c in study.index.classes}
    wnids = (
        [str(w) for w in cfg.classes]
        if cfg.classes
        else sorted(frame["wnid"].unique())[: int(cfg.count)]
    )
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise ValueError(f"grids.classes: {unknown} are not wnids of the source")
    n = int(cfg.images)
    fig, axes = plt.subplots(
        2 * len(wnids), n, figsize=(1.8 * n, 2.0 * 2 * len(wnids)), squeeze=False
    )
    for c, wnid in enumerate(wnids):
        rows = frame[frame["wnid"] == wnid].sort_values("rank")
        for part, chosen in enumerate((rows.head(n), rows.tail(n).iloc[::-1])):
            for j in range(n):
                ax = axes[2 * c + part, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(chosen):
                    ax.axis("off")
                    continue
                row = chosen.iloc[j]
                ax.imshow(load_rgb(Path(study.index.root) / row["path"]))
                box = [row[col] for col in BOX_COLUMNS]
                if not any(pd.isna(box)):
                    ax.add_patch(
                        patches.Rectangle(
                            (box[0], box[1]),
                            box[2] - box[0],
                            box[3] - box[1],
                            fill=False,
                            color="lime",
                            lw=1.5,
                        )
                    )
                ax.set_title(f"rank {int(row['rank'])}  {row['score']:.2f}", fontsize=7)
            label = "least spurious" if part == 0 else "most spurious"
            axes[2 * c + part, 0].set_ylabel(f"{names[wnid]}\n{label}", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    path = atomic_write_bytes(study.out / "ranked_grid.png", buffer.getvalue())
    return {"figure": path, "classes": wnids}
