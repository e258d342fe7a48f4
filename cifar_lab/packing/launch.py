"""The packed launcher's logic (``hydra/launcher=packed``): group a multirun's jobs, run each pack in a process.

For one batch of jobs (a plain multirun; a batch of Optuna trials) it composes every job's config,
groups the jobs (:mod:`cifar_lab.packing.grouping`), prints the grouping, and runs packs and single
jobs in the order of their first job. A **single job** runs here through Hydra's ``run_job``, as the
basic launcher runs it. A **pack** gets its members' job directories written by ``run_job`` (a no-op
task), then its own process trains them (``cifar_lab.packing.run``, :mod:`cifar_lab.packing.server`):
a pack that dies hard takes no other pack and not the sweep with it; its members still ``running``
are recorded ``failed`` with the exit status (``interrupted`` when SIGTERM stopped it). A member whose
directory a live run holds is left alone. SIGTERM or SIGUSR1 to the launcher (``launchers.SweepStop``)
goes to the running pack or job; nothing else starts; the sweep ends with its summary and exit 143.

Each job gets a ``JobReturn`` (value: best val acc or None), so Hydra's sweepers and ``SweepSummary``
work unchanged; a job's real outcome is its summary.json. With ``resume``, a member that finished
(``completed`` at ``trainer.max_epochs``, or ``diverged``) is not trained again, and members pack only
with members whose ``last.ckpt`` is at the same epoch.
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
from types import SimpleNamespace
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf

from cifar_lab.errors import EXIT_INTERRUPTED, EXIT_IO, print_user_error
from cifar_lab.launchers import (
    SweepStop,
    failed_start,
    live_owner,
    not_started,
    output_dir,
    run_single,
    settle,
    sweep_config,
)
from cifar_lab.packing.grouping import Grouping, Job, Pack, group, pack_key
from cifar_lab.packing.server import PackServer
from cifar_lab.schema import RULES
from cifar_lab.summary import RunSummary

log = logging.getLogger("cifar_lab")


@dataclass
class Planned:
    """A job of this batch: its sweep config (with ``hydra``), where it writes, and its place."""

    job: Job
    config: DictConfig
    run_dir: Path
    finished: str | None = None  # resume: it finished before (its status) and is not trained again


def check_max_pack(value: Any) -> int:
    problem = RULES["hydra.launcher.max_pack"].check("hydra.launcher.max_pack", value)
    if problem:
        raise ValueError(f"{problem}. It caps the members of one pack (a memory guard): see docs/packed.md.")
    return int(value)


def resolved_task(config: DictConfig) -> dict[str, Any]:
    """The job's config without ``hydra``, resolved (``hydra.runtime`` is not set yet, so not resolved whole)."""
    out = {}
    for key in config:
        if key != "hydra":
            node = config[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out


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
        run_dir = output_dir(config)  # as run_job computes it
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
    with launcher.stop.handling():  # from here on, SIGTERM ends the sweep with its summary
        planned = plan_jobs(launcher, job_overrides, initial_job_idx)
        done = [p for p in planned if p.finished]
        grouping = group([p.job for p in planned if not p.finished], launcher.max_pack)
        for line in describe(grouping, done, launcher.max_pack).splitlines():
            log.info(line)
        by_idx = {p.job.idx: p for p in planned}
        returns: dict[int, JobReturn] = {p.job.idx: finished_return(p) for p in done}
        run_in_order(launcher, grouping, by_idx, returns, PackServer(), sweep_dir)
    launcher.stop.end_if_stopped()
    return [returns[initial_job_idx + i] for i in range(len(job_overrides))]


def run_in_order(
    launcher: Any,
    grouping: Grouping,
    by_idx: dict[int, Planned],
    returns: dict[int, JobReturn],
    server: PackServer,
    sweep_dir: Path,
) -> None:
    """Packs (each in its own process) and single jobs (here), in the order of their first job; once the
    sweep is stopped, each job not begun is recorded as such."""
    for unit in grouping.in_order():
        jobs = [by_idx[j.idx] for j in unit.jobs] if isinstance(unit, Pack) else [by_idx[unit.idx]]
        if launcher.stop.stopped:
            for m in jobs:
                returns[m.job.idx] = not_started(m.config, launcher.stop)
        elif isinstance(unit, Pack):
            returns.update(run_pack_jobs(launcher, server, unit, jobs, sweep_dir))
        else:
            returns[unit.idx] = run_single(launcher, jobs[0].config)


def write_member_dir(launcher: Any, member: Planned) -> JobReturn | None:
    """A member's job directory as Hydra's ``run_job`` writes it (``.hydra/``), its ``on_job_start`` callbacks;
    None (nothing written) when a live run holds the directory or the disk refuses the files."""
    from hydra.types import HydraContext

    refusal = live_owner(member.run_dir)
    if refusal is not None:
        print_user_error(f"job #{member.job.idx} does not run: {refusal}")
        return None
    # run_job only writes the member's files; the real callbacks are called around the pack (job_context)
    none = SimpleNamespace(on_job_start=lambda **kw: None, on_job_end=lambda **kw: None)
    quiet = HydraContext(config_loader=launcher.hydra_context.config_loader, callbacks=none)
    try:
        ret = run_job(
            hydra_context=quiet,
            task_function=lambda cfg: None,
            config=member.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            configure_logging=False,
        )
    except Exception as err:  # a full or read-only disk: this member's failure, not the sweep's end
        failed_start(member.run_dir, member.job.overrides, member.job.idx, err)
        return None
    assert Path(member.config.hydra.runtime.output_dir) == member.run_dir
    with job_context(member.config):
        launcher.hydra_context.callbacks.on_job_start(config=member.config, task_function=launcher.task_function)
    return ret


def run_pack_jobs(
    launcher: Any, server: PackServer, pack: Pack, members: Sequence[Planned], sweep_dir: Path
) -> dict[int, JobReturn]:
    """Write each member's job directory, train the pack in its own process, read each member's outcome."""
    returns = {m.job.idx: finished_return(m) for m in members}  # a member left out keeps what it has
    written = [(m, ret) for m in members if (ret := write_member_dir(launcher, m)) is not None]
    if launcher.stop.stopped:  # stopped while the directories were written: the pack does not start
        for m, _ in written:
            returns[m.job.idx] = not_started(m.config, launcher.stop)
        return returns
    if not written:
        return returns
    code = run_pack_process(server, pack, [m for m, _ in written], sweep_dir, launcher.stop)
    for m, ret in written:
        status = settle_member(m, code, launcher.stop)
        ret.status = JobStatus.COMPLETED
        ret.return_value = best_val_acc(m.run_dir) if status == "completed" else None
        with job_context(m.config):
            launcher.hydra_context.callbacks.on_job_end(config=m.config, job_return=ret)
        returns[m.job.idx] = ret
    return returns


def pack_environment(members: Sequence[Planned]) -> dict[str, str]:
    """The pack's environment: this process's and the jobs' ``hydra.job.env_set``."""
    env_set = OmegaConf.to_container(members[0].config.hydra.job.env_set, resolve=True) or {}
    return {**os.environ, **{str(k): str(v) for k, v in env_set.items()}}


def run_pack_process(
    server: PackServer, pack: Pack, members: Sequence[Planned], sweep_dir: Path, stop: SweepStop
) -> int:
    """The pack in a process of its own (``cifar_lab.packing.run``); its exit status (negative: a signal).
    While it runs, SIGTERM/SIGUSR1 to this process go to it (``stop.forward``)."""
    argv = ["--pack", str(pack.id), "--sweep-dir", str(sweep_dir), *(str(m.run_dir) for m in members)]
    log.info("pack %d: training %d members in one process", pack.id, len(members))
    sys.stdout.flush()
    stop.forward = server.interrupt
    try:
        return server.run(argv, pack_environment(members), os.getcwd())
    finally:
        stop.forward = None


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def settle_member(member: Planned, code: int, stop: SweepStop) -> str:
    """A member's outcome after its pack's process ended: its summary.json, or, if that says ``running`` or does
    not exist (the process ended before the member could record its end), ``interrupted`` when SIGTERM or
    SIGUSR1 stopped the pack and ``failed`` otherwise. Never written while a live run holds the directory."""
    stopped = stop.stopped or code in (-signal.SIGTERM, -signal.SIGUSR1, EXIT_INTERRUPTED)
    status = "interrupted" if stopped else "failed"
    why = "could not write this job's files (a full or read-only disk)" if code == EXIT_IO else "ended"
    error = (
        f"the pack's process {why} ({exit_reason(code)}) before this job recorded its outcome; see the sweep's "
        "console output. Run the sweep again with resume=auto (same hydra.sweep.dir) to continue it."
    )
    return settle(member.run_dir, member.job.overrides, member.job.idx, status, error)


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
