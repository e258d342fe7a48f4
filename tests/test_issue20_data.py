"""Never lose a run, part 3: data trust. CIFAR-10's checksums are checked before a cache is used, a cache
that does not fit its source is rebuilt, and a cache file is data, never code.

Sources are loaded in this process on fake data in the real on-disk formats (CIFAR-10's pickled
batches, an image folder, the cache's .npz); a training run goes through ``python -m cifar_lab`` where
its exit code and summary are at stake.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar_lab.data import Cifar10, ImageFolder
from cifar_lab.errors import EXIT_USER_ERROR, UserError
from tests.conftest import FAST, trust_fake_cifar, write_cifar_batches, write_image_folder

TINY = [*FAST, "experiment=p1a", "model.width=4", "model.hidden=8", "data.n_train=128", "data.n_test=32"]


# --------------------------------------------------------------------------- 5: CIFAR-10 checksums with a cache


def tamper_keeping_size_and_time(path: Path) -> None:
    """Change one byte of ``path``'s pixels, keeping its size and modification time (the cache key's view)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_tampered_cifar_batch_is_refused_even_with_a_matching_cache(tmp_path, monkeypatch):
    write_cifar_batches(tmp_path, n_per_batch=10)
    trust_fake_cifar(monkeypatch, tmp_path)
    source = Cifar10(str(tmp_path), download=False, cache_dir=str(tmp_path / "cache"))
    assert not source.load().cache_hit and source.load().cache_hit  # a valid cache of verified batches
    key = source.fingerprint()
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    tamper_keeping_size_and_time(batch)
    assert source.fingerprint() == key and (tmp_path / "cache" / f"cifar10-{key}.npz").exists()  # a cache hit...
    with pytest.raises(UserError, match="data_batch_3 is not CIFAR-10's data_batch_3") as err:
        source.load()  # ...that is not used: the batches are verified first
    assert "\n" not in str(err.value) and str(batch.parent) in str(err.value)


VERIFIED_CHECKSUMS = """
import json, sys
from cifar_lab.data import sources
table = json.loads(sys.argv.pop(1))
sources.cifar10_checksums = lambda: table
from cifar_lab.train import main
main()
"""


@pytest.mark.slow
def test_a_tampered_cifar_batch_is_one_paragraph_through_the_cli(tmp_path, monkeypatch):
    """Through the entry point: the run is refused (exit 2, one paragraph), nothing is recorded as cifar10."""
    data = write_cifar_batches(tmp_path / "data", n_per_batch=10)
    table = trust_fake_cifar(monkeypatch, data)
    assert not Cifar10(str(data), download=False, cache_dir=str(data / "cache")).load().cache_hit  # the run's cache
    tamper_keeping_size_and_time(data / "cifar-10-batches-py" / "test_batch")
    overrides = [o for o in TINY if not o.startswith(("data=", "data.n_", "data.batch_size"))]
    overrides += ["data=cifar10", "data.download=false", "data.batch_size=10", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(data)}  # data.cache_dir: data/cache
    cmd = [sys.executable, "-c", VERIFIED_CHECKSUMS, json.dumps(table), *overrides]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == EXIT_USER_ERROR and "Traceback" not in out, out[-3000:]
    assert "test_batch is not CIFAR-10's test_batch" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "test_batch" in summary["error"]


# --------------------------------------------------------------------------- 6 and a crafted cache: data, never code


def cache_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("*.npz")
    return path


def forge_cache(path: Path, classes: list[str], labels: int) -> None:
    """Rewrite the cache file ``path`` to name ``classes`` and shift its training labels by ``labels``."""
    with np.load(path) as z:
        parts = dict(z)
    parts["meta"] = np.array(json.dumps({**json.loads(str(parts["meta"])), "classes": classes}))
    parts["y_train"] = parts["y_train"] + labels
    with open(path, "wb") as fh:
        np.savez(fh, **parts)


@pytest.mark.parametrize(
    "classes, labels",
    [([f"c{i}" for i in range(10)], 7), (["cat", "dog", "frog"], 0)],
    ids=["labels-beyond-the-classes", "other-class-names"],
)
def test_a_cache_that_does_not_fit_the_sources_classes_is_rebuilt(tmp_path, caplog, classes, labels):
    """The hostile cache named ten classes and held labels up to 9 for a three-class folder: it was trusted
    (by its own class list), and training then failed with IndexError (target out of bounds). A cache with
    other class names (same count) is as wrong: its labels may mean other classes."""
    root = write_image_folder(tmp_path / "imgs", n_train=4, n_test=2)  # cat, dog, ship
    source = ImageFolder(str(root), cache_dir=str(tmp_path / "cache"))
    good = source.load().arrays
    path = cache_file(tmp_path / "cache")
    forge_cache(path, classes, labels)
    loaded = source.load()
    assert not loaded.cache_hit and str(path) in caplog.text and "not this source's" in caplog.text
    assert loaded.arrays.classes == ["cat", "dog", "ship"] and int(loaded.arrays.train.y.max()) == 2
    assert np.array_equal(loaded.arrays.train.y, good.train.y)
    assert source.load().cache_hit  # the rebuilt file is good


def test_a_run_on_that_cache_trains(tmp_path):
    """The same through a whole run: it completes on the rebuilt arrays (was IndexError)."""
    from tests.conftest import run_inprocess

    root = write_image_folder(tmp_path / "imgs", n_train=4, n_test=2)
    over = ["experiment=p1a", "model.width=4", "model.hidden=8", "data=image_folder", f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=4", "data.num_workers=0", "trainer=cpu",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]  # fmt: skip
    ImageFolder(str(root), cache_dir=str(tmp_path / "cache")).load()
    forge_cache(cache_file(tmp_path / "cache"), [f"c{i}" for i in range(10)], 7)
    summary = run_inprocess(tmp_path / "run", *over)
    assert summary["status"] == "completed" and summary["data"]["cache_hit"] is False


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["object-array-in-npz", "plain-pickle"])
def test_a_crafted_cache_file_runs_no_code(tmp_path, caplog, form):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), n_train=2, n_test=1)
    source = ImageFolder(str(root), cache_dir=str(tmp_path / "cache"))
    source.load()
    path = cache_file(tmp_path / "cache")
    marker = tmp_path / "pwned"
    if form == "plain-pickle":
        path.write_bytes(pickle.dumps({"x_train": Evil(str(marker))}))
    else:
        with np.load(path) as z:
            parts = dict(z)
        parts["meta"] = np.array([Evil(str(marker))], dtype=object)  # np.savez pickles object arrays
        with open(path, "wb") as fh:
            np.savez(fh, **parts)
    loaded = source.load()
    assert not marker.exists()
    assert not loaded.cache_hit and "allow_pickle" in caplog.text  # refused by allow_pickle=False, rebuilt
