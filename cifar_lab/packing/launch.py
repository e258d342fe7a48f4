"""The packed launcher's logic (``hydra/launcher=packed``): group a batch of jobs, run each pack in a process.

It runs inside the sequential launcher's set-up (``launchers.launch_basic``: SIGTERM, the stopped sweep's
summary): it composes every job, groups the jobs (:mod:`cifar_lab.packing.grouping`; with
``hydra.launcher.pack=false``, or where packing measured slower, a pack's jobs become single runs), prints
the grouping, and runs packs and single jobs in the order of their first job. A single job runs through
``launchers.run_single``; a pack's members get their job directories from Hydra's own ``run_job`` (a
no-op task), then one process trains them (:mod:`cifar_lab.packing.server`). Each job gets a
``JobReturn`` (value: best val acc or None); its real outcome is its summary.json. The promises
(isolation, SIGTERM, a pack that dies, resume): docs/packed.md.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from cifar_lab import launchers
from cifar_lab.errors import EXIT_INTERRUPTED, EXIT_IO
from cifar_lab.packing.grouping import Job, Pack, group, one_by_one, pack_key
from cifar_lab.packing.server import PackServer
from cifar_lab.summary import RunSummary
from cifar_lab.sweep import optuna_sweep

log = logging.getLogger("cifar_lab")


@dataclass
class Planned:
    """A job of this batch: its sweep config (with ``hydra``), where it writes, and its place."""

    job: Job
    config: DictConfig
    run_dir: Path
    finished: str | None = None  # resume: it finished before (its status) and is not trained again


def resume_point(run_dir: Path, max_epochs: int) -> tuple[str | None, str]:
    """With ``resume``: (the status of a finished job, "") or (None, the epoch its ``last.ckpt`` holds: "epoch 3",
    "" without one, "unreadable")."""
    summary = RunSummary.reopen(run_dir)
    recorded = summary.data if summary is not None else {}
    status = recorded.get("status")
    if status == "diverged" or (status == "completed" and (recorded.get("epochs") or 0) >= max_epochs):
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


def plan_job(launcher: Any, overrides: Sequence[str], idx: int) -> Planned:
    """Compose a job and give it its pack key (with ``resume``: also where its checkpoint stands)."""
    config = launchers.sweep_config(launcher, overrides, idx)
    task = {  # resolved key by key: hydra.runtime is not set yet, so the whole config does not resolve
        key: OmegaConf.to_container(config[key], resolve=True) if OmegaConf.is_config(config[key]) else config[key]
        for key in config
        if key != "hydra"
    }
    hydra = {"job": {"chdir": config.hydra.job.chdir, "env_set": OmegaConf.to_container(config.hydra.job.env_set)}}
    key, reason = pack_key(task, hydra)
    run_dir = launchers.output_dir(config)  # as run_job computes it
    finished, point = None, ""
    if task.get("resume") and key is not None:
        finished, point = resume_point(run_dir, int(task["trainer"]["max_epochs"]))
        if point == "unreadable":
            key, reason, point = None, "its checkpoints/last.ckpt cannot be read: it runs alone and reports why", ""
        else:
            key = f"{key}|resume after {point or 'nothing'}"  # members of a pack continue from the same epoch
    return Planned(Job(idx, tuple(overrides), key, reason, point), config, run_dir, finished)


def run_packed(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The batch, inside the sequential launcher's set-up: a result per job, in the order of ``job_overrides``."""
    planned = [plan_job(launcher, overrides, initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
    grouping = group([p.job for p in planned if not p.finished], launcher.max_pack)
    by_idx = {p.job.idx: p for p in planned}
    slower = one_by_one(grouping, lambda pack: by_idx[pack.id].config.trainer.accelerator, launcher.pack)
    for line in grouping.describe(launcher.max_pack).splitlines():
        log.info(line)
    for paragraph in slower:
        log.info(paragraph)
    for p in planned:
        if p.finished:
            log.info("  finished, not trained again: #%d : %s  (%s)", p.job.idx, " ".join(p.job.overrides), p.finished)
    returns = {p.job.idx: result(p, p.finished) for p in planned}  # what a job that does not run gets
    server = PackServer()
    for unit in grouping.in_order():
        if isinstance(unit, Pack):
            returns.update(run_pack(launcher, server, unit, [by_idx[j.idx] for j in unit.jobs]))
        else:  # not begun once the sweep is stopped
            returns[unit.idx] = launchers.run_single(launcher, by_idx[unit.idx].config)
    return [returns[initial_job_idx + i] for i in range(len(job_overrides))]


def write_member_dir(launcher: Any, member: Planned) -> JobReturn | None:
    """A member's job directory, written by Hydra's ``run_job`` with a no-op task (``on_job_start`` as Hydra calls
    it; ``on_job_end`` after the pack); None (nothing written) when a live run holds the directory or the disk
    refuses the files (that member's failure, not the sweep's end)."""
    callbacks = launcher.hydra_context.callbacks
    start_only = SimpleNamespace(
        on_job_start=lambda config, **kw: callbacks.on_job_start(config=config, task_function=launcher.task_function),
        on_job_end=lambda **kw: None,
    )
    context = HydraContext(config_loader=launcher.hydra_context.config_loader, callbacks=start_only)
    ret = launchers.start_job(launcher, member.config, context, lambda cfg: None, configure_logging=False)
    assert ret is None or Path(member.config.hydra.runtime.output_dir) == member.run_dir
    return ret


def run_pack(launcher: Any, server: PackServer, pack: Pack, members: Sequence[Planned]) -> dict[int, JobReturn]:
    """Write each member's job directory, train the pack in its own process, read each member's outcome."""
    stop: launchers.SweepStop = launcher.stop
    written = [(m, ret) for m in members if not stop.stopped and (ret := write_member_dir(launcher, m)) is not None]
    if stop.stopped:  # before or while the directories were written: the pack does not start
        return {m.job.idx: launchers.not_started(m.config, stop) for m in members}
    if not written:
        return {}
    code = run_pack_process(server, pack, [m for m, _ in written], str(launcher.config.hydra.sweep.dir), stop)
    returns = {}
    for m, ret in written:
        returns[m.job.idx] = result(m, settle_member(m, code, stop), ret)
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(m.config)  # as inside run_job, for the callbacks
        try:
            launcher.hydra_context.callbacks.on_job_end(config=m.config, job_return=ret)
        finally:
            HydraConfig.instance().cfg = previous
    return returns


def run_pack_process(
    server: PackServer, pack: Pack, members: Sequence[Planned], sweep_dir: str, stop: launchers.SweepStop
) -> int:
    """The pack in a process of its own (``cifar_lab.packing.run``), in this process's environment plus the jobs'
    ``hydra.job.env_set``; its exit status (negative: a signal). While it runs, SIGTERM/SIGUSR1 go to it."""
    argv = ["--pack", str(pack.id), "--sweep-dir", sweep_dir, *(str(m.run_dir) for m in members)]
    env_set = OmegaConf.to_container(members[0].config.hydra.job.env_set, resolve=True) or {}
    log.info("pack %d: training %d members in one process", pack.id, len(members))
    stop.forward = server.interrupt
    try:
        return server.run(argv, {**os.environ, **{str(k): str(v) for k, v in env_set.items()}}, os.getcwd())
    finally:
        stop.forward = None


def settle_member(member: Planned, code: int, stop: launchers.SweepStop) -> str:
    """A member's outcome after its pack's process ended: its summary.json, or, if that says ``running`` or does
    not exist (the process ended before the member could record its end), ``interrupted`` when SIGTERM or
    SIGUSR1 stopped the pack and ``failed`` otherwise. Never written while a live run holds the directory."""
    stopped = stop.stopped or code in (-signal.SIGTERM, -signal.SIGUSR1, EXIT_INTERRUPTED)
    status = "interrupted" if stopped else "failed"
    why = "could not write this job's files (a full or read-only disk)" if code == EXIT_IO else "ended"
    try:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    except ValueError:
        how = f"killed by signal {-code}"
    error = (
        f"the pack's process {why} ({how}) before this job recorded its outcome; see the sweep's console "
        "output. Run the sweep again with resume=auto (same hydra.sweep.dir) to continue it."
    )
    return launchers.settle(member.run_dir, member.job.overrides, member.job.idx, status, error)


def result(planned: Planned, status: str | None, ret: JobReturn | None = None) -> JobReturn:
    """The job's result for Hydra: the best val acc of a ``completed`` job, else None; under Optuna, the result
    its summary.json gives (``launchers.job_return``: a job that did not train to its end is a FAIL trial)."""
    if optuna_sweep(planned.config):
        return launchers.job_return(planned.job.overrides, planned.run_dir, planned.config)
    ret = ret or launchers.job_return(planned.job.overrides, planned.run_dir)
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    summary = RunSummary.reopen(planned.run_dir) if status == "completed" else None
    if summary is not None:
        ret.return_value = (summary.data.get("best") or {}).get("val_acc")
    return ret
