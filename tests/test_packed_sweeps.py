"""Packed sweeps end to end: ``python -m cifar_lab -m ... hydra/launcher=packed`` against solo runs.

The packs run through the real CLI (one process per pack); the solo references run in this process
(``run_inprocess``) with the same overrides. The data are tiny and SYNTHETIC (80 training images:
two batches of 32 and one of 16; 48 validation images), so the comparisons test arithmetic, not
learning. Float64 (``trainer.precision=64-true``, the classic loader) makes packed and solo runs
agree to rounding (a vmapped conv sums in another order): per-epoch metrics and weights at rtol 1e-9.
fc, p1a and p1b keep their preset shapes; the ResNets are shrunk to 3 blocks of width 8 (packed and
solo alike), because each of them costs the suite seconds per epoch in float64 on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cifar_lab.files import read_metrics
from cifar_lab.packing.grouping import Job, group, pack_key
from tests.conftest import compose_cfg, load_summary, run_cli, run_inprocess

RTOL = 1e-9
SMALL = ["data=synthetic", "data.n_train=80", "data.n_test=48", "data.batch_size=32", "data.num_workers=0",
         "trainer=cpu", "trainer.enable_progress_bar=false"]  # fmt: skip
F64 = [*SMALL, "trainer.max_epochs=3", "trainer.precision=64-true", "data.loader=classic"]
SMALL_RESNET = ["model.n_blocks=3", "model.width=8"]
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


# ---------------------------------------------------------------------- helpers


def job_dirs(sweep: Path) -> dict[str, Path]:
    """Job directory by its overrides (those that vary in the sweep and the fixed ones alike)."""
    out = {}
    for hydra_yaml in sweep.rglob(".hydra/overrides.yaml"):
        run_dir = hydra_yaml.parent.parent
        out[" ".join(load_summary(run_dir)["overrides"])] = run_dir
    return out


def member(sweep: Path, *varying: str) -> Path:
    """The job directory whose overrides start with ``varying`` (the sweep's own values, in order)."""
    (found,) = [d for key, d in job_dirs(sweep).items() if key.startswith(" ".join(varying) + " ")]
    return found


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / f"{which}.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(
    packed: Path, solo: Path, rtol: float = RTOL, epochs: int = 3, checkpoints: tuple[str, ...] = ("last", "best")
) -> None:
    """Per-epoch train/val loss and accuracy, and the last and best weights, equal within ``rtol``."""
    rows_p, rows_s = read_metrics(packed / "metrics.csv"), read_metrics(solo / "metrics.csv")
    assert len(rows_p) == len(rows_s) == epochs
    got = torch.tensor([[r[m] for m in METRICS] for r in rows_p], dtype=torch.float64)
    want = torch.tensor([[r[m] for m in METRICS] for r in rows_s], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
    for which in checkpoints:
        a, b = weights(packed, which), weights(solo, which)
        assert a.keys() == b.keys()
        for key in b:
            scale = float(b[key].abs().max())
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=rtol * scale, msg=f"{which} {key}")


def solo(tmp: Path, name: str, cwd: Path, *overrides: str) -> Path:
    """A solo run in this process, with the CLI's data_dir (part of a run's identity) and ``overrides``."""
    run_dir = tmp / name
    summary = run_inprocess(run_dir, f"data_dir={cwd / 'data'}", *overrides)
    assert summary["status"] == "completed", summary.get("error")
    return run_dir


