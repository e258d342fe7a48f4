"""Never lose a run: atomic checkpoints, exact resume (RNG state, run identity, whole epochs only, a run
directory that may move), divergence, and what ended a fit early. (SIGUSR1 and SIGTERM: :mod:`cifar_lab.preemption`.)
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cifar_lab import compat
from cifar_lab.errors import Diverged, Stopped, UserError
from cifar_lab.files import atomic_write
from cifar_lab.resume import IDENTITY_KEY

log = logging.getLogger("cifar_lab")

# --------------------------------------------------------------------------- checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints serialised in memory, written to a temp file, flushed to disk, then renamed over the target.

    Serialising first keeps torch's own writer away from the disk: a full disk then raises a plain
    OSError naming the file (``errors.io_error``), not a stream-writer error. Loading is always
    ``weights_only=True``: a checkpoint holds tensors and plain types only, and unpickling anything
    else would run code from the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_write(path, "wb", fsync=True) as fh:
            fh.write(buffer.getbuffer())

    def remove_checkpoint(self, path: Any) -> None:
        """Delete one checkpoint file, never a folder (Lightning's removes recursively) nor a URL."""
        if "://" in str(path):
            log.warning("not removing %s: a checkpoint is a local file", path)
            return
        path = Path(path)
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.exists():
            log.warning("not removing %s: it is not a checkpoint file", path)

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise UserError(
                f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); it is truncated or corrupt. "
                "Checkpoints are written atomically, so this file was damaged after it was written (a full disk, "
                "a copy that stopped early). Restore it from a backup, or delete the run directory's checkpoints "
                "and start the run again without resume."
            ) from None


