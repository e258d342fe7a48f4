"""Each data source read from files in its real on-disk format; the cache; the batches."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from cifar_lab.data import CIFAR_MEAN, CIFAR_STD, Cifar10, CifarDataModule, ImageFolder, Synthetic
from cifar_lab.data.loaders import EpochBatchSampler
from cifar_lab.data.sources import make_synthetic
from cifar_lab.errors import UserError
from cifar_lab.plan import SpeedPlan
from tests.conftest import trust_fake_cifar, write_cifar_batches, write_image_folder

SOURCES = {"cifar10": Cifar10, "image_folder": ImageFolder, "synthetic": Synthetic}
SOURCE_OPTIONS = {"root", "download", "cache_dir", "resize", "n_train", "n_test"}


def dm(source: str, **kw) -> CifarDataModule:
    """A datamodule over a source built from the keys it takes (the rest go to the datamodule)."""
    kw.setdefault("num_workers", 0)
    own = {k: kw.pop(k) for k in list(kw) if k in SOURCE_OPTIONS}
    if source == "synthetic":
        own["seed"] = kw.get("seed", 0)
    return CifarDataModule(SOURCES[source](**own), **kw)


def test_cifar10_reads_pickled_batches(tmp_path, monkeypatch):
    write_cifar_batches(tmp_path, n_per_batch=20)
    trust_fake_cifar(monkeypatch, tmp_path)
    m = dm(source="cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"), download=False)
    m.prepare_data()
    m.setup()
    x, y = m.tensors["train"]
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and len(m.tensors["val"][1]) == 20
    # Pixel (row 0, col 1) of image 0: the R, G, B planes are 1024 bytes apart in the pickled row.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        row = pickle.load(fh, encoding="latin1")["data"][0]
    assert x[0, :, 0, 1].tolist() == [row[1], row[1025], row[2049]]


def test_cifar10_missing_without_download_names_both_remedies(tmp_path):
    m = dm(source="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(UserError) as err:
        m.prepare_data()
    assert "cifar-10-python.tar.gz" in str(err.value) and "data=image_folder" in str(err.value)


def test_cifar10_failed_download_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="download failed.*cifar-10-python.tar.gz"):
        dm(source="cifar10", root=str(tmp_path)).prepare_data()


def test_image_folder_labels_from_sorted_classes(tmp_path):
    write_image_folder(tmp_path, classes=("zebra", "ant", "moth"), n_train=2, n_test=1, fmt="jpg")
    m = dm(source="image_folder", root=str(tmp_path), cache_dir=None)
    m.setup()
    assert m.arrays.classes == ["ant", "moth", "zebra"]
    assert m.tensors["train"][1].tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_wrong_size_is_an_error_unless_resize(tmp_path):
    write_image_folder(tmp_path, n_train=1, n_test=1, size=40)
    with pytest.raises(UserError, match=r"is 40x40, not 32x32.*data.resize=true") as err:
        dm(source="image_folder", root=str(tmp_path), cache_dir=None).setup()
    assert str(tmp_path) in str(err.value)
    m = dm(source="image_folder", root=str(tmp_path), cache_dir=None, resize=True)
    m.setup()
    assert m.tensors["train"][0].shape[1:] == (3, 32, 32)


@pytest.mark.slow
def test_the_console_says_once_where_the_decoded_cache_is_written(tmp_path):
    """The cache lands in ./data/cache of the folder a run starts in (by default): the run that writes it says
    where (an absolute path) and how to put it elsewhere; a run that reads it says nothing more."""
    from tests.conftest import QUICK, run_cli

    root = write_image_folder(tmp_path / "imgs", n_train=2, n_test=1)
    run = [*QUICK, "experiment=p1a", "data=image_folder", f"data.root={root}", "data.batch_size=4"]
    env = {"CIFAR_LAB_DATA": "data"}  # as a user's default: relative to the folder the run starts in
    first = run_cli(tmp_path, *run, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (cache,) = (tmp_path / "data" / "cache").glob("*.npz")
    said = [line for line in (first.stdout + first.stderr).splitlines() if "cached in" in line]
    assert len(said) == 1 and str(cache) in said[0] and "data_dir=" in said[0] and "CIFAR_LAB_DATA" in said[0]
    second = run_cli(tmp_path, *run, env=env)
    assert second.returncode == 0 and "cached in" not in second.stdout + second.stderr, second.stderr[-3000:]


def test_cache_hit_and_invalidation(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    cache_dir = tmp_path / "cache"
    first = dm(source="image_folder", root=str(root), cache_dir=str(cache_dir))
    first.setup()
    assert not first.cache_hit and len(list(cache_dir.glob("*.npz"))) == 1
    second = dm(source="image_folder", root=str(root), cache_dir=str(cache_dir))
    second.setup()
    assert second.cache_hit
    assert torch.equal(first.tensors["train"][0], second.tensors["train"][0])
    # Replacing one image (new content, new mtime) must not be served from the stale cache.
    img = root / "train" / "cat" / "0000.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    os.utime(img, ns=(1, 1))
    third = dm(source="image_folder", root=str(root), cache_dir=str(cache_dir))
    third.setup()
    assert not third.cache_hit
    assert third.tensors["train"][0][0].sum() == 0


def test_synthetic_is_deterministic_learnable_shape():
    a, b, c = make_synthetic(200, 50, seed=1), make_synthetic(200, 50, seed=1), make_synthetic(200, 50, seed=2)
    assert a.synthetic and a.train.x.shape == (200, 32, 32, 3) and a.train.x.dtype == np.uint8
    assert np.array_equal(a.train.x, b.train.x) and not np.array_equal(a.train.x, c.train.x)
    # Class means differ far more than the noise: a nearest-class-mean classifier beats chance by far.
    means = np.stack([a.train.x[a.train.y == k].reshape(-1, 3072).mean(0) for k in range(10)])
    pred = ((a.test.x.reshape(-1, 1, 3072) - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == a.test.y).mean() > 0.5


def test_val_from_train_holds_out_seeded_images():
    m = dm(source="synthetic", n_train=300, n_test=50, val_from_train=100, seed=3)
    m.setup()
    assert len(m.tensors["train"][1]) == 200 and len(m.tensors["val"][1]) == 100 and len(m.tensors["test"][1]) == 50
    again = dm(source="synthetic", n_train=300, n_test=50, val_from_train=100, seed=3)
    again.setup()
    assert torch.equal(m.tensors["val"][0], again.tensors["val"][0])


def test_sampler_order_depends_only_on_seed_and_epoch():
    s = EpochBatchSampler(10, 4, shuffle=True, seed=0)
    s.set_epoch(3)
    first = [b.tolist() for b in s]
    s.set_epoch(4)
    assert [b.tolist() for b in s] != first
    s.set_epoch(3)
    assert [b.tolist() for b in s] == first
    assert [len(b) for b in first] == [4, 4, 2]  # the last partial batch is kept
    assert sorted(sum(first, [])) == list(range(10))


def test_sampler_shards_each_batch_across_ranks():
    samplers = [EpochBatchSampler(10, 4, True, 0, rank=r, world_size=2) for r in (0, 1)] + [
        EpochBatchSampler(10, 4, True, 0)
    ]
    for s in samplers:
        s.set_epoch(1)
    rank0, rank1, whole = ([b.tolist() for b in s] for s in samplers)
    assert len(rank0) == len(rank1) == len(whole) == 3
    for b0, b1, batch in zip(rank0, rank1, whole):
        assert sorted(b0 + b1) == sorted(batch) and not set(b0) & set(b1)


def test_normalize_uses_the_seed_statistics():
    """The datamodule's transform maps each uint8 pixel v of channel c to (v / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c],
    with the package's constants (which SEED.md's protocol fixes), in float32 and float64."""
    from cifar_lab.data.transforms import CIFAR_MEAN as TRANSFORM_MEAN
    from cifar_lab.data.transforms import CIFAR_STD as TRANSFORM_STD

    assert (CIFAR_MEAN, CIFAR_STD) == (TRANSFORM_MEAN, TRANSFORM_STD)  # the public names are the transform's own
    assert CIFAR_MEAN == (0.4915, 0.4823, 0.4468) and CIFAR_STD == (0.2470, 0.2435, 0.2616)  # SEED.md
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for precision, dtype in (("32-true", torch.float32), ("64-true", torch.float64)):
        m = dm(source="synthetic", n_train=8, n_test=8, plan=SpeedPlan(precision=precision))
        out, _ = m.on_after_batch_transfer((x, torch.zeros(4)), 0)  # the hook Lightning calls on each batch
        assert out.dtype == dtype and out.shape == x.shape
        for c in range(3):
            expected = (x[:, c].double() / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c]
            assert torch.allclose(out[:, c].double(), expected, atol=1e-5), c


def test_augment_is_a_flip_and_a_crop_of_each_image():
    """Every augmented image equals some 32x32 window of the reflect-padded image, flipped or not."""
    from cifar_lab.data.transforms import flip_crop

    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    out = flip_crop(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    for img, aug in zip(x, out):
        candidates = []
        for src in (img, img.flip(2)):
            padded = torch.nn.functional.pad(src[None], (4,) * 4, mode="reflect")[0]
            candidates += [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(aug, c) for c in candidates)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_classic_and_resident_loaders_give_the_same_batches(num_workers):
    """The datamodule's classic DataLoader (as Lightning gets it, with and without a worker process) and the
    resident loader serve the same batches of the same images in the same seeded order."""
    from torch.utils.data import DataLoader

    from cifar_lab.data.loaders import ResidentLoader

    m = dm(source="synthetic", n_train=100, n_test=20, batch_size=32, num_workers=num_workers)
    m.setup()
    loader = m.train_dataloader()
    assert isinstance(loader, DataLoader) and loader.num_workers == num_workers
    loader.sampler.set_epoch(2)  # what Lightning does at each epoch's start
    classic = list(loader)
    x, y = m.tensors["train"]
    sampler = EpochBatchSampler(len(y), 32, True, seed=0)
    sampler.set_epoch(2)
    resident = list(ResidentLoader(x, y, sampler, torch.device("cpu")))
    assert len(classic) == len(resident) == 4
    assert sorted(torch.cat([b for _, b in classic]).tolist()) == sorted(y.tolist())  # every image once
    for (a, la), (b, lb) in zip(classic, resident):
        assert a.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(la, lb)
    sampler.set_epoch(3)
    assert not torch.equal(next(iter(ResidentLoader(x, y, sampler, torch.device("cpu"))))[1], classic[0][1])
