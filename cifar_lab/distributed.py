"""DDP inside a Hydra job: child processes that re-run exactly this job, and a clean process after it.

Used by every run that may launch several processes (``trainer=ddp``, ``devices>1``, several nodes),
in a multirun or not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd

DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def may_be_distributed(trainer: Any) -> bool:
    """Whether Lightning may launch several processes for this trainer config (no Lightning import)."""
    return (
        "ddp" in str(trainer.get("strategy", ""))
        or str(trainer.get("devices", 1)) not in ("1", "[0]")
        or int(trainer.get("num_nodes", 1) or 1) > 1
    )


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
