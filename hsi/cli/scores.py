"""hsi-scores: centre and size bias scores of a source, with their figures (paper 000, §3.1-3.2).

    hsi-scores                                    # the embedded synthetic source
    hsi-scores source=imagenet source.root=/data/imagenet out=outputs/scores

Writes into `out`: scores.csv (wnid, split, center_score, size_score, n_images, n_objects),
skipped.csv (path, reason; dropped boxes have reasons starting with "box dropped:"), counts.csv
(per split: images, with_boxes, without_boxes), center_vs_size.png, center_heatmap.png and
score_histograms.png.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from hsi.analysis.bias_plots import plot_center_heatmap, plot_center_vs_size, plot_score_histograms
from hsi.cli import CONF_DIR
from hsi.console import quiet_console
from hsi.scores import bias_scores, center_offsets, write_score_tables
from hsi.sources.record import SourceIndex


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="scores")
def main(cfg: DictConfig) -> None:
    quiet_console(cfg.verbose)
    index: SourceIndex = instantiate(cfg.source).load()
    out = Path(cfg.out)
    scores = bias_scores(index)
    written = write_score_tables(index, out, scores)
    names = {c.wnid: c.name for c in index.classes}
    written["center_vs_size"] = plot_center_vs_size(
        scores,
        out / "center_vs_size.png",
        split=cfg.scatter_split,
        names=names,
        n_per_extreme=cfg.annotate_per_extreme,
    )
    written["center_heatmap"] = plot_center_heatmap(
        center_offsets(index, cfg.heatmap_split), out / "center_heatmap.png"
    )
    written["score_histograms"] = plot_score_histograms(scores, out / "score_histograms.png")

    print(f"source: {index.root} ({len(index.classes)} classes)")
    for split, c in sorted(index.counts().items()):
        rows = scores[scores["split"] == split]
        means = (
            f"mean centre {rows['center_score'].mean():.3f}, mean size {rows['size_score'].mean():.3f}"
            if len(rows)
            else "no boxes"
        )
        print(f"  {split}: {c['images']} images, {c['with_boxes']} with boxes; {means}")
    print(f"  skipped images: {len(index.skipped)}, dropped boxes: {len(index.box_errors)}")
    print(f"outputs in {out.resolve()}:")
    for path in written.values():
        print(f"  {path.name}")


if __name__ == "__main__":
    main()
