"""A sweep never loses a run (issue 20, part 3), through the real launchers (``python -m cifar_lab -m ...``):
SIGTERM to a sequential (the default) or packed sweep, a launcher killed with SIGKILL, a second launcher
into a live sweep, and a full or read-only disk (a small tmpfs where it can be mounted, a patched write
everywhere)."""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_summary, run_cli

SMALL = ["data=synthetic", "data.n_train=128", "data.n_test=64", "data.batch_size=64", "data.num_workers=0",
         "trainer=cpu", "trainer.enable_progress_bar=false"]  # fmt: skip
LONG = [*SMALL, "trainer.max_epochs=60"]  # stopped long before its end


def env_for(cwd: Path, pythonpath: Path | None = None) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(pythonpath) if pythonpath else None, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(cwd / "data"), "PYTHONPATH": path}


def start(cwd: Path, sweep_dir: Path, *overrides: str, log: str = "out.txt") -> subprocess.Popen:
    """The sweep in the background, its output in ``cwd/log``."""
    out = open(cwd / log, "w")  # noqa: SIM115 - closed by the child's exit; read back by the test
    command = [sys.executable, "-m", "cifar_lab", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.Popen(command, cwd=cwd, env=env_for(cwd), stdout=out, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    start_time = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the sweep ended before {path} appeared"
        assert time.monotonic() - start_time < timeout, f"{path} never appeared"
        time.sleep(0.05)


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep_summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def statuses(sweep_dir: Path) -> list[str]:
    return [r["status"] for r in rows(sweep_dir)]


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` but the lock, by content."""
    return {
        str(p.relative_to(directory)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ---------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_sigterm_stops_a_sequential_sweep_with_its_summary_and_it_resumes(tmp_path, sig):
    """The running job stops after its step (``interrupted``, with its resume command), the others never start
    (``not started``), the summary names each and the sweep exits 143. SIGUSR1 means SIGTERM. The same command
    with resume=auto then continues the interrupted job from its last.ckpt and runs the others."""
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, "experiment=p1a", "seed=0,1,2", *LONG)
    wait_for(sweep_dir / "0_p1a_synthetic" / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 143
    out = (tmp_path / "out.txt").read_text()
    assert "Traceback" not in out
    assert f"the sweep was stopped by {sig.name}: 0 done, 1 interrupted, 2 not started" in out
    assert statuses(sweep_dir) == ["interrupted", "not started", "not started"]
    first = load_summary(sweep_dir / "0_p1a_synthetic")
    assert first["status"] == "interrupted" and "resume=true" in first["error"]
    assert 1 <= first["epochs"] < 60
    later = load_summary(sweep_dir / "2_p1a_synthetic")
    assert later["started"] is False and f"resume=auto hydra.sweep.dir={sweep_dir}" in later["error"]
    assert later["experiment"] == "p1a" and [r["data"] for r in rows(sweep_dir)] == ["synthetic"] * 3
    if sig != signal.SIGTERM:
        return
    more = f"trainer.max_epochs={first['epochs'] + 1}"  # one more epoch than the interrupted job has
    again = run_cli(tmp_path, "-m", f"hydra.sweep.dir={sweep_dir}", "experiment=p1a", "seed=0,1,2", *SMALL, more,
                    "resume=auto")  # fmt: skip
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert statuses(sweep_dir) == ["completed"] * 3
    resumed = load_summary(sweep_dir / "0_p1a_synthetic")
    assert resumed["epochs"] == first["epochs"] + 1 and resumed["resumed_from"].endswith("last.ckpt")


@pytest.mark.slow
def test_sigterm_before_a_jobs_fit_stops_it_after_its_first_step(tmp_path):
    """SIGTERM while the job builds its model (before Lightning's handler exists): the job is not killed
    mid-build (an exception thrown into Hydra's instantiate became a false ``failed`` with a traceback) and
    does not train on to its 60 epochs: it stops after a step once its fit has begun (an epoch here is a
    fraction of a second), ``interrupted``, and the sweep ends with 143."""
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, "experiment=p1a", "seed=0,1", *LONG)
    log = tmp_path / "out.txt"
    deadline = time.monotonic() + 240
    while "run directory:" not in log.read_text():  # logged once the job owns its directory, before it builds
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    out = log.read_text()
    assert "Traceback" not in out and statuses(sweep_dir) == ["interrupted", "not started"]
    assert load_summary(sweep_dir / "0_p1a_synthetic")["epochs"] < 10


@pytest.mark.slow
def test_sigterm_stops_a_packed_sweep_its_pack_and_the_packs_not_started(tmp_path):
    """Two packs: SIGTERM to the launcher reaches the training pack (its members ``interrupted`` after the
    step, by the pack itself), the second pack never starts, the summary names each, the sweep exits 143 and
    no process of it is left."""
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, "hydra/launcher=packed", "experiment=p1a,p1b", "seed=0,1", *LONG)
    member = sweep_dir / "1_p1a_synthetic"
    wait_for(member / "checkpoints" / "last.ckpt", proc)
    pack = int((member / ".lock").read_text())  # the pack's process holds its members' locks
    server = parent_of(pack)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    out = (tmp_path / "out.txt").read_text()
    assert "Traceback" not in out and "the sweep was stopped by SIGTERM: 0 done, 2 interrupted, 2 not started" in out
    assert statuses(sweep_dir) == ["interrupted", "interrupted", "not started", "not started"]
    for name in ("0_p1a_synthetic", "1_p1a_synthetic"):
        summary = load_summary(sweep_dir / name)
        assert "after the current step" in summary["error"] and "resume=auto" in summary["error"], summary
        assert summary["epochs"] >= 1 and (sweep_dir / name / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep_dir / "2_p1b_synthetic" / "metrics.csv").exists()
    assert load_summary(sweep_dir / "3_p1b_synthetic")["experiment"] == "p1b"
    assert gone(pack)
    deadline = time.monotonic() + 20  # the forkserver ends once it sees the launcher's end, within seconds
    while not gone(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(server)


@pytest.mark.slow
def test_a_pack_never_outlives_its_launcher(tmp_path):
    """SIGKILL to the launcher (no cleanup runs in it): the server and the pack end within seconds, and the
    pack records its members ``interrupted`` on its way out."""
    sweep_dir = tmp_path / "sweep"
    proc = start(tmp_path, sweep_dir, "hydra/launcher=packed", "experiment=p1a", "seed=0,1", *LONG)
    member = sweep_dir / "1_p1a_synthetic"
    wait_for(member / "checkpoints" / "last.ckpt", proc)
    pack = int((member / ".lock").read_text())
    server = parent_of(pack)
    assert parent_of(server) == proc.pid
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while not (gone(pack) and gone(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(pack) and gone(server), "the pack outlived its launcher"
    for name in ("0_p1a_synthetic", "1_p1a_synthetic"):
        assert load_summary(sweep_dir / name)["status"] == "interrupted"


class Killed(Exception):
    pass


def test_a_sigterm_while_the_summary_is_written_comes_after_it(tmp_path, monkeypatch):
    """The summary is finished first, then the sweep ends as stopped (143). (In this process: a handler that
    raises stands in for SIGTERM's default action, so a summary cut short fails the test, not pytest.)"""
    from omegaconf import OmegaConf

    import cifar_lab.sweep as sweep
    from cifar_lab.summary import RunSummary

    job = tmp_path / "0_p1a_synthetic"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"job": {"num": 0}, "overrides": {"task": ["seed=0"]}}}, job / ".hydra" / "hydra.yaml")
    RunSummary(job, {"status": "completed"})
    real = sweep.write_summary

    def write_summary(sweep_dir):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(sweep_dir)

    def killed(signum, frame):
        raise Killed

    monkeypatch.setattr(sweep, "write_summary", write_summary)
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        with pytest.raises(SystemExit) as stop:
            sweep.SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.value.code == 143
    assert statuses(tmp_path) == ["completed"]


# ---------------------------------------------------------------------- a second launcher into a live sweep


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "seeds"), [("sequential", "0"), ("packed", "0,1")])
def test_a_second_launcher_leaves_a_live_sweeps_runs_alone(tmp_path, launcher, seeds):
    """The same command again, into the same sweep directory, while the first sweep trains: each of its jobs
    is refused in one paragraph and not one file of the live runs changes (not even Hydra's ``.hydra/``); the
    first sweep's runs are then stopped by their own sweep, ``interrupted``, never ``failed``."""
    sweep_dir = tmp_path / "sweep"
    command = [f"hydra/launcher={launcher}", "experiment=p1a", f"seed={seeds}", *LONG]
    first = start(tmp_path, sweep_dir, *command, log="first.txt")
    jobs = [sweep_dir / f"{i}_p1a_synthetic" for i in range(len(seeds.split(",")))]
    wait_for(jobs[-1] / "checkpoints" / "last.ckpt", first)
    hydra_files = {job: digest(job / ".hydra") for job in jobs}
    second = run_cli(tmp_path, "-m", f"hydra.sweep.dir={sweep_dir}", *command)
    assert first.poll() is None, "the first sweep must still be live"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    assert second.returncode == 1, (second.stdout + second.stderr)[-3000:]
    out = second.stdout + second.stderr
    assert out.count("does not run: another run is live in") == len(jobs) and "Traceback" not in out
    assert "training" not in out and "run directory:" not in out  # it trained nothing
    for job in jobs:
        assert digest(job / ".hydra") == hydra_files[job]
        assert load_summary(job)["status"] == "interrupted"


# ---------------------------------------------------------------------- a full or read-only disk


@pytest.fixture
def small_disk(mount_tmpfs):
    """A 300 KiB tmpfs: a p1a checkpoint (176 KB) fills it."""
    return mount_tmpfs("300k")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["sequential", "packed"])
def test_a_sweep_on_a_full_disk_is_one_paragraph_and_exit_4(tmp_path, small_disk, launcher):
    """Jobs fail one by one as the disk fills (each in one paragraph), and the summary that cannot be written
    ends the sweep with exit status 4: no traceback, no exit 0, no false ``completed``."""
    sweep_dir = small_disk / "sweep"
    res = run_cli(tmp_path, "-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}",
                  "experiment=p1a,p1b", "seed=0,1", *SMALL, "trainer.max_epochs=1")  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 4, out[-3000:]
    assert "Traceback" not in out and "Logging error" not in out
    assert "Error: the sweep summary could not be written: could not write" in out
    assert "no space left on the device (ENOSPC" in out and f"python -m cifar_lab.sweep {sweep_dir}" in out
    for path in sweep_dir.rglob("summary.json"):
        assert load_summary(path.parent)["status"] != "completed"


PATCH_SUMMARY = """
import errno, os
from contextlib import contextmanager
from pathlib import Path
from hydra.experimental.callback import Callback
import cifar_lab.sweep as sweep

class FailSummary(Callback):
    \"\"\"The sweep summary's files cannot be written (errno ``code``), as on a full or read-only disk.\"\"\"
    def __init__(self, code): self.code = code
    def on_multirun_start(self, config, **kwargs):
        real, code = sweep.atomic_write, self.code
        @contextmanager
        def atomic_write(path, *args, **kw):
            if Path(path).name.startswith("sweep_summary"):
                raise OSError(code, os.strerror(code), str(path))
            with real(path, *args, **kw) as fh:
                yield fh
        sweep.atomic_write = atomic_write
"""

# In the pack's processes only (the forkserver and what it forks): a member's final summary.json cannot be written.
PATCH_PACK = """
import errno, os, sys
if any("multiprocessing.forkserver" in arg for arg in sys.orig_argv):
    from cifar_lab.summary import RunSummary
    real = RunSummary.write
    def write(self):
        if self.data.get("status") != "running":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real(self)
    RunSummary.write = write
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "code", "words"),
    [
        ("sequential", errno.EROFS, "the file system is read-only"),
        ("packed", errno.ENOSPC, "no space left on the device"),
    ],
)
def test_a_summary_the_disk_refuses_is_one_paragraph_and_exit_4(tmp_path, launcher, code, words):
    """Runs everywhere (no mount): the summary's writes fail with ENOSPC or EROFS. One paragraph naming the file
    and the fix, exit 4; ``python -m cifar_lab.sweep`` writes it once the disk is back. In the packed sweep the
    pack cannot write its members' outcomes either: it says so and exits 4, and the launcher records them as
    ``failed`` (truthfully: not ``running``, not ``completed``)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fail_summary.py").write_text(PATCH_SUMMARY)
    (site / "sitecustomize.py").write_text(PATCH_PACK)
    sweep_dir = tmp_path / "sweep"
    res = subprocess.run(
        [sys.executable, "-m", "cifar_lab", "-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}",
         "experiment=p1a", "seed=0,1", *SMALL, "trainer.max_epochs=1",
         "+hydra.callbacks.fail._target_=fail_summary.FailSummary", f"+hydra.callbacks.fail.code={code}"],
        cwd=tmp_path, env=env_for(tmp_path, site), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 4, out[-3000:]
    assert "Traceback" not in out and not (sweep_dir / "sweep_summary.csv").exists()
    assert (
        f"Error: the sweep summary could not be written: could not write {sweep_dir}/sweep_summary.csv: {words}" in out
    )
    members = [load_summary(sweep_dir / f"{i}_p1a_synthetic") for i in (0, 1)]
    if launcher == "packed":
        assert out.count("its outcome (completed) could not be recorded") == 2
        for summary in members:
            assert summary["status"] == "failed" and "could not write this job's files" in summary["error"]
    else:
        assert [s["status"] for s in members] == ["completed", "completed"]
    again = subprocess.run([sys.executable, "-m", "cifar_lab.sweep", str(sweep_dir)], capture_output=True, text=True,
                           env=env_for(tmp_path), timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(rows(sweep_dir)) == 2


def test_a_pack_that_trainer_max_steps_ends_early_records_its_members_stopped(tmp_path):
    """As a solo run: whole epochs only, status ``stopped`` with the reason, never a false ``completed``."""
    sweep_dir = tmp_path / "sweep"
    res = run_cli(tmp_path, "-m", "hydra/launcher=packed", f"hydra.sweep.dir={sweep_dir}", "experiment=p1a",
                  "seed=0,1", *SMALL, "trainer.max_epochs=3", "trainer.max_steps=3")  # fmt: skip
    out = res.stdout + res.stderr
    assert "pack 0: 2 members" in out or "2 members" in out, out[-3000:]
    members = sorted(p.parent for p in sweep_dir.rglob("summary.json"))
    assert len(members) == 2, out[-3000:]
    for run_dir in members:
        summary = load_summary(run_dir)
        assert (summary["status"], summary["epochs"]) == ("stopped", 1), (summary, out[-3000:])
        assert "trainer.max_steps=3" in summary["error"]