def sweep(cwd: Path, sweep_dir: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return run_cli(cwd, "-m", "hydra/launcher=packed", f"hydra.sweep.dir={sweep_dir}", *overrides, **kwargs)


# ---------------------------------------------------------------------- grouping (no training)


def jobs_for(*sweep_points: list[str]) -> list[Job]:
    jobs = []
    for idx, overrides in enumerate(sweep_points):
        cfg = compose_cfg(*overrides)
        key, reason = pack_key(OmegaConf.to_container(cfg, resolve=True), {"job": {"chdir": False, "env_set": {}}})
        jobs.append(Job(idx, tuple(overrides), key, reason))
    return jobs


def test_the_seven_experiments_make_five_packs():
    """fc, p1a, p1b, the three tied no-BN ResNets (p2a, p2b_l2, p2b_dropout) and the BN ResNet."""
    experiments = ["fc", "p1a", "p1b", "p2a", "p2b_l2", "p2b_dropout", "p2b_batchnorm"]
    grouping = group(jobs_for(*[[f"experiment={e}", f"seed={s}"] for e in experiments for s in (0, 1)]), 16)
    packs = [sorted({j.overrides[0].split("=")[1] for j in p.jobs}) for p in grouping.packs]
    assert packs == [["fc"], ["p1a"], ["p1b"], ["p2a", "p2b_dropout", "p2b_l2"], ["p2b_batchnorm"]]
    assert [len(p.jobs) for p in grouping.packs] == [2, 2, 2, 6, 2] and grouping.singles == []
    text = grouping.describe(16)
    assert (
        "14 jobs -> 5 pack(s) of 14 jobs and 0 single run(s)" in text
        and "#13 : experiment=p2b_batchnorm seed=1" in text
    )


def test_dropout_layouts_pack_together_unless_a_stem_dropout_moves_batchnorm():
    """Members may differ in dropout kind and stem dropout (p2b_dropout packs with p2a); with BatchNorm a stem
    dropout module shifts the stem's BatchNorm (another state_dict), so those pack apart."""
    (p2a, channel, stem, element) = jobs_for(
        ["experiment=p2a"], ["experiment=p2b_dropout"], ["experiment=p2a", "model.stem_dropout=true"],
        ["experiment=p2b_dropout", "model.dropout_kind=element", "model.stem_dropout=false"],
    )  # fmt: skip
    assert p2a.key is not None and p2a.key == channel.key == stem.key == element.key
    bn, bn_dropout, bn_stem = jobs_for(
        ["experiment=p2b_batchnorm"], ["experiment=p2b_batchnorm", "model.dropout=0.3"],
        ["experiment=p2b_batchnorm", "model.dropout=0.3", "model.stem_dropout=true"],
    )  # fmt: skip
    assert bn.key is not None and bn.key == bn_dropout.key and bn_stem.key not in (None, bn.key)


def test_max_pack_splits_evenly_and_unpackable_jobs_run_alone():
    jobs = jobs_for(*[["experiment=p2a", f"optimizer.lr={lr}"] for lr in (0.01, 0.02, 0.03, 0.04, 0.05)])
    assert [len(p.jobs) for p in group(jobs, 3).packs] == [3, 2]  # 5 with max 3: 3 + 2, not 3 + 1 + 1
    assert [len(p.jobs) for p in group(jobs, 5).packs] == [5]
    lonely = group(jobs, 1)
    assert lonely.packs == [] and {j.reason for j in lonely.singles} == {"hydra.launcher.max_pack=1"}
    cases = {
        "trainer=ddp": "several devices",
        "speed.compile=true": "speed.compile",
        "data.val_from_train=16": "val_from_train",
        "scheduler=cosine": "scheduler=cosine",
        "logger=csv": "logger other than the default",
        "model.bn_eval=batch": "bn_eval=batch",
        "logger.name=other": "logger other than the default",
        "model.width=16": None,  # packs, but not with width 32: another shape
        "data.batch_size=64": None,
        "optimizer.lr=0.5": None,  # packs with the others (a member option)
    }
    base = jobs_for(["experiment=p2a"])[0]
    for override, reason in cases.items():
        (job,) = jobs_for(["experiment=p2a", override])
        if reason is None:
            assert job.key is not None and (job.key == base.key) == override.startswith("optimizer.lr"), override
        else:
            assert job.key is None and reason in job.reason, override
    with pytest.raises(ValueError, match="max_pack"):
        group(jobs, 0)
    (bn,) = jobs_for(["experiment=p2b_batchnorm", "model.bn_momentum=null"])
    assert bn.key is None and "bn_momentum=null" in bn.reason
    assert jobs_for(["experiment=p2b_batchnorm", "model.bn_momentum=0.01"])[0].key is not None


def test_packs_run_one_by_one_where_packing_measured_slower_or_with_pack_false(monkeypatch):
    """The one decision: ``pack=auto`` turns the packs of a device SLOWER_PACKED lists into single runs, with one
    paragraph that gives the measured reason and how to pack anyway; ``pack=true`` keeps them; ``pack=false``
    runs every pack's jobs one by one. Today no device is listed: auto packs on the CPU."""
    from cifar_lab.packing import grouping as g

    sweep_points = [[f"experiment={e}", f"seed={s}"] for e in ("p1a", "p2a") for s in (0, 1)]
    jobs = jobs_for(*sweep_points, ["experiment=p2a", "trainer=ddp"])  # the last cannot pack anyway

    def decide(accelerator: str, pack: str | bool) -> tuple[g.Grouping, list[str]]:
        grouping = group(jobs, 16)
        return grouping, g.one_by_one(grouping, lambda unit: accelerator, pack)

    assert g.SLOWER_PACKED == {} and g.pack_device("cpu") == "cpu"
    assert decide("cpu", "auto") == (group(jobs, 16), [])
    monkeypatch.setitem(g.SLOWER_PACKED, "cpu", "On the CPU a pack measured 0.5x.")
    grouping, (paragraph,) = decide("cpu", "auto")
    assert grouping.packs == [] and [j.idx for j in grouping.in_order()] == [0, 1, 2, 3, 4]
    assert {j.reason for j in grouping.singles[1:]} == {"would pack; packing measured slower on the CPU: see below"}
    assert "several devices" in grouping.singles[0].reason  # a reason of its own stays
    assert paragraph.startswith("Packed launcher: On the CPU a pack measured 0.5x. So these 4 jobs (2 pack(s)) run")
    assert "hydra.launcher.pack=true" in paragraph
    for accelerator, pack in (("cpu", True), ("cuda", "auto")):
        kept, paragraphs = decide(accelerator, pack)
        assert paragraphs == [] and [len(p.jobs) for p in kept.packs] == [2, 2]
    grouping, (paragraph,) = decide("cuda", False)
    assert grouping.packs == [] and "hydra.launcher.pack=false: these 4 jobs (2 pack(s)) run one after" in paragraph


def test_a_packed_sweep_with_pack_false_runs_its_jobs_one_by_one_and_says_so(tmp_path):
    """The jobs run one after another as solo runs (no ``packed`` in their summaries), and the console says so."""
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, "experiment=p1a", "seed=0,1", *SMALL, "hydra.launcher.pack=false",
                 "trainer.max_epochs=1")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "2 jobs -> 0 pack(s) of 0 jobs and 2 single run(s)" in out and "one process" not in out
    assert "(would pack; hydra.launcher.pack=false)" in out
    assert "hydra.launcher.pack=false: these 2 jobs (1 pack(s)) run one after another" in out
    summaries = [load_summary(d) for d in job_dirs(sweep_dir).values()]
    assert len(summaries) == 2 and all(s["status"] == "completed" and "packed" not in s for s in summaries)


