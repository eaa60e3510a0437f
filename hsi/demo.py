"""`make demo`: the whole study on the embedded synthetic source, ending in the paper's tables.

Every step is one of the project's own commands, printed before it runs, so the demo doubles as
a walk-through. Settings are the `demo_*` experiments (conf/experiment/): 10 classes, 64 px
images, object sizes 16/24/32, resnet18 on the CPU. A step whose results already exist is
skipped, so a rerun (or a run after an interruption) resumes where the last one stopped.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from hsi.reporting import category_tables, format_table, group_table
from hsi.results import RESULTS_FILE, read_results

OUT = Path("outputs/demo")
SOURCE = OUT / "synthetic"  # the root the demo_* experiments read
HSI = OUT / "hsi64"  # data.generate.out of demo_hsi
RUNS = OUT / "runs"
# the source's size, as in conf/experiment/demo_source.yaml and demo_hsi.yaml
SOURCE_KEYS = ["num_classes=10", "train_per_class=300", "val_per_class=20"]
BIN = Path(sys.executable).parent


def run(*args: str) -> None:
    """Run one of the project's commands, echoed; stop the demo if it fails."""
    command = [str(BIN / args[0]), *args[1:]]
    print(f"\n$ {shlex.join(args)}", flush=True)
    started = time.time()
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(f"demo: `{args[0]}` failed with exit code {done.returncode}; see its output above")
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def train(name: str, *overrides: str) -> Path:
    """One hsi-train job in RUNS/<name>, skipped when its results.json exists."""
    folder = RUNS / name
    if (folder / RESULTS_FILE).is_file():
        print(f"\n[{name}] done before: {folder / RESULTS_FILE}")
        return folder
    run("hsi-train", *overrides, f"hydra.run.dir={folder}")
    return folder


def main() -> None:
    started = time.time()
    print("hsi demo: synthetic source -> bias scores -> Hard-Spurious-ImageNet (64 px) ->")
    print("source-pretrained resnet18 -> ERM, ERM_all, JTT, DFR -> paper-style tables")

    run("hsi-synth", f"out={SOURCE}", *SOURCE_KEYS)
    run("hsi-scores", f"source.root={SOURCE}", *(f"source.{k}" for k in SOURCE_KEYS),
        f"out={OUT / 'scores'}", f"hydra.run.dir={OUT / 'scores'}")  # fmt: skip

    source = train("source", "experiment=demo_source")
    # building the dataset is prepare_data's job: the first HSI run generates what is missing
    runs = {"Pretrained": train("pretrained", "experiment=demo_hsi", "method=pretrained",
                                f"model.checkpoint={source}")}  # fmt: skip
    run("hsi-generate", "validate", f"out={HSI}")
    erm = train("erm", "experiment=demo_erm", f"model.checkpoint={source}")
    runs["ERM"] = erm
    runs["ERM_all"] = train("erm_all", "experiment=demo_erm_all", f"model.checkpoint={source}")
    runs["JTT"] = train("jtt", "experiment=demo_jtt", f"model.checkpoint={source}",
                        f"method.erm_checkpoint={erm}")  # fmt: skip
    runs["DFR"] = train("dfr", "experiment=demo_dfr", f"model.checkpoint={source}",
                        f"method.erm_checkpoint={erm}")  # fmt: skip

    results = {name: read_results(folder) for name, folder in runs.items()}
    for name, res in results.items():
        res["label"] = name
    mean, _ = category_tables(results.values(), label="label")
    print("\n" + "=" * 78)
    print(format_table(mean.drop(columns="seeds"),
                       "Test accuracy (%) by category (cf. paper 000, Table 3), one seed each:"))  # fmt: skip
    for name in ("Pretrained", "ERM_all"):
        print(format_table(group_table(results[name]),
                           f"{name}: test accuracy (%) of the 12 groups (cf. Tables 1 and 4):"))  # fmt: skip
    clean = read_results(source)["test"]["acc"]  # its val is held-out train images
    print(f"Clean accuracy of the source-pretrained model (source val): {100 * clean:.2f}%")
    print(f"\nOutputs under {OUT.resolve()}:")
    print(f"  bias scores and figures  {OUT / 'scores'}")
    print(f"  the dataset              {HSI} (recipe.csv, assets/, manifest/)")
    print(f"  runs                     {RUNS}/<name>/results.json, checkpoints/, csv/")
    print(f"demo finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
