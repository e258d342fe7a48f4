"""Data sources. Each turns its input into the same :class:`Arrays` (uint8 images, int64 labels).

Hydra builds one of them from ``data.reader`` (conf/data/*.yaml), each with only its own options:
``Cifar10`` reads torchvision's pickled batches, ``ImageFolder`` decodes ``root/{train,test}/<class>/*``,
``Synthetic`` generates a learnable CIFAR-shaped set from a seed. The two file sources cache their
decoded arrays on disk (:mod:`cifar_lab.data.cache`), keyed by a fingerprint of their inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cifar_lab.data import cache
from cifar_lab.data.arrays import CIFAR10_CLASSES, IMAGE_SHAPE, Arrays, Split
from cifar_lab.errors import UserError

Scan = tuple[list[str], dict[str, list[tuple[Path, int]]]]


class Source:
    """What the datamodule needs from a source: a cheap class count, a download step, the arrays."""

    name = "source"
    synthetic = False
    root: Path | None = None

    def num_classes(self) -> int:
        """Known before any image is decoded, so the model can be built first."""
        return 10

    def prepare(self) -> None:
        """Download or unpack (Lightning calls this once per node, before ``load``)."""

    def load(self) -> tuple[Arrays, bool]:
        """(arrays, whether they came from the on-disk cache)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "root": str(self.root) if self.root else None, "synthetic": self.synthetic}


def _cached(
    cache_dir: str | None, name: str, files: list[Path], options: dict[str, object], build: Callable[[], Arrays]
) -> tuple[Arrays, bool]:
    if cache_dir is None:
        return build(), False
    key = cache.fingerprint(files, options)
    return cache.cached(Path(cache_dir).expanduser(), name, key, build)


# --------------------------------------------------------------------------- cifar10


class Cifar10(Source):
    """CIFAR-10 as torchvision stores it: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``."""

    name = "cifar10"

    def __init__(self, root: str = "data", download: bool = True, cache_dir: str | None = "data/cache") -> None:
        self.root = Path(root or "data").expanduser()
        self.download, self.cache_dir = download, cache_dir

    def files(self) -> list[Path]:
        base = self.root / "cifar-10-batches-py"
        return [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]

    def present(self) -> bool:
        return all(f.exists() for f in self.files())

    def prepare(self) -> None:
        """Make sure the pickled batches are in ``root``: torchvision downloads (or unpacks) them."""
        if self.present():
            return
        reason = "downloading is off (data.download=false)"
        if self.download:
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(str(self.root), train=True, download=True)
                return
            except Exception as err:  # network errors come in many types (URLError, socket.gaierror, ...)
                reason = f"the download failed ({type(err).__name__}: {err})"
        raise self.missing(reason)

    def missing(self, reason: str) -> UserError:
        return UserError(
            f"CIFAR-10 is not in {self.root} and {reason}. Either put cifar-10-python.tar.gz into {self.root} (or "
            "point $CIFAR_LAB_DATA at a folder that holds it) and run again, or use a folder of images instead: "
            "data=image_folder data.root=/path/with/train_and_test_class_folders."
        )

    def load(self) -> tuple[Arrays, bool]:
        if not self.present():  # prepare() runs first in a fit (once per node); never download from every rank
            raise self.missing("it was not prepared (prepare_data did not run)")
        return _cached(self.cache_dir, self.name, self.files(), {"source": "cifar10"}, self.read)

    def read(self) -> Arrays:
        *train_files, test_file = self.files()
        parts = [read_cifar_batch(f) for f in train_files]
        train = Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
        return Arrays(train, read_cifar_batch(test_file), list(CIFAR10_CLASSES), self.name, str(self.root))


def read_cifar_batch(path: Path) -> Split:
    """One pickled CIFAR batch: rows of 3072 bytes (R, G, B planes of 32x32) and a label list."""
    import pickle

    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="latin1")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(x), np.asarray(batch["labels"], dtype=np.int64))


# --------------------------------------------------------------------------- image_folder


class ImageFolder(Source):
    """Any folder laid out as ``root/{train,test}/<class>/*``; labels from the sorted class names."""

    name = "image_folder"

    def __init__(self, root: str, resize: bool = False, cache_dir: str | None = "data/cache") -> None:
        self.root = Path(root).expanduser()
        self.resize, self.cache_dir = resize, cache_dir

    def num_classes(self) -> int:
        return len(class_folders(self.root))

    def load(self) -> tuple[Arrays, bool]:
        scan = scan_image_folder(self.root)  # listed once: it keys the cache and drives the decoding
        files = [p for split in scan[1].values() for p, _ in split]
        options = {"source": "image_folder", "root": str(self.root.resolve()), "resize": self.resize}
        return _cached(
            self.cache_dir, self.name, files, options, lambda: decode_with_progress(self.root, self.resize, scan)
        )


def class_folders(root: Path) -> list[str]:
    """The class names of ``root/train`` and ``root/test``, which must agree; UserError otherwise."""
    if not root.is_dir():
        raise UserError(
            f"data.root {str(root)!r} does not exist or is not a folder. "
            "Expected root/train/<class>/* and root/test/<class>/*."
        )
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
    return classes_by_split["train"]


def scan_image_folder(root: Path) -> Scan:
    """List ``root/{train,test}/<class>/*`` files with labels from the sorted class names."""
    classes = class_folders(root)
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        items = []
        for label, name in enumerate(classes):
            items += [
                (p, label)
                for p in sorted((root / split / name).iterdir())
                if p.is_file() and not p.name.startswith(".")
            ]
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


def load_image_folder(
    root: Path, resize: bool = False, progress: Callable[[int], None] | None = None, scan: Scan | None = None
) -> Arrays:
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


def decode_with_progress(root: Path, resize: bool, scan: Scan) -> Arrays:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as bar:
        task = bar.add_task("decode", total=sum(len(items) for items in scan[1].values()))
        return load_image_folder(root, resize, progress=lambda n: bar.advance(task, n), scan=scan)


# --------------------------------------------------------------------------- synthetic


class Synthetic(Source):
    """Generated in memory from ``seed``: for tests and offline demos, never for reported results."""

    name = "synthetic"
    synthetic = True

    def __init__(self, n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> None:
        self.n_train, self.n_test, self.seed = n_train, n_test, seed

    def load(self) -> tuple[Arrays, bool]:
        return make_synthetic(self.n_train, self.n_test, self.seed), False


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
