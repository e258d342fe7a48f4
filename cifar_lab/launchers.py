"""What cifar_lab's launchers add to Hydra's, so that a sweep never loses a run.

* **A lost job.** The joblib and submitit plugins end a multirun with a traceback when a job is lost
  (a dead worker process; a cancelled, killed or lost submitit job): the sweep summary is never
  written and the lost jobs' summary.json stay ``running``. Their subclasses catch that, record
  every job that did not finish (``failed`` if it had started, ``interrupted`` if it never ran; the
  reason in ``error``) and hand Hydra a result for each job, so the sweep ends normally.
* **SIGTERM or SIGUSR1 to the sweep** (the basic and packed launchers, whose jobs run in the sweep's
  process or a pack's): the running job stops as a solo run does (``interrupted`` after the current
  step, resumable), no other job starts (each is recorded ``interrupted`` with ``"started": false``,
  ``not started`` in the summary), and the sweep ends with its summary and exit status 143
  (:class:`SweepStop`).
* **A run directory that a live run holds** is never written by a launcher: the job is left alone,
  as a second solo run into that directory would be refused (:func:`live_owner`, :func:`settle`).
* **A full or read-only disk** while Hydra writes a job's files is that job's failure (one paragraph),
  not the sweep's end; the summary that cannot be written is one paragraph and exit status 4
  (``sweep.summarise``).

Hydra only loads launchers from its ``hydra_plugins`` namespace, so the classes live in
``hydra_plugins/cifar_lab_launchers`` (shipped with cifar_lab) and use this module; the configs in
conf/hydra/launcher/ point at them (``sequential.yaml``, the default, is cifar_lab's basic launcher).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.errors import EXIT_CRASH, EXIT_CTRL_C, EXIT_INTERRUPTED, UserError, outcome_of, print_user_error
from cifar_lab.files import write_bytes_atomic
from cifar_lab.rundir import RunDir
from cifar_lab.summary import RunSummary
from cifar_lab.sweep import end_stopped_sweep, job_number, optuna_sweep, recorded_result

log = logging.getLogger("cifar_lab")

REDELIVER_S = 0.1  # SIGTERM to a job outside its fit comes again this often (see SweepStop)


# ---------------------------------------------------------------------- where a job writes


def sweep_config(launcher: Any, overrides: Sequence[str], idx: int) -> DictConfig:
    """Job ``idx``'s config, as Hydra's basic launcher composes it."""
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    return config


def output_dir(config: DictConfig) -> Path:
    """Where a job of a sweep writes (what Hydra's ``run_job`` computes)."""
    return Path(os.path.abspath(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)))


def job_dir(launcher: Any, overrides: Sequence[str], idx: int) -> Path:
    """Where job ``idx`` of the sweep writes (for a job that ran in another process)."""
    config = sweep_config(launcher, overrides, idx)
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
    return output_dir(config)


# ---------------------------------------------------------------------- recording a job's outcome


def live_owner(directory: Path) -> str | None:
    """Why nothing may be written in ``directory`` (a live run holds its lock: the refusal a second run
    gets), or None. Uses the run's own lock (``RunDir``); a directory without a lock file has no owner."""
    if not (directory / ".lock").exists():
        return None
    owner = RunDir(directory)
    try:
        owner.acquire()
    except UserError as err:
        return str(err)
    except OSError:  # the lock cannot even be opened (a read-only disk): whoever writes next reports it
        return None
    owner.release()
    return None


def settle(
    directory: Path,
    overrides: Sequence[str],
    idx: int,
    status: str,
    error: str,
    started: bool = True,
    fields: dict[str, Any] | None = None,
) -> str:
    """Record ``status`` for job ``idx``, which did not record its own end; returns its status as it now stands.

    Under the directory's lock, so never while a live run holds it (that job is left alone and stays
    ``running``). A job that finished keeps its outcome. A job with no summary.json gets one, with
    ``fields`` (``"started": false`` for a job that never began). A write the disk refuses (full,
    read-only) is reported on one line and leaves what was there.
    """
    owner, recorded, held = RunDir(directory), None, False
    try:
        owner.acquire()
        held = True
        recorded = RunSummary.reopen(directory)
        if recorded is not None and recorded.status != "running":
            return recorded.status
        hydra_yaml = directory / ".hydra" / "hydra.yaml"
        if job_number(hydra_yaml) is None:  # it never started, or died while Hydra wrote the file: (re)write it
            hydra_yaml.parent.mkdir(parents=True, exist_ok=True)
            text = OmegaConf.to_yaml({"hydra": {"job": {"num": idx}, "overrides": {"task": list(overrides)}}})
            write_bytes_atomic(hydra_yaml, text.encode())
        new = {**(fields or {}), "overrides": list(overrides), **({} if started else {"started": False})}
        summary = recorded or RunSummary(directory, new, write_now=False)  # RunSummary owns summary.json
        summary.finish(status, error=error)
        if summary.unwritten is not None:
            raise summary.unwritten
        return status
    except UserError:
        log.warning("job %d: a live run holds %s; it is left alone", idx, directory)
        return "running"
    except OSError as err:  # the lock could not be taken, or the disk refused a write (full, read-only)
        log.error("job %d: could not record %s in %s: %s", idx, status, directory, err.strerror or err)
        return "unrecorded" if held and recorded is None else "running"
    finally:
        if held:
            owner.release()


