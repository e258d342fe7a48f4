"""Data sources. Each turns its input into the same :class:`Arrays` (uint8 images, int64 labels).

Hydra builds one of them from ``data.reader`` (conf/data/*.yaml), each with only its own options:
``Cifar10`` reads torchvision's pickled batches, ``ImageFolder`` decodes ``root/{train,test}/<class>/*``,
``Synthetic`` generates a learnable CIFAR-shaped set from a seed. The two file sources cache their
decoded arrays on disk (:mod:`cifar_lab.data.cache`), keyed by a fingerprint of their inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar_lab.data import cache
from cifar_lab.data.arrays import CIFAR10_CLASSES, IMAGE_SHAPE, Arrays, Split
from cifar_lab.data.transforms import CIFAR_MEAN
from cifar_lab.errors import UserError

log = logging.getLogger("cifar_lab")

Scan = tuple[list[str], dict[str, list[tuple[Path, int]]]]


@dataclass(frozen=True)
class Loaded:
    """What a source's ``load`` gives: the arrays, whether the on-disk cache had them, the input's fingerprint."""

    arrays: Arrays
    cache_hit: bool
    fingerprint: str


class Source:
    """What the datamodule needs from a source: a cheap class count, a download step, the arrays."""

    name = "source"
    synthetic = False
    root: Path | None = None

    def classes(self) -> list[str]:
        """The class names, known before any image is decoded, so the model can be built first."""
        return list(CIFAR10_CLASSES)

    def prepare(self) -> None:
        """Download or unpack (Lightning calls this once per node, before ``load``)."""

    def load(self) -> Loaded:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the input data (files' paths, sizes and times, or the generator's options):
        the cache key, and what a resumed run must still see."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "root": str(self.root) if self.root else None, "synthetic": self.synthetic}


# --------------------------------------------------------------------------- cifar10


def cifar10_checksums() -> dict[str, str]:
    """The published MD5 of the archive and of each pickled batch (torchvision's table, the one source)."""
    from torchvision.datasets import CIFAR10

    return {CIFAR10.filename: CIFAR10.tgz_md5, **dict(CIFAR10.train_list), **dict(CIFAR10.test_list)}


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Cifar10(Source):
    """CIFAR-10 as torchvision stores it: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``.

    The batches are pickles, and unpickling runs code: every file is checked against CIFAR-10's
    published MD5 at every load, before it is read or its cached arrays are used (and read with an
    unpickler that only builds numpy arrays), and the archive is checked before it is unpacked.
    """

    name = "cifar10"
    archive = "cifar-10-python.tar.gz"

    def __init__(self, root: str = "data", download: bool = True, cache_dir: str | None = "data/cache") -> None:
        self.root = Path(root or "data").expanduser()
        self.download, self.cache_dir = download, cache_dir

    def files(self) -> list[Path]:
        base = self.root / "cifar-10-batches-py"
        return [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]

    def present(self) -> bool:
        return all(f.exists() for f in self.files())

    def prepare(self) -> None:
        """Make sure the batches are in ``root``: unpack a verified archive that is there, or download."""
        if self.present():
            return
        archive = self.root / self.archive
        if archive.is_file():
            self.unpack(archive)
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

    def unpack(self, archive: Path) -> None:
        expected = cifar10_checksums()[self.archive]
        if md5(archive) != expected:
            raise UserError(
                f"{archive} is corrupt or not CIFAR-10's archive (its MD5 is not the published {expected}). "
                "Delete it and download it again (data.download=true), or use data=image_folder."
            )
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(self.root, filter="data")

    def missing(self, reason: str) -> UserError:
        return UserError(
            f"CIFAR-10 is not in {self.root} and {reason}. Either put {self.archive} into {self.root} (or "
            "point $CIFAR_LAB_DATA at a folder that holds it) and run again, or use a folder of images instead: "
            "data=image_folder data.root=/path/with/train_and_test_class_folders."
        )

    def fingerprint(self) -> str:
        return cache.fingerprint(self.files(), {"source": "cifar10"})

    def load(self) -> Loaded:
        if not self.present():  # prepare() runs first in a fit (once per node); never download from every rank
            raise self.missing("it was not prepared (prepare_data did not run)")
        self.verify()  # also before a cache hit: the cache key sees the files' sizes and times, not their bytes
        key = self.fingerprint()
        return Loaded(*cache.cached(self.cache_dir, self.name, key, self.unpickle, list(CIFAR10_CLASSES)), key)

    def verify(self) -> None:
        """Every batch against CIFAR-10's published MD5 (about 0.3 s for the 178 MB); a UserError otherwise."""
        checksums = cifar10_checksums()
        for f in self.files():
            if md5(f) != checksums[f.name]:
                raise UserError(
                    f"{f} is not CIFAR-10's {f.name} (its MD5 is not the published {checksums[f.name]}): it is "
                    "truncated, corrupt or replaced, and a pickle from elsewhere could run code, so it is not read "
                    f"(nor a cache made from it). Delete {f.parent} and run again to unpack or download it afresh."
                )

    def unpickle(self) -> Arrays:
        """The batches as arrays; call only after :meth:`verify`."""
        *train_files, test_file = self.files()
        parts = [read_cifar_batch(f) for f in train_files]
        train = Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
        return Arrays(train, read_cifar_batch(test_file), list(CIFAR10_CLASSES), self.name, str(self.root))


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other class or function."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_cifar_batch(path: Path) -> Split:
    """One pickled CIFAR batch: rows of 3072 bytes (R, G, B planes of 32x32) and a label list."""
    try:
        with open(path, "rb") as fh:
            batch = ArraysOnlyUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise UserError(f"{path} is not a plain CIFAR batch ({err}); it was not loaded.") from None
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(x), np.asarray(batch["labels"], dtype=np.int64))


