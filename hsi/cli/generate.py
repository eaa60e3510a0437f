"""`hsi-generate [build|plan|export|validate] key=value ...`: Hard-Spurious-ImageNet generation.

    hsi-generate                                  build the assets (synthetic source, OpenCV)
    hsi-generate plan source=imagenet source.root=/data/imagenet
                                                  per class and split: boxed/unboxed images, what
                                                  the recipe takes, what each dataset.coverage
                                                  policy would do (plan.csv; index only)
    hsi-generate build source=imagenet source.root=/data/imagenet shard=0 num_shards=8 workers=4
    hsi-generate export export.format=jpeg        write <split>/<size>/<placement>/<wnid>/*.JPEG
    hsi-generate validate                         completeness and hashes; non-zero exit on a problem

The first argument, if it is a verb, becomes `action=<verb>` before Hydra parses the rest.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from hsi.cli import CONF_DIR
from hsi.console import quiet_console

VERBS = ("build", "plan", "export", "validate")


def verb_to_override(argv: list[str]) -> list[str]:
    """["prog", "export", "-m", "out=x"] -> ["prog", "-m", "out=x", "action=export"].

    The override goes last so that Hydra's flags (-m, --cfg job, ...) may follow the verb.
    Without a verb, argv is unchanged (action: build from the config).
    """
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        if argv[1] not in VERBS:
            raise SystemExit(
                f"hsi-generate: unknown action {argv[1]!r}; use one of {', '.join(VERBS)}"
            )
        return [argv[0], *argv[2:], f"action={argv[1]}"]
    return list(argv)


def run(cfg: DictConfig) -> int:
    """Do `cfg.action`, print its report; the exit code (non-zero: failed images or problems)."""
    action = cfg.action
    if action == "build":
        from hsi.generate.build import run_build

        summary = run_build(cfg)
        print(summary.report())
        return 1 if summary.failed else 0
    if action == "plan":
        from hsi.generate.coverage import run_plan

        plan, paths = run_plan(cfg)
        print(plan.summary())
        print("  written: " + ", ".join(str(p) for p in paths))
        return 1 if plan.selection.problems else 0
    if action == "export":
        from hsi.generate.export import run_export

        print(run_export(cfg).report())
        return 0
    if action == "validate":
        from hsi.generate.validate import validate_output

        report = validate_output(cfg.out, workers=int(cfg.workers), progress=bool(cfg.progress))
        print(report.text())
        return 0 if report.ok else 1
    raise ValueError(f"action must be one of {VERBS}, got {action!r}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _app(cfg: DictConfig) -> None:
    quiet_console(cfg.verbose)
    from hsi.generate.layout import LockedError

    try:
        code = run(cfg)
    except (ValueError, OSError, LockedError, RuntimeError) as e:
        # Bad input, a folder in use, a dead worker: the message names the key or file and the
        # fix; a traceback would only hide it.
        print(f"hsi-generate {cfg.action}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)


def check_out_argument(argv: list[str]) -> None:
    """`out=` given on the command line must be usable before Hydra makes its log folder there."""
    from hsi.generate.layout import ConfigError, check_out

    outs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("out=")]
    if outs and "," not in outs[-1]:  # a sweep over several outs is checked by each job
        try:
            check_out(outs[-1])
        except ConfigError as e:
            print(f"hsi-generate: error: {e}", file=sys.stderr)
            sys.exit(2)


def main() -> None:
    sys.argv = verb_to_override(sys.argv)
    check_out_argument(sys.argv)
    _app()


if __name__ == "__main__":
    main()
