"""The run's plain files (metrics.csv, summary.json): light helpers, no torch import."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

CSV_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv rows; a row cut short (a run killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                rows.append({k: (int(row[k]) if k == "epoch" else float(row[k])) for k in CSV_COLUMNS})
            except (KeyError, TypeError, ValueError):
                continue
    return rows


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
