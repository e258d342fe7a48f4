"""Sweeps on Hydra's engines, run for real through the CLI on tiny synthetic data (CPU)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_lab.sweep import finished_trials
from tests.conftest import FAST, load_summary, run_cli, run_dirs

pytestmark = pytest.mark.slow  # every test here runs sweeps through the CLI

# FAST with fewer images: every test here starts several training processes.
SMALL = [o for o in FAST if not o.startswith(("data.n_train=", "data.n_test="))] + [
    "data.n_train=128",
    "data.n_test=64",
]
TINY = [*SMALL, "model=cnn"]


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs" / "multirun").iterdir())


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep_summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_completed_sweep(cwd: Path, proc: subprocess.CompletedProcess, jobs: int) -> Path:
    """One sweep dir with ``jobs`` completed job dirs and summary rows; returns the sweep dir."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(cwd)
    assert [load_summary(d)["status"] for d in run_dirs(cwd)] == ["completed"] * jobs
    assert [r["status"] for r in summary_rows(sweep)] == ["completed"] * jobs
    return sweep


def test_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    # A bad swept value is refused before the sweep starts (tests/test_front_door.py); a callback's monitor is
    # checked by each job as it starts (it imports Lightning), so job 1 fails and the sweep goes on.
    callback = ["+callbacks.es._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.es.mode=max"]
    proc = run_cli(tmp_path, "-m", "+callbacks.es.monitor=val/acc,val/nope,val/acc_best", *callback, *TINY)
    assert proc.returncode == 1, proc.stderr[-3000:]  # documented: 1 when any job failed
    (sweep,) = sweep_dirs(tmp_path)
    statuses = {d.name: load_summary(d)["status"] for d in run_dirs(tmp_path)}
    assert sorted(statuses.values()) == ["completed", "completed", "failed"]
    rows = summary_rows(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert "val/nope" in rows[1]["overrides"] and "callbacks.es.monitor" in rows[1]["error"]
    for r in (rows[0], rows[2]):
        assert 0.0 <= float(r["final_val_acc"]) <= float(r["best_val_acc"]) <= 1.0
        assert int(r["params"]) == 38_650 and float(r["train_seconds"]) > 0 and r["data"] == "synthetic"
    md = (sweep / "sweep_summary.md").read_text()
    assert "3 jobs, 1 not completed" in md and "SYNTHETIC DATA" in md and md.count("\n| ") == 4  # header + 3 rows


def test_submitit_local(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "-m", "seed=0,1", "hydra/launcher=slurm_local", "hydra.launcher.gpus_per_node=0", *TINY)
    sweep = assert_completed_sweep(tmp_path, proc, jobs=2)
    assert (sweep / ".submitit").is_dir()  # really went through submitit


def test_joblib_two_jobs(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY)
    assert_completed_sweep(tmp_path, proc, jobs=2)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr


def test_joblib_with_the_loaders_default_workers(tmp_path: Path) -> None:
    """data.num_workers left at its default (the CPUs): the DataLoader starts its workers inside loky's
    workers, whose default start method is loky's (they failed with "'Process' object has no attribute 'env'")."""
    defaults = [o for o in TINY if not o.startswith("data.num_workers=")]
    proc = run_cli(tmp_path, "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *defaults)
    assert_completed_sweep(tmp_path, proc, jobs=2)


def test_optuna_search_resumes_after_interruption(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies' / 's.db'}"  # in a folder that does not exist yet
    search = [
        "-m",
        "hydra/sweeper=optuna_search",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=t",
        *SMALL,
        "model=resnet",
        "model.n_blocks=1",
        "model.width=8",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(tmp_path / "data")}
    first = subprocess.Popen(
        [sys.executable, "-m", "cifar_lab", *search],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Job 1's directory appears once trial 0 is stored as finished and trial 1 has started.
    deadline = time.monotonic() + 180
    while first.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob("outputs/multirun/*/1_*")):
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # a hard interruption: no cleanup runs
    first.wait()
    assert finished_trials(storage, "t") == 1

    proc = run_cli(tmp_path, *search)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert finished_trials(storage, "t") == 3
    resumed = sweep_dirs(tmp_path)[-1]
    assert len(summary_rows(resumed)) == 2  # only the remaining trials ran


def test_ddp_two_cpu_processes_in_a_multirun(tmp_path: Path) -> None:
    tiny = [o for o in TINY if o != "trainer=cpu"]  # a second trainer= choice would replace trainer=ddp
    proc = run_cli(tmp_path, "-m", "seed=0,1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *tiny)
    sweep = assert_completed_sweep(tmp_path, proc, jobs=2)
    jobs = [d for d in sweep.iterdir() if d.is_dir()]
    assert len(list((tmp_path / "outputs").rglob("*.log"))) == 4  # rank 0 and rank 1 logs, nothing elsewhere
    for job in jobs:
        assert (job / "ddp_rank1.log").exists()  # rank 1 ran this job, in this job's directory
    assert proc.stdout.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # one rank-1 process per job (Hydra logs to stdout)


def test_summary_lists_a_job_that_left_no_summary(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from cifar_lab.sweep import write_summary

    job = tmp_path / "0_dead"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"job": {"num": 0}, "overrides": {"task": ["seed=3"]}}}, job / ".hydra" / "hydra.yaml")
    (row,) = write_summary(tmp_path)
    assert (row["job"], row["overrides"], row["status"]) == (0, "seed=3", "failed")
    assert "no summary.json" in row["error"] and "| failed |" in (tmp_path / "sweep_summary.md").read_text()
