"""hsi.progress: interval log lines off a terminal, a bar on one, a closing line always."""

from __future__ import annotations

import io
import logging

import pytest

from hsi.progress import Progress, default_interval, format_duration


def test_log_lines_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="hsi.progress")
    with Progress(total=4, desc="build", unit="img", interval_s=0, tty=False) as progress:
        for _ in range(4):
            progress.update(1, failed=0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("build: 1/4 img (25.0%)") and "ETA" in lines[0]
    assert lines[0].endswith("failed=0")
    assert lines[3].startswith("build: 4/4 img (100.0%)") and "ETA" not in lines[3]
    assert lines[-1].startswith("build: 4 img in ") and lines[-1].endswith("(failed=0)")
    assert len(lines) == 5


def test_interval_limits_the_lines(caplog):
    caplog.set_level(logging.INFO, logger="hsi.progress")
    with Progress(total=1000, desc="x", interval_s=3600, tty=False) as progress:
        for _ in range(1000):
            progress.update()
    assert [r.getMessage()[:11] for r in caplog.records] == ["x: 1000 it "]


def test_bar_on_a_terminal_logs_only_the_end(caplog):
    caplog.set_level(logging.INFO, logger="hsi.progress")
    stream = io.StringIO()
    with Progress(total=3, desc="fit", interval_s=0, stream=stream, tty=True) as progress:
        progress.update(3)
    assert "3/3" in stream.getvalue()  # tqdm drew its bar there
    assert [r.getMessage()[:10] for r in caplog.records] == ["fit: 3 it "]


def test_durations_and_interval_setting(monkeypatch):
    assert [format_duration(s) for s in (5, 185, 7620)] == ["5s", "3m05s", "2h07m"]
    monkeypatch.setenv("HSI_PROGRESS_INTERVAL", "2.5")
    assert default_interval() == 2.5
    monkeypatch.setenv("HSI_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="HSI_PROGRESS_INTERVAL"):
        default_interval()
