"""Real CIFAR-10 (the JPEG copy in ../shared/data): skipped where the archive is absent."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from cifar_lab.data import CIFAR_MEAN, CifarDataModule, ImageFolder
from tests.conftest import SHARED_TARBALL

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not SHARED_TARBALL.is_file(), reason=f"real CIFAR-10 copy not found at {SHARED_TARBALL}"),
]


def extract_subset(dest, per_class: int = 40):
    """The first ``per_class`` images of each class and split, straight from the archive."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(SHARED_TARBALL) as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            key = (parts[-3], parts[-2])
            if counts.get(key, 0) < per_class:
                counts[key] = counts.get(key, 0) + 1
                member.name = "/".join(parts[-3:])
                tar.extract(member, dest, filter="data")
    return dest, counts


def test_real_jpeg_folder_loads_as_cifar(tmp_path):
    root, counts = extract_subset(tmp_path / "cifar10-jpg")
    assert len(counts) == 20  # 10 classes x 2 splits
    m = CifarDataModule(ImageFolder(str(root), cache_dir=None), num_workers=0)
    m.setup()
    assert m.arrays.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    x = m.arrays.train.x
    assert x.shape == (400, 32, 32, 3)
    # Real photos: channel means close to CIFAR-10's (a loose bound for a 400-image sample).
    assert np.allclose(x.reshape(-1, 3).mean(0) / 255, CIFAR_MEAN, atol=0.06)
