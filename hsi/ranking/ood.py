"""The ``ood`` task of ``hsi-rank`` (paper 004, §3.3, Fig. 5): each head's accuracy on an
out-of-distribution set, its logits restricted to the set's classes, next to its val accuracy.

The set is an ImageNet-A style folder (``ood.folder``), a shifted source (``ood.source``) or, on
a fresh machine, the test split of a built Hard-Spurious-ImageNet dataset (``ood.hsi``), named so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hsi.io import atomic_write_csv
from hsi.ranking.study import Study
from hsi.sources.record import ImageRecord, SourceIndex

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
