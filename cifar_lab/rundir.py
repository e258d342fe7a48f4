"""A run directory has one owner: a lock while its run is live, no silent reuse, and a refused start
leaves every file as it was.

Hydra writes ``.hydra/`` into the run directory before cifar_lab's code runs, so a start that is then
refused (another live run, a finished run without ``resume``, a resume with other settings) has
already overwritten the owner's ``.hydra/`` files. Each accepted start therefore keeps a copy of them
in ``.cifar_lab/hydra/``, and a refused start puts that copy back. Light: no torch import.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import IO, Any

from cifar_lab.errors import UserError
from cifar_lab.files import clean_stale_temps, read_json_object, read_metrics, write_bytes_atomic

try:  # POSIX; elsewhere the lock is skipped (documented in docs/resume.md)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("cifar_lab")

LOCK = ".lock"
SNAPSHOT = Path(".cifar_lab") / "hydra"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


# The run directories this process owns (resolved paths). POSIX record locks belong to a process, so a
# second lock by the same process would not conflict, and closing any descriptor of the file would drop
# the first: a second owner in this process is refused here instead, and ``.lock`` is opened only once.
HELD: dict[str, RunDir] = {}


class RunDir:
    """Ownership of one run directory by this process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_file: IO[Any] | None = None
        self.key = ""  # the resolved path, while held (HELD's key)

    # ------------------------------------------------------------------ the lock

    def acquire(self) -> None:
        """Take the directory's lock; a UserError naming the holder if another live process has it.

        The lock is a POSIX record lock (``lockf``) on ``.lock``. The kernel drops it when its process
        exits, however it ends, and, unlike a ``flock``, a forked child (a DataLoader worker) does not
        share it: right after a ``kill -9`` of a run whose workers are still alive, the run can be
        resumed. Never open ``.lock`` elsewhere in the owning process: closing it would drop the lock.
        """
        if fcntl is None or self.lock_file is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        refuse_links(self.path)
        key = str(self.path.resolve())
        if key in HELD:
            raise self.live(str(os.getpid()))
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        fh = open(fd, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):  # a file system without POSIX locks
                log.warning("no lock on %s (%s): two runs started into it would not be told apart", self.path, err)
                fh.close()
                return
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()  # this process holds no lock on the file, so closing it drops nothing
            raise self.live(holder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.lock_file, self.key = fh, key
        HELD[key] = self

    def live(self, holder: str) -> UserError:
        return UserError(
            f"another run is live in {self.path} (process {holder}): two runs must not share a run "
            "directory. Wait for it to end, or leave hydra.run.dir out to get a fresh directory."
        )

    def release(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()  # closing drops the lock
            self.lock_file = None
            HELD.pop(self.key, None)

    # ------------------------------------------------------------------ what is there

    def existing_run(self) -> str | None:
        """A description of the run this directory holds (see :func:`recorded_run`), else None."""
        return recorded_run(self.path)

    # ------------------------------------------------------------------ .hydra/

    def snapshot_hydra(self) -> None:
        """Keep this accepted start's ``.hydra/`` files, to restore them after a later refused start."""
        self.copy_hydra(self.path / ".hydra", self.path / SNAPSHOT)

    def restore_hydra(self) -> None:
        """Put the owner's ``.hydra/`` files back over what Hydra wrote for a refused start."""
        self.copy_hydra(self.path / SNAPSHOT, self.path / ".hydra")

    def copy_hydra(self, src: Path, dst: Path) -> None:
        if links_in(self.path):  # never read or write through a link (refuse_links says why)
            return
        for name in HYDRA_FILES:
            if (src / name).is_file():
                dst.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(dst / name, (src / name).read_bytes())

    def clean(self) -> list[Path]:
        """Temp files of writes that a kill interrupted (safe: this process holds the lock)."""
        return clean_stale_temps(self.path, self.path / "checkpoints", self.path / SNAPSHOT)


WRITTEN_FOLDERS = (".hydra", ".cifar_lab", str(SNAPSHOT), "checkpoints", "tb", "eval")  # we (and Hydra) write in these


def links_in(path: Path) -> list[Path]:
    """Symbolic links among what a run writes in ``path`` (its entries, and those of the folders above).

    A run directory is ours alone, so a link there has no use but to make a run, Hydra or a tool write
    (or delete) somewhere else: in a run directory someone sent you, ``.hydra`` or ``checkpoints``
    pointing at another folder. Such a directory is refused before anything is written.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    found = []
    for folder in (path, *(path / f for f in WRITTEN_FOLDERS)):
        if folder.is_symlink():
            found.append(folder)
            continue
        if folder.is_dir():
            try:
                found += [p for p in folder.iterdir() if p.is_symlink()]
            except OSError:
                continue
    return sorted(set(found) - {path})


def refuse_links(path: Path) -> None:
    """A UserError naming the links in ``path`` (see :func:`links_in`), if there are any."""
    links = links_in(path)
    if links:
        shown = ", ".join(f"{p} -> {os.readlink(p)}" for p in links[:5])
        raise UserError(
            f"{path} holds symbolic links where a run writes ({shown}{', ...' if len(links) > 5 else ''}), which "
            "would make it write or delete files elsewhere; nothing was written. A run directory holds no links: "
            "replace each with a copy of what it points to (cp -rL), or use another directory."
        )


def recorded(path: Path) -> tuple[int, dict[str, Any]]:
    """(the epochs the run in ``path`` has recorded, in metrics.csv or summary.json; its summary.json, or {})."""
    path = Path(path)
    rows = read_metrics(path / "metrics.csv")
    summary = read_json_object(path / "summary.json") or {}
    epochs = summary.get("epochs")
    epochs = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 0
    return max([epochs, *(int(r["epoch"]) for r in rows)]), summary


def recorded_run(path: Path) -> str | None:
    """A description of the run ``path`` holds (a recorded epoch in metrics.csv or summary.json, or a
    checkpoint), else None: a directory whose run never finished an epoch holds nothing worth keeping."""
    epochs, summary = recorded(path)
    ckpts = sorted(p.name for p in (Path(path) / "checkpoints").glob("*.ckpt"))
    if epochs <= 0 and not ckpts:
        return None
    status = summary.get("status", "unknown")
    return f"a run with {epochs} recorded epoch(s), status {status}, checkpoints {ckpts or 'none'}"
