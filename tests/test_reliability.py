"""Never lose a run, part 2: one regression test (or a few) per class of fault an adversarial test found.

F1 (last.ckpt every epoch) is in tests/test_resume.py beside the other kill-and-resume tests. Faults
that need the real entry point (Hydra's .hydra/ files, exit codes, worker processes) run it as a
subprocess; a fault injected into it (a full disk, a signal) comes from a small preamble in
``python -c`` that patches one function before ``cifar_lab.train.main()`` runs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cifar_lab.data import Cifar10, CifarDataModule, ImageFolder, Synthetic
from cifar_lab.errors import EXIT_INTERRUPTED, EXIT_IO, EXIT_USER_ERROR, UserError
from cifar_lab.resume import IDENTITY_KEY, resume_path
from cifar_lab.rundir import RunDir
from cifar_lab.schema import problems
from tests.conftest import (
    FAST,
    compose_cfg,
    load_summary,
    run_cli,
    run_dirs,
    trust_fake_cifar,
    write_cifar_batches,
    write_image_folder,
)

TINY = [*FAST, "experiment=p1a", "model.width=4", "model.hidden=8", "data.n_train=128", "data.n_test=32"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file aside), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}  # fmt: skip


def run_patched(cwd: Path, preamble: str, *overrides: str, env: dict[str, str] | None = None):
    """``python -m cifar_lab <overrides>`` with ``preamble`` run first (to inject a fault)."""
    code = f"{preamble}\nfrom cifar_lab.train import main\nmain()\n"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(cwd / "data"), **(env or {})}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", code, *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=full_env)  # fmt: skip


def assert_one_paragraph(res, code: int, *needles: str) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"
    return out


# --------------------------------------------------------------------------- F2: one owner per run directory


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    """A completed 1-epoch run started through the CLI in a chosen run directory."""
    cwd = tmp_path_factory.mktemp("owner")
    run_dir = cwd / "outputs" / "mine"
    res = run_cli(cwd, *TINY, f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, run_dir, snapshot(run_dir)


@pytest.mark.slow
def test_starting_again_into_a_finished_run_is_refused_and_changes_nothing(finished):
    cwd, run_dir, before = finished
    res = run_cli(cwd, *TINY, "optimizer.lr=0.5", f"hydra.run.dir={run_dir}")
    assert_one_paragraph(res, EXIT_USER_ERROR, "already holds a run", "resume=true")
    assert snapshot(run_dir) == before  # .hydra/ included: Hydra rewrote it, cifar_lab put it back


@pytest.mark.slow
def test_a_refused_resume_changes_nothing(finished):
    cwd, run_dir, before = finished
    res = run_cli(cwd, *TINY, "optimizer.lr=0.5", "trainer.max_epochs=2", "resume=true", f"hydra.run.dir={run_dir}")
    assert_one_paragraph(res, EXIT_USER_ERROR, "different settings", "optimizer.lr: 0.01 -> 0.5")
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_second_live_run_is_refused(finished, tmp_path):
    cwd, run_dir, before = finished
    holder = RunDir(run_dir)
    holder.acquire()  # what a live run holds
    try:
        res = run_cli(cwd, *TINY, "resume=true", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}")
    finally:
        holder.release()
    assert_one_paragraph(res, EXIT_USER_ERROR, "another run is live", str(os.getpid()))
    assert snapshot(run_dir) == before


def test_stale_temp_files_are_cleaned_at_the_next_start(tmp_path):
    """Only the names the atomic writer makes are removed; a user's dot-files that look like temp files stay."""
    from cifar_lab.files import temp_path

    run_dir = tmp_path / "run"
    stale = [temp_path(run_dir / "checkpoints" / "last.ckpt"), temp_path(run_dir / "metrics.csv")]
    stale += [run_dir / ".summary.json.tmp-cifar_lab-99999"]  # another (dead) process's
    mine = [run_dir / ".env.tmpl", run_dir / ".notes.tmp_draft", run_dir / ".data.tmp123",
            run_dir / "checkpoints" / ".keep.tmp", run_dir / ".x.tmp-cifar_lab-12.bak"]  # fmt: skip
    for p in stale + mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    from cifar_lab.lifecycle import run

    summary = run(compose_cfg(*TINY), run_dir)
    assert summary["status"] == "completed" and not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"half a file" for p in mine)  # user files survive
    assert not list(run_dir.rglob(".*.tmp-cifar_lab-*[0-9]"))


