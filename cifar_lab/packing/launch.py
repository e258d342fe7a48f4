"""The packed launcher's logic (``hydra/launcher=packed``): group a multirun's jobs, run each pack in a process.

For one batch of jobs (all of a plain multirun; a batch of trials under Optuna) it composes every
job's config, groups the jobs (:mod:`cifar_lab.packing.grouping`), prints the grouping, and then runs
packs and single jobs in the order of their first job:

* a **single job** runs in this process through Hydra's ``run_job``, exactly as the basic launcher
  runs it;
* a **pack** gets its members' job directories written by ``run_job`` as well (``.hydra/`` exactly
  as Hydra writes it; a no-op task), then one process trains them (``cifar_lab.packing.run``,
  forked from a warm server, :mod:`cifar_lab.packing.server`). A process per pack, not this one:
  packs are isolated from each other (memory, CUDA state, torch's global settings), and a pack that
  dies hard (out of memory, a signal, a segfault) takes no other pack and not the sweep with it.
  Its members still marked ``running`` (or never started) are then recorded as ``failed`` with the
  exit status, and the sweep goes on with the next pack.

Each job gets a ``JobReturn`` (``COMPLETED``, value: best val acc or None), so Hydra's sweepers and
``SweepSummary`` work unchanged; a job's real outcome is its summary.json. With ``resume`` set, a
member that has finished (``completed`` at ``trainer.max_epochs``, or ``diverged``) is not trained
again, and members pack only with members whose ``last.ckpt`` is at the same epoch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.packing.grouping import Grouping, Job, Pack, group, pack_key
from cifar_lab.packing.server import PackServer
from cifar_lab.schema import RULES
from cifar_lab.summary import RunSummary

log = logging.getLogger("cifar_lab")

FINISHED = ("completed", "diverged")


@dataclass
class Planned:
    """A job of this batch: its sweep config (with ``hydra``), where it writes, and its place."""

    job: Job
    config: DictConfig
    run_dir: Path
    finished: str | None = None  # resume: it finished before (its status) and is not trained again


class NoCallbacks:
    """Hydra callbacks that do nothing: ``run_job`` only writes a member's files; the real callbacks are
    called around the member's pack (``on_job_start`` before it starts, ``on_job_end`` after it ends)."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


def check_max_pack(value: Any) -> int:
    problem = RULES["hydra.launcher.max_pack"].check("hydra.launcher.max_pack", value)
    if problem:
        raise ValueError(f"{problem}. It caps the members of one pack (a memory guard): see docs/packed.md.")
    return int(value)


def sweep_config(launcher: Any, overrides: Sequence[str], idx: int) -> DictConfig:
    """Job ``idx``'s config, as the basic launcher composes it."""
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    return config