# --------------------------------------------------------------------------- image_folder


class ImageFolder(Source):
    """Any folder laid out as ``root/{train,test}/<class>/*``; labels from the sorted class names."""

    name = "image_folder"

    def __init__(self, root: str, resize: bool = False, cache_dir: str | None = "data/cache") -> None:
        self.root = Path(root).expanduser()
        self.resize, self.cache_dir = resize, cache_dir

    def classes(self) -> list[str]:
        return class_folders(self.root)

    def key(self, scan: Scan) -> str:
        files = [p for split in scan[1].values() for p, _ in split]
        options = {"source": "image_folder", "root": str(self.root.resolve()), "resize": self.resize}
        return cache.fingerprint(files, options)

    def fingerprint(self) -> str:
        return self.key(scan_image_folder(self.root))

    def load(self) -> Loaded:
        scan = scan_image_folder(self.root)  # listed once: it keys the cache and drives the decoding
        decode = lambda: decode_images(self.root, self.resize, scan)  # noqa: E731
        key = self.key(scan)
        return Loaded(*cache.cached(self.cache_dir, self.name, key, decode, scan[0]), key)


def class_folders(root: Path) -> list[str]:
    """The class names of ``root/train`` and ``root/test``, which must agree; UserError otherwise."""
    if not root.is_dir():
        raise UserError(
            f"data.root {str(root)!r} does not exist or is not a folder. "
            "Expected root/train/<class>/* and root/test/<class>/*."
        )

    def split_classes(split: str) -> list[str]:
        d = root / split
        classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not hidden(p.name)) if d.is_dir() else []
        if not classes:
            raise UserError(
                f"{d} has no class folders. data=image_folder expects root/train/<class>/* and "
                f"root/test/<class>/* with one folder per class."
            )
        return classes

    train, test = split_classes("train"), split_classes("test")
    if train != test:
        raise UserError(
            f"the train and test class folders under {root} differ: only in train: "
            f"{sorted(set(train) - set(test)) or 'none'}; only in test: {sorted(set(test) - set(train)) or 'none'}. "
            "Both splits need the same classes."
        )
    if len(train) < 2:
        raise UserError(
            f"{root} has one class folder ({train[0]}): a classifier needs at least two classes, "
            "one folder each under train/ and test/."
        )
    return train


def scan_image_folder(root: Path) -> Scan:
    """List ``root/{train,test}/<class>/`` images (sub-folders included) with labels from the sorted class names."""
    classes = class_folders(root)
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        items = []
        for label, name in enumerate(classes):
            found = list_images(root / split / name)
            if not found:
                raise UserError(
                    f"the class folder {root / split / name} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))}; "
                    "hidden files are skipped): every class needs images in both train/ and test/. Add images, or "
                    "remove the class from both splits."
                )
            items += [(p, label) for p in found]
        files[split] = items
    return classes, files


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                  ".pnm"}  # fmt: skip