# --------------------------------------------------------------------------- F3: disk full, write errors

FULL_DISK = """
import errno, builtins
import cifar_lab.files as files
writes = {"ckpt": 0}
def full_open(path, mode="r", *args, **kwargs):
    name = str(path)
    if "w" in mode and ".ckpt.tmp" in name:
        writes["ckpt"] += 1
        if writes["ckpt"] > 2:  # epoch 1's best and last checkpoints, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
    return builtins.open(path, mode, *args, **kwargs)
files.open = full_open
"""


@pytest.mark.slow
def test_a_full_disk_is_one_paragraph_and_loses_nothing(tmp_path):
    run_dir = tmp_path / "outputs" / "full"
    res = run_patched(tmp_path, FULL_DISK, *TINY, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}")
    out = assert_one_paragraph(res, EXIT_IO, "no space left on the device", "ENOSPC", "last.ckpt")
    assert out.count("Error:") == 1
    summary = load_summary(run_dir)
    assert summary["status"] == "failed" and "no space left" in summary["error"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # epoch 1's checkpoint is intact
    assert not list(run_dir.rglob(".*.tmp*"))  # no temp file left behind
    for png in ("loss.png", "accuracy.png"):  # written after the status, atomically: whole or absent
        assert not (run_dir / png).exists() or (run_dir / png).read_bytes().startswith(b"\x89PNG")


def test_io_errors_name_the_path_and_the_cause():
    from cifar_lab.errors import outcome_of

    assert outcome_of(RuntimeError("checkpoint failed")).exit_code == 1  # not an OS error: a crash, with traceback
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission")):
        err = OSError(code, os.strerror(code), "/runs/x/summary.json")
        outcome = outcome_of(err)
        assert (outcome.status, outcome.exit_code, outcome.expected) == ("failed", EXIT_IO, True)
        assert "/runs/x/summary.json" in outcome.message and words in outcome.message
        wrapped = RuntimeError("writer failed")
        wrapped.__cause__ = err
        assert outcome_of(wrapped).exit_code == EXIT_IO  # found anywhere in the exception's chain


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_refused_by_the_output_check_before_any_work(tmp_path, monkeypatch, capsys):
    """The check a tool or a sweep runs on its output folder writes a page (an empty file fits on a full disk):
    a full disk names the folder, leaves no probe behind, and ends a sweep before its first job with exit 4."""
    from cifar_lab import files, sweep

    def mkstemp_on_full_disk(prefix, suffix, dir):  # the probe's writes go to /dev/full: ENOSPC
        probe = Path(dir) / f"{prefix}x{suffix}"
        probe.touch()
        return os.open("/dev/full", os.O_WRONLY), str(probe)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp_on_full_disk)
    with pytest.raises(OSError) as full:
        files.writable_folder(tmp_path / "out")
    assert (full.value.errno, full.value.filename) == (errno.ENOSPC, str(tmp_path / "out"))
    assert not list((tmp_path / "out").iterdir())
    with pytest.raises(SystemExit) as stop:
        sweep.check_writable(tmp_path / "sweep")
    assert stop.value.code == EXIT_IO
    err = capsys.readouterr().err
    assert "the sweep cannot start (no job has run): could not write" in err and "ENOSPC" in err


# --------------------------------------------------------------------------- F4: a dead job never hides the sweep

