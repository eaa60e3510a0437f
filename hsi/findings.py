"""Paper 000's findings, with their size, checked on the test results of a set of runs.

Table 3 of the paper (ResNet-50): fine-tuning on Hard-Spurious-ImageNet lifts Hard accuracy from
16.54 (pretrained) to 57.56 (ERM), 3.5x, and shrinks the Easy-Hard gap from 49 to 17 points;
DFR reaches 59.79 on Hard, above ERM; JTT is below ERM; ERM_all narrows the gap between the
categories (Fig. 7, right). Tables 1 and 4: accuracy rises with the object's size, and an object
in the centre of its own background (CeO) is recognised more often than one in the corner of a
random background (CoR). `check_findings` turns each into a comparison of results.json numbers;
the demo prints them and tests/test_demo.py asserts them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hsi.groups import PLACEMENTS

RUNS = ("Pretrained", "ERM", "ERM_all", "JTT", "DFR")  # the labels check_findings needs
HARD_GAIN = 3.0  # ERM's Hard accuracy at least this multiple of the pretrained model's (paper: 3.5)
GAP_SHRINK = 0.6  # ERM's Easy-Hard gap at most this fraction of the pretrained model's (17/49)
_GROUP_KEY = re.compile(r"^group/(CeO|CoO|CeR|CoR)_(\d+)$")


@dataclass(frozen=True)
class Finding:
    claim: str  # the paper's finding, as checked
    holds: bool
    detail: str  # the numbers that decide it, in percent


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _metric(results: Mapping[str, Any], run: str, key: str, split: str) -> float:
    value = results[run][split].get(key)
    if value is None:
        raise ValueError(f"the {run} run has no {split} metric {key!r} in its results.json")
    return float(value)


def _gap(results: Mapping[str, Any], run: str, split: str) -> float:
    return _metric(results, run, "acc_easy", split) - _metric(results, run, "acc_hard", split)


def group_accuracies(metrics: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """placement -> {size: accuracy} from a split's metrics (keys `group/CeO_16`, ...)."""
    table: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        match = _GROUP_KEY.match(key)
        if match and value is not None:
            table.setdefault(match.group(1), {})[int(match.group(2))] = float(value)
    return table


def rises_with_size(
    results: Mapping[str, Any], run: str, split: str = "test", strict: bool = True
) -> Finding:
    """Accuracy higher at each larger size, in every placement.

    `strict=False`: two neighbouring sizes may tie (the largest must still beat the smallest),
    for a fine-tuned model whose accuracy at the two larger sizes sits at the ceiling (e.g. 98
    and 98), where the order can no longer show.
    """
    groups = group_accuracies(results[run][split])
    if set(groups) != set(PLACEMENTS):
        raise ValueError(f"the {run} run's {split} metrics lack group accuracies of {PLACEMENTS}")
    failures, cells = [], []
    sign = "<" if strict else "<="
    for placement in PLACEMENTS:
        by_size = [groups[placement][size] for size in sorted(groups[placement])]
        cells.append(f"{placement} " + sign.join(_pct(v) for v in by_size))
        pairs = zip(by_size[:-1], by_size[1:], strict=True)
        falls = any(b < a or (strict and b == a) for a, b in pairs)
        if falls or by_size[-1] <= by_size[0]:
            failures.append(placement)
    detail = "; ".join(cells) + (f" (not rising: {', '.join(failures)})" if failures else "")
    claim = "rises" if strict else "rises (neighbouring sizes may tie)"
    return Finding(
        f"{run}: accuracy {claim} with object size in every placement", not failures, detail
    )


def centre_own_above_corner_random(
    results: Mapping[str, Any], run: str, split: str = "test"
) -> Finding:
    """CeO accuracy strictly above CoR accuracy at every object size."""
    groups = group_accuracies(results[run][split])
    if "CeO" not in groups or "CoR" not in groups or set(groups["CeO"]) != set(groups["CoR"]):
        raise ValueError(f"the {run} run's {split} metrics lack CeO/CoR accuracies at every size")
    sizes = sorted(groups["CeO"])
    below = [s for s in sizes if groups["CeO"][s] <= groups["CoR"][s]]
    detail = "; ".join(f"{s}px {_pct(groups['CeO'][s])}>{_pct(groups['CoR'][s])}" for s in sizes)
    if below:
        detail += f" (not above at {', '.join(f'{s}px' for s in below)})"
    return Finding(f"{run}: CeO above CoR at every size", not below, detail)


def check_findings(results: Mapping[str, Mapping[str, Any]], split: str = "test") -> list[Finding]:
    """Table 3's findings with their size, and Tables 1/4's size and placement order.

    `results`: run label (RUNS) -> that run's results.json. Missing runs are an error.
    """
    missing = [run for run in RUNS if run not in results]
    if missing:
        raise ValueError(f"check_findings needs the runs {RUNS}; missing: {missing}")

    def acc(run: str, key: str) -> float:
        return _metric(results, run, key, split)

    hard_pre, hard_erm, hard_dfr = (
        acc("Pretrained", "acc_hard"),
        acc("ERM", "acc_hard"),
        acc("DFR", "acc_hard"),
    )
    gap_pre, gap_erm, gap_all = (
        _gap(results, run, split) for run in ("Pretrained", "ERM", "ERM_all")
    )
    avg_erm, avg_jtt = acc("ERM", "acc"), acc("JTT", "acc")
    findings = [
        Finding(
            f"ERM's Hard accuracy at least {HARD_GAIN:g}x the pretrained model's",
            hard_erm >= HARD_GAIN * hard_pre,
            f"{_pct(hard_erm)} vs {HARD_GAIN:g} x {_pct(hard_pre)}",
        ),
        Finding(
            f"ERM's Easy-Hard gap at most {GAP_SHRINK:g}x the pretrained model's",
            gap_erm <= GAP_SHRINK * gap_pre,
            f"{_pct(gap_erm)} vs {GAP_SHRINK:g} x {_pct(gap_pre)}",
        ),
        Finding(
            "DFR's Hard accuracy at least ERM's",
            hard_dfr >= hard_erm,
            f"{_pct(hard_dfr)} vs {_pct(hard_erm)}",
        ),
        Finding(
            "JTT's Average accuracy below ERM's",
            avg_jtt < avg_erm,
            f"{_pct(avg_jtt)} vs {_pct(avg_erm)}",
        ),
        Finding(
            "ERM_all's Easy-Hard gap below ERM's",
            gap_all < gap_erm,
            f"{_pct(gap_all)} vs {_pct(gap_erm)}",
        ),
        rises_with_size(results, "Pretrained", split),
        rises_with_size(results, "ERM", split, strict=False),
        centre_own_above_corner_random(results, "Pretrained", split),
        centre_own_above_corner_random(results, "ERM", split),
    ]
    return findings


def format_findings(findings: list[Finding]) -> str:
    """One line per finding: whether it holds, the claim, the numbers."""
    lines = [f"  {'holds ' if f.holds else 'FAILS '} {f.claim}: {f.detail}" for f in findings]
    held = sum(f.holds for f in findings)
    return "\n".join(
        [f"Paper 000's findings on these runs ({held} of {len(findings)} hold):", *lines]
    )
