"""Never lose a run: kill-and-resume equivalence, signals, divergence, corrupt inputs, determinism.

All runs are on CPU with SYNTHETIC data. ``seconds`` (wall-clock per epoch) is the one metrics.csv
column that two identical runs do not share, so comparisons leave it out.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from cifar_lab import resilience
from cifar_lab.data import CifarDataModule, ImageFolder
from cifar_lab.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, Interrupted, UserError
from cifar_lab.files import read_metrics
from cifar_lab.lifecycle import run
from cifar_lab.resume import resume_path
from cifar_lab.task import ClassifierModule
from tests.conftest import compose_cfg, load_summary, run_cli, write_image_folder

# A small ResNet with dropout, so that a resume must restore the RNG to draw the same masks.
DROPOUT_RUN = [
    "experiment=p2b_dropout",
    "model.n_blocks=2",
    "model.width=8",
    "data=synthetic",
    "data.n_train=256",
    "data.n_test=64",
    "data.batch_size=32",
    "data.num_workers=0",
    "trainer=cpu",
    "trainer.max_epochs=8",
    "trainer.enable_progress_bar=false",
    "deterministic=true",
    "seed=3",
]
EPOCHS = 8
STEPS_PER_EPOCH = 8  # 256 images in batches of 32
# One torch thread: on a shared, loaded CPU two spinning threads made these runs ~30x slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def curves(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv without the wall-clock ``seconds`` column."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(run_dir / "metrics.csv")]


def run_here(run_dir: Path, *overrides: str) -> dict:
    """``run`` in this process (no interpreter start-up), as the CLI would with these overrides."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return run(compose_cfg(*overrides), run_dir)


@contextmanager
def one_thread_and_restore():
    """One torch thread, as in the subprocesses; and keep deterministic=true's global flag from leaking."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread_and_restore():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted DROPOUT_RUN."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with one_thread_and_restore():
        run_here(run_dir, *DROPOUT_RUN)
    return run_dir


def test_same_seed_same_metrics(reference, tmp_path):
    run_here(tmp_path / "again", *DROPOUT_RUN)
    assert len(curves(reference)) == EPOCHS
    assert curves(tmp_path / "again") == curves(reference)  # exactly equal, seconds aside


def test_a_different_seed_changes_the_metrics(reference, tmp_path):
    """The determinism test above could pass vacuously if the seed did not reach the run."""
    run_here(tmp_path / "other", *DROPOUT_RUN, "seed=4", "trainer.max_epochs=1")
    assert curves(tmp_path / "other")[0] != curves(reference)[0]


# --------------------------------------------------------------------------- kill and resume


def completed_epochs(run_dir: Path) -> int:
    """Epochs recorded in last.ckpt (0 when there is none yet)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] + 1 if ckpt.exists() else 0


