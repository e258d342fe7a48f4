"""``python -m cifar_lab``: the Hydra entry point, one run from its first line to its outcome, the exit policy."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cifar_lab.configs import CONF_DIR, flatten
from cifar_lab.console import filter_warnings
from cifar_lab.distributed import ddp_job_scope, placement
from cifar_lab.errors import (
    COMPLETED,
    EXIT_CTRL_C,
    EXIT_OK,
    EXIT_USER_ERROR,
    UserError,
    interrupted,
    is_sigterm,
    outcome_of,
    print_user_error,
    stop_in_chain,
)
from cifar_lab.files import read_metrics
from cifar_lab.hints import unknown_options
from cifar_lab.preemption import SignalStop, preemption_signals
from cifar_lab.resume import resume_path, run_identity
from cifar_lab.rundir import RunDir, refuse_links
from cifar_lab.schema import validate
from cifar_lab.summary import RunSummary, is_rank_zero

log = logging.getLogger("cifar_lab")

filter_warnings()


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config flattened to dotted keys with scalar values, for TensorBoard's HPARAMS tab."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True), private=False)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def trainer_extras(cfg: DictConfig, run_dir: Path, recorder: Any) -> dict[str, Any]:
    """What a training run adds to ``cfg.trainer``: our callbacks, the TensorBoard logger, plugins."""
    from lightning.pytorch.callbacks import RichProgressBar

    from cifar_lab import resilience
    from cifar_lab.build import instantiate
    from cifar_lab.sweep import ensure_sqlite_dir

    # The recorder writes an epoch's row before the checkpoints mark the epoch done, so a resume never misses a row.
    callbacks = [recorder, *resilience.checkpoints(run_dir), *resilience.callbacks(run_identity(cfg))]
    show_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    if show_bar:
        callbacks.append(RichProgressBar())
    ensure_sqlite_dir(cfg.logger.get("tracking_uri"))  # logger=mlflow keeps its store in SQLite
    logger = instantiate(cfg.logger, save_dir=str(run_dir))  # logger=tensorboard (default) | csv | mlflow | wandb
    return {
        "callbacks": callbacks,
        "logger": logger,
        "default_root_dir": str(run_dir),
        "enable_progress_bar": show_bar,
        "enable_model_summary": False,
        "plugins": resilience.plugins(),
    }


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one configuration; returns the final summary. Raises what stopped it otherwise.

    Rank 0 owns the run directory for the whole run (a lock). SIGTERM and SIGUSR1 stop the run as
    ``interrupted`` from this first line on (Lightning's own SIGTERM handling exists only inside fit).
    """
    with preemption_signals():
        owner = RunDir(run_dir) if is_rank_zero() else None
        try:
            return run_owned(cfg, run_dir, owner)
        finally:
            if owner is not None:
                owner.release()


def admit(
    cfg: DictConfig, run_dir: Path, owner: RunDir | None, summary: RunSummary, overrides: list[str]
) -> str | None:
    """Decide whether this run may start in ``run_dir``; returns the checkpoint to resume from.

    Refused (a UserError): another live run holds the directory; a bad config value; the directory
    holds a run and ``resume`` is off; a resume that does not match, or has nothing to train
    (AlreadyComplete). Only a bad value, or a signal, in a directory that holds no run is recorded
    (summary.json: ``failed``, ``interrupted``); every other refusal leaves the directory as it was,
    ``.hydra/`` included (Hydra rewrote it before this code ran; the owner's copy goes back).
    """
    existing = None
    if owner is not None:
        try:
            owner.acquire()
        except UserError:
            owner.restore_hydra()
            raise
        existing = owner.existing_run()
    recorded = False  # a bad value in a directory that holds no run: this attempt is the directory's record
    try:
        try:
            validate(cfg)  # before the heavy imports, so that a bad value is reported at once
        except UserError as err:
            if owner is not None and existing is None:
                recorded = summary.finish("failed", error=str(err))
            raise
        if existing and not cfg.get("resume"):
            raise UserError(
                f"{run_dir} already holds {existing}. Starting again there would overwrite it: continue it with "
                "resume=true (and its original settings), or start a new run elsewhere (leave hydra.run.dir out "
                "for a fresh directory)."
            )
        ckpt_path = resume_path(cfg, run_dir, overrides)
    except SignalStop as err:  # before the run was admitted: it did not start
        if owner is not None and existing is None:
            summary.finish("interrupted", error=str(err))
        elif owner is not None:
            owner.restore_hydra()
        raise
    except UserError:
        if owner is not None and not recorded:
            owner.restore_hydra()
        raise
    except Exception:  # a bug, or a damaged file that a check did not foresee: the directory stays as it was
        if owner is not None:
            owner.restore_hydra()
        raise
    if owner is not None:
        owner.snapshot_hydra()
        owner.clean()
    return ckpt_path


