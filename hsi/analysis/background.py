"""Background-only accuracy: how well a model names a class from its background alone
(paper 000, §3.3 and §4.1).

Every val image of the source with boxes has every object inpainted away -- the very ``bg`` asset
that `hsi-generate build` makes (hsi.generate.assets: one inpainting call over the union of the
boxes, resized to the dataset's resolution). A model then classifies these backgrounds; per
class, its accuracy and its mean softmax probability of the true class are recorded:

    background_accuracy.csv   wnid, name, label, images, correct, accuracy, mean_true_prob, chance

High accuracy = the class is predictable from its background (spurious); low = the model needs
the object (core-reliant). hsi.generate.pairs.select_pairs reads this table for v2.

Where the backgrounds come from: a dataset folder built at this resolution (``data.generate.out``)
already holds the ``bg`` assets of the source images its recipe uses; every other val image is
made here by the generate package's own asset maker with ``data.generate``'s masker, inpainter and
resolution (the bytes the build would write) into ``cache`` (default: the run folder), where a
rerun finds them.

The model is anything hsi-benchmark can load (hsi.benchmark.model_config / load_model): a head
on every source class is restricted to the analysed classes (the subset-head protocol); a head
with exactly one output per analysed class is used as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hsi.data.transforms import eval_transform
from hsi.generate.assets import AssetStore
from hsi.generate.layout import DatasetFolder, DatasetSpec
from hsi.io import atomic_write_csv
from hsi.progress import Progress
from hsi.sources.record import ImageRecord, SourceIndex

log = logging.getLogger(__name__)

ACCURACY_FILE = "background_accuracy.csv"
COLUMNS = (
    "wnid",
    "name",
    "label",
    "images",
    "correct",
    "accuracy",
    "mean_true_prob",
    "chance",
)


# --------------------------------------------------------------------------- backgrounds
def generation_settings(generate: DictConfig | Mapping) -> DictConfig:
    """A plain copy of the generation config (`data.generate`) whose backgrounds are used."""
    return OmegaConf.create(
        OmegaConf.to_container(generate, resolve=True)
        if isinstance(generate, DictConfig)
        else dict(generate)
    )


def built_store(generate: DictConfig) -> AssetStore | None:
    """The dataset folder's assets, when it was built at this resolution (else None).

    Its backgrounds are those `generate` makes when its masker and inpainter are the folder's;
    the folder's config.yaml says which (hsi-generate validate checks a folder against it).
    """
    folder = DatasetFolder(generate.out)
    if not folder.config_path.is_file():
        return None
    resolution = DatasetSpec.from_config(generate.dataset).resolution
    built = folder.spec().resolution
    if built != resolution:
        log.warning(
            "%s was built at %d px, not %d: its backgrounds are not used",
            folder.out,
            built,
            resolution,
        )
        return None
    return AssetStore(folder.out, cache_size=0)


def val_records(index: SourceIndex, classes: Sequence[str] | None = None) -> list[ImageRecord]:
    """The source's val images with boxes (of `classes`, default all), sorted by key."""
    wanted = None if classes is None else {str(w) for w in classes}
    unknown = sorted((wanted or set()) - set(index.wnids))
    if unknown:
        raise ValueError(f"classes not in the source's class list: {unknown}")
    records = [r for r in index.split("val") if wanted is None or r.wnid in wanted]
    if not records:
        raise ValueError(f"source at {index.root} has no val images with boxes for these classes")
    return sorted(records, key=lambda r: r.key)


def ensure_backgrounds(
    generate: DictConfig,
    index: SourceIndex,
    records: Sequence[ImageRecord],
    cache: str | Path,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Path]:
    """{image key: bg PNG} for every record: the dataset folder's, the cache's, or made now.

    Missing backgrounds are made by hsi.generate.build's own worker (`make_item`) into the
    cache folder's assets; an image that fails to decode or inpaint raises with its reason.
    """
    from hsi.generate.build import AssetMaker, AssetTask, WorkerSettings, make_item
    from hsi.workers import ordered_map

    spec = DatasetSpec.from_config(generate.dataset)
    cached = AssetStore(cache, cache_size=0)
    stores = [s for s in (built_store(generate), cached) if s is not None]
    paths: dict[str, Path] = {}
    tasks = []
    for r in records:
        for store in stores:
            if store.path("bg", r.key).is_file():  # atomic writes: a file that exists is whole
                paths[r.key] = store.path("bg", r.key)
                break
        else:
            boxes = tuple(tuple(map(float, b)) for b in r.boxes)
            path = str((Path(index.root) / r.path).resolve())
            tasks.append(AssetTask(r.key, path, r.width, r.height, boxes))
    if tasks:
        log.info("making %d missing backgrounds into %s", len(tasks), cached.root)
        Path(cache).mkdir(parents=True, exist_ok=True)
        settings = WorkerSettings(
            mask=OmegaConf.to_container(generate.mask, resolve=True),
            inpaint=OmegaConf.to_container(generate.inpaint, resolve=True),
            out=str(cache),
            resolution=spec.resolution,
            core_box=spec.core_box,
            crop_cap=spec.crop_cap,
            with_alpha=False,
            journal=str(Path(cache) / ".journal-backgrounds"),
        )
        results = ordered_map(
            make_item,
            tasks,
            workers=workers,
            init=AssetMaker,
            init_args=(settings,),
            progress=progress,
            desc="backgrounds",
            unit="img",
        )
        failed = [(res.key, res.reason) for res in results if res.status != "ok"]
        if failed:
            raise ValueError(
                f"{len(failed)} backgrounds could not be made (e.g. {failed[0][0]}: "
                f"{failed[0][1]}); fix the source images or leave their classes out (classes=)"
            )
        for task in tasks:
            paths[task.key] = cached.path("bg", task.key)
    return paths