def resolved_task(config: DictConfig) -> dict[str, Any]:
    """The job's config without ``hydra``, resolved (``hydra.runtime`` is not set yet, so not resolved whole)."""
    out = {}
    for key in config:
        if key != "hydra":
            node = config[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out


def job_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def resume_point(run_dir: Path, max_epochs: int) -> tuple[str | None, str]:
    """With ``resume``: (the status of a finished job, "") or (None, the epoch its ``last.ckpt`` holds: "epoch 3",
    "" without one, "unreadable")."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    status = summary.get("status")
    if status == "diverged" or (status == "completed" and (summary.get("epochs") or 0) >= max_epochs):
        return status, ""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return None, ""
    import torch

    try:  # mmap: only the epoch is read, not the weights
        epoch = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:
        return None, "unreadable"
    return None, f"epoch {int(epoch) + 1}"


def plan_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Planned]:
    """Compose every job and give it its pack key (with ``resume``: also where its checkpoint stands)."""
    planned = []
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        config = sweep_config(launcher, overrides, idx)
        task = resolved_task(config)
        hydra = {"job": {"chdir": config.hydra.job.chdir, "env_set": OmegaConf.to_container(config.hydra.job.env_set)}}
        key, reason = pack_key(task, hydra)
        run_dir = Path(os.path.abspath(job_dir(config)))  # as run_job computes it
        finished, point = None, ""
        if task.get("resume") and key is not None:
            finished, point = resume_point(run_dir, int(task["trainer"]["max_epochs"]))
            if point == "unreadable":
                key, reason, point = None, "its checkpoints/last.ckpt cannot be read: it runs alone and reports why", ""
            else:
                key = f"{key}|resume after {point or 'nothing'}"  # members of a pack continue from the same epoch
        planned.append(Planned(Job(idx, tuple(overrides), key, reason, point), config, run_dir, finished))
    return planned


def describe(grouping: Grouping, done: Sequence[Planned], max_pack: int) -> str:
    text = grouping.describe(max_pack)
    for p in done:
        text += f"\n  finished, not trained again: #{p.job.idx} : {' '.join(p.job.overrides)}  ({p.finished})"
    return text


@contextmanager
def job_context(config: DictConfig) -> Iterator[None]:
    """HydraConfig set to the job's (as inside ``run_job``), for the callbacks called around a pack."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = previous


def launch_packed(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The launcher's ``launch``: a result per job, in the order of ``job_overrides``."""
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    planned = plan_jobs(launcher, job_overrides, initial_job_idx)
    done = [p for p in planned if p.finished]
    grouping = group([p.job for p in planned if not p.finished], launcher.max_pack)
    for line in describe(grouping, done, launcher.max_pack).splitlines():
        log.info(line)
    by_idx = {p.job.idx: p for p in planned}
    returns: dict[int, JobReturn] = {p.job.idx: finished_return(p) for p in done}
    server = PackServer(python_environment())
    try:
        run_in_order(launcher, grouping, by_idx, returns, server, sweep_dir)
    finally:
        server.close()
    return [returns[initial_job_idx + i] for i in range(len(job_overrides))]


def run_in_order(
    launcher: Any,
    grouping: Grouping,
    by_idx: dict[int, Planned],
    returns: dict[int, JobReturn],
    server: PackServer,
    sweep_dir: Path,
) -> None:
    """Packs (each in its own process) and single jobs (here), in the order of their first job."""
    for unit in grouping.in_order():
        if isinstance(unit, Pack):
            members = [by_idx[j.idx] for j in unit.jobs]
            returns.update(zip([j.idx for j in unit.jobs], run_pack_jobs(launcher, server, unit, members, sweep_dir)))
        else:
            returns[unit.idx] = run_job(
                hydra_context=launcher.hydra_context,
                task_function=launcher.task_function,
                config=by_idx[unit.idx].config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)


def run_pack_jobs(
    launcher: Any, server: PackServer, pack: Pack, members: Sequence[Planned], sweep_dir: Path
) -> list[JobReturn]:
    """Write each member's job directory, train the pack in its own process, read each member's outcome."""
    from hydra.types import HydraContext

    quiet = HydraContext(config_loader=launcher.hydra_context.config_loader, callbacks=NoCallbacks())
    returns = []
    for m in members:
        ret = run_job(
            hydra_context=quiet,
            task_function=lambda cfg: None,
            config=m.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            configure_logging=False,
        )
        assert Path(m.config.hydra.runtime.output_dir) == m.run_dir
        returns.append(ret)
        with job_context(m.config):
            launcher.hydra_context.callbacks.on_job_start(config=m.config, task_function=launcher.task_function)
    code = run_pack_process(server, pack, members, sweep_dir)
    for m, ret in zip(members, returns):
        status = settle_member(m, code)
        ret.status = JobStatus.COMPLETED
        ret.return_value = best_val_acc(m.run_dir) if status == "completed" else None
        with job_context(m.config):
            launcher.hydra_context.callbacks.on_job_end(config=m.config, job_return=ret)
    return returns


def python_environment() -> dict[str, str]:
    """This process's environment, with this cifar_lab first on ``PYTHONPATH``: a child imports the same code."""
    import cifar_lab

    package_root = str(Path(cifar_lab.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def pack_environment(members: Sequence[Planned]) -> dict[str, str]:
    """The pack's environment: this one (``python_environment``) and the jobs' ``hydra.job.env_set``."""
    env_set = OmegaConf.to_container(members[0].config.hydra.job.env_set, resolve=True) or {}
    return {**python_environment(), **{str(k): str(v) for k, v in env_set.items()}}


def run_pack_process(server: PackServer, pack: Pack, members: Sequence[Planned], sweep_dir: Path) -> int:
    """The pack in a process of its own (``cifar_lab.packing.run``); its exit status (negative: a signal)."""
    argv = ["--pack", str(pack.id), "--sweep-dir", str(sweep_dir), *(str(m.run_dir) for m in members)]
    log.info("pack %d: training %d members in one process", pack.id, len(members))
    sys.stdout.flush()
    return server.run(argv, pack_environment(members), os.getcwd())


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def settle_member(member: Planned, code: int) -> str:
    """A member's outcome after its pack's process ended: its summary.json, or ``failed`` if that says
    ``running`` or does not exist (the process died before the member could record its end)."""
    summary = RunSummary.reopen(member.run_dir)
    if summary is not None and summary.status != "running":
        return summary.status
    if summary is None:
        summary = RunSummary(member.run_dir, {"overrides": list(member.job.overrides)}, write_now=False)
    summary.finish(
        "failed",
        error=f"the pack's process ended ({exit_reason(code)}) before this job recorded its outcome; see the "
        f"sweep's console output. Run the sweep again with resume=auto (same hydra.sweep.dir) to continue it.",
    )
    return "failed"


def best_val_acc(run_dir: Path) -> float | None:
    summary = RunSummary.reopen(run_dir)
    best = (summary.data.get("best") or {}) if summary is not None else {}
    return best.get("val_acc")


def finished_return(planned: Planned) -> JobReturn:
    """The result of a job that finished before this launch (resume) and is not run again."""
    ret = JobReturn(overrides=list(planned.job.overrides), working_dir=str(planned.run_dir))
    ret.status = JobStatus.COMPLETED
    ret.return_value = best_val_acc(planned.run_dir) if planned.finished == "completed" else None
    return ret
