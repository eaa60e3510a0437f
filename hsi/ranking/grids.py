"""The ``grids`` task of ``hsi-rank`` (paper 004, Figs. 1, 7): ranked_grid.png."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from hsi.io import atomic_write_bytes
from hsi.ranking.score import BOX_COLUMNS
from hsi.ranking.study import Study
from hsi.sources.images import load_rgb


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
