"""Sweeps on Hydra's own engines: the end-of-sweep summary and a resumable Optuna search.

Nothing here schedules jobs; Hydra's sweepers and launchers do. This module adds what cifar_lab
needs around them: one table of every job's outcome, and an Optuna study that picks up where an
interrupted search stopped. (DDP inside a job is cifar_lab/distributed.py.)
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from cifar_lab.files import atomic_write, write_bytes_atomic

log = logging.getLogger("cifar_lab")

SUMMARY_COLUMNS = [
    "job",
    "dir",
    "overrides",
    "status",
    "data",
    "final_val_acc",
    "best_val_acc",
    "best_epoch",
    "params",
    "train_seconds",
    "error",
]
FAILED = "failed"


# ---------------------------------------------------------------------- sweep summary


def read_hydra_yaml(path: Path) -> DictConfig | None:
    """A job's ``.hydra/hydra.yaml`` as its ``hydra`` node; None if missing or unreadable (a job killed
    while Hydra wrote it leaves it empty or cut short: Hydra's writes are not atomic)."""
    try:
        hydra_cfg = OmegaConf.load(path).get("hydra")
        int(hydra_cfg.job.num), list(hydra_cfg.overrides.task)
    except Exception:  # OSError, a YAML error, a missing key, a non-mapping file: all mean "not readable"
        return None
    return hydra_cfg


def job_number(hydra_yaml: Path) -> int | None:
    hydra_cfg = read_hydra_yaml(hydra_yaml)
    return None if hydra_cfg is None else int(hydra_cfg.job.num)


def job_row(job_dir: Path) -> dict[str, Any]:
    """One summary row from a job directory's ``.hydra/`` files and ``summary.json``."""
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    hydra_cfg = read_hydra_yaml(job_dir / ".hydra" / "hydra.yaml")
    if hydra_cfg is None:  # still a row: the summary must name every job directory, and never crash
        number = int(job_dir.name) if job_dir.name.isdigit() else None
        row.update(job=number, dir=job_dir.name, overrides="", status=FAILED)
        row.update(error=f"its .hydra/hydra.yaml is missing or unreadable (the job died early); see {job_dir}")
        return row
    row.update(job=int(hydra_cfg.job.num), dir=job_dir.name, overrides=" ".join(hydra_cfg.overrides.task))
    path = job_dir / "summary.json"
    if not path.exists():  # the job died before cifar_lab could record anything
        row.update(status=FAILED, error=f"no summary.json; see the job's log in {job_dir}")
        return row
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict):  # written by something else, or damaged: still a row, never a crash
        row.update(status=FAILED, error=f"its summary.json is unreadable; see the job's log in {job_dir}")
        return row
    data = summary.get("data") or {}
    final, best = summary.get("final") or {}, summary.get("best") or {}
    row.update(
        status=summary.get("status"),
        data="synthetic" if data.get("synthetic") else data.get("source"),
        final_val_acc=final.get("val_acc"),
        best_val_acc=best.get("val_acc"),
        best_epoch=best.get("epoch"),
        params=summary.get("params"),
        train_seconds=summary.get("train_seconds"),
        error=summary.get("error"),
    )
    return row


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """A row for every job directory (holding ``.hydra/hydra.yaml``, at any depth) under ``sweep_dir``, by job."""
    jobs = [p.parent.parent for p in sweep_dir.rglob(".hydra/hydra.yaml")]
    return sorted((job_row(d) for d in jobs), key=lambda r: (r["job"] is None, r["job"] or 0, r["dir"]))


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table; accuracies in percent, the error squeezed onto one line."""
    head = [
        "job",
        "overrides",
        "status",
        "data",
        "final val acc %",
        "best val acc % (epoch)",
        "params",
        "train s",
        "error",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = f"{percent(r['best_val_acc'])} ({r['best_epoch']})" if r["best_val_acc"] is not None else ""
        cells = [
            "?" if r["job"] is None else r["job"],
            f"`{r['overrides']}`",
            r["status"],
            r["data"] or "",
            percent(r["final_val_acc"]),
            best,
            "" if r["params"] is None else f"{r['params']:,}",
            r["train_seconds"] or "",
            " ".join(str(r["error"] or "").split()).replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``sweep_summary.csv`` and ``sweep_summary.md`` in ``sweep_dir``; returns the rows."""
    rows = collect_rows(sweep_dir)
    with atomic_write(sweep_dir / "sweep_summary.csv", newline="") as fh:
        writer = csv.DictWriter(fh, SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    failed = sum(r["status"] != "completed" for r in rows)
    note = ""
    if any(r["data"] == "synthetic" for r in rows):
        note = "\n**SYNTHETIC DATA**: rows marked `synthetic` trained on generated images, not CIFAR-10.\n"
    text = f"# Sweep summary\n\n{len(rows)} jobs, {failed} not completed. Sweep directory: `{sweep_dir}`\n{note}\n"
    write_bytes_atomic(sweep_dir / "sweep_summary.md", (text + markdown_table(rows)).encode())
    return rows


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, tabulate every job; exit non-zero if any did not complete.

    Jobs do not raise in a multirun (``hydra_main`` records the failure and returns None), so
    every job runs; this callback then turns failures into the process exit status.
    """

    def __init__(self, exit_code_on_failure: int = 1) -> None:
        self.exit_code_on_failure = exit_code_on_failure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        failed = [r for r in rows if r["status"] != "completed"]  # failed, diverged, interrupted, never finished
        log.info(
            "Sweep summary: %s (%d jobs, %d not completed)", sweep_dir / "sweep_summary.md", len(rows), len(failed)
        )
        if failed and self.exit_code_on_failure:
            for r in failed:
                log.error("job %s %s (%s): %s", r["job"], r["status"], r["overrides"], r["error"])
            sys.exit(self.exit_code_on_failure)


# ---------------------------------------------------------------------- Optuna


def finished_trials(storage: str | None, study_name: str | None) -> int:
    """Trials of a stored study that ended (complete, pruned or failed); 0 when there is no such study."""
    if storage is None or study_name is None:
        return 0
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna's "study not found"
        return 0
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=ended))


def ensure_sqlite_dir(storage: str | None) -> None:
    """SQLite will not create the database's folder; make it."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and storage != prefix + ":memory:":
        Path(storage[len(prefix) :]).expanduser().parent.mkdir(parents=True, exist_ok=True)


class ResumeStudy(Callback):
    """Hydra callback: let an Optuna search with stored study resume where it stopped.

    The Optuna sweeper runs ``n_trials`` more trials on every invocation. Before it starts, this
    lowers ``n_trials`` by the trials the stored study already finished, so that ``n_trials`` is the
    study's total and re-running an interrupted search runs only the rest, with the sampler's seed
    moved on by the same count so that it proposes new points. It also creates the
    SQLite file's folder. Trials a killed process left ``RUNNING`` do not count. Other sweepers
    (no ``storage`` key) are left alone.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        storage = sweeper.get("storage")
        if storage is None or sweeper.get("study_name") is None:
            return
        ensure_sqlite_dir(str(storage))
        done = finished_trials(str(storage), sweeper.study_name)
        if done:
            remaining = max(sweeper.n_trials - done, 0)
            log.info(
                "Study %r already has %d finished trials; running %d more to reach n_trials=%d",
                sweeper.study_name,
                done,
                remaining,
                sweeper.n_trials,
            )
            with read_write(sweeper):
                sweeper.n_trials = remaining
                if sweeper.sampler.get("seed") is not None:  # a restarted RNG would re-propose the first trials
                    sweeper.sampler.seed = sweeper.sampler.seed + done