def rows_written(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return max(path.read_text().count("\n") - 1, 0) if path.exists() else 0  # complete lines only


def launch(cwd: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(cwd / "data"), **ONE_THREAD}
    return subprocess.Popen(
        [sys.executable, "-m", "cifar_lab", *DROPOUT_RUN, f"hydra.run.dir={run_dir}", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_during_next_epoch(
    proc: subprocess.Popen, run_dir: Path, launched_ns: int, sig: int, rng: random.Random
) -> str:
    """Once ``proc`` has recorded an epoch of its own, wait a random part of an epoch, then send ``sig``."""
    start, csv = completed_epochs(run_dir), run_dir / "metrics.csv"
    deadline = time.monotonic() + 300
    while not (csv.exists() and csv.stat().st_mtime_ns > launched_ns and rows_written(run_dir) > start):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.02)
    # The first epoch of a process carries its warm-up, so the shortest epoch is the better yardstick.
    epoch_seconds = min(r["seconds"] for r in read_metrics(csv))
    time.sleep(rng.uniform(0.0, 0.9) * epoch_seconds)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    return out


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(reference, tmp_path):
    """SIGKILL at 3 random points (each after the process finished an epoch), then a SIGTERM; resume each time."""
    rng = random.Random(20240606)
    run_dir = tmp_path / "outputs" / "chain"
    for i in range(3):
        launched = time.time_ns()
        proc = launch(tmp_path, run_dir, *(["resume=true"] if i else []))
        stop_during_next_epoch(proc, run_dir, launched, signal.SIGKILL, rng)
        assert proc.returncode == -signal.SIGKILL
        assert load_summary(run_dir)["status"] == "running"  # killed mid-training: what a hard kill leaves
        assert completed_epochs(run_dir) < EPOCHS

    launched = time.time_ns()
    proc = launch(tmp_path, run_dir, "resume=true")
    out = stop_during_next_epoch(proc, run_dir, launched, signal.SIGTERM, rng)
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and "resume=true" in out, out[-3000:]
    summary = load_summary(run_dir)
    assert summary["status"] == "interrupted"
    assert summary["epochs"] == completed_epochs(run_dir) == rows_written(run_dir) < EPOCHS

    res = run_cli(tmp_path, *DROPOUT_RUN, f"hydra.run.dir={run_dir}", "resume=true", env=ONE_THREAD)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    got, want = curves(run_dir), curves(reference)
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))  # no duplicated or missing epoch
    for g, w in zip(got, want):
        for key in w:
            assert g[key] == pytest.approx(w[key], abs=1e-6), (g["epoch"], key)
    summary = load_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == EPOCHS
    seconds = [r["seconds"] for r in read_metrics(run_dir / "metrics.csv")]
    assert summary["train_seconds"] == pytest.approx(sum(seconds), abs=1e-3)  # every epoch, all processes
    assert tensorboard_curve(run_dir / "tb", "val/acc") == pytest.approx([r["val_acc"] for r in got], abs=1e-6)


# Val accuracy never improves after epoch 1 (a learning rate too small to move the predictions), so
# the best checkpoint stays at epoch 1: last.ckpt must still follow every epoch.
PLATEAU_RUN = [
    "experiment=p1a", "model.width=4", "model.hidden=8", "data=synthetic", "data.n_train=2048", "data.n_test=64",
    "data.batch_size=32", "data.num_workers=0", "trainer=cpu", "trainer.max_epochs=8",
    "trainer.enable_progress_bar=false", "deterministic=true", "seed=5", "optimizer.lr=1e-9",
]  # fmt: skip


@pytest.mark.slow
def test_last_checkpoint_follows_every_epoch_when_val_acc_plateaus(tmp_path):
    """Killed in a later epoch of a plateaued run: last.ckpt is at the last recorded epoch (not at the
    best one), and the resumed run equals an uninterrupted one epoch for epoch."""
    reference = tmp_path / "reference"
    summary = run_here(reference, *PLATEAU_RUN)
    want = curves(reference)
    assert summary["best"]["epoch"] == 1 and len(want) == 8  # a real plateau: no later epoch improved

    run_dir = tmp_path / "outputs" / "plateau"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(tmp_path / "data"), **ONE_THREAD}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar_lab", *PLATEAU_RUN, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while rows_written(run_dir) < 3:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no third epoch in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    rows, saved = rows_written(run_dir), completed_epochs(run_dir)
    assert proc.returncode == -signal.SIGKILL and rows < 8
    assert saved >= max(rows - 1, 2)  # the row is written just before the checkpoint; never stuck at epoch 1

    res = run_cli(tmp_path, *PLATEAU_RUN, f"hydra.run.dir={run_dir}", "resume=true", env=ONE_THREAD)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert curves(run_dir) == want


