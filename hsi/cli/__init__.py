"""Thin Hydra entry points; the work is done in the library modules."""

from pathlib import Path

# Absolute: run as an installed console script, Hydra would read a relative config_path as a
# Python package (pkg://conf), which the repository's conf/ folder is not.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
