"""Never lose a run, part 3 (issue 20): resume never destroys or falsifies a run, every way Lightning can
stop is an outcome, signals from the first line, and a run directory's ownership.

Faults that need the real entry point (Hydra's .hydra/ files, exit codes, signals, worker processes) run
it as a subprocess, with a fault injected by a small preamble (``run_patched``); the rest call
``train.run`` in this process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar_lab.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR
from cifar_lab.files import read_metrics
from cifar_lab.rundir import RunDir
from tests.conftest import compose_cfg, load_summary, run_cli
from tests.test_reliability import TINY, assert_one_paragraph, run_patched, snapshot


def run_at(run_dir: Path, *overrides: str, data_dir: Path | None = None) -> dict:
    """``train.run`` in this process. ``data_dir`` is part of a run's identity: a CLI run of the same test
    (``env_for``) has ``<its cwd>/data``."""
    from cifar_lab.lifecycle import run

    run_dir.mkdir(parents=True, exist_ok=True)
    return run(compose_cfg(f"data_dir={data_dir or run_dir.parent / 'data'}", *overrides), run_dir)


def epochs_in(ckpt: Path) -> int:
    """The epochs a checkpoint written at an epoch's end holds."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] + 1


def epochs_of(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in read_metrics(run_dir / "metrics.csv")]


def env_for(cwd: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(cwd / "data"), **extra}


# --------------------------------------------------------------------------- A: resume never destroys


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch run completed through the CLI (tests work on copies of it)."""
    cwd = tmp_path_factory.mktemp("done")
    run_dir = cwd / "outputs" / "done"
    res = run_cli(cwd, *TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, run_dir


def copy_of(completed: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    cwd, original = completed
    run_dir = original.parent / name
    shutil.copytree(original, run_dir)
    return cwd, run_dir


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "lost"), [("auto", ["checkpoints/last.ckpt"]),
                                            ("auto", ["checkpoints/last.ckpt", "metrics.csv"]),
                                            ("true", ["checkpoints/last.ckpt"])])  # fmt: skip
def test_a_recorded_run_without_last_ckpt_is_never_started_over(completed, mode, lost):
    """A1: resume=auto used to replace such a run with a fresh one (metrics.csv, best.ckpt, summary.json)."""
    cwd, run_dir = copy_of(completed, f"lost-{mode}-{len(lost)}")
    for name in lost:
        (run_dir / name).unlink()
    before = snapshot(run_dir)
    res = run_cli(cwd, *TINY, "trainer.max_epochs=3", f"resume={mode}", f"hydra.run.dir={run_dir}")
    out = assert_one_paragraph(res, EXIT_USER_ERROR, "2 recorded epoch", "last.ckpt", "left as it was")
    assert out.count("Error:") == 1
    message = out.split("Error:", 1)[1]
    assert "from scratch" not in message and "resume=auto to" not in message  # recommends nothing destructive
    assert snapshot(run_dir) == before


def test_resume_auto_starts_afresh_where_no_epoch_was_recorded(tmp_path):
    """A run killed in its first epoch (summary.json running, no row, no checkpoint) is started again."""
    run_dir = tmp_path / "outputs" / "first-epoch"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"status": "running", "epochs": 0}\n')
    summary = run_at(run_dir, *TINY, "resume=auto")
    assert summary["status"] == "completed" and epochs_of(run_dir) == [1]


@pytest.mark.parametrize("mode", ["true", pytest.param("auto", marks=pytest.mark.slow)])
def test_resuming_a_completed_run_says_so_and_changes_nothing(completed, mode):
    """A2: it used to rewrite summary.json without its epochs, best and final (then KeyError: 'epochs')."""
    cwd, run_dir = copy_of(completed, f"again-{mode}")
    before = snapshot(run_dir)
    res = run_cli(cwd, *TINY, "trainer.max_epochs=2", f"resume={mode}", f"hydra.run.dir={run_dir}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "Error:" not in out and "already completed its 2 epochs" in out, out[-3000:]
    assert snapshot(run_dir) == before  # .hydra/ included


@pytest.mark.slow
def test_fewer_epochs_than_recorded_is_refused_and_changes_nothing(completed):
    """A3: Lightning's MisconfigurationException used to turn the completed run into ``failed``."""
    cwd, run_dir = copy_of(completed, "fewer")
    before = snapshot(run_dir)
    res = run_cli(cwd, *TINY, "trainer.max_epochs=1", "resume=true", f"hydra.run.dir={run_dir}")
    assert_one_paragraph(res, EXIT_USER_ERROR, "2 recorded epochs", "trainer.max_epochs=1", "trainer.max_epochs=2")
    assert snapshot(run_dir) == before  # byte for byte: summary.json, metrics.csv, checkpoints, .hydra/


