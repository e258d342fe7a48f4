"""Every file a run writes goes through :func:`atomic_write`; metrics.csv helpers. Light: no torch import."""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

CSV_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
# A temp file is ``.<name>.tmp-cifar_lab-<pid>`` beside its target: a name no user file has, matched exactly.
TEMP_MARK = ".tmp-cifar_lab-"
TEMP_NAME = re.compile(r"\.(?P<target>.+)" + re.escape(TEMP_MARK) + r"(?P<pid>[0-9]+)")


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` before renaming it (``TEMP_NAME`` matches it)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


@contextmanager
def atomic_write(path: Path, mode: str = "w", fsync: bool = False, **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` and rename it over ``path`` when the block succeeds.

    A reader, or a process killed mid-write, sees the old file or the new one, never half of one.
    An OS error (a full disk, a read-only file system) names ``path``, whatever file raised it.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None or str(err.filename) == str(tmp):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def clean_stale_temps(*folders: Path) -> list[Path]:
    """Remove the temp files that killed writes left in ``folders`` (call it while holding the run's lock).

    Only names :func:`temp_path` makes: a user's ``.env.tmpl`` or ``.notes.tmp`` stays.
    """
    removed = []
    for folder in folders:
        for tmp in Path(folder).glob(f".*{TEMP_MARK}*"):
            if TEMP_NAME.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as fh:
        fh.write(json.dumps(data, indent=2, default=str) + "\n")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file holding an object (summary.json); None if it is missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return None
    return data if isinstance(data, dict) else None


def significant(x: float) -> float:
    """``x`` to 6 significant digits: a metric computed in float32 (0.13699999451637268) as it was meant
    (0.137), the same in metrics.csv, summary.json and TensorBoard; rounding twice changes nothing."""
    return float(f"{x:.6g}")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv rows; a row cut short (a run killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                rows.append({k: (int(row[k]) if k == "epoch" else float(row[k])) for k in CSV_COLUMNS})
            except (KeyError, TypeError, ValueError):
                continue
    return rows


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_write(path, newline="") as fh:
        writer = csv.DictWriter(fh, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def writable_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) and write and remove a file in it: a tool or a sweep checks its
    output location this way before its work, so a missing, full, read-only or forbidden folder is refused at once.

    An OS error names ``folder``; a file in the way of the folder is a UserError.
    """
    from cifar_lab.errors import UserError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check", suffix=f"{TEMP_MARK}{os.getpid()}", dir=folder)
        try:
            os.write(fd, bytes(4096))  # a page: an empty file fits on a full disk
        finally:
            os.close(fd)
            os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise UserError(
            f"cannot write into {folder}: {blocker} is a file, not a folder. Choose another output."
        ) from None
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(folder)) from err
    return folder