def tensorboard_curve(log_dir: Path, tag: str) -> list[float]:
    """The scalar ``tag`` by step over every event file in ``log_dir``, the last write of a step winning."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, float] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            by_step.update({e.step: e.value for e in acc.Scalars(tag)})
    return [by_step[step] for step in sorted(by_step)]


class SignalAtStep(L.Callback):
    """Sends this process ``sig`` after training step ``step`` (1-based, counted over the whole run)."""

    def __init__(self, sig: int, step: int) -> None:
        self.sig, self.step = sig, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def test_sigusr1_stops_after_the_step_and_resumes_exactly(reference, tmp_path, monkeypatch):
    run_dir = tmp_path / "usr1"
    base = resilience.callbacks
    monkeypatch.setattr(
        resilience, "callbacks", lambda identity: [*base(identity), SignalAtStep(signal.SIGUSR1, STEPS_PER_EPOCH + 2)]
    )
    with pytest.raises(Interrupted, match="resume=true"):
        run_here(run_dir, *DROPOUT_RUN)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # our handler is gone again
    assert load_summary(run_dir)["status"] == "interrupted"
    assert len(curves(run_dir)) == completed_epochs(run_dir) == 1  # the partial epoch 2 is not recorded
    monkeypatch.setattr(resilience, "callbacks", base)
    run_here(run_dir, *DROPOUT_RUN, "resume=true")
    assert curves(run_dir) == curves(reference)


def test_fast_path_resumes_exactly(tmp_path):
    """The resident loader with K optimizer steps per Lightning step (run eagerly on the CPU)."""
    fast = [*DROPOUT_RUN, "data.loader=gpu", "speed.steps_per_call=3"]
    run_here(tmp_path / "whole", *fast, "trainer.max_epochs=3")
    run_here(tmp_path / "split", *fast, "trainer.max_epochs=2")
    run_here(tmp_path / "split", *fast, "trainer.max_epochs=3", "resume=true")
    assert len(curves(tmp_path / "whole")) == 3
    assert curves(tmp_path / "split") == curves(tmp_path / "whole")


# --------------------------------------------------------------------------- statuses


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint .*hydra.run.dir"):
        run_here(tmp_path / "nothing", *DROPOUT_RUN, "resume=true")
    assert not (tmp_path / "nothing" / "summary.json").exists()  # nothing was started or overwritten


def test_resume_auto_starts_afresh_then_continues(tmp_path):
    run_here(tmp_path / "run", *DROPOUT_RUN, "trainer.max_epochs=1", "resume=auto")
    run_here(tmp_path / "run", *DROPOUT_RUN, "trainer.max_epochs=2", "resume=auto")
    assert [r["epoch"] for r in curves(tmp_path / "run")] == [1, 2]
    assert load_summary(tmp_path / "run")["resumed_from"].endswith("last.ckpt")


def test_resume_with_another_command_is_refused(reference):
    """The checkpoint's stored config is compared with the resumed run's, whatever set the difference."""
    with pytest.raises(UserError, match="different settings.*model.width: 8 -> 16"):
        resume_path(compose_cfg(*DROPOUT_RUN, "model.width=16", "resume=true"), reference, ["resume=true"])


def test_a_run_named_otherwise_resumes(reference):
    """``name`` labels a run; a run started before composed names (``reg=dropout`` was named ``resnet``)
    resumes under today's name."""
    assert compose_cfg(*DROPOUT_RUN).name != "resnet"
    cfg = compose_cfg(*DROPOUT_RUN, "name=resnet", "trainer.max_epochs=9", "resume=true")
    assert resume_path(cfg, reference, ["resume=true"])


def test_a_checkpoint_from_before_the_newer_options_resumes_at_their_old_behaviour():
    """Options added later (model layouts, scheduler, logger, every Trainer argument) are absent from an older
    checkpoint's config; at the value that meant, a resume is the same run, at another it is refused."""
    from cifar_lab.resume import differences, run_identity

    now = run_identity(compose_cfg("experiment=p2b_batchnorm", "model.bn_stem=conv_bn_relu",
                                   "model.block_conv_bias=true", "model.block_init=default",
                                   "model.bn_weight_init=1.0", "optimizer.lr=0.01",
                                   "speed.channels_last=false"))  # fmt: skip
    added = ("model.bn_", "model.block_", "model.dropout_kind", "model.stem_dropout", "scheduler.", "logger.",
             "speed.pack_", "speed.cpu_")  # fmt: skip
    older = {k: v for k, v in now.items() if not k.startswith(added)}
    older = {k: v for k, v in older.items() if k not in ("trainer.detect_anomaly", "trainer.fast_dev_run")}
    assert len(older) < len(now) and differences(older, now) == []
    changed = run_identity(compose_cfg("experiment=p2b_batchnorm", "optimizer.lr=0.01", "scheduler=cosine"))
    diff = differences(older, changed)
    assert any(d.startswith("scheduler.name: 'none' -> 'cosine'") for d in diff)
    assert any(d.startswith("model.bn_stem: 'conv_bn_relu' -> 'conv_relu_bn'") for d in diff)
    assert differences({"model.width": 8}, {"model.width": 8, "model.unknown": 1}) == [
        "model.unknown: (absent) -> 1"
    ]  # an option not in the table stays a difference