class _Backgrounds(Dataset):
    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


# --------------------------------------------------------------------------- accuracy
@torch.inference_mode()
def predict_probabilities(
    net: torch.nn.Module,
    paths: Sequence[Path],
    columns: Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Softmax over the kept logits (`columns`, None: all) of each image: N x K float64."""
    net.eval().to(device)
    data = _Backgrounds(paths, [0] * len(paths), eval_transform(mean, std))
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    index = None if columns is None else torch.tensor(list(columns), device=device)
    out = []
    with Progress(len(loader), "background-only", unit="batch", enabled=progress) as bar:
        for x, _ in loader:
            logits = net(x.to(device)).float()
            if index is not None:
                logits = logits.index_select(1, index)
            out.append(torch.softmax(logits, dim=1).double().cpu().numpy())
            bar.update(1)
    return np.concatenate(out) if out else np.zeros((0, 0))


def accuracy_table(
    probabilities: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    names: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per class (label k = classes[k]): images, correct, accuracy, mean true-class probability.

    A class without images gets NaN accuracy (and is still listed). `chance` = 1/K.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1) if len(labels) else labels
    rows = []
    for k, wnid in enumerate(classes):
        mine = labels == k
        n = int(mine.sum())
        correct = int((predicted[mine] == k).sum())
        rows.append(
            {
                "wnid": wnid,
                "name": (names or {}).get(wnid, wnid),
                "label": k,
                "images": n,
                "correct": correct,
                "accuracy": correct / n if n else float("nan"),
                "mean_true_prob": float(probabilities[mine, k].mean()) if n else float("nan"),
                "chance": 1.0 / len(classes),
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def read_accuracy_table(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"wnid": str})
    missing = [c for c in ("wnid", "accuracy") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    return table


def background_accuracy(cfg: DictConfig, index: SourceIndex | None = None) -> pd.DataFrame:
    """Task `background` of hsi-analyze: the table, written to <out>/background_accuracy.csv.

    A run folder that already holds the table is not evaluated again.
    """
    from hsi.benchmark import load_model, model_config, pick_device
    from hsi.models import model_input_config
    from hsi.sources import load_source

    out = Path(str(cfg.out))
    done = out / ACCURACY_FILE
    if done.is_file():
        log.info("%s exists: background-only accuracy not evaluated again", done)
        return read_accuracy_table(done)
    generate = generation_settings(cfg.data.generate)
    index = index or load_source(generate.source)
    classes = sorted(index.wnids) if cfg.classes is None else sorted(str(w) for w in cfg.classes)
    records = val_records(index, classes)
    cache = Path(str(cfg.background.cache or out))
    workers = int(cfg.workers or 0)
    progress = bool(cfg.progress)
    paths = ensure_backgrounds(generate, index, records, cache, max(workers, 1), progress)

    node = model_config(cfg.model)
    net, source_head = load_model(node, len(index.wnids), len(classes))
    label_of = {c.wnid: c.index for c in index.classes}
    # A source head keeps the analysed classes' columns (all of them: the model as it is).
    columns = [label_of[w] for w in classes] if source_head else None
    if columns == list(range(len(index.wnids))):
        columns = None
    position = {w: k for k, w in enumerate(classes)}
    input_cfg = model_input_config(net)
    probabilities = predict_probabilities(
        net,
        [paths[r.key] for r in records],
        columns,
        input_cfg["mean"],
        input_cfg["std"],
        pick_device(str(cfg.device)),
        int(cfg.batch_size),
        workers,
        progress,
    )
    names = {c.wnid: c.name for c in index.classes}
    table = accuracy_table(probabilities, [position[r.wnid] for r in records], classes, names)
    atomic_write_csv(done, table)
    return table


def summary_line(table: pd.DataFrame) -> str:
    """One line: mean accuracy, chance, and how many classes are above chance."""
    above = int((table["accuracy"] > table["chance"]).sum())
    return (
        f"background-only accuracy: mean {table['accuracy'].mean():.3f} (chance "
        f"{table['chance'].iloc[0]:.3f}), min {table['accuracy'].min():.3f}; {above}/{len(table)} "
        "classes above chance"
    )