# ---------------------------------------------------------------------- float64 equivalence


@pytest.fixture(scope="module")
def cnn_sweep(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """fc, p1a and p1b, seeds 0 and 1: three packs. Synthetic data follow the seed, so each member brings
    its own images (the per-member batches path)."""
    cwd = tmp_path_factory.mktemp("cnn")
    sweep_dir = cwd / "sweep"
    proc = sweep(cwd, sweep_dir, "experiment=fc,p1a,p1b", "seed=0,1", *F64, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, sweep_dir, proc


@pytest.fixture(scope="module")
def resnet_sweep(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """p2a, p2b_l2 and p2b_batchnorm x lr 0.02, 0.05, 1e200 x dropout 0, 0.3 (ResNets of 3 blocks of width 8):
    a pack of 12 tied no-BN members mixing learning rates, L2 and dropout rates, and a pack of 6 BN
    members. One seed: every member sees the same batches (the shared-batch path)."""
    cwd = tmp_path_factory.mktemp("resnet")
    sweep_dir = cwd / "sweep"
    proc = sweep(cwd, sweep_dir, "experiment=p2a,p2b_l2,p2b_batchnorm", "optimizer.lr=0.02,0.05,1e200",
                 "model.dropout=0,0.3", *SMALL_RESNET, *F64, timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the lr 1e200 members diverge
    return cwd, sweep_dir, proc


@pytest.mark.slow
def test_the_sweep_prints_its_packs_and_records_every_member_as_a_run(cnn_sweep):
    cwd, sweep_dir, proc = cnn_sweep
    out = proc.stdout + proc.stderr
    assert "6 jobs -> 3 pack(s) of 6 jobs and 0 single run(s) (hydra.launcher.max_pack=16)" in out
    assert "pack 2: 2 members, one process" in out and "#3 : experiment=p1a seed=1" in out
    rows = (sweep_dir / "sweep_summary.csv").read_text().splitlines()
    assert len(rows) == 7 and all(",completed," in r for r in rows[1:])
    for run_dir in job_dirs(sweep_dir).values():
        summary = load_summary(run_dir)
        assert summary["status"] == "completed" and summary["epochs"] == 3 and summary["packed"]["members"] == 2
        for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "metrics.csv", "loss.png",
                     "accuracy.png", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "train.log"):  # fmt: skip
            assert (run_dir / name).is_file(), (run_dir, name)
        assert list((run_dir / "tb").glob("events.out.tfevents.*")) and (run_dir / "tb" / "hparams.yaml").is_file()
    assert not (sweep_dir / ".packs").exists()
    report = run_cli(cwd, str(sweep_dir), module="cifar_lab.report")
    assert report.returncode == 0, report.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["fc", "p1a", "p1b"])
def test_each_packed_cnn_equals_its_solo_run(cnn_sweep, tmp_path, preset):
    """Seed 1: metrics per epoch and last/best weights within rtol 1e-9 of the solo run; seed 0 is another run."""
    cwd, sweep_dir, _ = cnn_sweep
    reference = solo(tmp_path, "solo", cwd, f"experiment={preset}", "seed=1", *F64)
    assert_same_run(member(sweep_dir, f"experiment={preset}", "seed=1"), reference)
    with pytest.raises(AssertionError):
        assert_same_run(member(sweep_dir, f"experiment={preset}", "seed=0"), reference)


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "lr"), [("p2a", "0.02"), ("p2b_l2", "0.05"), ("p2b_batchnorm", "0.05")])
def test_each_packed_resnet_equals_its_solo_run_beside_dropout_and_diverging_members(
    resnet_sweep, tmp_path, preset, lr
):
    """The dropout-free members equal their solo runs (rtol 1e-9) though their packs hold members with other
    learning rates, L2 values and dropout rates, and members that diverge: so they equal a pack without
    those. The same member with dropout 0.3 is another run (its masks acted)."""
    cwd, sweep_dir, _ = resnet_sweep
    point = [f"experiment={preset}", f"optimizer.lr={lr}"]
    reference = solo(tmp_path, "solo", cwd, *point, "model.dropout=0", *SMALL_RESNET, *F64)
    assert_same_run(member(sweep_dir, *point, "model.dropout=0"), reference)
    with pytest.raises(AssertionError):
        assert_same_run(member(sweep_dir, *point, "model.dropout=0.3"), reference)