def summary_fields(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """What summary.json says about a run before it trains (a packed member's says the same)."""
    synthetic = cfg.data.source == "synthetic"
    root = OmegaConf.select(cfg, "data.root", throw_on_missing=False)
    return {
        "experiment": cfg.name,
        "params": None,
        "run_dir": str(run_dir),
        "overrides": overrides,
        "data": {"source": cfg.data.source, "root": None if root == "???" else root, "synthetic": synthetic},
    }


def run_owned(cfg: DictConfig, run_dir: Path, owner: RunDir | None) -> dict[str, Any]:
    synthetic = cfg.data.source == "synthetic"
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    fields = summary_fields(cfg, run_dir, overrides)
    summary = RunSummary(run_dir, fields, writer=owner is not None, write_now=False)
    ckpt_path = admit(cfg, run_dir, owner, summary, overrides)
    recorder, trainer = None, None
    try:
        summary.set_rows(read_metrics(run_dir / "metrics.csv"))  # a resumed run's epochs, from its first write
        from cifar_lab.build import build
        from cifar_lab.models import count_params
        from cifar_lab.recording import Recorder, versions
        from cifar_lab.resilience import why_stopped

        summary.update(versions=versions())
        if owner is not None:
            log.info("run directory: %s", run_dir)
            log.info("if it stops, continue it with: %s", resume_command(run_dir, overrides, "true"))
        recorder = Recorder(run_dir, summary, flat_hparams(cfg), synthetic)
        if synthetic:
            log.warning(
                "SYNTHETIC DATA: this run trains on generated images, not CIFAR-10. Its numbers are for testing only."
            )
        parts = build(cfg, **trainer_extras(cfg, run_dir, recorder))
        trainer, module = parts.trainer, parts.module
        summary.update(
            params=count_params(module.net),
            speed=parts.plan.describe(),
            **({"resumed_from": ckpt_path} if ckpt_path else {}),
        )
        trainer.fit(module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
        stopped = why_stopped(trainer, cfg.trainer.max_epochs, summary.data["epochs"])
        if cfg.data.get("val_from_train") and summary.data["epochs"]:
            (test,) = trainer.test(module, datamodule=parts.datamodule, ckpt_path="best", verbose=False)
            summary.update(test={"loss": test["test/loss"], "acc": test["test/acc"]})
    except BaseException as err:
        # Lightning turns Ctrl-C into sys.exit(1); the callbacks saw the KeyboardInterrupt itself.
        seen = recorder.exception if recorder is not None else None
        stop = seen if isinstance(err, SystemExit) and seen is not None else err
        if is_sigterm(stop):
            stop = interrupted("SIGTERM/SIGUSR1 after the current step", resume_command(run_dir, overrides))
        elif isinstance(stop_in_chain(stop), SignalStop):  # also when a library wrapped it (Hydra's instantiate)
            signame = stop_in_chain(stop).signame
            stop = interrupted(f"{signame} outside a training step", resume_command(run_dir, overrides))
        elif isinstance(stop, KeyboardInterrupt):
            stop = interrupted("Ctrl-C", resume_command(run_dir, overrides), EXIT_CTRL_C)
        outcome = outcome_of(stop)
        summary.finish(outcome.status, error=outcome.message)  # the status first, then anything optional
        if recorder is not None:
            recorder.close(trainer)
        if stop is err:
            raise
        raise stop from None
    outcome = outcome_of(stopped) if stopped is not None else COMPLETED
    summary.finish(outcome.status, error=outcome.message or None)
    if summary.unwritten is not None:  # the disk refused the final summary.json: never report it as done
        raise summary.unwritten
    recorder.close(trainer)
    if summary.writer:
        print_final(summary.data)
        if stopped is not None:
            log.warning("%s", outcome.message)
    return summary.data


def resume_command(run_dir: Path, overrides: list[str], mode: str | None = None) -> str:
    """The command that continues this run: its own overrides, ``resume``, its directory.

    ``resume=true`` where a ``last.ckpt`` is there to continue from, else ``resume=auto`` (a run stopped
    before its first epoch ended starts again; auto never starts over a recorded epoch).
    """
    mode = mode or ("true" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "auto")
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("resume", "hydra.run.dir")]
    words = ["python -m cifar_lab", *map(shlex.quote, keep), f"resume={mode}", shlex.quote(f"hydra.run.dir={run_dir}")]
    return " ".join(words)


def print_final(summary: dict[str, Any]) -> None:
    final, best = summary.get("final") or {}, summary.get("best") or {}
    tag = " [SYNTHETIC DATA]" if summary["data"]["synthetic"] else ""
    print(
        f"\n{summary['experiment']}{tag}: {summary['status']} after {summary['epochs']} "
        f"epoch{'' if summary['epochs'] == 1 else 's'} in "
        f"{summary['train_seconds']:.1f} s ({summary['seconds_per_epoch']} s/epoch) on {summary.get('device')}\n"
        f"  params {summary['params']:,} | final val acc {100 * final.get('val_acc', float('nan')):.2f}% | "
        f"best val acc {100 * best.get('val_acc', float('nan')):.2f}% (epoch {best.get('epoch')}) | "
        f"final train/val loss {final.get('train_loss', float('nan')):.4f} / "
        f"{final.get('val_loss', float('nan')):.4f}\n"
        f"  outputs: {summary['run_dir']}",
        flush=True,
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task: best val acc (a fraction) for sweepers; in a multirun a failed job returns None."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        # The scope imports Lightning, so a single-device run skips it (and reports config errors at once).
        with ddp_job_scope() if placement(cfg.trainer).several else contextlib.nullcontext():
            summary = run(cfg, run_dir)
    except BaseException as err:
        outcome = outcome_of(err)
        if not outcome.expected:  # a crash: summary.json says failed; the traceback is for a bug report
            if not multirun:
                raise
            log.exception(
                "job failed; the sweep goes on"
            )  # a raise here would end the sweep (Hydra's sweepers re-raise)
            return None
        if isinstance(err, SystemExit) and outcome.exit_code == 0:
            raise
        if outcome.exit_code == EXIT_OK:  # a resume with nothing left to train: the run is left as it was
            print(f"\n{outcome.message}\n", flush=True)
            recorded = RunSummary.reopen(run_dir)
            return ((recorded.data.get("best") or {}) if recorded else {}).get("val_acc")
        print_user_error(outcome.message)
        if multirun and outcome.status in ("failed", "diverged"):
            return None  # summary.json says so; the sweep goes on and its summary lists the job
        sys.exit(outcome.exit_code)
    best = summary.get("best") or {}
    return best.get("val_acc")


def main() -> None:
    message = unknown_options(sys.argv[1:])
    if message:
        print_user_error(message)
        sys.exit(EXIT_USER_ERROR)
    # Hydra writes .hydra/ into an existing hydra.run.dir before any of our code runs: check it first.
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    try:
        for folder in given:
            refuse_links(Path(folder))
    except UserError as err:
        print_user_error(err)
        sys.exit(EXIT_USER_ERROR)
    hydra_main()


if __name__ == "__main__":
    main()
