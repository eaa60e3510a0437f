"""`make demo` (`python -m hsi.demo`): the study `study=demo` (conf/study/demo.yaml), whose stages
are the project's own commands, each printed before it runs; a stage whose outputs exist is
skipped, so a rerun (or a run after an interruption) resumes where the last one stopped. The demo
ends in the paper's tables and checks paper 000's findings (hsi.findings) on its own results.

    python -m hsi.demo                  # into outputs/demo (= hsi-study study=demo)
    python -m hsi.demo out=/tmp/demo    # into another folder
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path("outputs/demo")
USAGE = "usage: python -m hsi.demo [out=FOLDER]   (default: outputs/demo; = hsi-study study=demo)"


def parse_args(argv: Sequence[str]) -> Path:
    """`out=FOLDER` (the only key); anything else is an error that names the usage."""
    out = DEFAULT_OUT
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key in ("-h", "--help"):
            sys.exit(USAGE)
        if key != "out" or not sep or not value:
            sys.exit(f"demo: unknown argument {arg!r}\n{USAGE}")
        out = Path(value)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    out = parse_args(sys.argv[1:] if argv is None else argv)
    from hsi.cli import study

    sys.argv = ["hsi-study", "study=demo", f"out={out}"]
    study.main()


if __name__ == "__main__":
    main()
