"""A run directory has one owner: a lock while its run is live, no silent reuse, and a refused start
leaves every file as it was.

Hydra writes ``.hydra/`` into the run directory before cifar_lab's code runs, so a start that is then
refused (another live run, a finished run without ``resume``, a resume with other settings) has
already overwritten the owner's ``.hydra/`` files. Each accepted start therefore keeps a copy of them
in ``.cifar_lab/hydra/``, and a refused start puts that copy back. Light: no torch import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from cifar_lab.errors import UserError
from cifar_lab.files import clean_stale_temps, read_metrics, write_bytes_atomic

try:  # POSIX; elsewhere the lock is skipped (documented in docs/resume.md)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
SNAPSHOT = Path(".cifar_lab") / "hydra"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


class RunDir:
    """Ownership of one run directory by this process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_file: IO[Any] | None = None

    # ------------------------------------------------------------------ the lock

    def acquire(self) -> None:
        """Take the directory's lock; a UserError naming the holder if another live process has it.

        The lock is an advisory ``flock`` on ``.lock``: the kernel drops it when the holder exits, so
        a killed run never leaves a stale lock behind.
        """
        if fcntl is None or self.lock_file is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise UserError(
                f"another run is live in {self.path} (process {holder}): two runs must not share a run "
                "directory. Wait for it to end, or leave hydra.run.dir out to get a fresh directory."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.lock_file = fh

    def release(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()  # closing drops the flock
            self.lock_file = None

    # ------------------------------------------------------------------ what is there

    def existing_run(self) -> str | None:
        """A description of the run this directory holds (trained epochs or checkpoints), else None.

        A directory whose run never finished an epoch holds nothing worth keeping and may be reused.
        """
        rows = read_metrics(self.path / "metrics.csv")
        ckpts = sorted(p.name for p in (self.path / "checkpoints").glob("*.ckpt"))
        if not rows and not ckpts:
            return None
        try:
            status = json.loads((self.path / "summary.json").read_text()).get("status", "unknown")
        except (OSError, ValueError):
            status = "unknown"
        return f"a run with {len(rows)} recorded epoch(s), status {status}, checkpoints {ckpts or 'none'}"

    # ------------------------------------------------------------------ .hydra/

    def snapshot_hydra(self) -> None:
        """Keep this accepted start's ``.hydra/`` files, to restore them after a later refused start."""
        src, dst = self.path / ".hydra", self.path / SNAPSHOT
        for name in HYDRA_FILES:
            if (src / name).is_file():
                dst.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(dst / name, (src / name).read_bytes())

    def restore_hydra(self) -> None:
        """Put the owner's ``.hydra/`` files back over what Hydra wrote for a refused start."""
        src, dst = self.path / SNAPSHOT, self.path / ".hydra"
        for name in HYDRA_FILES:
            if (src / name).is_file():
                write_bytes_atomic(dst / name, (src / name).read_bytes())

    def clean(self) -> list[Path]:
        """Temp files of writes that a kill interrupted (safe: this process holds the lock)."""
        return clean_stale_temps(self.path, self.path / "checkpoints", self.path / SNAPSHOT)
