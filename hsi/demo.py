"""`make demo`: the whole study on the embedded synthetic source, ending in the paper's tables.

Every step is one of the project's own commands, printed before it runs, so the demo doubles as
a walk-through. Settings are the `demo_*` experiments (conf/experiment/; their deviations from
the paper's recipe and the reasons are in docs/demo.md): 10 classes, 64 px images, object
sizes 16/24/32, resnet18 on the CPU. A step whose results already exist is skipped, so a rerun
(or a run after an interruption) resumes where the last one stopped. The demo ends by checking
paper 000's findings (hsi.findings) on its own results.

    python -m hsi.demo                  # into outputs/demo
    python -m hsi.demo out=/tmp/demo    # into another folder
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hsi.findings import check_findings, format_findings
from hsi.reporting import category_tables, format_table, group_table
from hsi.results import RESULTS_FILE, read_results

DEFAULT_OUT = Path("outputs/demo")
# the source's size, as in conf/experiment/demo_source.yaml and demo_hsi.yaml
SOURCE_KEYS = ["num_classes=10", "train_per_class=300", "val_per_class=20"]
BIN = Path(sys.executable).parent
USAGE = "usage: python -m hsi.demo [out=FOLDER]   (default: outputs/demo)"


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes; every path the demo_* experiments name is overridden to these."""

    out: Path

    @property
    def source(self) -> Path:
        return self.out / "synthetic"

    @property
    def scores(self) -> Path:
        return self.out / "scores"

    @property
    def hsi(self) -> Path:
        return self.out / "hsi64"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def embeddings(self) -> Path:
        return self.out / "cache" / "embeddings"

    @property
    def benchmark(self) -> Path:
        return self.out / "benchmark"

    @property
    def analysis(self) -> Path:
        return self.out / "analysis"

    @property
    def report(self) -> Path:
        return self.out / "report"

    def hsi_keys(self) -> list[str]:
        """The overrides that point an HSI run at this demo's source and dataset."""
        return [f"data.generate.out={self.hsi}", f"data.generate.source.root={self.source}"]


def parse_args(argv: Sequence[str]) -> DemoPaths:
    """`out=FOLDER` (the only key); anything else is an error that names the usage."""
    out = DEFAULT_OUT
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key in ("-h", "--help"):
            sys.exit(USAGE)
        if key != "out" or not sep or not value:
            sys.exit(f"demo: unknown argument {arg!r}\n{USAGE}")
        out = Path(value)
    return DemoPaths(out)


def run(*args: str) -> None:
    """Run one of the project's commands, echoed; stop the demo if it fails."""
    command = [str(BIN / args[0]), *args[1:]]
    print(f"\n$ {shlex.join(args)}", flush=True)
    started = time.time()
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(f"demo: `{args[0]}` failed with exit code {done.returncode}; see its output above")
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def train(paths: DemoPaths, name: str, *overrides: str) -> Path:
    """One hsi-train job in <runs>/<name>, skipped when its results.json exists."""
    folder = paths.runs / name
    if (folder / RESULTS_FILE).is_file():
        print(f"\n[{name}] done before: {folder / RESULTS_FILE}")
        return folder
    run("hsi-train", *overrides, f"hydra.run.dir={folder}")
    return folder


def run_all(paths: DemoPaths) -> dict[str, Path]:
    """Every step of the demo; the run folders of the source model and of Table 3's rows."""
    run("hsi-synth", f"out={paths.source}", *SOURCE_KEYS)
    run(
        "hsi-scores",
        f"source.root={paths.source}",
        *(f"source.{k}" for k in SOURCE_KEYS),
        f"out={paths.scores}",
        f"hydra.run.dir={paths.scores}",
    )

    source = train(paths, "source", "experiment=demo_source", f"data.source.root={paths.source}")
    start = [f"model.checkpoint={source}", *paths.hsi_keys()]
    # building the dataset is prepare_data's job: the first HSI run generates what is missing
    runs = {"source": source}
    runs["Pretrained"] = train(
        paths, "pretrained", "experiment=demo_hsi", "method=pretrained", *start
    )
    run("hsi-generate", "validate", f"out={paths.hsi}")
    runs["ERM"] = train(paths, "erm", "experiment=demo_erm", *start)
    runs["ERM_all"] = train(paths, "erm_all", "experiment=demo_erm_all", *start)
    runs["JTT"] = train(paths, "jtt", "experiment=demo_jtt", *start)
    # DFR retrains the last layer of the ERM run's final model (paper 000, §5.3)
    runs["DFR"] = train(
        paths,
        "dfr",
        "experiment=demo_dfr",
        *start,
        f"method.erm_checkpoint={runs['ERM']}",
        f"method.cache_dir={paths.embeddings}",
    )
    return runs