KILLER = """
import os, signal
from hydra.experimental.callback import Callback

class KillJob(Callback):
    def __init__(self, num): self.num = num
    def on_job_start(self, config, **kwargs):
        if config.hydra.job.num == self.num:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_job_killed_while_hydra_wrote_its_files_is_still_recorded_and_summarised(tmp_path):
    """A job killed while Hydra wrote ``.hydra/hydra.yaml`` (not atomic) leaves it empty or cut short. The
    launcher then rewrites it when it records the lost job, and the sweep summary still lists every job
    (and fails the sweep) even where nothing rewrote it, instead of raising and losing the summary."""
    from cifar_lab.launchers import record_lost_job
    from cifar_lab.summary import RunSummary
    from cifar_lab.sweep import write_summary

    sweep = tmp_path / "sweep"
    for num, text in ((0, None), (1, ""), (2, "hydra:\n  job:\n    num: 2\n  overr")):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        if text is None:
            OmegaConf.save(
                {"hydra": {"job": {"num": num}, "overrides": {"task": [f"seed={num}"]}}}, job / ".hydra" / "hydra.yaml"
            )
            RunSummary(job, {"status": "completed"})
        else:
            (job / ".hydra" / "hydra.yaml").write_text(text)
    RunSummary(sweep / "1", {"overrides": ["seed=1"]})  # started: summary.json says running
    assert record_lost_job(sweep / "1", ["seed=1"], 1, "worker killed") == "failed"
    rows = {r["dir"]: r for r in write_summary(sweep)}
    assert [r["job"] for r in write_summary(sweep)] == [0, 1, 2]
    assert rows["0"]["status"] == "completed"
    assert (rows["1"]["status"], rows["1"]["overrides"]) == ("failed", "seed=1")
    assert "lost while running: worker killed" in rows["1"]["error"]
    assert rows["2"]["status"] == "failed" and "hydra.yaml is missing or unreadable" in rows["2"]["error"]
    assert "| 2 | `` | failed |" in (sweep / "sweep_summary.md").read_text()
    for text in ("", "[1, 2]"):  # a damaged summary.json: a failed row, not a crash
        (sweep / "0" / "summary.json").write_text(text)
        rows = {r["dir"]: r for r in write_summary(sweep)}
        assert rows["0"]["status"] == "failed" and "summary.json is unreadable" in rows["0"]["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=slurm_local", "hydra.launcher.gpus_per_node=0"],
    ],
)
def test_a_killed_job_is_recorded_and_the_sweep_ends_with_its_summary(tmp_path, launcher):
    (tmp_path / "killer.py").write_text(KILLER)
    res = run_cli(
        tmp_path,
        "-m",
        "seed=0,1,2",
        *launcher,
        *TINY,
        "+hydra.callbacks.killer._target_=killer.KillJob",
        "+hydra.callbacks.killer.num=1",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    md = (sweep / "sweep_summary.md").read_text()
    rows = {r["job"]: r for r in json_rows(sweep)}
    assert rows["1"]["status"] in ("failed", "interrupted") and rows["1"]["error"], rows
    assert "not completed" in md
    for d in run_dirs(tmp_path):
        assert load_summary(d)["status"] != "running"  # nothing left looking alive


def json_rows(sweep: Path) -> list[dict[str, str]]:
    import csv

    with open(sweep / "sweep_summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_a_name_with_a_slash_is_refused_before_the_sweep(tmp_path):
    res = run_cli(tmp_path, "-m", "seed=0,1", *TINY, "name=a/b")
    assert res.returncode == 2 and "plain name" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made the sweep's folder


# --------------------------------------------------------------------------- F5: resume checks everything


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from cifar_lab.lifecycle import run

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run(compose_cfg(*TINY, "model.width=8"), run_dir)
    return run_dir


def test_resume_compares_the_config_without_summary_json(trained, tmp_path):
    run_dir = tmp_path / "copy"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(UserError, match=r"different settings.*optimizer.lr: 0.01 -> 0.5"):
        resume_path(compose_cfg(*TINY, "model.width=8", "optimizer.lr=0.5", "resume=true"), run_dir, [])
    assert resume_path(compose_cfg(*TINY, "model.width=8", "trainer.max_epochs=3", "resume=true"), run_dir, [])


def test_resume_compares_settings_from_the_environment(trained, monkeypatch):
    monkeypatch.setenv("CIFAR_LAB_DATA", "/somewhere/else")
    with pytest.raises(UserError, match="data_dir"):
        resume_path(compose_cfg(*TINY, "model.width=8", "resume=true"), trained, [])


def test_resume_compares_the_data(tmp_path):
    from cifar_lab.lifecycle import run

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), n_train=4, n_test=2)
    quick = [o for o in TINY if not o.startswith(("data=", "data.n_"))]
    folder = [*quick, "data=image_folder", f"data.root={root}", "data.cache_dir=null"]
    run(compose_cfg(*folder), tmp_path / "run")
    (root / "train" / "a" / "0000.png").unlink()
    with pytest.raises(UserError, match="data of .* changed"):
        resume_path(compose_cfg(*folder, "resume=true"), tmp_path / "run", [])


def test_a_checkpoint_of_another_model_is_a_clear_error(trained, tmp_path):
    run_dir = tmp_path / "other"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del ckpt[IDENTITY_KEY]  # as an older version wrote it: only the weights can tell
    torch.save(ckpt, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="holds another model"):
        resume_path(compose_cfg(*TINY, "model.width=16", "resume=true"), run_dir, [])


SIGUSR1_EARLY = """
import os, signal
import cifar_lab.build as build
real_build = build.build
def build_after_sigusr1(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGUSR1)  # before training starts
    return real_build(*args, **kwargs)