@pytest.mark.slow
def test_a_packed_p2b_dropout_member_equals_its_solo_run_across_a_resume(tmp_path):
    """p2b_dropout (channel dropout in the blocks and after the stem conv) packed beside p2a, 2 epochs, then
    resumed to 3: its masks come from its own generator, which starts where its solo run's global RNG
    starts and is saved in its checkpoint as its solo run's RNG state, so the member equals a 3-epoch solo
    run (rtol 1e-9) through the real launcher; a solo run of another seed does not."""
    sweep_dir, args = tmp_path / "sweep", ["experiment=p2a,p2b_dropout", "seed=1", *SMALL_RESNET, *F64[:-3]]
    for epochs, resume in ((2, []), (3, ["resume=auto"])):
        proc = sweep(tmp_path, sweep_dir, *args, f"trainer.max_epochs={epochs}", *F64[-2:], *resume, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "pack 0: 2 members, one process" in proc.stdout + proc.stderr
    reference = solo(tmp_path, "solo", tmp_path, "experiment=p2b_dropout", "seed=1", *SMALL_RESNET, *F64)
    assert_same_run(member(sweep_dir, "experiment=p2b_dropout"), reference)
    other = solo(tmp_path, "other", tmp_path, "experiment=p2b_dropout", "seed=2", *SMALL_RESNET, *F64)
    with pytest.raises(AssertionError):
        assert_same_run(member(sweep_dir, "experiment=p2b_dropout"), other)


@pytest.mark.slow
def test_diverging_members_are_recorded_and_the_others_complete(resnet_sweep):
    cwd, sweep_dir, proc = resnet_sweep
    out = proc.stdout + proc.stderr
    assert "18 jobs -> 2 pack(s) of 18 jobs" in out and "pack 0: 12 members" in out and "pack 12: 6 members" in out
    statuses = {}
    for run_dir in job_dirs(sweep_dir).values():
        summary = load_summary(run_dir)
        diverging = "optimizer.lr=1e+200" in summary["overrides"]
        statuses[run_dir.name] = summary["status"]
        assert summary["status"] == ("diverged" if diverging else "completed"), run_dir
        if diverging:
            assert "training diverged: the training loss in epoch 1" in summary["error"]
            assert "optimizer.lr=1e+200" in summary["error"]  # the member's own lr in the message
            assert read_metrics(run_dir / "metrics.csv") == [] and not (run_dir / "checkpoints").exists()
    assert list(statuses.values()).count("diverged") == 6
    assert "18 jobs, 6 not completed" in (sweep_dir / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_the_comparison_detects_a_one_percent_lr_change(cnn_sweep, tmp_path):
    cwd, sweep_dir, _ = cnn_sweep
    off = solo(tmp_path, "solo", cwd, "experiment=p1a", "seed=1", *F64, "optimizer.lr=0.0101")
    with pytest.raises(AssertionError):
        assert_same_run(member(sweep_dir, "experiment=p1a", "seed=1"), off)


@pytest.mark.slow
def test_a_member_loads_as_a_solo_checkpoint_and_resumes_as_a_solo_run(cnn_sweep, tmp_path):
    """``load_from_checkpoint`` rebuilds the member's net; ``resume=true`` on (a copy of) its directory
    continues it as a solo run, equal to a solo run of four epochs."""
    from cifar_lab.task import ClassifierModule

    cwd, sweep_dir, _ = cnn_sweep
    packed = member(sweep_dir, "experiment=p1b", "seed=1")
    module = ClassifierModule.load_from_checkpoint(packed / "checkpoints" / "best.ckpt", map_location="cpu")
    assert module.hparams["net"]["name"] == "cnn3" and module.hparams["optimizer"]["lr"] == 0.01
    for key, t in weights(packed, "best").items():
        assert torch.equal(module.state_dict()[key], t.to(module.state_dict()[key].dtype))
    copy = tmp_path / "member"
    shutil.copytree(packed, copy)
    overrides = [o for o in load_summary(packed)["overrides"] if not o.startswith("trainer.max_epochs")]
    resumed = run_inprocess(copy, f"data_dir={cwd / 'data'}", *overrides, "trainer.max_epochs=4", "resume=true")
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("last.ckpt")
    reference = solo(tmp_path, "solo4", cwd, "experiment=p1b", "seed=1", *F64, "trainer.max_epochs=4")
    # Only last.ckpt: a copied directory loses the best score (ModelCheckpoint keys it by its directory).
    assert_same_run(copy, reference, epochs=4, checkpoints=("last",))


# ---------------------------------------------------------------------- a dead pack, resume, float32, fast path


def epoch_of(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"]


def wait_for(path: Path, timeout: float = 240) -> None:
    start = time.monotonic()
    while not path.exists():
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_pack_fails_its_members_the_sweep_goes_on_and_resume_continues_it(tmp_path):
    """Fast path, float32 p1a. The first pack's process is killed (SIGKILL) after its first checkpoint: its
    members are recorded ``failed`` and the second pack still trains. Running the same command again with
    resume=auto continues the first pack from its members' last.ckpt and leaves the finished pack alone;
    the resumed member then matches its solo run within 1e-4 (float32 p1a over 3 epochs)."""
    points = ["experiment=p1a", "data.n_train=1024,112", "seed=0,1", "data=synthetic", "data.n_test=48",
              "data.batch_size=32", "data.num_workers=0", "trainer=cpu", "trainer.enable_progress_bar=false",
              "trainer.max_epochs=3", "data.loader=gpu", "speed.steps_per_call=2"]  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(tmp_path / "data")}
    command = [
        sys.executable,
        "-m",
        "cifar_lab",
        "-m",
        "hydra/launcher=packed",
        f"hydra.sweep.dir={sweep_dir}",
        *points,
    ]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        first, last = sweep_dir / "0_p1a_synthetic", sweep_dir / "1_p1a_synthetic"
        wait_for(last / "checkpoints" / "last.ckpt")  # the pack's last member has written its first epoch
        os.kill(int((first / ".lock").read_text()), signal.SIGKILL)  # the pack's process holds its members' locks
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:]
    dirs = {d.name: d for d in sweep_dir.iterdir() if d.is_dir()}
    for name in ("0_p1a_synthetic", "1_p1a_synthetic"):
        summary = load_summary(dirs[name])
        assert summary["status"] == "failed" and "killed by SIGKILL" in summary["error"], summary
    done = {name: (dirs[name] / "summary.json").stat().st_mtime_ns for name in ("2_p1a_synthetic", "3_p1a_synthetic")}
    assert all(load_summary(dirs[n])["status"] == "completed" for n in done)

    epochs = {epoch_of(dirs[n]) for n in ("0_p1a_synthetic", "1_p1a_synthetic")}
    again = subprocess.run(
        [*command, "resume=auto"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "finished, not trained again: #2" in out and "finished, not trained again: #3" in out
    if len(epochs) == 1:  # the kill came while the pack trained: its members resume together
        assert "pack 0: 2 members, one process, resuming after epoch" in out
    else:  # the kill came between two members' checkpoints (rare): members at different epochs resume apart
        assert "2 jobs -> 0 pack(s)" in out
    assert {n: (dirs[n] / "summary.json").stat().st_mtime_ns for n in done} == done
    resumed = load_summary(dirs["1_p1a_synthetic"])
    assert resumed["status"] == "completed" and resumed["epochs"] == 3 and "resumed_from" in resumed
    overrides = ["experiment=p1a", "data.n_train=1024", "seed=1", *points[3:]]
    reference = solo(tmp_path, "solo", tmp_path, *overrides)
    rows_p, rows_s = read_metrics(dirs["1_p1a_synthetic"] / "metrics.csv"), read_metrics(reference / "metrics.csv")
    got = torch.tensor([[r[m] for m in METRICS] for r in rows_p])
    want = torch.tensor([[r[m] for m in METRICS] for r in rows_s])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)
    # float32 rounding (grouped vs plain convolution, 96 steps) moves weights by up to ~3e-5 here (measured:
    # 3.3e-5 on weights of 0.03-0.2). A wrong resume (lost optimiser state, another data order, a restart from
    # scratch) is caught by the per-epoch metrics above, which must agree within 1e-4.
    for key, w in weights(reference).items():
        torch.testing.assert_close(weights(dirs["1_p1a_synthetic"])[key], w, rtol=1e-3, atol=1e-4, msg=key)


# ---------------------------------------------------------------------- single jobs


@pytest.mark.slow
def test_jobs_that_cannot_pack_run_alone_as_the_basic_launcher_runs_them(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, "experiment=p1a,p1b", *SMALL, "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "2 jobs -> 0 pack(s) of 0 jobs and 2 single run(s)" in out
    assert "single run: #0 : experiment=p1a" in out and "single run: #1 : experiment=p1b" in out
    assert "(no other job to pack with)" in out and "one process" not in out
    summaries = [load_summary(d) for d in job_dirs(sweep_dir).values()]
    assert len(summaries) == 2 and all(s["status"] == "completed" and "packed" not in s for s in summaries)


HOOKS = """
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback


class Hooks(Callback):
    def on_job_start(self, config, **kwargs):
        with open("hooks.log", "a") as f:
            f.write(f"start {config.hydra.job.num} {HydraConfig.get().job.num}\\n")

    def on_job_end(self, config, job_return, **kwargs):
        with open("hooks.log", "a") as f:
            f.write(f"end {config.hydra.job.num} {HydraConfig.get().job.num} {job_return.return_value}\\n")
"""


@pytest.mark.slow
def test_hydra_job_callbacks_see_each_member_as_a_job(tmp_path):
    """A Hydra callback's ``on_job_start`` (before the pack trains) and ``on_job_end`` (after it, with the member's
    best val acc) are called once per member, with HydraConfig set to that member's job, as for a job run alone."""
    (tmp_path / "hooks.py").write_text(HOOKS)  # in the launch directory: ``python -m`` puts it on sys.path
    proc = sweep(tmp_path, tmp_path / "sweep", "experiment=fc", "seed=0,1", *SMALL, "trainer.max_epochs=1",
                 "+hydra.callbacks.hooks._target_=hooks.Hooks")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pack 0: 2 members, one process" in proc.stdout + proc.stderr
    best = [load_summary(tmp_path / "sweep" / f"{k}_fc_synthetic")["best"]["val_acc"] for k in (0, 1)]
    lines = (tmp_path / "hooks.log").read_text().splitlines()
    assert lines == ["start 0 0", "start 1 1", f"end 0 0 {best[0]}", f"end 1 1 {best[1]}"], lines


# ---------------------------------------------------------------------- options and the bench


def test_bad_pack_options_are_refused():
    from cifar_lab.packing.grouping import check_max_pack, group
    from cifar_lab.schema import RULES
    from hydra_plugins.cifar_lab_launchers.packed import PackedLauncher

    for bad in (0, -1, 2.5, "many"):
        with pytest.raises(ValueError, match="hydra.launcher.max_pack must be"):
            PackedLauncher(max_pack=bad)
    assert check_max_pack(3) == 3
    with pytest.raises(ValueError, match="hydra.launcher.max_pack must be"):  # the grouping itself refuses too
        group([], 0)
    assert "bench.pack must be >= 0" in RULES["bench.pack"].check("bench.pack", -1)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="hydra.launcher.pack must be"):
            PackedLauncher(pack=bad)
    assert PackedLauncher(pack=False).pack is False and PackedLauncher().pack == "auto"


@pytest.mark.slow
def test_bench_times_packed_against_sequential(tmp_path):
    """The packed row times a pack that trained every member for every epoch (the optimizer steps Lightning
    counted, against the test's own count), inside the wall time the test measures itself."""
    start = time.monotonic()
    res = run_cli(tmp_path, "experiment=p1a", "data.n_train=128", "data.n_test=64", "data.batch_size=64",
                  "data.num_workers=0", "bench.epochs=1", "bench.pipelines=[fast]", "trainer=cpu",
                  "speed.steps_per_call=2", "bench.pack=2", module="cifar_lab.bench")  # fmt: skip
    wall = time.monotonic() - start
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (tmp_path / "outputs" / "bench").rglob("bench.json")
    rows = {r["pipeline"]: r for r in json.loads(path.read_text())}
    assert set(rows) == {"fast", "sequential x2", "packed x2"}
    seq, packed = rows["sequential x2"], rows["packed x2"]
    assert seq["vs_sequential"] == 1.0 and packed["pack"] == 2 and packed["synthetic"]
    assert abs(packed["vs_sequential"] - seq["s_per_epoch"] / packed["s_per_epoch"]) < 0.01
    assert abs(packed["runs_epochs_per_s"] * packed["s_per_epoch"] - 2) < 0.01
    steps = 2 * 2 * (128 // 64)  # members x (warm-up + timed epochs) x batches per epoch
    assert packed["member_steps"] == seq["member_steps"] == steps, (packed, seq)
    assert 0 < packed["s_per_epoch"] and 0 < seq["s_per_epoch"] and packed["s_per_epoch"] + seq["s_per_epoch"] < wall
    assert "runs·epochs/s" in res.stdout and "packed / sequential" in res.stdout


def test_the_packed_bench_row_is_timed_by_an_independent_clock(monkeypatch):
    """The packed row's seconds against a clock of the test's own: every pack training step and every solo one
    sleeps a known time (1.0 s and 0.3 s) and records when it ran. The packed epoch must hold one pack step
    (>= 1.0 s) and lie after the pack's warm-up step; the sequential epoch must hold the two members' timed
    steps (>= 2 x 0.3 s) and lie between the first member's warm-up step and the pack."""
    import time

    from cifar_lab.bench import run_bench
    from cifar_lab.configs import compose
    from cifar_lab.packing.module import PackedModule
    from cifar_lab.task import ClassifierModule

    calls: list[tuple[str, float, float]] = []  # (side, start, end) of each training step

    def slowed(cls, side: str, seconds: float) -> None:
        step = cls.training_step

        def training_step(self, *args, **kwargs):
            start = time.perf_counter()
            time.sleep(seconds)
            out = step(self, *args, **kwargs)
            calls.append((side, start, time.perf_counter()))
            return out

        monkeypatch.setattr(cls, "training_step", training_step)

    slowed(PackedModule, "pack", 1.0)
    slowed(ClassifierModule, "solo", 0.3)
    cfg = compose("experiment=p1a", "data.n_train=128", "data.n_test=64", "data.batch_size=64", "data.num_workers=0",
                  "bench.epochs=1", "bench.warmup_epochs=1", "bench.pipelines=[fast]", "trainer=cpu",
                  "trainer.enable_progress_bar=false", "speed.steps_per_call=2", "bench.pack=2",
                  config_name="bench")  # fmt: skip
    rows = {r["pipeline"]: r for r in run_bench(cfg)}
    end = time.perf_counter()
    # 128 images at batch 64 in chunks of 2: one Lightning step per epoch; a warm-up and a timed epoch per fit.
    pack = [c for c in calls if c[0] == "pack"]
    assert len(pack) == 2 and all(c[1] > s[2] for c in pack for s in calls if s[0] == "solo")  # the pack ran last
    members = [c for c in calls if c[0] == "solo"][-4:]  # member 1 warm-up, timed; member 2 warm-up, timed
    packed, sequential = rows["packed x2"]["s_per_epoch"], rows["sequential x2"]["s_per_epoch"]
    assert pack[1][2] - pack[1][1] <= packed <= end - pack[0][2] + 1e-3
    assert (members[1][2] - members[1][1]) + (members[3][2] - members[3][1]) <= sequential + 1e-3
    assert sequential <= pack[0][1] - members[0][2] + 1e-3
    assert rows["packed x2"]["vs_sequential"] == pytest.approx(sequential / packed, abs=0.01)


@pytest.mark.slow
def test_bench_refuses_a_pack_of_settings_that_do_not_pack(tmp_path):
    res = run_cli(tmp_path, "experiment=p1a", "data.n_train=128", "data.n_test=64", "data.batch_size=64",
                  "data.num_workers=0", "bench.epochs=1", "bench.pipelines=[fast]", "trainer=cpu",
                  "scheduler=cosine", "bench.pack=2", module="cifar_lab.bench")  # fmt: skip
    assert res.returncode == 2 and "do not pack (scheduler=cosine" in res.stderr and "Traceback" not in res.stderr


def test_a_failed_member_of_an_optuna_search_is_a_failed_trial(tmp_path):
    """Under Optuna a packed member that did not train to its end is a FAIL trial (never a None, which Optuna
    reports as "Return value must be float-castable"); a completed one gives its best val acc."""
    import json

    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    from cifar_lab.packing.grouping import Job
    from cifar_lab.packing.launch import Planned, result
    from cifar_lab.sweep import TrialFailed

    config = OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": "hydra_plugins.cifar_lab_launchers.optuna.OptunaSweeper"}}}
    )
    for status, best in (("diverged", None), ("completed", {"val_acc": 0.5, "epoch": 1})):
        run_dir = tmp_path / status
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps({"status": status, "best": best, "error": "NaN loss"}))
        ret = result(Planned(Job(0, ("seed=0",), None), config, run_dir), status)
        if status == "completed":
            assert ret.status == JobStatus.COMPLETED and ret.return_value == 0.5
        else:
            assert ret.status == JobStatus.FAILED
            with pytest.raises(TrialFailed, match="diverged: NaN loss"):  # Hydra raises a failed job's value
                _ = ret.return_value
