"""Never lose a run, part 3: the tools around a finished run (evaluate, predict, report).

One test (or a few) per case a hostile test found. The tools are called through their ``main(argv)``
(the entry point ``python -m`` runs, here in this process, so a fault can be injected with monkeypatch
and no interpreter starts), against an injected ENOSPC/EROFS and against a real 100 kB tmpfs, full and
then read-only (skipped where this machine does not let the tests mount one). Data trust
(CIFAR-10's checksums, the cache) is in tests/test_issue20_data.py.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lab.data import ImageFolder
from cifar_lab.errors import EXIT_IO, EXIT_USER_ERROR, UserError
from tests.conftest import FAST, run_cli, write_image_folder

TINY = [*FAST, "experiment=p1a", "model.width=4", "model.hidden=8", "data.n_train=128", "data.n_test=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch run, started through the CLI (so it has .hydra/ as the report expects)."""
    cwd = tmp_path_factory.mktemp("tools")
    res = run_cli(cwd, *TINY, f"hydra.run.dir={cwd / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd / "run"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three 32x32 PNGs: one at the top, two in a sub-folder and a sub-sub-folder."""
    root = tmp_path_factory.mktemp("images")
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(root / rel)
    return root


def tool(name: str):
    from cifar_lab import evaluate, predict
    from cifar_lab.report import __main__ as report

    return {"evaluate": evaluate.main, "predict": predict.main, "report": report.main}[name]


def tool_args(name: str, run: Path, images: Path, out: Path) -> list[str]:
    """Each tool's command line, writing under ``out``."""
    return {
        "evaluate": [str(run), "--device", "cpu", "--out", str(out)],
        "predict": [str(run), str(images), "--device", "cpu", "--out", str(out / "predictions.csv")],
        "report": [str(run), "--out", str(out)],
    }[name]


def one_paragraph(capsys, code: int, got: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err and err.count("Error:") == 1, err
    paragraph = err.split("Error:", 1)[1].strip()
    assert "\n" not in paragraph, err  # one paragraph: the terminal wraps it
    for needle in needles:
        assert needle in paragraph, f"{needle!r} not in: {paragraph}"
    return paragraph


# --------------------------------------------------------------------------- 1, 7: a full or read-only disk


def failing_writes(monkeypatch, under: Path, code: int) -> None:
    """Every file that cifar_lab.files opens for writing under ``under`` fails with ``code``."""
    from cifar_lab import files

    def fake_open(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax") and str(path).startswith(str(under)):
            raise OSError(code, os.strerror(code))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", ["evaluate", "predict", "report"])
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
def test_a_write_error_is_one_paragraph_with_exit_4(trained, images, tmp_path, monkeypatch, capsys, name, code, words):
    out = tmp_path / "out"
    failing_writes(monkeypatch, out, code)
    got = tool(name)(tool_args(name, trained, images, out))
    one_paragraph(capsys, EXIT_IO, got, words, errno.errorcode[code], str(out), "--out")
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing half-written, no temp file left


@pytest.mark.parametrize("name", ["evaluate", "predict", "report"])
def test_a_read_only_output_is_refused_before_any_work(trained, images, tmp_path, monkeypatch, capsys, name):
    """The output folder is checked (a file created and removed in it) before the model or the runs are read."""
    from cifar_lab import files, inference
    from cifar_lab.report import build

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output location was checked")

    monkeypatch.setattr(inference, "load", no_work)
    monkeypatch.setattr(build, "load", no_work)
    out = tmp_path / "ro"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    got = tool(name)(tool_args(name, trained, images, out))
    one_paragraph(capsys, EXIT_IO, got, "read-only", "EROFS", str(out), "--out")


@pytest.fixture
def tmpfs(mount_tmpfs):
    """A 100 kB tmpfs."""
    return mount_tmpfs("100k")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evaluate", "predict", "report"])
def test_a_real_full_and_read_only_tmpfs(trained, images, tmpfs, capsys, name):
    with open(tmpfs / "filler", "wb", buffering=0) as fh:  # fill it to the last byte
        with pytest.raises(OSError) as full:
            while True:
                fh.write(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    got = tool(name)(tool_args(name, trained, images, tmpfs / name))
    one_paragraph(capsys, EXIT_IO, got, "no space left on the device", "ENOSPC", str(tmpfs / name), "--out")
    assert not [p for p in (tmpfs / name).rglob("*") if p.is_file()]  # no temp file left behind
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    got = tool(name)(tool_args(name, trained, images, tmpfs / "new"))  # refused by the check before the work
    one_paragraph(capsys, EXIT_IO, got, "the file system is read-only", "EROFS", str(tmpfs / "new"), "--out")


# --------------------------------------------------------------------------- 2: predict --out into a missing folder


def test_predict_creates_a_missing_output_folder(trained, images, tmp_path, capsys):
    out = tmp_path / "not" / "yet" / "there.csv"
    assert tool("predict")([str(trained), str(images), "--device", "cpu", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1 + 3


def test_predict_refuses_an_output_that_is_a_folder_or_under_a_file(trained, images, tmp_path, monkeypatch, capsys):
    from cifar_lab import inference

    monkeypatch.setattr(inference, "load", lambda *a, **k: pytest.fail("the work started"))
    got = tool("predict")([str(trained), str(images), "--out", str(tmp_path)])
    one_paragraph(capsys, EXIT_USER_ERROR, got, "is a folder", str(tmp_path / "predictions.csv"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    got = tool("predict")([str(trained), str(images), "--out", str(blocker / "p.csv")])
    one_paragraph(capsys, EXIT_USER_ERROR, got, f"{blocker} is a file")


# --------------------------------------------------------------------------- 3: a checkpoint that does not fit together


EDITS = {  # a p1a checkpoint's stored config, changed so that it no longer fits the weights beside it
    "other-model": ({"net": {"_target_": "cifar_lab.models.create_model", "name": "fc", "hidden": 8}}, "Missing key"),
    "other-classes": ({"num_classes": 5, "classes": list("abcde")}, "size mismatch"),
    "other-width": ({"net": {"_target_": "cifar_lab.models.create_model", "name": "cnn", "width": 8, "hidden": 8}},
                    "size mismatch"),
}  # fmt: skip


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("name", ["evaluate", "predict"])
def test_a_checkpoint_whose_config_does_not_fit_its_weights(trained, images, tmp_path, capsys, edit, name):
    change, needle = EDITS[edit]
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["name"] == "cnn"
    ckpt["hyper_parameters"].update(change)
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    args = [str(path), "--device", "cpu", "--out", str(tmp_path / "out" / ("x.csv" if name == "predict" else ""))]
    if name == "predict":
        args.insert(1, str(images))
    got = tool(name)(args)
    one_paragraph(capsys, EXIT_USER_ERROR, got, str(path), "does not fit", needle, "train the run again")


# --------------------------------------------------------------------------- 4: hidden files and nested folders


def test_training_and_predict_list_a_folder_the_same_way(tmp_path, trained, capsys):
    """``._x.jpg`` (a macOS resource fork), ``.DS_Store``, hidden folders and non-image files are skipped by
    both; images in sub-folders (and sub-sub-folders) of a class folder are read by both."""
    from cifar_lab.data.sources import list_images
    from cifar_lab.predict import image_files

    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=2, n_test=1)
    cat = root / "train" / "cat"
    (cat / "sub" / "deeper").mkdir(parents=True)
    (cat / ".hidden").mkdir()
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    (root / "test" / ".ipynb_checkpoints").mkdir()
    nested = [cat / "sub" / "n1.png", cat / "sub" / "deeper" / "n2.png"]
    for f in [*nested, cat / ".hidden" / "h.png"]:
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(f)
    (cat / "._0000.png").write_bytes(b"\x00\x05\x16\x07 a resource fork, not an image")
    (cat / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (cat / "notes.txt").write_text("not an image")

    expected = sorted([cat / "0000.png", cat / "0001.png", *nested])
    assert list_images(cat) == expected
    assert image_files([cat]) == expected  # predict
    loaded = ImageFolder(str(root), cache_dir=None).load().arrays
    assert loaded.classes == ["cat", "dog"]
    assert len(loaded.train) == 4 + 2 and int((loaded.train.y == 0).sum()) == 4  # nested cats read in training

    got = tool("predict")([str(trained), str(cat), "--device", "cpu", "--out", str(tmp_path / "p.csv")])
    assert got == 0, capsys.readouterr().err
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert sorted(Path(r.split(",")[0]) for r in rows) == expected


def test_a_folder_that_cannot_be_listed_is_refused_not_skipped(tmp_path, monkeypatch):
    """A sub-folder without read permission (simulated: root may read anything) is named, not skipped."""
    from cifar_lab.data import sources

    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=2, n_test=1)
    locked = root / "train" / "cat" / "locked"
    locked.mkdir()
    real = os.scandir

    def scandir(path="."):
        if str(path) == str(locked):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match="cannot list the folder .*locked") as err:
        sources.list_images(root / "train" / "cat")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot list the folder"):
        ImageFolder(str(root), cache_dir=None).load()
