"""The tasks of `hsi-rank` (conf/rank.yaml): spuriousness rankings and last-layer retraining
(paper 004; docs/ranking.md), run in the order of TASKS.

    score    scores.csv (hsi.ranking.score) and size_correlation.csv
    subsets  hsi.ranking.study (with the Study every later task reads)
    retrain  hsi.ranking.study
    noise    hsi.ranking.noise
    ood      hsi.ranking.ood
    grids    hsi.ranking.grids

Every task past ``score`` reads the ranking (<out>/scores.csv or ``scores``) through one Study.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from hsi.detectors import DEFAULT_TEMPLATE, build_detector
from hsi.io import atomic_write_csv
from hsi.ranking.grids import run_grids
from hsi.ranking.noise import run_noise
from hsi.ranking.ood import run_ood
from hsi.ranking.rank import CONVENTION
from hsi.ranking.score import read_scores, score_source, size_correlation
from hsi.ranking.study import Study, run_retrain, run_subsets
from hsi.sources import load_source
from hsi.sources.synthetic import read_hidden_boxes
from hsi.tasks import requested_tasks

TASKS = ("score", "subsets", "retrain", "noise", "ood", "grids")


def run_tasks(cfg: DictConfig, detector=None) -> dict:
    """Every task of ``cfg.tasks`` in the order of TASKS; prints one block per task.

    ``detector`` replaces ``build_detector(cfg.detector)`` (tests inject a fake one).
    """
    tasks = requested_tasks(cfg.tasks, TASKS)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    index = load_source(cfg.source)
    scores_path = Path(str(cfg.scores)) if cfg.scores else out / "scores.csv"
    done: dict = {}
    if "score" in tasks:
        if detector is None:
            detector = build_detector(cfg.detector)
        per_class = {k: cfg.images_per_class.get(k) for k in ("train", "val")}
        cache = (
            Path(str(cfg.detections_cache))
            if cfg.detections_cache
            else out / "cache" / "detections"
        )
        frame = score_source(
            detector,
            index,
            per_class,
            int(cfg.seed),
            str(cfg.detector.get("template") or DEFAULT_TEMPLATE),
            cache,
            int(cfg.detector.get("batch_size") or cfg.batch_size),
            bool(cfg.progress),
        )
        atomic_write_csv(out / "scores.csv", frame)
        scores_path = out / "scores.csv"
        done["score"] = frame
        counts = frame.groupby("split")["key"].size().to_dict()
        print(f"scores ({getattr(detector, 'name', 'detector')}): {counts} images -> {scores_path}")
        print(f"  convention: {CONVENTION}")
        # the synthetic source's true boxes of its unannotated train images (empty elsewhere)
        rho = size_correlation(frame, index, read_hidden_boxes(index.root))
        atomic_write_csv(out / "size_correlation.csv", rho)
        done["size_correlation"] = rho
        summary = rho.groupby("split")["spearman"].agg(["min", "median", "max"]).round(3)
        print(f"  Spearman rho of score vs box share per class -> {out / 'size_correlation.csv'}")
        print(summary.to_string())
    study = Study(cfg=cfg, out=out, index=index, scores=read_scores(scores_path))
    if "subsets" in tasks:
        result = run_subsets(study)
        done["subsets"] = result
        print(
            f"subsets -> {out / 'subsets.csv'}: "
            + ", ".join(f"{n} {c}" for n, c in result["subsets"].items())
        )
        shared = result["overlaps"]
        if len(shared):
            print(
                f"  {len(shared)} (k, class) pairs with fewer than 2k images share images -> {out / 'overlaps.csv'}"
            )
            print(shared.to_string(index=False))
    if "retrain" in tasks:
        result = run_retrain(study)
        done["retrain"] = result
        print(f"heads on {study.frozen.name}, val accuracy (mean over ranks):")
        for name, acc in result["means"].items():
            print(f"  {name:<10} {acc:.4f}")
        print(f"  accuracy vs rank -> {out / 'accuracy_vs_rank.csv'}, {result['figure']}")
    if "noise" in tasks:
        result = run_noise(study)
        done["noise"] = result
        table = result["table"].pivot_table(
            index="head", columns=["region", "alpha"], values="acc", sort=False
        )
        print(
            f"noise sensitivity (mask: {cfg.noise.mask}; input space: normalised) -> {out / 'noise.csv'}"
        )
        print(table.round(4).to_string())
    if "ood" in tasks:
        result = run_ood(study)
        done["ood"] = result
        print(f"OOD ({result['name']}) vs in-distribution -> {out / 'ood.csv'}")
        print(result["table"].round(4).to_string(index=False))
    if "grids" in tasks:
        result = run_grids(study)
        done["grids"] = result
        print(f"ranked grid of {result['classes']} -> {result['figure']}")
    return done
