"""DDP inside a Hydra job: child processes that re-run exactly this job, and a clean process after it.

Used by every run that may launch several processes (``trainer=ddp``, ``devices>1``, several nodes),
in a multirun or not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd

from cifar_lab.errors import UserError

DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Placement:
    """Where a run trains, read from its ``trainer`` config alone (no Lightning, no torch)."""

    accelerator: str  # as configured: auto | cpu | gpu | cuda | ...
    devices: int | None  # devices per node; None: every device there is (devices=auto or -1 off the CPU)
    nodes: int
    strategy: str

    @property
    def several(self) -> bool:
        """Lightning may start several processes (DDP): not one device on one node, or a DDP strategy."""
        return self.devices != 1 or self.nodes > 1 or "ddp" in self.strategy

    @property
    def one_device(self) -> bool:
        """One process on one device with Lightning's default strategy (what a pack and the bench need)."""
        return not self.several and self.strategy == "auto"


def placement(trainer: Any) -> Placement:
    """The :class:`Placement` of a ``trainer`` config: ``devices=1``, ``[0]``, ``"1"``, ``"0,"`` are one device;
    ``2``, ``[0, 1]``, ``"0,1"`` several; ``auto`` and ``-1`` every device there is, which on the CPU is one."""
    accelerator = str(trainer.get("accelerator", "auto") or "auto")
    raw = trainer.get("devices", 1)
    raw = 1 if raw is None else raw
    try:
        if isinstance(raw, str) and raw.strip() not in ("auto", "-1"):
            text = raw.strip()
            raw = [int(p) for p in text.split(",") if p.strip()] if "," in text else int(text)
        if isinstance(raw, str) or raw == -1:  # auto / -1: all devices (Lightning counts one on the CPU)
            devices = 1 if accelerator == "cpu" else None
        elif isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            devices = raw
        elif not isinstance(raw, (int, float, bool, str)) and len(raw) and all(isinstance(i, int) for i in raw):
            devices = len(raw)
        else:
            raise ValueError(raw)
        nodes = int(trainer.get("num_nodes", 1) or 1)
    except (TypeError, ValueError):
        raise UserError(
            f"trainer.devices={raw!r} (num_nodes={trainer.get('num_nodes', 1)!r}) names no devices. Give a count "
            "(trainer.devices=1), a list of device indices (trainer.devices=[0,1]) or auto (trainer.devices=-1 "
            "or auto), and trainer.num_nodes as a whole number."
        ) from None
    return Placement(accelerator, devices, nodes, str(trainer.get("strategy") or "auto"))


def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning's DDP launcher runs for ``local_rank``: this very job, in run mode, in its directory.

    Lightning's own version re-runs ``sys.argv`` with ``hydra.run.dir``; inside a multirun that argv
    is the whole sweep (``-m`` and every value), and ``run.dir`` is not the job's directory.
    """
    hc = HydraConfig.get()
    extra_dirs = [f"--config-dir={s.path}" for s in hc.runtime.config_sources if s.provider == "command-line"]
    hydra_overrides = [o for o in hc.overrides.hydra if not o.startswith("hydra.mode=")]
    command = [
        sys.executable,
        "-m",
        "cifar_lab",
        f"--config-name={hc.job.config_name}",
        *extra_dirs,
        *hydra_overrides,
        *hc.overrides.task,
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name=ddp_rank{local_rank}",
        "hydra.output_subdir=null",
        "hydra.mode=RUN",
    ]
    return command, get_original_cwd()


@contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Run one Hydra job so that DDP works in it, also when several jobs share one process.

    Lightning's launcher leaves ``LOCAL_RANK`` & co. in ``os.environ`` and the process group alive;
    the next job in the same process (basic or joblib launcher) would then take itself for a child
    and wait for ranks that are gone. Both are undone when the job ends, and Lightning's own child
    command (a private function of its launcher, replaced for the job) is put back.
    """
    import torch.distributed as dist

    from cifar_lab import compat

    saved = {k: os.environ.get(k) for k in DDP_ENV}
    try:
        with compat.hydra_ddp_child_command(ddp_child_command):
            yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