build.build = build_after_sigusr1
"""


@pytest.mark.slow
def test_sigusr1_before_training_exits_143(tmp_path):
    run_dir = tmp_path / "outputs" / "early"
    res = run_patched(tmp_path, SIGUSR1_EARLY, *TINY, f"hydra.run.dir={run_dir}")
    assert_one_paragraph(res, EXIT_INTERRUPTED, "SIGUSR1")
    assert load_summary(run_dir)["status"] == "interrupted"


# --------------------------------------------------------------------------- F6: every option checked


@pytest.mark.parametrize(("overrides", "needle"), [
    (["optimizer.lr=nan"], "optimizer.lr must be a finite number"),
    (["optimizer.lr=inf"], "optimizer.lr must be a finite number"),
    (["l2=nan"], "l2 must be a finite number"),
    (["model=resnet", "model.dropout=nan"], "model.dropout (the dropout p) must be a finite number"),
    (["optimizer.momentum=-0.5"], "optimizer.momentum must be >= 0"),
    (["optimizer.momentum=1.5"], "optimizer.momentum must be < 1"),
    (["model=resnet", "model.width=0"], "model.width must be > 0"),
    (["model=resnet", "model.n_blocks=-1"], "model.n_blocks must be > 0"),
    (["model=cnn", "model.width=1"], "model.width (the second conv has width/2 channels) must be >= 2"),
    (["model=fc", "model.hidden=-3"], "model.hidden must be > 0"),
    (["model=resnet", "model.tied_blocks=maybe"], "model.tied_blocks must be one of true, false"),
    (["speed.steps_per_call=0", "data.loader=classic"], "speed.steps_per_call must be >= 1"),
    (["seed=-1"], "seed must be >= 0"),
    (["seed=1.5"], "seed must be an integer"),
    (["data.augment=maybe"], "data.augment must be one of true, false"),
    (["data.drop_last=1"], "data.drop_last must be one of true, false"),
    (["trainer.precision=15"], "trainer.precision must be one of"),
    (["name=a/b"], "name must be a plain name"),
    (["data=image_folder"], "data.root has no value"),
])  # fmt: skip
def test_invalid_options_are_named_with_their_range(overrides, needle):
    assert any(needle in p for p in problems(compose_cfg(*overrides))), problems(compose_cfg(*overrides))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["optimizer.lr=nan"], ["model=resnet", "model.n_blocks=-1"]])
def test_invalid_options_fail_fast_through_the_cli(tmp_path, overrides):
    res = run_cli(tmp_path, *FAST, *overrides)
    assert_one_paragraph(res, EXIT_USER_ERROR, "invalid configuration")


@pytest.mark.slow
def test_a_missing_required_option_fails_fast_through_the_cli(tmp_path):
    res = run_cli(tmp_path, *[o for o in FAST if not o.startswith(("data=", "data.n_"))], "data=image_folder")
    assert_one_paragraph(res, EXIT_USER_ERROR, "data.root has no value")


def test_every_model_option_has_a_rule():
    import inspect

    from cifar_lab.models import _REGISTRY
    from cifar_lab.schema import MODEL_RULES

    for name, cls in _REGISTRY.items():
        options = {p for p in inspect.signature(cls).parameters if p not in ("self", "num_classes")}
        assert set(MODEL_RULES[name]) == options, name


def test_drop_last_with_a_batch_larger_than_the_data_is_refused():
    m = CifarDataModule(Synthetic(n_train=100, n_test=10), batch_size=512, drop_last=True)
    with pytest.raises(UserError, match="every batch would be dropped"):
        m.setup()


# --------------------------------------------------------------------------- F7: data that trains on the wrong thing


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from cifar_lab.data.sources import decode_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(path)  # mid-grey in 16 bits
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    assert np.all(decode_image(path, resize=False) == 128)  # 32768 * 255 / 65535, not clipped to 255


def eight_bit_image(mode: str) -> tuple[object, np.ndarray]:
    """A 32x32 PIL image in ``mode`` with varied pixels, and the RGB values it stands for, computed here
    (the pixels differ across the image, so a transposed, flipped or channel-swapped decode shows)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(grey, mode="L"), np.repeat(grey[..., None], 3, axis=2)
    if mode == "LA":
        return Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA"), np.repeat(grey[..., None], 3, axis=2)
    if mode == "RGBA":  # alpha is dropped, the colour kept (PIL's RGBA -> RGB)
        return Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), rgb
    if mode == "P":  # indices into a palette of four colours
        palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
        index = rng.integers(0, 4, (32, 32), dtype=np.uint8)
        im = Image.fromarray(index, mode="P")
        im.putpalette(palette.flatten().tolist())
        return im, palette[index]
    if mode == "1":  # one bit per pixel: black or white
        bits = rng.integers(0, 2, (32, 32)).astype(bool)
        return Image.fromarray(bits), np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "CMYK":  # one flat colour (JPEG would blur detail); K = 0, so RGB = 255 - CMY
        return Image.new("CMYK", (32, 32), (55, 155, 205, 0)), np.full((32, 32, 3), (200, 100, 50), dtype=np.uint8)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_8_bit_modes_convert_as_rgb(tmp_path, mode):
    from PIL import Image

    from cifar_lab.data.sources import decode_image

    im, expected = eight_bit_image(mode)
    path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    im.save(path, **({"quality": 100} if mode == "CMYK" else {}))
    with Image.open(path) as saved:
        assert saved.mode == mode  # the file really holds that mode
    out = decode_image(path, resize=False)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    tolerance = 3 if mode == "CMYK" else 0  # JPEG is lossy; PNG is exact
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= tolerance


