"""One run from its first line to its outcome, for a solo run (``train.py``) and each member of a pack
(``packing/run.py``): the run directory's lock, its ``RunSummary``, the admission checks, the trainer's
extras (our callbacks, the user's ``callbacks`` group, the logger), and what stopped a run."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cifar_lab.configs import debug_settings, flatten
from cifar_lab.errors import (
    COMPLETED,
    EXIT_CTRL_C,
    UserError,
    interrupted,
    is_sigterm,
    outcome_of,
    stop_in_chain,
)
from cifar_lab.files import read_metrics, significant
from cifar_lab.preemption import SignalStop, preemption_signals
from cifar_lab.presets import console_line, describe
from cifar_lab.resume import resume_path, run_identity
from cifar_lab.rundir import RunDir
from cifar_lab.schema import validate
from cifar_lab.summary import RunSummary, is_rank_zero

log = logging.getLogger("cifar_lab")


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as dotted keys with scalar values (``_target_`` and the like left out), for TensorBoard's HPARAMS."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True), private=False)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def make_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """The run's logger, from ``cfg.logger`` (tensorboard by default | csv | mlflow | wandb), writing in ``run_dir``."""
    from cifar_lab.build import instantiate
    from cifar_lab.sweep import ensure_sqlite_dir

    ensure_sqlite_dir(cfg.logger.get("tracking_uri"))  # logger=mlflow keeps its store in SQLite
    return instantiate(cfg.logger, save_dir=str(run_dir))


# What the module logs each epoch (task.ClassifierModule.log_stage), for a callback's ``monitor``.
LOGGED_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")


def user_callbacks(cfg: DictConfig) -> list[Any]:
    """The callbacks of the ``callbacks`` group (conf/callbacks/, ``+callbacks.<name>._target_=...``), built at
    admission, before anything is written: a node that names no class, a class that cannot be built or is no
    Lightning callback, or a ``monitor`` no run logs is a UserError.

    Only from the config this process composed (the command line and conf/): a config read back from a file
    never reaches here (a pack refuses callbacks, a run's identity leaves them out)."""
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:  # ~callbacks.<name> or callbacks.<name>=null: removed
            continue
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            raise UserError(
                f"callbacks.{name} has no _target_, so it names no callback. Give its class, e.g. +callbacks."
                f"{name}._target_=lightning.pytorch.callbacks.EarlyStopping, or remove it (~callbacks.{name})."
            )
        monitor = node.get("monitor")
        if monitor is not None and monitor not in LOGGED_METRICS:  # Lightning would stop the fit with a traceback
            raise UserError(
                f"callbacks.{name}.monitor={monitor} is no metric a run logs; choose one of: "
                f"{', '.join(LOGGED_METRICS)}."
            )
        from hydra.errors import InstantiationException
        from lightning.pytorch import Callback

        from cifar_lab.build import instantiate

        try:
            callback = instantiate(node)
        except InstantiationException as err:  # a class that is not there, or arguments it does not take
            raise UserError(f"callbacks.{name} could not be built: {err}. Fix its _target_ or arguments.") from None
        if not isinstance(callback, Callback):
            raise UserError(
                f"callbacks.{name}._target_={node._target_} builds a {type(callback).__name__}, not a Lightning "
                "callback (a subclass of lightning.pytorch.Callback). Name a callback class, or remove it "
                f"(~callbacks.{name})."
            )
        out.append(callback)
    return out


def trainer_extras(cfg: DictConfig, run_dir: Path, recorder: Any, callbacks: list[Any]) -> dict[str, Any]:
    """What a training run adds to ``cfg.trainer``: our callbacks and the user's (``callbacks``, built at
    admission), the logger, plugins."""
    from cifar_lab import resilience

    # The recorder writes an epoch's row before the checkpoints mark the epoch done, so a resume never misses a row.
    ours = [recorder, *resilience.checkpoints(run_dir), *resilience.callbacks(run_identity(cfg))]
    return trainer_args(cfg, run_dir, [*ours, *callbacks], make_logger(cfg, run_dir))


