"""``hydra/launcher=packed``: the jobs of a multirun that can share one forward pass train as one model.

The logic is in cifar_lab/packing/launch.py (grouping, one process per pack, single jobs in this
process as the basic launcher runs them); Hydra loads launchers only from this namespace package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from cifar_lab.launchers import SweepStop
from cifar_lab.packing.launch import check_max_pack, launch_packed


class PackedLauncher(Launcher):
    """Packs of up to ``max_pack`` jobs, each trained in its own process; other jobs one by one, here.
    SIGTERM stops the running pack or job and ends the sweep with its summary (exit 143)."""

    def __init__(self, max_pack: int = 16) -> None:
        super().__init__()
        self.max_pack = check_max_pack(max_pack)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.stop: SweepStop | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.stop = SweepStop(Path(str(config.hydra.sweep.dir)))
        self.config, self.task_function, self.hydra_context = config, self.stop.guard(task_function), hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launch_packed(self, job_overrides, initial_job_idx)
