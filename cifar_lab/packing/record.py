"""Every member of a pack records itself as a solo run does, with no view of the pack's trainer.

:class:`MemberRecords` feeds each member's ``EpochWriter`` its own metrics, finishes a member whose
epoch is not finite as ``diverged`` (the solo rule and message), chooses its files as its two
ModelCheckpoints would, and saves once; ``MemberCheckpointIO`` writes the members' solo-format files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from cifar_lab import compat
from cifar_lab.errors import Diverged, outcome_of, print_user_error
from cifar_lab.packing.checkpoint import PLAN_KEY
from cifar_lab.recording import EpochWriter, device_name
from cifar_lab.resilience import divergence_message, epoch_complete, not_finite
from cifar_lab.resume import IDENTITY_KEY, run_identity
from cifar_lab.rundir import RunDir
from cifar_lab.summary import RunSummary


@dataclass
class MemberRun:
    """One member's run: its directory, config and the objects that write its files."""

    index: int  # its place in the pack
    run_dir: Path
    cfg: DictConfig
    owner: RunDir
    summary: RunSummary
    writer: EpochWriter  # its logger attached
    checkpoints: list[ModelCheckpoint]  # best and last (resilience.checkpoints): their states, kept here
    resume_from: str | None = None  # its last.ckpt, when the pack resumes
    files: list[str] = field(default_factory=list)  # the checkpoint files this epoch writes

    def plan(self, score: torch.Tensor | None) -> None:
        """This epoch's files and checkpoint states, as its two ModelCheckpoints (save_top_k=1) would leave
        them: best when ``score`` (its val/acc) beats its best so far, last always."""
        best, last = self.checkpoints
        self.files = []
        if score is not None and (not best.best_k_models or bool(score > best.kth_value.to(score.device))):
            path = str(Path(best.dirpath) / "best.ckpt")
            best.current_score = best.best_model_score = best.kth_value = score
            best.best_k_models, best.best_model_path, best.kth_best_model_path = {path: score}, path, path
            self.files.append(path)
        last.best_model_path = str(Path(last.dirpath) / "last.ckpt")
        self.files.append(last.best_model_path)


class MemberRecords(compat.AfterModuleCallback):
    """Records every member at the pack's hooks, after the module's (as the Recorder). Its state, the
    members' ModelCheckpoint states, lives in their checkpoints (``pack_checkpoint`` hands it back)."""

    def __init__(self, members: Sequence[MemberRun]) -> None:
        self.members = list(members)
        self.saving: list[MemberRun] = []
        self.epoch_t0 = 0.0
        self.exception: BaseException | None = None  # what stopped fit, as Lightning saw it

    def training(self) -> list[MemberRun]:
        return [m for m in self.members if not m.summary.finished]  # diverged: at once; the others: after the fit

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in self.members:
            m.summary.update(device=device_name(trainer.strategy.root_device))
            # As Lightning logs a solo module's hyperparameters when its fit starts.
            m.writer.logger.log_hyperparams(pl_module.member_hparams[m.index])
            m.writer.logger.save()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in self.members:
            m.writer.start(compat.epoch_index(trainer), trainer.datamodule.members[m.index].describe())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not epoch_complete(trainer):  # a part of an epoch, or a resume's replay of the last one: not recorded
            return
        seconds, epoch = time.perf_counter() - self.epoch_t0, trainer.current_epoch + 1
        alive = pl_module.net.alive.tolist()  # one host sync per epoch
        groups = trainer.optimizers[0].param_groups
        self.saving = []
        for m in self.training():
            metrics, lr = pl_module.metrics_of(m.index), groups[m.index]["lr"]
            where = not_finite(metrics, epoch) if alive[m.index] else f"the training loss in epoch {epoch}"
            if where is not None:
                self.diverge(m, pl_module, divergence_message(where, lr))
                continue
            if "val/acc" in metrics and "train/loss" in metrics:
                # the row first, then the checkpoints (as solo); a pack's lr is constant (scheduler=none), so,
                # as a solo run's at a constant lr, not logged
                m.writer.write(metrics, epoch, seconds, None)
            if not trainer.fast_dev_run:  # a smoke test writes no checkpoints, as a solo run's ModelCheckpoint
                m.plan(metrics.get("val/acc"))
                self.saving.append(m)
        if self.saving:  # one dump of the pack; MemberCheckpointIO writes the planned member files instead
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "members.ckpt", weights_only=False)
            self.saving = []
        if not self.training():
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if not self.saving:  # a save of ours only: any other is the pack's own checkpoint
            return
        name = pl_module.name_of_hparams
        checkpoint[PLAN_KEY] = [
            {"index": m.index, "files": m.files, "own": {
                "callbacks": {cb.state_key: cb.state_dict() for cb in m.checkpoints},
                "hyper_parameters": pl_module.member_hparams[m.index],
                "hparams_name": name,  # as a solo checkpoint: None when it saved none
                IDENTITY_KEY: {"config": run_identity(m.cfg), "data": trainer.datamodule.members[m.index].fingerprint},
            }}
            for m in self.saving
        ]  # fmt: skip

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception

    def diverge(self, member: MemberRun, pl_module: Any, message: str) -> None:
        """Finish a member as ``diverged`` (its state frozen from the bad step on), as a solo run would stop."""
        with torch.no_grad():
            pl_module.net.alive[member.index] = False  # also when only a validation metric went bad
        outcome = outcome_of(Diverged(message))
        member.summary.finish(outcome.status, error=outcome.message)
        member.writer.close()
        print_user_error(f"job in {member.run_dir}: {outcome.message}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for m, states in zip(self.members, state_dict["members"], strict=True):
            for cb in m.checkpoints:
                if cb.state_key in states:
                    cb.load_state_dict(states[cb.state_key])
