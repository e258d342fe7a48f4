"""Hydra's joblib and submitit launchers, made to survive a lost job.

The plugins end a multirun with a traceback when a job is lost: joblib raises for the whole batch
when one worker process dies (killed, out of memory), submitit raises when a job never returns a
result (cancelled, killed, node lost). The sweep summary is then never written and the lost jobs'
summary.json stay ``running``. These subclasses catch that, record every job that did not finish
(``failed`` if it had started, ``interrupted`` if it never ran; the reason in ``error``) and hand
Hydra a result for each job, so the sweep ends normally: ``SweepSummary`` writes its table and
the process exits non-zero. Hydra only loads launchers from its ``hydra_plugins`` namespace, so the
classes live in ``hydra_plugins/cifar_lab_launchers`` (shipped with cifar_lab) and use this module;
the configs in conf/hydra/launcher/ point at them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

from cifar_lab.errors import outcome_of
from cifar_lab.files import write_json_atomic
from cifar_lab.summary import RunSummary
from cifar_lab.sweep import job_number

log = logging.getLogger("cifar_lab")


def job_dir(launcher: Any, overrides: Sequence[str], idx: int) -> Path:
    """Where job ``idx`` of the sweep writes (what Hydra's run_job computes in the worker)."""
    sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.num = idx
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def record_lost_job(directory: Path, overrides: Sequence[str], idx: int, reason: str) -> str:
    """Mark a job that did not finish; returns the status given. A job that finished is left alone."""
    summary = RunSummary.reopen(directory)
    if summary is not None and summary.status != "running":
        return summary.status
    hydra_yaml = directory / ".hydra" / "hydra.yaml"
    if job_number(hydra_yaml) is None:  # it never started, or died while Hydra wrote the file: (re)write it
        hydra_yaml.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save({"hydra": {"job": {"num": idx}, "overrides": {"task": list(overrides)}}}, hydra_yaml)
    if summary is None:
        write_json_atomic(
            directory / "summary.json",
            {
                "status": "interrupted",
                "overrides": list(overrides),
                "error": f"never ran: {reason}. Run the sweep again (same hydra.sweep.dir, resume=auto) to run it.",
            },
        )
        return "interrupted"
    summary.finish("failed", error=f"the job was lost while running: {reason}")
    return "failed"


def lost_returns(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, err: BaseException
) -> list[JobReturn]:
    """Record every job of a batch that a launcher failure left unfinished; a result for each job."""
    reason = outcome_of(err).message
    returns = []
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        directory = job_dir(launcher, overrides, idx)
        status = record_lost_job(directory, overrides, idx, reason)
        log.error("job %d (%s): %s", idx, " ".join(overrides), status if status != "running" else reason)
        returns.append(job_return(overrides, directory))
    return returns


def job_return(overrides: Sequence[str], directory: Path) -> JobReturn:
    """A result Hydra's sweepers accept without raising; summary.json holds the job's real outcome."""
    ret = JobReturn(overrides=list(overrides), working_dir=str(directory))
    ret.status = JobStatus.COMPLETED
    ret.return_value = None
    return ret


# ---------------------------------------------------------------------- submitit


class _SafeJob:
    """A submitit job whose ``results()`` records a lost job instead of raising."""

    def __init__(self, job: Any, on_lost: Callable[[BaseException], JobReturn]) -> None:
        self.job, self.on_lost = job, on_lost

    def results(self) -> list[JobReturn]:
        try:
            return self.job.results()
        except Exception as err:  # UncompletedJobError, FailedJobError, ...
            return [self.on_lost(err)]


@contextmanager
def safe_map_array(launcher: Any) -> Iterator[None]:
    """While the plugin launches: wrap each job that ``map_array`` returns in a :class:`_SafeJob`."""
    import submitit

    original = submitit.AutoExecutor.map_array

    def map_array(executor: Any, fn: Any, *iterables: Any) -> list[_SafeJob]:
        jobs = original(executor, fn, *iterables)
        overrides, idxs = iterables[0], iterables[2]  # the plugin's job params: (overrides, key, idx, id, state)

        def on_lost(ov: Sequence[str], idx: int) -> Callable[[BaseException], JobReturn]:
            return lambda err: lost_returns_one(launcher, ov, idx, err)

        return [_SafeJob(job, on_lost(ov, idx)) for job, ov, idx in zip(jobs, overrides, idxs)]

    submitit.AutoExecutor.map_array = map_array
    try:
        yield
    finally:
        submitit.AutoExecutor.map_array = original


def lost_returns_one(launcher: Any, overrides: Sequence[str], idx: int, err: BaseException) -> JobReturn:
    (ret,) = lost_returns(launcher, [overrides], idx, err)
    return ret
