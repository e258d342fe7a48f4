"""On-disk cache of decoded arrays, keyed by a fingerprint of the source's files and options.

A changed, added or removed input file changes the key, so a stale cache is never read. A cache
file that cannot be read, or whose classes, source or labels are not the source's, is reported and
rebuilt. A cache file is data, never code: it is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from cifar_lab.data.arrays import Arrays, Split
from cifar_lab.files import atomic_write

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def fingerprint(files: Iterable[Path], options: dict[str, object]) -> str:
    """Hash of each file's path, size and mtime plus the decoding options."""
    h = hashlib.sha1(json.dumps({"v": CACHE_VERSION, **options}, sort_keys=True, default=str).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def save(path: Path, arrays: Arrays) -> None:
    """Write atomically (temp file, then rename), so an interrupted write never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"classes": arrays.classes, "source": arrays.source, "root": arrays.root})
    with atomic_write(path, "wb") as fh:
        np.savez(
            fh,
            x_train=arrays.train.x,
            y_train=arrays.train.y,
            x_test=arrays.test.x,
            y_test=arrays.test.y,
            meta=np.array(meta),
        )


def load(path: Path, source: str, classes: list[str]) -> Arrays:
    """The cached arrays; ValueError (then rebuilt) unless they are ``source``'s, with exactly its ``classes``
    and both splits well-formed (labels in range). Data only: ``allow_pickle=False``, so no code runs."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        train, test = Split(z["x_train"], z["y_train"]), Split(z["x_test"], z["y_test"])
    if meta["source"] != source or meta["classes"] != list(classes):
        raise ValueError(
            f"it holds {meta['source']} with classes {meta['classes']}, not {source} with classes {list(classes)}"
        )
    for name, split in (("train", train), ("test", test)):
        check_split(name, split, len(classes))
    return Arrays(train, test, list(classes), source, meta["root"])


def check_split(name: str, split: Split, n_classes: int) -> None:
    """uint8 images (N, 32, 32, 3), N int64 labels in [0, n_classes), N > 0."""
    x, y = split.x, split.y
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{name} images are {x.dtype} {x.shape}, not uint8 (N, 32, 32, 3)")
    if y.dtype != np.int64 or y.ndim != 1 or len(y) != len(x) or len(y) == 0:
        raise ValueError(f"{name} labels are {y.dtype} {y.shape} for {len(x)} images")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{name} labels outside [0, {n_classes})")


def cached(
    cache_dir: str | None, name: str, key: str, build: Callable[[], Arrays], classes: list[str]
) -> tuple[Arrays, bool]:
    """Return (arrays, hit): the cached arrays for ``key`` (source ``name``, its ``classes``), or ``build()``
    them and store them (not when ``cache_dir`` is None)."""
    if cache_dir is None:
        return build(), False
    path = Path(cache_dir).expanduser() / f"{name}-{key}.npz"
    if path.exists():
        try:
            return load(path, name, classes), True
        except Exception as err:  # truncated, garbled or not this source's: rebuild it
            log.warning(
                "cache file %s is unreadable or not this source's (%s: %s); decoding the source again",
                path,
                type(err).__name__,
                err,
            )
            path.unlink(missing_ok=True)
    arrays = build()
    try:
        save(path, arrays)
    except OSError as err:
        log.warning("could not write the cache %s (%s); the next run will decode again", path, err)
    else:  # said once, when the file is made: it is large, and relative to the folder the run started in
        log.info(
            "decoded arrays cached in %s (%.1f MB). data_dir=<folder> (or CIFAR_LAB_DATA=<folder>) keeps the data and "
            "this cache elsewhere than ./data of the folder you run from; data.cache_dir=null turns the cache off.",
            path.resolve(),
            path.stat().st_size / 1e6,
        )
    return arrays, False
