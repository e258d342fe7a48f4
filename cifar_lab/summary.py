"""RunSummary: the one owner of a run's summary.json, from the first line of the run to its outcome.

Everybody else hands it facts (``update``) or epoch rows (``set_rows``); only ``finish`` sets the final
status, once. Every write is atomic, so a reader or a killed process sees the old file or the new
one. Light: no torch import.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cifar_lab.errors import STATUSES
from cifar_lab.files import write_json_atomic


def is_rank_zero() -> bool:
    """Whether this process writes the run's files (the one check, for the run directory, summary.json and
    the Recorder): global rank 0, as Lightning's strategy set it once Lightning is imported, else read
    from the environment as Lightning reads it at import (RANK, LOCAL_RANK, SLURM_PROCID, JSM_NAMESPACE_RANK)."""
    rank = getattr(
        getattr(sys.modules.get("lightning.fabric.utilities.rank_zero"), "rank_zero_only", None), "rank", None
    )
    if rank is not None:
        return int(rank) == 0
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) is not None:
            return int(os.environ[key]) == 0
    return True


def aggregate(rows: list[dict[str, float]]) -> dict[str, Any]:
    """The summary's per-run numbers from metrics.csv rows: epochs, final, best, times."""
    if not rows:
        return {"epochs": 0, "final": None, "best": None, "train_seconds": 0.0, "seconds_per_epoch": None}
    last = rows[-1]
    best = max(rows, key=lambda r: r["val_acc"])
    seconds = sum(r["seconds"] for r in rows)
    return {
        "epochs": int(last["epoch"]),
        "final": {k: last[k] for k in ("train_loss", "val_loss", "train_acc", "val_acc")},
        "best": {"val_acc": best["val_acc"], "epoch": int(best["epoch"])},
        "train_seconds": round(seconds, 3),
        "seconds_per_epoch": round(seconds / len(rows), 4),
    }


class RunSummary:
    """summary.json of one run directory; ``writer=False`` (DDP ranks > 0) keeps it in memory only."""

    def __init__(self, run_dir: Path, fields: dict[str, Any], writer: bool = True, write_now: bool = True) -> None:
        self.path = Path(run_dir) / "summary.json"
        self.data: dict[str, Any] = {"status": "running", **fields}
        self.writer = writer
        self.finished = False
        self.unwritten: OSError | None = None
        if write_now:
            self.write()

    @classmethod
    def reopen(cls, run_dir: Path) -> RunSummary | None:
        """The summary.json a run left in ``run_dir`` (to finish a run its process could not), or None."""
        path = Path(run_dir) / "summary.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        summary = cls(run_dir, {}, write_now=False)
        summary.data = data
        return summary

    @property
    def status(self) -> str:
        return str(self.data["status"])

    def write(self) -> None:
        if self.writer:
            self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_json_atomic(self.path, self.data)

    def update(self, **fields: Any) -> None:
        """Add facts (device, params, data description, speed plan) and write."""
        self.data.update(fields)
        self.write()

    def set_rows(self, rows: list[dict[str, float]]) -> None:
        """The epochs recorded so far (metrics.csv rows), aggregated into the summary."""
        self.data.update(aggregate(rows))
        self.write()

    def finish(self, status: str, error: str | None = None) -> bool:
        """Set the final status, once; later calls change nothing and return False.

        A final write that fails (the disk that stopped the run is full) must not hide why the run
        stopped: the OS error is kept in ``unwritten`` and summary.json keeps its last status, which
        is never a false ``completed``.
        """
        assert status in STATUSES, status
        if self.finished:
            return False
        self.data["status"] = status
        if error:
            self.data["error"] = error
        try:
            self.write()
        except OSError as err:
            self.unwritten = err
        # Only now: a signal that stops the write itself leaves the run unfinished, so the outcome that
        # signal brings (``interrupted``) is still written, not a stale ``running``.
        self.finished = True
        return True