def test_a_32_bit_float_image_is_refused(tmp_path):
    from PIL import Image

    from cifar_lab.data.sources import decode_image

    path = tmp_path / "float.tif"
    Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(UserError, match="32-bit float image"):
        decode_image(path, resize=False)


def test_image_folder_needs_two_classes_and_images_in_every_class(tmp_path):
    one = write_image_folder(tmp_path / "one", classes=("cat",), n_train=2, n_test=1)
    with pytest.raises(UserError, match="at least two classes"):
        ImageFolder(str(one), cache_dir=None).load()
    empty = write_image_folder(tmp_path / "empty", classes=("cat", "dog"), n_train=2, n_test=1)
    for f in (empty / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=r"test/dog has no image files"):
        ImageFolder(str(empty), cache_dir=None).load()
    no_train = write_image_folder(tmp_path / "notrain", classes=("cat", "dog"), n_train=2, n_test=1)
    for f in (no_train / "train" / "cat").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=r"train/cat has no image files"):
        ImageFolder(str(no_train), cache_dir=None).load()


def make_archive(root: Path) -> Path:
    """cifar-10-python.tar.gz holding fake batches (the real format), and nothing unpacked beside it."""
    staging = write_cifar_batches(root / "staging", n_per_batch=10)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_cifar10_archive_without_download_is_verified_and_unpacked(tmp_path, monkeypatch):
    archive = make_archive(tmp_path)
    table = {p.name: hashlib.md5(p.read_bytes()).hexdigest()
             for p in (tmp_path / "staging" / "cifar-10-batches-py").iterdir()}  # fmt: skip
    table[archive.name] = hashlib.md5(archive.read_bytes()).hexdigest()
    from cifar_lab.data import sources

    monkeypatch.setattr(sources, "cifar10_checksums", lambda: table)
    source = Cifar10(str(tmp_path), download=False, cache_dir=None)
    source.prepare()
    assert source.load().arrays.train.x.shape == (50, 32, 32, 3)


