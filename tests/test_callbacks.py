"""The ``callbacks`` config group: a user's Lightning callbacks from the command line, through the real CLI.

EarlyStopping ends a run early (status ``stopped``, exit 0) and a resume may drop it; a user's own
``_target_`` is built and called; a callback node that names no class is refused before anything is
written; a packed sweep runs a job with callbacks on its own, saying why; a run's identity (what a
checkpoint records, read back on resume) never holds a callback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_lab.packing.grouping import pack_key
from cifar_lab.resume import run_identity
from tests.conftest import FAST, compose_cfg, load_summary, run_cli

EARLY = [  # the command, with a patience that stops at epoch 2 of 5 (epoch 1 sets the best)
    "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
    "+callbacks.early_stopping.monitor=val/acc",
    "+callbacks.early_stopping.mode=max",
    "+callbacks.early_stopping.patience=0",
    "+callbacks.early_stopping.min_delta=1.0",
]
# A user's own callback, in the launch directory (``python -m`` puts it on sys.path).
MINE = """
import json
import os
import lightning as L


class EpochLog(L.Callback):
    def __init__(self, tag, path=None):
        self.path, self.tag, self.epochs = path, tag, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch + 1)
        with open(self.path or os.path.join(trainer.default_root_dir, "epochs.json"), "w") as f:
            json.dump({"tag": self.tag, "epochs": self.epochs}, f)
"""


def test_early_stopping_stops_a_run_and_a_resume_may_drop_it(tmp_path):
    run_dir = tmp_path / "run"
    base = [*FAST, "experiment=p1a", "trainer.max_epochs=5", f"hydra.run.dir={run_dir}"]
    proc = run_cli(tmp_path, *base, *EARLY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = load_summary(run_dir)
    assert summary["status"] == "stopped" and summary["epochs"] == 2, summary
    assert "EarlyStopping" in summary["error"] and "val/acc did not improve" in summary["error"]
    assert "Traceback" not in proc.stderr
    # Callbacks are not part of the run's identity: the same run continues without it, to its max_epochs.
    proc = run_cli(tmp_path, *base, "resume=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = load_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == 5, summary
    assert "callbacks used to create the checkpoint" not in proc.stderr + proc.stdout  # dropping one is allowed
    # A bad callback on a resume is refused before anything is written: the recorded run stays as it was.
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and ".lock" not in p.name}
    for bad in ("+callbacks.x._target_=nowhere.Nothing", "+callbacks.x._target_=datetime.timedelta"):
        proc = run_cli(tmp_path, *base, "trainer.max_epochs=6", "resume=true", bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and ".lock" not in p.name} == files
    assert "builds a timedelta, not a Lightning callback" in proc.stderr


@pytest.mark.slow
def test_a_users_own_callback_is_built_and_called(tmp_path):
    (tmp_path / "mycallbacks.py").write_text(MINE)
    log = tmp_path / "epochs.json"
    proc = run_cli(tmp_path, *FAST, "experiment=p1a", "trainer.max_epochs=2",
                   "+callbacks.mine._target_=mycallbacks.EpochLog", f"+callbacks.mine.path={log}",
                   "+callbacks.mine.tag=hello")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(log.read_text()) == {"tag": "hello", "epochs": [1, 2]}


def test_a_callback_that_names_no_class_is_refused_in_one_paragraph(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(tmp_path, *FAST, "experiment=p1a", f"hydra.run.dir={run_dir}", "+callbacks.oops.monitor=val/acc")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "callbacks.oops has no _target_" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.csv").exists()  # refused at admission: nothing trained
    proc = run_cli(tmp_path, *FAST, "experiment=p1a", "+callbacks.oops._target_=nowhere.Nothing")
    assert proc.returncode == 2 and "callbacks.oops could not be built" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    proc = run_cli(tmp_path, *FAST, "experiment=p1a", *EARLY[:1], "+callbacks.early_stopping.monitor=val/nope")
    assert proc.returncode == 2 and "monitor=val/nope is no metric a run logs" in proc.stderr, proc.stderr[-3000:]
    assert "val/acc_best" in proc.stderr and "Traceback" not in proc.stderr


def test_callbacks_are_no_part_of_a_runs_identity_and_keep_a_job_out_of_packs():
    cfg = compose_cfg("experiment=p1a", *EARLY)
    assert not [k for k in run_identity(cfg) if k.startswith("callbacks")]  # a checkpoint never records one
    task = OmegaConf.to_container(cfg, resolve=True)
    key, reason = pack_key(task, {"job": {"chdir": False, "env_set": {}}})
    assert key is None and "callbacks (early_stopping)" in reason
    removed = OmegaConf.to_container(compose_cfg("experiment=p1a", "+callbacks.x=null"), resolve=True)
    assert pack_key(removed, {"job": {"chdir": False, "env_set": {}}})[0] is not None  # a removed one packs
    plain = OmegaConf.to_container(compose_cfg("experiment=p1a"), resolve=True)
    assert pack_key(plain, {"job": {"chdir": False, "env_set": {}}})[0] is not None


@pytest.mark.slow
def test_a_packed_sweep_runs_jobs_with_callbacks_on_their_own_and_says_why(tmp_path):
    (tmp_path / "mycallbacks.py").write_text(MINE)
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(tmp_path, "-m", "hydra/launcher=packed", f"hydra.sweep.dir={sweep_dir}", "experiment=p1a",
                   "seed=0,1", *FAST, "+callbacks.mine._target_=mycallbacks.EpochLog",
                   "+callbacks.mine.tag=x")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "2 jobs -> 0 pack(s) of 0 jobs and 2 single run(s)" in out
    assert "callbacks (mine): a pack trains its members in one fit" in out
    runs = sorted(p.parent for p in sweep_dir.rglob("summary.json"))
    assert len(runs) == 2
    for run in runs:
        assert load_summary(run)["status"] == "completed" and "packed" not in load_summary(run)
        assert json.loads((Path(run) / "epochs.json").read_text())["epochs"] == [1]
