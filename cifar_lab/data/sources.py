"""Data sources. Each one turns its input into the same thing: uint8 images (N, 32, 32, 3) and int64 labels.

``cifar10`` reads torchvision's pickled batches, ``image_folder`` decodes ``root/{train,test}/<class>/*``,
``synthetic`` generates a learnable CIFAR-shaped set from a seed. The two file sources are cached
on disk (see :mod:`cifar_lab.data.cache`), keyed by a fingerprint of their inputs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cifar_lab.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SHAPE = (32, 32, 3)


@dataclass
class Split:
    """One split: uint8 images (N, 32, 32, 3) and int64 labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Arrays:
    """Every source's output; downstream code never looks at where it came from."""

    train: Split
    test: Split
    classes: list[str]
    source: str
    root: str | None = None
    synthetic: bool = False
    info: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- cifar10


def cifar10_files(root: Path) -> list[Path]:
    base = root / "cifar-10-batches-py"
    return [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]


def ensure_cifar10(root: Path, download: bool = True) -> None:
    """Make sure CIFAR-10's pickled batches are in ``root``: torchvision downloads (or unpacks) them."""
    if all(f.exists() for f in cifar10_files(root)):
        return
    reason = "downloading is off (data.download=false)"
    if download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=True, download=True)
            return
        except Exception as err:  # network errors come in many types (URLError, socket.gaierror, ...)
            reason = f"the download failed ({type(err).__name__}: {err})"
    raise UserError(
        f"CIFAR-10 is not in {root} and {reason}. Either put cifar-10-python.tar.gz into {root} (or point "
        "$CIFAR_LAB_DATA at a folder that holds it) and run again, or use a folder of images instead: "
        "data=image_folder data.root=/path/with/train_and_test_class_folders."
    )


def read_cifar_batch(path: Path) -> Split:
    """One pickled CIFAR batch: rows of 3072 bytes (R, G, B planes of 32x32) and a label list."""
    import pickle

    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="latin1")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(x), np.asarray(batch["labels"], dtype=np.int64))


def load_cifar10(root: Path) -> Arrays:
    *train_files, test_file = cifar10_files(root)
    parts = [read_cifar_batch(f) for f in train_files]
    train = Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    return Arrays(train, read_cifar_batch(test_file), list(CIFAR10_CLASSES), "cifar10", str(root))


# --------------------------------------------------------------------------- image_folder


def scan_image_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """List ``root/{train,test}/<class>/*`` files with labels from the sorted class names."""
    if not root.is_dir():
        raise UserError(f"data.root {str(root)!r} does not exist or is not a folder. Expected root/train/<class>/* and root/test/<class>/*.")
    classes_by_split: dict[str, list[str]] = {}
    for split in ("train", "test"):
        d = root / split
        classes = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        if not classes:
            raise UserError(
                f"{d} has no class folders. data=image_folder expects root/train/<class>/* and "
                f"root/test/<class>/* with one folder per class."
            )
        classes_by_split[split] = classes
    if classes_by_split["train"] != classes_by_split["test"]:
        only_train = sorted(set(classes_by_split["train"]) - set(classes_by_split["test"]))
        only_test = sorted(set(classes_by_split["test"]) - set(classes_by_split["train"]))
        raise UserError(
            f"the train and test class folders under {root} differ: only in train: {only_train or 'none'}; "
            f"only in test: {only_test or 'none'}. Both splits need the same classes."
        )
    classes = classes_by_split["train"]
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        items = []
        for label, name in enumerate(classes):
            items += [(p, label) for p in sorted((root / split / name).iterdir()) if p.is_file() and not p.name.startswith(".")]
        if not items:
            raise UserError(f"{root / split} has class folders but no image files.")
        files[split] = items
    return classes, files


def decode_image(path: Path, resize: bool) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (32, 32):
                if not resize:
                    raise UserError(
                        f"image {path} is {im.size[0]}x{im.size[1]}, not 32x32. Resize the images, or pass "
                        "data.resize=true to resize them on loading."
                    )
                im = im.resize((32, 32), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read image {path}: {type(err).__name__}: {err}. Remove or replace the file.") from None


def load_image_folder(root: Path, resize: bool = False, progress: Callable[[int], None] | None = None,
                      scan: tuple[list[str], dict[str, list[tuple[Path, int]]]] | None = None) -> Arrays:
    """Decode every image; ``scan`` is scan_image_folder(root) when the caller has it already."""
    classes, files = scan or scan_image_folder(root)
    splits = []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for split in ("train", "test"):
            items = files[split]
            x = np.empty((len(items), *IMAGE_SHAPE), dtype=np.uint8)
            for i, arr in enumerate(pool.map(lambda it: decode_image(it[0], resize), items, chunksize=256)):
                x[i] = arr
                if progress is not None and i % 1000 == 999:
                    progress(1000)
            if progress is not None:
                progress(len(items) % 1000)
            splits.append(Split(x, np.array([label for _, label in items], dtype=np.int64)))
    return Arrays(splits[0], splits[1], classes, "image_folder", str(root))


# --------------------------------------------------------------------------- synthetic


def make_synthetic(n_train: int = 5000, n_test: int = 1000, seed: int = 0, noise: float = 0.6) -> Arrays:
    """A learnable, CIFAR-shaped SYNTHETIC set: one smooth random pattern per class plus per-image noise.

    Deterministic in ``seed``. Meant for tests and offline demos, never for reported results.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(10, 3, 4, 4))  # one low-frequency pattern per class
    patterns = coarse.repeat(8, axis=2).repeat(8, axis=3).transpose(0, 2, 3, 1)  # (10, 32, 32, 3)

    def split(n: int) -> Split:
        y = rng.integers(0, 10, size=n)
        img = 0.5 + 0.18 * (patterns[y] + noise * rng.normal(size=(n, *IMAGE_SHAPE)))
        return Split((np.clip(img, 0, 1) * 255).round().astype(np.uint8), y.astype(np.int64))

    train, test = split(n_train), split(n_test)
    classes = [f"synthetic_{i}" for i in range(10)]
    return Arrays(train, test, classes, "synthetic", None, synthetic=True)
