"""Figs. 5 and 10 from a built dataset, and the report's HTML page opened in a headless Chromium:
every table is there with its rows, and every image loads (a missing one would not)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import BIN, ROOT, make_cfg
from test_reporting import BENCH, TRAINED, write_runs

from hsi.generate.compose import Composer
from hsi.groups import PLACEMENTS
from hsi.io import atomic_save_png
from hsi.reporting import build_report, load_runs
from hsi.reporting.samples import fig5_rows, fig5_samples, fig10_backgrounds

CHROMIUM_UP = ROOT / ".ci" / "chromium-up.sh"
# recorded once the page has loaded: every image's src and natural width (0: it did not load)
CHECK = """<script>window.addEventListener('load', () => {
  const seen = [...document.images].map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0]);
  const out = document.createElement('pre'); out.id = 'image-check';
  out.textContent = JSON.stringify(seen); document.body.appendChild(out); });</script>"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The TINY dataset (64 px, 3 classes) of a synthetic source, built once."""
    from hsi.generate.build import run_build

    tmp = tmp_path_factory.mktemp("samples")
    out = tmp / "data"
    run_build(make_cfg(out, tmp / "source"))
    return out


def chromium() -> str:
    """Debian's chromium; installed by .ci/chromium-up.sh when absent and root, else a skip."""
    exe = shutil.which("chromium")
    if exe is None and os.geteuid() == 0 and CHROMIUM_UP.is_file():
        up = subprocess.run(["bash", str(CHROMIUM_UP)], capture_output=True, text=True, timeout=900)
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip(f"chromium could not be installed: {(up.stdout + up.stderr)[-300:]}")
    if exe is None:
        pytest.skip(
            "chromium is not installed and this is not root: run .ci/chromium-up.sh as root"
        )
    return exe


@pytest.mark.slow  # the dataset build
def test_fig5_is_one_image_in_the_12_groups(dataset, tmp_path):
    composer = Composer.from_output(dataset)
    rows = fig5_rows(composer, seed=3)
    assert len(rows) == 12 and rows["fg_image"].nunique() == 1
    assert sorted(rows["group_id"]) == list(range(12))
    assert {g.split("_")[0] for g in rows["group"]} == set(PLACEMENTS)
    assert (rows["split"] == "test").all()
    other = next(
        k for k in composer.recipe.query("split == 'test'")["fg_image"] if k != rows["fg_image"][0]
    )
    assert fig5_rows(composer, image=other)["fg_image"].eq(other).all()
    with pytest.raises(ValueError, match="samples.image: \\['test/nope'\\] are not in the dataset"):
        fig5_rows(composer, image="test/nope")
    a = fig5_samples(dataset, tmp_path / "a" / "fig5", seed=3)
    b = fig5_samples(dataset, tmp_path / "b" / "fig5", seed=3)
    assert [p.name for p in a] == ["fig5.png", "fig5.pdf"]
    assert a[0].read_bytes() == b[0].read_bytes()  # same dataset and seed, same bytes


@pytest.mark.slow
def test_fig10_shows_originals_beside_their_backgrounds(dataset, tmp_path):
    from PIL import Image

    paths = fig10_backgrounds(dataset, tmp_path / "fig10", count=3)
    with Image.open(paths[0]) as im:
        width, height = im.size
    assert height > width  # three rows of (original, background)
    again = fig10_backgrounds(dataset, tmp_path / "again", count=3)
    assert again[0].read_bytes() == paths[0].read_bytes()
    with pytest.raises(ValueError, match="samples.backgrounds: \\['x/y'\\] are not in the dataset"):
        fig10_backgrounds(dataset, tmp_path / "bad", images=["x/y"])


@pytest.mark.slow
def test_html_report_in_headless_chromium(dataset, tmp_path):
    exe = chromium()
    runs = write_runs(tmp_path / "runs", [*BENCH, *TRAINED])
    grid = tmp_path / "analysis" / "gradcam" / "gradcam_grid.png"
    atomic_save_png(grid, np.full((20, 30, 3), 128, np.uint8))  # another stage's image
    out = tmp_path / "report"
    figures = f"figures=['{grid.parent}/*.png','{tmp_path}/not_run/*.png']"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(
        [str(BIN / "hsi-report"), str(runs), f"out={out}", f"samples.dataset={dataset}", figures],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    readme = (out / "README.md").read_text()
    assert "fig5_samples" in readme and "fig10_backgrounds" in readme
    assert "gradcam_gradcam_grid.png" in readme

    page = (out / "index.html").read_text()
    checked = out / "checked.html"  # the page, plus the check and one image that cannot load
    checked.write_text(page.replace("</body>", f'<img src="figures/absent.png">{CHECK}</body>'))
    dom = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    assert found, f"the page's load handler did not run: {dom[-500:]}"
    widths = dict(json.loads(found.group(1).replace("&quot;", '"')))
    assert widths.pop("figures/absent.png") == 0  # the check does see a broken image
    pngs = {p.relative_to(out).as_posix() for p in (out / "figures").rglob("*.png")}
    assert set(widths) == pngs  # every figure is on the page ...
    assert all(w > 0 for w in widths.values()), widths  # ... and loads
    assert {
        "figures/fig5_samples.png",
        "figures/fig10_backgrounds.png",
        "figures/extra/gradcam_gradcam_grid.png",
        "figures/fig7.png",
    } <= pngs
    expected = build_report(load_runs([runs]), tmp_path / "again").tables
    shown = re.findall(r'<table data-table="([^"]+)">(.*?)</table>', dom, re.S)
    assert [name for name, _ in shown] == list(expected)  # every table, in the report's order
    for name, body in shown:
        rows = body.split("<tbody>")[1].count("<tr>")
        assert rows == len(expected[name][1]), name