def trainer_args(
    cfg: DictConfig, root: Path, callbacks: list[Any], logger: Any, checkpoint_io: Any = None
) -> dict[str, Any]:
    """What every fit (a solo run's, a pack's) adds to ``cfg.trainer``: ``callbacks`` and ``logger``, a progress
    bar on a terminal only, the atomic checkpoint plugins (``checkpoint_io``: a pack's, see resilience.plugins)."""
    from cifar_lab import compat, resilience

    show_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    return {
        "callbacks": [*callbacks, *([compat.EpochBar()] if show_bar else [])],
        "logger": logger,
        "default_root_dir": str(root),
        "enable_progress_bar": show_bar,
        "enable_model_summary": False,
        "plugins": resilience.plugins(checkpoint_io),
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
) -> tuple[str | None, list[Any]]:
    """Decide whether this run may start in ``run_dir``; returns the checkpoint to resume from and the user's
    callbacks (built here, so that a bad one is refused like a bad value).

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
            callbacks = user_callbacks(cfg)
        except UserError as err:
            recorded = owner is not None and existing is None and summary.finish("failed", error=str(err))
            raise
        if existing and not cfg.get("resume"):
            raise UserError(
                f"{run_dir} already holds {existing}. Starting again there would overwrite it: continue it with "
                "resume=true (and its original settings), or start a new run elsewhere (leave hydra.run.dir out "
                "for a fresh directory)."
            )
        ckpt_path = resume_path(cfg, run_dir, overrides)
    except Exception as err:  # refused, a signal, or a bug or a damaged file that no check foresaw: not started
        if owner is not None and isinstance(err, SignalStop) and existing is None:
            summary.finish("interrupted", error=str(err))
        elif owner is not None and not recorded:
            owner.restore_hydra()  # the directory stays as it was
        raise
    if owner is not None:
        owner.snapshot_hydra()
        owner.clean()
    return ckpt_path, callbacks


def summary_fields(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """What summary.json says about a run before it trains (a packed member's says the same)."""
    synthetic = cfg.data.source == "synthetic"
    root = OmegaConf.select(cfg, "data.root", throw_on_missing=False)
    return {
        "experiment": cfg.name,
        "composed": describe(cfg),  # the preset it is, or the closest one and how it differs (presets.py)
        "params": None,
        "run_dir": str(run_dir),
        "overrides": overrides,
        "data": {"source": cfg.data.source, "root": None if root == "???" else root, "synthetic": synthetic},
        "debug": debug_settings(cfg.trainer),  # fast_dev_run, limit_*_batches, overfit_batches: not a result
    }


def run_owned(cfg: DictConfig, run_dir: Path, owner: RunDir | None) -> dict[str, Any]:
    synthetic = cfg.data.source == "synthetic"
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    fields = summary_fields(cfg, run_dir, overrides)
    summary = RunSummary(run_dir, fields, writer=owner is not None, write_now=False)
    ckpt_path, callbacks = admit(cfg, run_dir, owner, summary, overrides)
    recorder, trainer = None, None
    try:
        summary.set_rows(read_metrics(run_dir / "metrics.csv"))  # a resumed run's epochs, from its first write
        from cifar_lab.build import build
        from cifar_lab.models import count_params
        from cifar_lab.recording import Recorder, versions
        from cifar_lab.resilience import why_stopped

        summary.update(versions=versions())
        if owner is not None:
            if line := console_line(fields["composed"]):
                log.info("%s", line)
            log.info("run directory: %s", run_dir)
            log.info("if it stops, continue it with: %s", resume_command(run_dir, overrides, "true"))
        recorder = Recorder(run_dir, summary, flat_hparams(cfg), synthetic)
        if synthetic:
            log.warning(
                "SYNTHETIC DATA: this run trains on generated images, not CIFAR-10. Its numbers are for testing only."
            )
        parts = build(cfg, **trainer_extras(cfg, run_dir, recorder, callbacks))
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
            summary.update(test={"loss": significant(test["test/loss"]), "acc": significant(test["test/acc"])})
    except BaseException as err:
        stop = what_stopped(
            err, recorder.exception if recorder is not None else None, resume_command(run_dir, overrides)
        )
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


def what_stopped(err: BaseException, seen: BaseException | None, resume: str) -> BaseException:
    """The exception that says why a run (or a pack) stopped, for ``outcome_of``: a signal or Ctrl-C becomes an
    ``Interrupted`` that names ``resume`` (how to continue); ``seen`` is what the callbacks saw (Lightning
    turns Ctrl-C into ``sys.exit(1)``)."""
    stop = seen if isinstance(err, SystemExit) and seen is not None else err
    if is_sigterm(stop):
        return interrupted("SIGTERM/SIGUSR1 after the current step", resume)
    if isinstance(stop_in_chain(stop), SignalStop):  # also when a library wrapped it (Hydra's instantiate)
        return interrupted(f"{stop_in_chain(stop).signame} outside a training step", resume)
    if isinstance(stop, KeyboardInterrupt):
        return interrupted("Ctrl-C", resume, EXIT_CTRL_C)
    return stop


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
    debug = summary.get("debug") or []
    tag += " [DEBUG RUN]" if debug else ""
    print(
        f"\n{summary['experiment']}{tag}: {summary['status']} after {summary['epochs']} "
        f"epoch{'' if summary['epochs'] == 1 else 's'} in "
        f"{summary['train_seconds']:.1f} s ({summary['seconds_per_epoch']} s/epoch) on {summary.get('device')}\n"
        f"  params {summary['params']:,} | final val acc {100 * final.get('val_acc', float('nan')):.2f}% | "
        f"best val acc {100 * best.get('val_acc', float('nan')):.2f}% (epoch {best.get('epoch')}) | "
        f"final train/val loss {final.get('train_loss', float('nan')):.4f} / "
        f"{final.get('val_loss', float('nan')):.4f}\n"
        f"  outputs: {summary['run_dir']}"
        + (
            f"\n  debug run ({', '.join(debug)}): a smoke test, not a result; the report leaves it out "
            "of its results (python -m cifar_lab.report --include-debug shows it)"
            if debug
            else ""
        ),
        flush=True,
    )
