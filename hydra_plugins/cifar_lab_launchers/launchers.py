"""cifar_lab's launchers: a basic launcher (the default), which ends a sweep stopped by SIGTERM with its summary,
and Hydra's joblib and submitit launchers, which record a lost job instead of ending the sweep
without its summary (the logic is in cifar_lab/launchers.py). Hydra loads launchers only from this
namespace package."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from cifar_lab.launchers import SweepStop, launch_basic, log, lost_returns, safe_map_array


class BasicLauncher(Launcher):
    """``hydra/launcher=sequential`` (the default): Hydra's basic launcher, one job after another in this process;
    SIGTERM stops the running job as a solo run stops and ends the sweep with its summary (exit 143)."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.stop: SweepStop | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.stop = SweepStop(Path(str(config.hydra.sweep.dir)))
        self.config, self.task_function, self.hydra_context = config, self.stop.guard(task_function), hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launch_basic(self, job_overrides, initial_job_idx)


try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _Joblib
except ImportError:  # the sweep extra is not installed
    _Joblib = None

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit
except ImportError:  # the sweep extra is not installed
    _submitit = None

if _Joblib is not None:

    class JoblibLauncher(_Joblib):
        """joblib, recording the jobs of a batch whose worker died instead of ending the sweep."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            try:
                return super().launch(job_overrides, initial_job_idx)
            except Exception as err:  # TerminatedWorkerError, BrokenProcessPool, ...
                log.error("the joblib launcher lost its workers (%s); recording the unfinished jobs", err)
                return lost_returns(self, job_overrides, initial_job_idx, err)


if _submitit is not None:

    class LocalLauncher(_submitit.LocalLauncher):
        """submitit on this machine, recording lost jobs instead of ending the sweep."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            with safe_map_array(self):
                return super().launch(job_overrides, initial_job_idx)

    class SlurmLauncher(_submitit.SlurmLauncher):
        """submitit on SLURM, recording lost jobs instead of ending the sweep."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            with safe_map_array(self):
                return super().launch(job_overrides, initial_job_idx)