def test_a_run_whose_last_epoch_was_trained_but_not_finished_is_completed_by_its_resume(tmp_path):
    """Killed after its last checkpoint but before its final status: the resume trains nothing and completes it."""
    run_dir = tmp_path / "outputs" / "unfinished"
    run_at(run_dir, *TINY, "trainer.max_epochs=2")
    summary = load_summary(run_dir)
    (run_dir / "summary.json").write_text(__import__("json").dumps({**summary, "status": "running"}))
    rows = (run_dir / "metrics.csv").read_bytes()
    resumed = run_at(run_dir, *TINY, "trainer.max_epochs=2", "resume=true")
    assert resumed["status"] == "completed" and resumed["epochs"] == 2 and resumed["best"] == summary["best"]
    assert (run_dir / "metrics.csv").read_bytes() == rows


# Val accuracy never improves after epoch 1 (a learning rate too small to move the predictions): every
# later epoch ties it, and a tie is not an improvement, so best.ckpt must stay at epoch 1.
PLATEAU = [*TINY, "data.n_train=256", "data.n_test=64", "data.batch_size=32", "deterministic=true", "seed=5",
           "optimizer.lr=1e-9"]  # fmt: skip


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_run_keeps_its_best_checkpoint(tmp_path, how):
    """A4: Lightning drops the best score when the checkpoint folder moved, so best.ckpt took the next epoch
    whatever its score; a copy's resume leaves the original directory as it was."""
    first, data = tmp_path / "first", tmp_path / "data"
    summary = run_at(first, *PLATEAU, "trainer.max_epochs=2", data_dir=data)
    assert summary["best"]["epoch"] == 1 and epochs_in(first / "checkpoints" / "best.ckpt") == 1
    there = tmp_path / "elsewhere" / how
    there.parent.mkdir()
    if how == "moved":
        first.rename(there)
    else:
        shutil.copytree(first, there)
        original = snapshot(first)
    resumed = run_at(there, *PLATEAU, "trainer.max_epochs=4", "resume=true", data_dir=data)
    assert resumed["status"] == "completed" and epochs_of(there) == [1, 2, 3, 4]
    assert resumed["best"]["epoch"] == 1  # a plateau: every later epoch only ties epoch 1
    assert epochs_in(there / "checkpoints" / "best.ckpt") == resumed["best"]["epoch"]
    assert epochs_in(there / "checkpoints" / "last.ckpt") == 4
    if how == "copied":
        assert snapshot(first) == original  # the original directory is untouched


KILL_BEFORE_SECOND_CHECKPOINT = """
import os, signal
from cifar_lab import resilience
save = resilience.AtomicCheckpointIO.save_checkpoint
def save_or_die(self, checkpoint, path, storage_options=None):
    if str(path).endswith("last.ckpt") and checkpoint["epoch"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # after epoch 2's row and TensorBoard point, before its last.ckpt
    return save(self, checkpoint, path, storage_options)
resilience.AtomicCheckpointIO.save_checkpoint = save_or_die
"""


def tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` as TensorBoard shows it: the whole folder through its EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_tensorboard_holds_each_epoch_once_after_a_kill_and_resume(tmp_path):
    """A5: killed between epoch 2's TensorBoard point and its checkpoint, the resume trains epoch 2 again;
    TensorBoard used to hold it twice (and a kill could lose points it had not flushed)."""
    run_dir = tmp_path / "outputs" / "tb"
    kill = KILL_BEFORE_SECOND_CHECKPOINT
    res = run_patched(tmp_path, kill, *TINY, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}")
    assert res.returncode == -signal.SIGKILL, (res.stdout + res.stderr)[-3000:]
    assert epochs_of(run_dir) == [1, 2] and epochs_in(run_dir / "checkpoints" / "last.ckpt") == 1
    res = run_cli(tmp_path, *TINY, "trainer.max_epochs=3", "resume=true", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for tag, column in (("val/acc", "val_acc"), ("train/loss", "train_loss")):
        points = tensorboard_scalars(run_dir / "tb", tag)
        assert [step for step, _ in points] == [1, 2, 3], (tag, points)
        assert [v for _, v in points] == pytest.approx([r[column] for r in rows], abs=1e-6)


# --------------------------------------------------------------------------- B: every way Lightning stops


def test_max_steps_in_mid_epoch_is_stopped_with_whole_epochs(tmp_path):
    """128 images in batches of 64: 2 steps an epoch, so step 5 is in epoch 3, which is not recorded."""
    run_dir = tmp_path / "steps"
    summary = run_at(run_dir, *TINY, "trainer.max_epochs=5", "trainer.max_steps=5")
    assert summary["status"] == "stopped" and summary["epochs"] == 2
    assert "trainer.max_steps=5" in summary["error"] and "after 2 epochs" in summary["error"]
    assert epochs_of(run_dir) == [1, 2] and epochs_in(run_dir / "checkpoints" / "last.ckpt") == 2
    resumed = run_at(run_dir, *TINY, "trainer.max_epochs=5", "trainer.max_steps=5", "resume=true")
    assert resumed["status"] == "stopped" and resumed["epochs"] == 2 and epochs_of(run_dir) == [1, 2]


def test_a_resume_that_trains_nothing_keeps_the_summary(tmp_path):
    """max_steps reached at an epoch's end: the resume's fit returns at once (it used to raise KeyError)."""
    run_dir = tmp_path / "steps"
    summary = run_at(run_dir, *TINY, "trainer.max_epochs=5", "trainer.max_steps=4")
    assert summary["status"] == "stopped" and summary["epochs"] == 2
    resumed = run_at(run_dir, *TINY, "trainer.max_epochs=5", "trainer.max_steps=4", "resume=true")
    assert resumed["status"] == "stopped" and resumed["epochs"] == 2 and resumed["best"] == summary["best"]


def test_fast_dev_run_is_not_completed(tmp_path):
    summary = run_at(tmp_path / "dev", *TINY, "trainer.max_epochs=3", "trainer.fast_dev_run=true")
    assert summary["status"] == "stopped" and "fast_dev_run" in summary["error"] and summary["epochs"] == 1


@pytest.mark.slow
def test_max_time_is_stopped_with_the_epochs_it_trained(tmp_path):
    run_dir = tmp_path / "outputs" / "time"
    res = run_cli(tmp_path, *TINY, "data.n_train=1024", "data.batch_size=16", "trainer.max_epochs=10000",
                  "trainer.max_time=00:00:00:02", f"hydra.run.dir={run_dir}")  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Traceback" not in out, out[-3000:]
    summary = load_summary(run_dir)
    epochs = summary["epochs"]
    assert summary["status"] == "stopped" and "trainer.max_time reached" in summary["error"]
    assert f"after {epochs} epoch" in summary["error"] and f"stopped after {epochs} epoch" in out
    assert epochs_of(run_dir) == list(range(1, epochs + 1))
    assert not epochs or epochs_in(run_dir / "checkpoints" / "last.ckpt") == epochs


@pytest.mark.slow
@pytest.mark.parametrize(("override", "needle"), [
    ("trainer.limit_val_batches=0", "a run validates every epoch"),
    ("trainer.limit_val_batches=0.0", "a run validates every epoch"),
    ("trainer.limit_train_batches=0", "trains nothing"),
    ("trainer.limit_train_batches=1.5", "a share in (0, 1]"),
    ("trainer.check_val_every_n_epoch=2", "a run validates every epoch"),
])  # fmt: skip
def test_options_that_skip_training_or_validation_are_refused(tmp_path, override, needle):
    run_dir = tmp_path / "outputs" / "limits"
    res = run_cli(tmp_path, *TINY, override, f"hydra.run.dir={run_dir}")
    assert_one_paragraph(res, EXIT_USER_ERROR, override.split("=")[0], needle)
    assert not run_dir.exists()  # refused before Hydra made the run's directory (issue 22, item 4)


def test_the_outcome_table_never_calls_an_early_end_completed():
    from cifar_lab.errors import STATUSES, AlreadyComplete, Stopped, outcome_of

    assert (outcome_of(SystemExit(0)).status, outcome_of(SystemExit(0)).exit_code) == ("stopped", 0)
    assert (outcome_of(Stopped("max_time")).status, outcome_of(Stopped("max_time")).exit_code) == ("stopped", 0)
    assert outcome_of(AlreadyComplete("nothing to do")).exit_code == 0
    table = (Path(__file__).parent.parent / "docs" / "resume.md").read_text()
    assert all(f"| `{status}` |" in table for status in STATUSES)  # docs/resume.md lists every status


# --------------------------------------------------------------------------- C: signals from the first line

SLOW_SETUP = """
import os, pathlib, time
from cifar_lab.data import sources
def slow_load(self):
    pathlib.Path(os.environ["SETUP_MARK"]).touch()  # the data setup has begun, inside trainer.fit
    time.sleep(120)
sources.Synthetic.load = slow_load
"""


def signal_during_setup(cwd: Path, run_dir: Path, sig: int, *overrides: str) -> str:
    mark = cwd / f"setup-{run_dir.name}"
    code = f"{SLOW_SETUP}\nfrom cifar_lab.train import main\nmain()\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *TINY, *overrides, f"hydra.run.dir={run_dir}"], cwd=cwd,
                            env=env_for(cwd, SETUP_MARK=str(mark)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and out.count("Error:") == 1, out[-3000:]
    return out


@pytest.mark.slow
def test_sigterm_during_data_setup_is_interrupted(tmp_path):
    run_dir = tmp_path / "outputs" / "setup"
    out = signal_during_setup(tmp_path, run_dir, signal.SIGTERM)
    summary = load_summary(run_dir)
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert f"resume=auto hydra.run.dir={run_dir}" in out  # no epoch yet: auto starts it again


@pytest.mark.slow
def test_sigusr1_during_a_resumes_data_setup_keeps_the_run(tmp_path):
    run_dir = tmp_path / "outputs" / "resumed"
    run_at(run_dir, *TINY, "trainer.max_epochs=1", data_dir=tmp_path / "data")
    rows = (run_dir / "metrics.csv").read_bytes()
    out = signal_during_setup(tmp_path, run_dir, signal.SIGUSR1, "trainer.max_epochs=2", "resume=true")
    summary = load_summary(run_dir)
    assert summary["status"] == "interrupted" and "SIGUSR1" in summary["error"]
    assert summary["epochs"] == 1 and summary["best"]["epoch"] == 1  # the recorded epoch is kept
    assert (run_dir / "metrics.csv").read_bytes() == rows
    assert f"resume=true hydra.run.dir={run_dir}" in out


def test_the_signal_handlers_are_put_back_after_a_run(tmp_path):
    run_at(tmp_path / "run", *TINY)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# --------------------------------------------------------------------------- D: ownership


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_killed_runs_dataloader_workers_do_not_keep_its_directory(tmp_path):
    """D1: the workers a run forked used to keep its flock after a kill -9, so the printed resume command was
    refused ("another run is live"). The workers are stopped (SIGSTOP) so that they outlive the kill."""
    run_dir = tmp_path / "outputs" / "workers"
    workers = ["data.loader=classic", "data.num_workers=2", "data.persistent_workers=true"]
    log = tmp_path / "run.log"  # not a pipe: the stopped workers hold its write end open
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cifar_lab", *TINY, *workers, "data.n_train=512",
                                 "trainer.max_epochs=6", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                                env=env_for(tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not read_metrics(run_dir / "metrics.csv") or not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        children = [pid for pid in group_members(proc.pid) if pid != proc.pid]
        assert children, "no DataLoader worker to outlive the run"
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        proc.kill()
        proc.wait(timeout=60)
        assert set(children) <= set(group_members(proc.pid))  # the workers are alive, holding the run's files

        owner = RunDir(run_dir)
        owner.acquire()  # what the resume does first: not refused
        owner.release()
        lines = log.read_text().splitlines()
        (command,) = [line.split("continue it with: ", 1)[1] for line in lines if "continue it with" in line]
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "cifar_lab"] and "resume=true" in words
        res = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        assert load_summary(run_dir)["status"] == "completed" and epochs_of(run_dir) == [1, 2, 3, 4, 5, 6]
    finally:
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_second_owner_in_the_same_process_is_refused(tmp_path):
    """A POSIX record lock does not conflict within its own process, so the registry refuses the second owner."""
    first = RunDir(tmp_path)
    first.acquire()
    try:
        with pytest.raises(Exception, match="another run is live") as err:
            RunDir(tmp_path).acquire()
        assert str(os.getpid()) in str(err.value)
    finally:
        first.release()
    again = RunDir(tmp_path)
    again.acquire()
    again.release()


def test_a_file_system_without_posix_locks_runs_without_a_lock(tmp_path, monkeypatch, caplog):
    """Only a lock held elsewhere (EACCES, EAGAIN) is a live run; ENOLCK is a file system without locks."""
    import errno

    from cifar_lab import rundir

    def no_locks(fd, cmd, *args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "lockf", no_locks)
    owner = RunDir(tmp_path)
    owner.acquire()  # not refused as "another run is live (process unknown)"
    owner.release()
    assert "no lock on" in caplog.text