def test_truncated_checkpoint_is_a_clear_error_and_leaves_failed(tmp_path):
    run_dir = tmp_path / "run"
    run_here(run_dir, *DROPOUT_RUN, "trainer.max_epochs=1")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt") as err:
        run_here(run_dir, *DROPOUT_RUN, "trainer.max_epochs=2", "resume=true")
    assert str(ckpt) in str(err.value)
    summary = load_summary(run_dir)
    assert summary["status"] == "failed" and "truncated or corrupt" in summary["error"]
    assert len(curves(run_dir)) == 1  # the finished epoch's row is kept


def test_a_crash_leaves_failed_with_the_error(tmp_path, monkeypatch):
    def crash(self, batch, batch_idx):
        raise RuntimeError("simulated crash in training_step")

    monkeypatch.setattr(ClassifierModule, "training_step", crash)
    with pytest.raises(RuntimeError):
        run_here(tmp_path / "run", *DROPOUT_RUN)
    summary = load_summary(tmp_path / "run")
    assert summary["status"] == "failed" and "simulated crash in training_step" in summary["error"]


@pytest.mark.slow
def test_a_huge_learning_rate_ends_diverged(tmp_path):
    res = run_cli(
        tmp_path,
        "experiment=p1a",
        "data=synthetic",
        "optimizer.lr=1e6",
        "trainer.max_epochs=2",
        "data.n_train=512",
        "data.n_test=128",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
        env=ONE_THREAD,
    )
    out = res.stdout + res.stderr
    assert res.returncode == EXIT_DIVERGED, out[-3000:]
    assert "Traceback" not in out and "diverged" in out and "optimizer.lr=" in out, out[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    summary = load_summary(run_dir)
    assert summary["status"] == "diverged" and "learning rate" in summary["error"]
    rows = read_metrics(run_dir / "metrics.csv")
    assert len(rows) < 2 and all(math.isfinite(v) for r in rows for v in r.values())  # no NaN curve point


# --------------------------------------------------------------------------- corrupt inputs


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint untouched and no temp file behind."""
    io = resilience.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_mid_write(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    cb, io = resilience.RngState(), resilience.AtomicCheckpointIO()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    io.save_checkpoint({"rng": cb.state_dict()}, tmp_path / "c.ckpt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    cb.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"])  # plain types only
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_corrupt_cache_file_is_decoded_again_with_a_warning(tmp_path, caplog):
    root = write_image_folder(tmp_path / "imgs", fmt="png")
    cache_dir = tmp_path / "cache"
    first = CifarDataModule(ImageFolder(str(root), cache_dir=str(cache_dir)), num_workers=0)
    first.setup()
    (cache_file,) = cache_dir.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        second = CifarDataModule(ImageFolder(str(root), cache_dir=str(cache_dir)), num_workers=0)
        second.setup()
    assert not second.cache_hit and "unreadable" in caplog.text and str(cache_file) in caplog.text
    assert torch.equal(first.tensors["train"][0], second.tensors["train"][0])
    third = CifarDataModule(ImageFolder(str(root), cache_dir=str(cache_dir)), num_workers=0)
    third.setup()
    assert third.cache_hit  # the rebuilt cache file is good


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_image_is_a_clear_error_naming_the_file(tmp_path, fmt):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=2, n_test=1, fmt=fmt)
    bad = sorted((root / "train" / "dog").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    dm = CifarDataModule(ImageFolder(str(root), cache_dir=None), num_workers=0)
    with pytest.raises(UserError, match="cannot read image") as err:
        dm.setup()
    assert str(bad) in str(err.value)