def record_lost_job(directory: Path, overrides: Sequence[str], idx: int, reason: str) -> str:
    """Mark a job that a launcher lost; returns the status given. A job that finished is left alone."""
    if RunSummary.reopen(directory) is None:
        error = f"never ran: {reason}. Run the sweep again (same hydra.sweep.dir, resume=auto) to run it."
        return settle(directory, overrides, idx, "interrupted", error)
    return settle(directory, overrides, idx, "failed", f"the job was lost while running: {reason}")


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
        returns.append(job_return(overrides, directory, launcher.config))
    return returns


def job_return(overrides: Sequence[str], directory: Path, config: DictConfig | None = None) -> JobReturn:
    """A result Hydra's sweepers accept without raising; summary.json holds the job's real outcome. Optuna's
    sweeper gets that outcome: the best val acc of a job that trained, else a failure (a FAIL trial)."""
    ret = JobReturn(overrides=list(overrides), working_dir=str(directory))
    trained, value = recorded_result(directory) if optuna_sweep(config) else (True, None)
    ret.status = JobStatus.COMPLETED if trained else JobStatus.FAILED
    ret.return_value = value
    return ret


# ---------------------------------------------------------------------- SIGTERM to a sweep


class SweepStop:
    """SIGTERM or SIGUSR1 to a sweep's process: the running job stops as a solo run does, no other job starts.

    While ``handling``, this is the process's handler for both signals. Inside a job's fit, Lightning's
    SIGTERM handler is installed and calls this one after its own: the fit stops after the current
    step and the job records ``interrupted`` (SIGUSR1 is handed to Lightning's handler, as
    ``preemption`` does). A job outside its fit (building its model, loading its data) gets SIGTERM
    again every ``REDELIVER_S`` until its fit has Lightning's handler, so it too stops after its
    first step: never an exception thrown into arbitrary code (Hydra's ``instantiate`` and OmegaConf
    turn one into another error, or are left half-built by it). Between jobs it only marks the
    sweep stopped. While a pack trains in its own process, ``forward`` hands the signal to it. A job
    that ends the process itself (``hydra_main`` exits 143 for an interrupted job, 130 for Ctrl-C)
    stops the sweep the same way. The launcher then records the jobs it did not start and ends the
    sweep: its summary, exit status 143 (``sweep.end_stopped_sweep``).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.cause: str | None = None  # what stopped the sweep ("SIGTERM", "Ctrl-C"); None while it runs
        self.exit_code = EXIT_INTERRUPTED
        self.in_job = False
        self.forward: Callable[[], None] | None = None
        self.handler = self.on_signal  # one bound method, to recognise it among the installed handlers

    @property
    def stopped(self) -> bool:
        return self.cause is not None

    def stop(self, cause: str, exit_code: int = EXIT_INTERRUPTED) -> None:
        if self.cause is None:
            self.cause, self.exit_code = cause, exit_code

    @property
    def resume_hint(self) -> str:
        return f"continue the sweep with the same command plus resume=auto hydra.sweep.dir={self.sweep_dir}"

    @contextmanager
    def handling(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handler) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signal.Signals(signum).name)
        if self.forward is not None:
            self.forward()
            return
        if not self.in_job:
            return
        term = signal.getsignal(signal.SIGTERM)
        if term is self.handler:  # the job is outside its fit: SIGTERM again shortly, until Lightning's handler has it
            threading.Timer(REDELIVER_S, self.redeliver).start()
        elif signum != signal.SIGTERM and callable(term):
            term(signal.SIGTERM, frame)  # Lightning's: stop after the current step

    def redeliver(self) -> None:
        if self.in_job:
            os.kill(os.getpid(), signal.SIGTERM)

    def guard(self, task: TaskFunction) -> TaskFunction:
        """The task function, marked as a job while it runs; a job that would end the process stops the sweep."""

        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            self.in_job = True
            try:
                return task(cfg)
            except SystemExit as err:  # hydra_main exits for an interrupted job: the sweep stops, with its summary
                code = err.code if isinstance(err.code, int) else EXIT_CRASH
                named = {EXIT_INTERRUPTED: "SIGTERM/SIGUSR1", EXIT_CTRL_C: "Ctrl-C"}
                self.stop(named.get(code, f"a job that ended the process (exit status {code})"), code)
                return None
            finally:
                self.in_job = False

        return job

    def end_if_stopped(self) -> None:
        if self.cause is not None:
            end_stopped_sweep(self.sweep_dir, self.cause, self.exit_code)


def not_started(config: DictConfig, stop: SweepStop) -> JobReturn:
    """A job a stopped sweep does not begin: recorded as such (with its experiment and data, for the summary
    and the report), a result for Hydra."""
    idx, overrides = int(config.hydra.job.num), [str(o) for o in config.hydra.overrides.task]
    directory = output_dir(config)
    value = functools.partial(OmegaConf.select, config, default=None, throw_on_resolution_failure=False)
    fields = {"experiment": value("name"), "data": {"source": value("data.source")}}
    fields["data"]["synthetic"] = fields["data"]["source"] == "synthetic"
    error = f"not started: the sweep was stopped by {stop.cause} before this job began; {stop.resume_hint}"
    settle(directory, overrides, idx, "interrupted", error, started=False, fields=fields)
    return job_return(overrides, directory, config)


# ---------------------------------------------------------------------- one job in this process


def run_single(launcher: Any, config: DictConfig) -> JobReturn:
    """One job in this process through Hydra's ``run_job``, as the basic launcher runs it; a result in every case.

    ``launcher`` has ``hydra_context``, ``config``, ``stop`` (a :class:`SweepStop`) and a ``task_function``
    guarded by it. Not begun when the sweep is stopped; left alone (no file written, not even Hydra's
    ``.hydra/``) when a live run holds its directory; a failure of Hydra's own writes for the job (a
    full or read-only disk) is the job's failure, in one paragraph, and the sweep goes on.
    """
    stop: SweepStop = launcher.stop
    if stop.stopped:
        return not_started(config, stop)
    ret = start_job(launcher, config, launcher.hydra_context, launcher.task_function)
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    idx, overrides = int(config.hydra.job.num), [str(o) for o in config.hydra.overrides.task]
    if ret is None or ret.status != JobStatus.COMPLETED:  # or the task raised (only a signal outside its guard can)
        ret = job_return(overrides, output_dir(config), config)
    if stop.stopped:  # stopped in this job: a job that could not record it (stopped while starting) is recorded now
        settle(output_dir(config), overrides, idx, "interrupted", f"stopped by {stop.cause}; {stop.resume_hint}")
    return ret


def start_job(
    launcher: Any, config: DictConfig, hydra_context: Any, task_function: TaskFunction, **run_job_args: Any
) -> JobReturn | None:
    """Hydra's ``run_job`` for a job of the sweep; None when it did not run: a live run holds its directory
    (nothing written, not even Hydra's ``.hydra/``), or Hydra's own writes for it failed (a full or
    read-only disk: the job's failure, in one paragraph, and the sweep goes on)."""
    idx, overrides = int(config.hydra.job.num), [str(o) for o in config.hydra.overrides.task]
    refusal = live_owner(output_dir(config))
    if refusal is not None:
        print_user_error(f"job #{idx} does not run: {refusal}")
        return None
    try:
        return run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            **run_job_args,
        )
    except Exception as err:  # Hydra's own writes for the job (.hydra/, its log file) failed
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)  # not the job's log
        failed_start(output_dir(config), overrides, idx, err)
        return None


