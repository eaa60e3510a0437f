"""A whole study as one resumable command (`hsi-study`, conf/study/*.yaml): stages of the
project's own commands, run in order here or as SLURM jobs that wait for each other."""

from hsi.study.driver import dry_run_lines, run_study, status_lines
from hsi.study.stages import Stage, StudyError, load_stages

__all__ = ["Stage", "StudyError", "dry_run_lines", "load_stages", "run_study", "status_lines"]