def epoch_complete(trainer: L.Trainer) -> bool:
    """Whether the training epoch now ending was trained here, all of its batches.

    Not so for a part of an epoch (``trainer.max_steps`` or ``trainer.max_time`` can end one midway),
    nor for Lightning's replay of the end of a checkpoint's last epoch (a resume with ``max_steps``
    set calls ``on_train_epoch_end`` again, with no batch trained). Neither is recorded (no metrics.csv
    row, TensorBoard point or checkpoint), so the run's epochs stay whole and a resume repeats a cut
    epoch exactly, as after a SIGTERM.
    """
    return not compat.fit_restarting(trainer) and compat.batches_trained(trainer) >= trainer.num_training_batches


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for a run directory: whole epochs only, and a directory that may move.

    Lightning's own ``load_state_dict`` drops the best score (keeping only a path into the old folder)
    when the checkpoint folder is not where the state was saved: in a moved or copied run directory, the
    next epoch would then replace ``best.ckpt`` whatever its score. Here the stored paths are moved to
    this folder first, so the state loads whole.
    """

    @property
    def state_key(self) -> str:
        # The key of a plain ModelCheckpoint: checkpoints from before this class, and packs', load into it.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(relocated(state_dict, self.dirpath))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if epoch_complete(trainer):
            super().on_train_epoch_end(trainer, pl_module)


def relocated(state: dict[str, Any], dirpath: str | None) -> dict[str, Any]:
    """A ModelCheckpoint's state with its paths moved from the folder it was saved in to ``dirpath``.

    Only a plain path inside that folder is kept (``..``, a URL such as ``local:///elsewhere`` or another
    folder is dropped): Lightning deletes the files these paths name when a better epoch replaces them,
    so a path from a file someone sent must never name anything outside this run's checkpoints.
    """
    saved = state.get("dirpath")
    if not dirpath or not isinstance(saved, str) or not saved:
        return {**state, "best_model_path": "", "kth_best_model_path": "", "last_model_path": "",
                "best_k_models": {}} if dirpath else state  # fmt: skip
    base = os.path.normpath(saved)

    def moved(path: Any) -> str:
        if not isinstance(path, str) or not path or "://" in path or "\x00" in path:
            return ""
        inside = os.path.relpath(os.path.normpath(path), base)
        if inside == "." or inside.startswith("..") or os.path.isabs(inside):
            return ""
        return str(Path(dirpath) / inside)

    out = {**state, "dirpath": dirpath}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = moved(out[key])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {moved(k): v for k, v in out["best_k_models"].items() if moved(k)}
    elif "best_k_models" in out:
        out["best_k_models"] = {}
    return out


def checkpoints(run_dir: Path) -> list[ModelCheckpoint]:
    """``checkpoints/best.ckpt`` (by val/acc) and ``checkpoints/last.ckpt`` (every epoch, to resume from).

    Two callbacks, because one ``ModelCheckpoint(save_last=True, monitor=...)`` writes ``last`` only
    in an epoch where the monitored metric improved (Lightning 2.6): once val accuracy plateaus,
    ``last.ckpt`` would go stale. The second has no monitor, so it saves at every epoch end.
    """
    common = dict(
        dirpath=run_dir / "checkpoints", save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False
    )
    best = RunCheckpoint(filename="best", monitor="val/acc", mode="max", auto_insert_metric_name=False, **common)
    return [best, RunCheckpoint(filename="last", monitor=None, **common)]


def why_stopped(trainer: L.Trainer, max_epochs: int, epochs: int) -> Stopped | None:
    """What ended a fit that returned with fewer than ``max_epochs`` recorded epochs; None if it trained them all."""
    if epochs >= max_epochs:
        return None
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    early = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping) and cb.stopping_reason_message), None)
    whole = f"{epochs} whole epoch{'' if epochs == 1 else 's'}"
    kept = f" A part of an epoch is never recorded: metrics.csv and checkpoints/last.ckpt hold the {whole}."
    if trainer.fast_dev_run:
        cause, hint = f"trainer.fast_dev_run={trainer.fast_dev_run} (a smoke test: a few batches, no checkpoints)", ""
    elif trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        cause = f"trainer.max_steps={trainer.max_steps} reached (optimizer steps)"
        hint = kept + " trainer.max_steps cannot change on resume (a learning-rate schedule may depend on it)."
    elif timer is not None and (timer.time_remaining() or 0.0) <= 0:
        cause = f"trainer.max_time reached ({timer.time_elapsed():.0f} s of training)"
        hint = kept + " Continue it with resume=true and a larger trainer.max_time (or trainer.max_time=null)."
    elif early is not None:  # a user's callbacks.<name>: the run did what it was told, as with max_time
        cause = f"EarlyStopping ({early.stopping_reason_message.rstrip('. ')})"
        hint = f" checkpoints/last.ckpt holds its {whole}; resume=true continues it (callbacks may change on resume)."
    else:
        cause, hint = "Lightning ended the fit early (trainer.should_stop)", kept
    return Stopped(
        f"stopped: {cause} after {epochs} epoch{'' if epochs == 1 else 's'} of trainer.max_epochs={max_epochs}, "
        f"so the run is not completed.{hint}"
    )


def plugins(checkpoint_io: AtomicCheckpointIO | None = None) -> list[Any]:
    """Trainer plugins: atomic checkpoints (``checkpoint_io``: a pack's) and, on SLURM, no auto-requeue (see
    docs/resume.md)."""
    out: list[Any] = [checkpoint_io or AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # Lightning's auto-requeue saves a mid-epoch hpc checkpoint that cannot be resumed exactly.
        out.append(SLURMEnvironment(auto_requeue=False))
    return out


# --------------------------------------------------------------------------- callbacks


class RngState(L.Callback):
    """Saves and restores the global RNG states with each checkpoint (dropout masks, augmentation)."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, keys.tolist(), pos, has_gauss, gauss],  # plain types load with weights_only
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            torch.set_rng_state(state_dict["torch"])
            if state_dict["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state_dict["cuda"])
            name, keys, pos, has_gauss, gauss = state_dict["numpy"]
            np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
            version, internal, gauss_next = state_dict["python"]
            random.setstate((version, tuple(internal), gauss_next))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a damaged or edited checkpoint
            raise UserError(
                f"the checkpoint's random-number state is damaged ({type(err).__name__}: {err}), so the run cannot "
                "continue exactly where it stopped. Restore checkpoints/last.ckpt from a backup, or start a new run "
                "without resume."
            ) from None


class DivergenceGuard(L.Callback):
    """Raises :class:`Diverged` when the training loss or an epoch metric is not finite.

    Each step ORs ``~isfinite(loss)`` into a flag on the device (no host sync); the flag is read
    every ``check_every`` steps and at the end of the epoch, before the epoch's row, curves and
    checkpoint are written, so a NaN never reaches metrics.csv, TensorBoard or ``last.ckpt``.
    A fast-path step returns the loss of the last of its K batches only; a non-finite loss poisons
    the weights, so the losses after it stay non-finite and the flag still trips.
    """

    def __init__(self, check_every: int = 20) -> None:
        self.check_every = check_every
        self.bad: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self.bad = bad if self.bad is None else self.bad | bad
        if (batch_idx + 1) % self.check_every == 0:
            self.check(trainer, f"the training loss in epoch {trainer.current_epoch + 1} (step {trainer.global_step})")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        self.check(trainer, f"the training loss in epoch {epoch}")
        if not epoch_complete(trainer):  # a replayed epoch end has no metrics of its own (nan: no batch)
            return
        where = not_finite(trainer.callback_metrics, epoch)
        if where is not None:
            raise Diverged(self.message(trainer, where))

    def check(self, trainer: L.Trainer, where: str) -> None:
        if self.bad is not None and bool(self.bad):
            raise Diverged(self.message(trainer, where))

    @staticmethod
    def message(trainer: L.Trainer, where: str) -> str:
        return divergence_message(where, trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None)


def not_finite(metrics: dict[str, torch.Tensor], epoch: int) -> str | None:
    """Which of an epoch's metrics is NaN or infinite, as the divergence message names it; None if none is."""
    for name, value in metrics.items():
        if not torch.isfinite(value).all():
            return f"{name} in epoch {epoch}"
    return None


def divergence_message(where: str, lr: float | None) -> str:
    """A diverged run's paragraph (its own learning rate in the hint); a packed member's too."""
    hint = f"optimizer.lr={lr:g}; try a smaller one such as optimizer.lr={lr / 10:g}" if lr else "optimizer.lr"
    return (
        f"training diverged: {where} is NaN or infinite, so the run stopped there. The usual cause is a "
        f"learning rate too high for this model and batch size: {hint}. A large l2, or fp16 overflow with "
        "trainer.precision=16-mixed, can do the same. No curve point was recorded for the diverged epoch; "
        "the earlier epochs are in metrics.csv."
    )


class RunIdentity(L.Callback):
    """Writes the run's identity into every checkpoint: its config (as ``resume.run_identity`` gives it)
    and the fingerprint of its input data. A resume compares both (``cifar_lab.resume``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        data = getattr(trainer.datamodule, "fingerprint", None)
        checkpoint[IDENTITY_KEY] = {"config": self.config, "data": data}


def callbacks(identity: dict[str, Any]) -> list[L.Callback]:
    return [RngState(), DivergenceGuard(), RunIdentity(identity)]