def failed_start(directory: Path, overrides: Sequence[str], idx: int, err: BaseException) -> None:
    """A job whose directory Hydra could not write: one paragraph (a traceback if it is not the disk), ``failed``."""
    outcome = outcome_of(err)
    if outcome.expected:
        print_user_error(f"job #{idx} could not start: {outcome.message}")
    else:
        log.error("job #%d could not start", idx, exc_info=err)
    settle(directory, overrides, idx, "failed", f"could not start: {outcome.message}")


def launch_basic(
    launcher: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    run_batch: Callable[[Any, Sequence[Sequence[str]], int], list[JobReturn]] | None = None,
) -> list[JobReturn]:
    """As Hydra's basic launcher: its set-up, then ``run_batch`` (by default one job after another in this
    process, through :func:`run_single`) with SIGTERM handled; a stopped sweep ends with its summary."""
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    with launcher.stop.handling():
        returns = (run_batch or run_in_turn)(launcher, job_overrides, initial_job_idx)
    launcher.stop.end_if_stopped()
    return returns


def run_in_turn(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    log.info("Launching %d jobs locally", len(job_overrides))
    returns = []
    for offset, overrides in enumerate(job_overrides):
        idx = initial_job_idx + offset
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        returns.append(run_single(launcher, sweep_config(launcher, overrides, idx)))
    return returns


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
            return lambda err: lost_returns(launcher, [ov], idx, err)[0]

        return [_SafeJob(job, on_lost(ov, idx)) for job, ov, idx in zip(jobs, overrides, idxs)]

    submitit.AutoExecutor.map_array = map_array
    try:
        yield
    finally:
        submitit.AutoExecutor.map_array = original