def test_a_corrupt_cifar10_archive_is_named_as_corrupt(tmp_path):
    archive = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(UserError, match="is corrupt or not CIFAR-10's archive"):
        Cifar10(str(tmp_path), download=False, cache_dir=None).prepare()


def test_a_truncated_batch_is_refused_by_name(tmp_path, monkeypatch):
    write_cifar_batches(tmp_path, n_per_batch=10)
    trust_fake_cifar(monkeypatch, tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UserError, match="data_batch_1 is not CIFAR-10's data_batch_1"):
        Cifar10(str(tmp_path), download=False, cache_dir=None).load()


@pytest.mark.parametrize("damage", ["test_shape", "labels"])
def test_a_malformed_cache_file_is_rebuilt(tmp_path, damage, caplog):
    from cifar_lab.data import cache

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), n_train=3, n_test=2)
    source = ImageFolder(str(root), cache_dir=str(tmp_path / "cache"))
    good = source.load().arrays
    (path,) = (tmp_path / "cache").glob("*.npz")
    with np.load(path) as z:
        parts = dict(z)
    if damage == "test_shape":
        parts["x_test"] = parts["x_test"][:, :16]
    else:
        parts["y_train"] = parts["y_train"] + 7
    np.savez(path.with_suffix(""), **parts)  # np.savez adds the .npz
    loaded = source.load()
    assert not loaded.cache_hit and "unreadable" in caplog.text
    assert np.array_equal(loaded.arrays.test.x, good.test.x) and loaded.arrays.train.y.max() < 2
    assert cache.load(path, "image_folder", ["a", "b"]).test.x.shape[1:] == (32, 32, 3)  # rebuilt


# --------------------------------------------------------------------------- F8: pickles are not trusted


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_batch_does_not_run_code(tmp_path, monkeypatch):
    write_cifar_batches(tmp_path, n_per_batch=10)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump({"data": Evil(str(marker)), "labels": []}, fh)
    with pytest.raises(UserError, match="is not CIFAR-10's data_batch_1"):  # the published MD5 does not match
        Cifar10(str(tmp_path), download=False, cache_dir=None).load()
    trust_fake_cifar(monkeypatch, tmp_path)  # even if the checksum table were wrong: the unpickler refuses
    with pytest.raises(UserError, match="not a plain CIFAR batch"):
        Cifar10(str(tmp_path), download=False, cache_dir=None).load()
    assert not marker.exists()


def test_a_crafted_checkpoint_does_not_run_code(tmp_path):
    from cifar_lab.resilience import AtomicCheckpointIO

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": Evil(str(marker))}, tmp_path / "last.ckpt")
    with pytest.raises(UserError, match="unreadable"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    assert not marker.exists()
