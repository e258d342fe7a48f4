"""Sweeps on Hydra's own engines (its sweepers and launchers schedule the jobs): one table of every job's
outcome at the end (also for a sweep stopped by SIGTERM; one paragraph and exit status 4 when a full or read-only
disk keeps it from being written), and an Optuna study that picks up where an interrupted search stopped.
``python -m cifar_lab.sweep SWEEP_DIR`` writes a sweep's summary again. (DDP inside a job: distributed.py; a lost
job or a stopped sweep: launchers.py.)
"""

from __future__ import annotations

import csv
import logging
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from cifar_lab.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_IO, EXIT_USER_ERROR, io_error, print_user_error
from cifar_lab.files import atomic_write, read_json_object, writable_folder, write_bytes_atomic
from cifar_lab.preemption import handling

log = logging.getLogger("cifar_lab")

SUMMARY_COLUMNS = ["job", "dir", "overrides", "status", "data", "final_val_acc", "best_val_acc", "best_epoch", "params",
                   "train_seconds", "error"]  # fmt: skip
MARKDOWN_HEAD = ["job", "overrides", "status", "data", "final val acc %", "best val acc % (epoch)", "params", "train s",
                 "error"]  # fmt: skip
FAILED = "failed"
NOT_STARTED = "not started"  # a job that a stopped sweep never began (its summary.json: interrupted, "started": false)


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
    summary = read_json_object(path)
    if summary is None:  # written by something else, or damaged: still a row, never a crash
        row.update(status=FAILED, error=f"its summary.json is unreadable; see the job's log in {job_dir}")
        return row
    data = summary.get("data") or {}
    final, best = summary.get("final") or {}, summary.get("best") or {}
    row.update(
        status=NOT_STARTED if summary.get("started") is False else summary.get("status"),
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
    lines = ["| " + " | ".join(MARKDOWN_HEAD) + " |", "|" + "---|" * len(MARKDOWN_HEAD)]
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


def sweep_advice(sweep_dir: Path) -> str:
    """The fix for a sweep whose files cannot be written (the second half of its one-paragraph error)."""
    return (
        "Free space or fix the permissions, or point hydra.sweep.dir at another disk. Every file is written "
        "atomically, so what the jobs wrote is intact: once the cause is fixed, write the summary again with "
        f"`python -m cifar_lab.sweep {sweep_dir}`, and continue the unfinished jobs with the same command plus "
        f"resume=auto hydra.sweep.dir={sweep_dir}."
    )


def summarise(sweep_dir: Path) -> list[dict[str, Any]]:
    """``write_summary``, or the process ends: one paragraph and exit status 4 when the machine cannot write
    the summary (a full or read-only disk), a traceback and 1 for anything else. Never a sweep that ends
    as if nothing happened (Hydra only warns when a callback raises)."""
    try:
        return write_summary(sweep_dir)
    except Exception as err:
        message = io_error(err, sweep_advice(sweep_dir))
        if message is None:
            log.exception("the sweep summary could not be written")
            sys.exit(EXIT_CRASH)
        print_user_error(f"the sweep summary could not be written: {message}")
        sys.exit(EXIT_IO)


def check_writable(sweep_dir: Path) -> None:
    """Before the first job: a sweep directory that cannot be created or written (a full or read-only disk)
    ends the sweep in one paragraph with exit status 4, instead of a traceback from Hydra's first write."""
    try:
        writable_folder(sweep_dir)
    except OSError as err:
        message = io_error(err, "Free space or fix the permissions, or point hydra.sweep.dir at another disk.")
        if message is None:
            raise
        print_user_error(f"the sweep cannot start (no job has run): {message}")
        sys.exit(EXIT_IO)


def end_stopped_sweep(sweep_dir: Path, cause: str, exit_code: int) -> NoReturn:
    """A sweep stopped by ``cause`` (SIGTERM, SIGUSR1, Ctrl-C): its summary, one paragraph, ``exit_code``."""
    with signals_deferred():  # a second SIGTERM does not cut the summary short
        rows = summarise(sweep_dir)
    counts = Counter(str(r["status"]) for r in rows)
    done = sum(n for status, n in counts.items() if status in ("completed", "failed", "diverged"))
    states = ", ".join(
        [f"{done} done"] + [f"{counts[s]} {s}" for s in ("interrupted", NOT_STARTED, "running") if counts[s]]
    )
    print_user_error(
        f"the sweep was stopped by {cause}: {states}. Every job's state is in {sweep_dir / 'sweep_summary.md'}. "
        f"Continue it with the same command plus resume=auto hydra.sweep.dir={sweep_dir}: finished jobs are not "
        "trained again, interrupted ones continue from their checkpoints/last.ckpt."
    )
    sys.exit(exit_code)


@contextmanager
def signals_deferred() -> Iterator[list[str]]:
    """SIGTERM and SIGUSR1 while the block runs are noted (their names, in the list yielded), not acted on."""
    received: list[str] = []
    with handling(lambda signum, frame: received.append(signal.Signals(signum).name)):
        yield received


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, tabulate every job; exit non-zero if any did not complete.

    Jobs do not raise in a multirun (``hydra_main`` records the failure and returns None), so
    every job runs; this callback then turns failures into the process exit status. A sweep
    directory or summary that cannot be written ends the sweep with exit status 4 (one paragraph).
    A sweep stopped by SIGTERM is summarised by its launcher (``end_stopped_sweep``).
    """

    def __init__(self, exit_code_on_failure: int = 1) -> None:
        self.exit_code_on_failure = exit_code_on_failure

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        with signals_deferred() as received:  # a SIGTERM now comes after the summary, not instead of it
            rows = summarise(sweep_dir)
        if received:
            end_stopped_sweep(sweep_dir, received[0], EXIT_INTERRUPTED)
        failed = [r for r in rows if r["status"] != "completed"]  # failed, diverged, interrupted, never finished
        log.info(
            "Sweep summary: %s (%d jobs, %d not completed)", sweep_dir / "sweep_summary.md", len(rows), len(failed)
        )
        if failed and self.exit_code_on_failure:
            for r in failed:
                log.error("job %s %s (%s): %s", r["job"], r["status"], r["overrides"], r["error"])
            sys.exit(self.exit_code_on_failure)


# ---------------------------------------------------------------------- Optuna


# Hydra's Optuna sweeper, and cifar_lab's (hydra_plugins/cifar_lab_launchers/optuna.py, conf/hydra/sweeper/).
OPTUNA_SWEEPERS = (
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "hydra_plugins.cifar_lab_launchers.optuna.OptunaSweeper",
)


class TrialFailed(Exception):
    """A job of an Optuna search that did not complete (failed, diverged, interrupted); its message says how."""


def optuna_sweep(config: DictConfig | None = None) -> bool:
    """Whether this multirun's sweeper is Optuna's (it reads each job's return value): from ``config`` (a job's
    config with its ``hydra`` node, as a launcher holds it), else from the running job's Hydra config."""
    from hydra.core.hydra_config import HydraConfig

    if config is not None:
        return OmegaConf.select(config, "hydra.sweeper._target_", default=None) in OPTUNA_SWEEPERS
    return HydraConfig.initialized() and HydraConfig.get().sweeper.get("_target_") in OPTUNA_SWEEPERS


def failed_job(message: str) -> None:
    """What a failed job of a multirun gives its sweeper. Hydra's basic sweeper re-raises a job's exception and
    would end the sweep, so it gets None (the sweep summary lists the job). Optuna's sweeper records a job that
    raised as a FAIL trial and logs the message ("Failed experiment: ..."), but a None as a FAIL with "Return
    value must be float-castable. Got 'None'": it gets the raise. (A NaN would be worse: Optuna refuses to tell
    it, and the sweeper's fallback then raises out of the search.)"""
    if optuna_sweep():
        raise TrialFailed(message)
    return None


def recorded_result(directory: Path) -> tuple[bool, Any]:
    """A job's outcome from its summary.json, for a sweeper: (True, best val acc) when it trained to its end
    (completed, or stopped by a Lightning limit), else (False, a TrialFailed naming its status and error)."""
    summary = read_json_object(directory / "summary.json") or {}
    status = summary.get("status")
    if status in ("completed", "stopped"):
        return True, (summary.get("best") or {}).get("val_acc")
    error = summary.get("error") or f"no summary.json in {directory}"
    return False, TrialFailed(f"{status or 'failed'}: {error}")


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


def completed_trials(storage: str, study_name: str) -> int | None:
    """The stored study's COMPLETE trials; None when there is no such study."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna's "study not found"
        return None
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


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


def main(argv: list[str] | None = None) -> None:
    """``python -m cifar_lab.sweep SWEEP_DIR``: write the sweep's summary again (e.g. after a full disk)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print_user_error("usage: python -m cifar_lab.sweep SWEEP_DIR (a multirun's folder, holding its job folders)")
        sys.exit(EXIT_USER_ERROR)
    rows = summarise(Path(args[0]))
    failed = sum(r["status"] != "completed" for r in rows)
    print(f"{Path(args[0]) / 'sweep_summary.md'}: {len(rows)} jobs, {failed} not completed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    main()
