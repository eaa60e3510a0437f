"""Detections cached on disk per (detector, image, query): one SQLite file per detector.

SQLite because a run over ImageNet writes 1.28M small results: one file, each batch committed in
one transaction (atomic: a killed run leaves every committed batch and nothing half-written), and
safe for several processes at once (its own file locking). A rerun finds what is there and
detects only the rest. Scores and boxes are stored as 64-bit floats, so they read back exactly.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from hsi.detectors.base import Detection

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS detections (
    key TEXT NOT NULL, label INTEGER NOT NULL, prompt TEXT NOT NULL,
    score REAL NOT NULL, xmin REAL, ymin REAL, xmax REAL, ymax REAL,
    PRIMARY KEY (key, label, prompt)
);
"""


def cache_file(cache_dir: str | Path, detector_name: str) -> Path:
    """<cache_dir>/<kind>-<hash of the detector's name>.sqlite"""
    kind = re.sub(r"[^A-Za-z0-9_]+", "_", detector_name.split("|", 1)[0])[:40] or "detector"
    digest = hashlib.sha256(detector_name.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / f"{kind}-{digest}.sqlite"


class DetectionCache:
    """Get and put detections of one detector (its `name`) keyed by (image key, label, prompt)."""

    def __init__(self, cache_dir: str | Path, detector_name: str):
        self.path = cache_file(cache_dir, detector_name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=120)
        with self.db:
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta (name) VALUES (?)", (detector_name,))
        (stored,) = self.db.execute("SELECT name FROM meta").fetchone()
        if stored != detector_name:  # a hash collision, or a file copied under another name
            raise ValueError(f"{self.path}: holds detections of {stored!r}, not {detector_name!r}")

    def get(self, items: Iterable[tuple[str, int, str]]) -> dict[tuple[str, int, str], Detection]:
        wanted = set(items)
        found = {}
        for row in self.db.execute(
            "SELECT key, label, prompt, score, xmin, ymin, xmax, ymax FROM detections"
        ):
            item = (row[0], int(row[1]), row[2])
            if item in wanted:
                box = None if row[4] is None else tuple(float(v) for v in row[4:8])
                found[item] = Detection(score=float(row[3]), box=box)
        return found

    def put(self, rows: Iterable[tuple[tuple[str, int, str], Detection]]) -> None:
        """One transaction: every row of the batch is stored, or none."""
        values = [
            (key, label, prompt, float(d.score), *(d.box if d.box is not None else (None,) * 4))
            for (key, label, prompt), d in rows
        ]
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO detections VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values
            )

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM detections").fetchone()[0])

    def close(self) -> None:
        self.db.close()