def hidden(name: str) -> bool:
    """A hidden file or folder: ``.DS_Store``, macOS's ``._x.jpg`` resource forks, ``.ipynb_checkpoints``."""
    return name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """The image files (by suffix) in ``folder`` and all its sub-folders, sorted; hidden files and folders
    skipped. Training lists each class folder this way, and predict each folder it is given."""
    found = []
    for parent, folders, names in os.walk(folder, onerror=unlistable):
        folders[:] = [f for f in folders if not hidden(f)]  # not descended into
        found += [Path(parent) / n for n in names if not hidden(n) and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(f for f in found if f.is_file())  # not a dangling link


def unlistable(err: OSError) -> None:
    """os.walk's onerror: a folder that cannot be listed is refused, never silently skipped."""
    raise UserError(
        f"cannot list the folder {err.filename} ({err.strerror}), so its images cannot be read. Fix its "
        "permissions, or move it out of the image folder."
    ) from None


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb8(im: Any, path: Path) -> Any:
    """An RGB image with 8 bits per channel, scaled correctly from any mode PIL opens.

    8-bit modes (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, ...) convert as PIL does. 16-bit
    greyscale is scaled by 255/65535 (PIL's own conversion would clip it to white). 32-bit
    integer and float images have no known range, so they are refused.
    """
    from PIL import Image

    if im.mode in SIXTEEN_BIT:
        wide = np.asarray(im, dtype=np.uint32)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode in ("I", "F"):
        raise UserError(
            f"image {path} is a 32-bit {'integer' if im.mode == 'I' else 'float'} image (PIL mode {im.mode}), "
            "whose range is unknown. Convert it to an 8-bit (or 16-bit) image first."
        )
    return im.convert("RGB")


def decode_image(path: Path, resize: bool, resize_hint: str = "data.resize=true") -> np.ndarray:
    """One image as uint8 (32, 32, 3); a UserError naming the file (and ``resize_hint``) otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = to_rgb8(im, path)
            if im.size != (32, 32):
                if not resize:
                    raise UserError(
                        f"image {path} is {im.size[0]}x{im.size[1]}, not 32x32. Resize the images, or pass "
                        f"{resize_hint} to resize them on loading."
                    )
                im = im.resize((32, 32), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot read image {path}: {type(err).__name__}: {err}. Remove or replace the file.") from None


def decode_images(root: Path, resize: bool, scan: Scan) -> Arrays:
    """Decode every image ``scan`` lists, with a progress bar on a terminal and a line saying what happens (it
    takes a while, once: later runs read the cache)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    classes, files = scan
    total = sum(len(items) for items in files.values())
    log.info(
        "decoding %s images under %s (once: later runs read the decoded arrays from the cache)", f"{total:,}", root
    )
    columns = TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    splits = []
    with Progress(*columns, transient=True) as bar, ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        task = bar.add_task("decode", total=total)
        for split in ("train", "test"):
            items = files[split]
            x = np.empty((len(items), *IMAGE_SHAPE), dtype=np.uint8)
            for i, arr in enumerate(pool.map(lambda it: decode_image(it[0], resize), items, chunksize=256)):
                x[i] = arr
                if i % 1000 == 999:
                    bar.advance(task, 1000)
            bar.advance(task, len(items) % 1000)
            splits.append(Split(x, np.array([label for _, label in items], dtype=np.int64)))
    return Arrays(splits[0], splits[1], classes, "image_folder", str(root))


# --------------------------------------------------------------------------- synthetic


SYNTHETIC_CLASSES = [f"synthetic_{i}" for i in range(10)]


class Synthetic(Source):
    """Generated in memory from ``seed``: for tests and offline demos, never for reported results."""

    name = "synthetic"
    synthetic = True

    def classes(self) -> list[str]:
        return list(SYNTHETIC_CLASSES)

    def __init__(self, n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> None:
        self.n_train, self.n_test, self.seed = n_train, n_test, seed

    def fingerprint(self) -> str:
        options = {"source": "synthetic", "n_train": self.n_train, "n_test": self.n_test, "seed": self.seed}
        return hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]

    def load(self) -> Loaded:
        return Loaded(make_synthetic(self.n_train, self.n_test, self.seed), False, self.fingerprint())


def make_synthetic(n_train: int = 5000, n_test: int = 1000, seed: int = 0, contrast: float = 0.5,
                   noise: float = 0.3) -> Arrays:  # fmt: skip
    """A learnable, image-like SYNTHETIC set: one smooth random picture per class, plus per-image noise.

    Each class's picture is a 4x4 grid of random colours per channel, upsampled bicubically to 32x32
    (smooth, like the low frequencies of a photo), scaled to unit spread; an image is the CIFAR mean
    plus ``contrast`` x 0.25 x (its class's picture + ``noise`` x Gaussian noise), so after the seed's
    normalisation its pixels spread about as a photo's do. Measured (plain SGD, lr 0.01, batch 1024,
    5,000 images): the tied ResNet reached 34% val accuracy after one epoch without the loss blow-up
    that stronger contrast causes, fc reaches 100%; the small CNNs learn slowly, as on CIFAR-10.
    Deterministic in ``seed``. For tests and offline demos only, never for reported results.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    grid = torch.from_numpy(np.random.default_rng(seed + 1).normal(size=(10, 3, 4, 4)))
    pictures = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).numpy()
    pictures /= pictures.std(axis=(2, 3), keepdims=True)  # (10, 3, 32, 32), unit spread per class and channel
    mean = np.array(CIFAR_MEAN).reshape(1, 3, 1, 1)

    def split(n: int) -> Split:
        y = rng.integers(0, 10, size=n)
        img = mean + contrast * 0.25 * (pictures[y] + noise * rng.normal(size=(n, 3, 32, 32)))
        x = (np.clip(img, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # (n, 32, 32, 3)
        return Split(np.ascontiguousarray(x), y.astype(np.int64))

    return Arrays(split(n_train), split(n_test), list(SYNTHETIC_CLASSES), "synthetic", None, synthetic=True)