# hsi-analyze has no experiment group (demo_hsi also sets method and trainer): the demo dataset's
# keys, as in conf/experiment/demo_hsi.yaml, spelled out.
DATASET_KEYS = [
    "data.generate.dataset.resolution=64",
    "data.generate.dataset.counts.train.easy=16",
    "data.generate.dataset.counts.train.medium=4",
    "data.generate.dataset.counts.train.hard=4",
    "data.generate.dataset.counts.val=4",
    "data.generate.dataset.counts.test=10",
    "data.generate.dataset.coverage=reuse",
]


def analyse_and_report(paths: DemoPaths, runs: dict[str, Path]) -> None:
    """Background reliance (Fig. 3), a Grad-CAM grid, the benchmark row of the source model and
    hsi-report over every run: the tables and figures as files."""
    data = [*paths.hsi_keys(), *(f"data.generate.source.{k}" for k in SOURCE_KEYS), *DATASET_KEYS]
    source = runs["source"]
    run(
        "hsi-analyze",
        *data,
        f"model.checkpoint={source}",
        "tasks=[background,correlation]",
        f"correlation.scores={paths.scores / 'scores.csv'}",
        f"hydra.run.dir={paths.analysis}",
    )
    # resnet18's layer4 is 2x2 at 64 px: every centred box would get its area's share
    models = ",".join(str(runs[name]) for name in ("source", "ERM", "ERM_all"))
    run(
        "hsi-analyze",
        *data,
        "tasks=[gradcam]",
        "gradcam.target_layer=layer3",
        "gradcam.share_images=10",
        f"gradcam.models=[{models}]",
        f"hydra.run.dir={paths.analysis / 'gradcam'}",
    )
    bench = paths.benchmark / "resnet18"
    if not (bench / RESULTS_FILE).is_file():
        run(
            "hsi-benchmark",
            "experiment=benchmark_demo",
            *paths.hsi_keys(),
            f"model.checkpoint={source}",
            "label=resnet18",
            f"hydra.run.dir={bench}",
        )
    table_runs = [str(runs[name]) for name in runs if name != "source"]
    run("hsi-report", *table_runs, str(bench), f"out={paths.report}", "print=[table5,table3]")


def report(paths: DemoPaths, runs: dict[str, Path]) -> str:
    """The paper-style tables and the findings check, as printed at the end of the demo."""
    results = {name: read_results(folder) for name, folder in runs.items() if name != "source"}
    for name, res in results.items():
        res["label"] = name
    mean, _ = category_tables(results.values(), label="label")
    title = "Test accuracy (%) by category (cf. paper 000, Table 3), one seed each:"
    parts = [format_table(mean.drop(columns="seeds").rename_axis(None), title)]
    for name in ("Pretrained", "ERM", "ERM_all"):
        title = f"{name}: test accuracy (%) of the 12 groups (cf. Tables 1 and 4):"
        parts.append(format_table(group_table(results[name]), title))
    parts.append(format_findings(check_findings(results)))
    clean = read_results(runs["source"])["test"]["acc"]  # its val is held-out train images
    parts.append(
        f"\nClean accuracy of the source-pretrained model (source val): {100 * clean:.2f}%"
    )
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    paths = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    print("hsi demo: synthetic source -> bias scores -> Hard-Spurious-ImageNet (64 px) ->")
    print("source-pretrained resnet18 -> ERM, ERM_all, JTT, DFR -> Fig. 3, Grad-CAM -> hsi-report")
    runs = run_all(paths)
    analyse_and_report(paths, runs)
    print("\n" + "=" * 78)
    print(report(paths, runs))
    print(f"\nOutputs under {paths.out.resolve()}:")
    print(f"  bias scores and figures  {paths.scores}")
    print(f"  the dataset              {paths.hsi} (out= of hsi-generate validate, export)")
    print(f"  runs                     {paths.runs}/<name>/results.json, checkpoints/, csv/")
    print(f"  background reliance      {paths.analysis} (Fig. 3), {paths.analysis / 'gradcam'}")
    print(f"  tables and figures       {paths.report} (Markdown, CSV, LaTeX, PNG, PDF)")
    print(f"demo finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
