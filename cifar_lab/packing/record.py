"""Every member of a pack records itself exactly as a solo run does, with the solo run's own objects.

Each member has a :class:`MemberRun`: its ``RunSummary`` (the one owner of its summary.json), its
``Recorder`` (metrics.csv, TensorBoard, console line, curves), its TensorBoard logger and its two
``ModelCheckpoint`` callbacks (best and last). They are not copies: one :class:`PackRecorder`
callback drives them at the pack's hooks, handing each a :class:`MemberView`, the member's view of
the pack's trainer (its own epoch metrics, logger, datamodule, optimizer group, and a
``save_checkpoint`` that writes the member's solo-format checkpoint, :mod:`cifar_lab.packing.checkpoint`).
Everything else (epoch, global step, state, strategy) is the pack's trainer's, which is the
member's: the members train in lockstep.

A member whose epoch metrics are not finite (NaN/inf loss: the engine has already frozen it) is
finished as ``diverged`` with the solo run's message, gets no row for that epoch, and keeps its last
good checkpoint; the others go on. The fit stops when no member is left training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from cifar_lab.errors import Diverged, outcome_of, print_user_error
from cifar_lab.packing.checkpoint import member_checkpoint
from cifar_lab.recording import Recorder
from cifar_lab.resilience import DivergenceGuard, epoch_complete
from cifar_lab.rundir import RunDir
from cifar_lab.summary import RunSummary


@dataclass
class MemberRun:
    """One member's run: its directory, config and the objects that write its files."""

    index: int  # its place in the pack
    run_dir: Path
    cfg: DictConfig
    identity: dict[str, Any]  # resume.run_identity(cfg), stored in each checkpoint
    owner: RunDir
    summary: RunSummary
    recorder: Recorder
    logger: TensorBoardLogger
    checkpoints: list[ModelCheckpoint]
    resume_from: str | None = None  # its last.ckpt, when the pack resumes

    @property
    def training(self) -> bool:
        """Not finished yet (a diverged member is finished at once; the others when the fit ends)."""
        return not self.summary.finished


class MemberView:
    """Member k's view of the pack's trainer, for the member's Recorder and ModelCheckpoints.

    Its own: ``callback_metrics`` (its epoch metrics, named as a solo run logs them), ``logger`` and
    ``loggers`` (its TensorBoard), ``datamodule`` (its data), ``optimizers`` (its param group, for the
    divergence message) and ``save_checkpoint`` (its solo-format checkpoint). Everything else is
    read from the pack's trainer.
    """

    def __init__(self, trainer: L.Trainer, member: MemberRun, records: PackRecorder, metrics: dict) -> None:
        self._trainer, self._member, self._records, self._metrics = trainer, member, records, metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics

    @property
    def logger(self) -> TensorBoardLogger:
        return self._member.logger

    @property
    def loggers(self) -> list[TensorBoardLogger]:
        return [self._member.logger]

    @property
    def datamodule(self) -> Any:
        return self._trainer.datamodule.members[self._member.index]

    @property
    def optimizers(self) -> list[Any]:
        return [SimpleNamespace(param_groups=[self._trainer.optimizers[0].param_groups[self._member.index]])]

    def save_checkpoint(self, filepath: Any, weights_only: bool = False, storage_options: Any = None) -> None:
        self._records.save_member(self._trainer, self._member, filepath)


class PackRecorder(Checkpoint):
    """Drives every member's Recorder and ModelCheckpoints at the pack's hooks (see the module docstring).

    A ``Checkpoint`` subclass, like the Recorder, so that Lightning runs its ``on_train_epoch_end``
    after the LightningModule's (where the epoch metrics are computed), and adds no checkpoint
    callback of its own.
    """

    def __init__(self, members: Sequence[MemberRun]) -> None:
        self.members = list(members)
        self.dump: tuple[tuple[int, int], dict[str, Any]] | None = None  # the pack's checkpoint at (epoch, step)

    def view(self, trainer: L.Trainer, member: MemberRun, pl_module: Any = None) -> MemberView:
        metrics = pl_module.metrics_of(member.index) if pl_module is not None else {}
        return MemberView(trainer, member, self, metrics)

    def training(self) -> list[MemberRun]:
        return [m for m in self.members if m.training]

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for m in self.members:
            for cb in m.checkpoints:
                cb.setup(self.view(trainer, m), pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in self.members:
            m.recorder.on_fit_start(self.view(trainer, m), pl_module)
            # As Lightning logs a solo module's hyperparameters when its fit starts.
            m.logger.log_hyperparams(pl_module.member_hparams[m.index])
            m.logger.save()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in self.members:
            view = self.view(trainer, m)
            m.recorder.on_train_start(view, pl_module)
            for cb in m.checkpoints:
                cb.on_train_start(view, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for m in self.training():
            m.recorder.on_train_epoch_start(self.view(trainer, m), pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not epoch_complete(trainer):  # a part of an epoch, or a resume's replay of the last one: not recorded
            return
        alive = pl_module.net.alive.tolist()  # one host sync per epoch
        for m in self.training():
            view = self.view(trainer, m, pl_module)
            where = not_finite(view.callback_metrics, alive[m.index], trainer.current_epoch + 1)
            if where is not None:
                self.diverge(view, m, pl_module, where)
                continue
            m.recorder.on_train_epoch_end(view, pl_module)  # the row first, then the checkpoints (as solo)
            for cb in m.checkpoints:
                cb.on_train_epoch_end(view, pl_module)
        if not self.training():
            trainer.should_stop = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        for m in self.members:
            m.recorder.on_exception(self.view(trainer, m), pl_module, exception)

    def diverge(self, view: MemberView, member: MemberRun, pl_module: Any, where: str) -> None:
        """Finish a member as ``diverged`` (its state is frozen from the bad step on), as a solo run would stop."""
        with torch.no_grad():
            pl_module.net.alive[member.index] = False  # also when only a validation metric went bad
        outcome = outcome_of(Diverged(DivergenceGuard.message(view, where)))
        member.summary.finish(outcome.status, error=outcome.message)
        member.recorder.close(view)
        print_user_error(f"job in {member.run_dir}: {outcome.message}")

    # ------------------------------------------------------------------ checkpoints

    def save_member(self, trainer: L.Trainer, member: MemberRun, filepath: Any) -> None:
        """Write member's solo-format checkpoint (through the trainer's atomic checkpoint I/O)."""
        module = trainer.lightning_module
        callbacks = {cb.state_key: cb.state_dict() for cb in member.checkpoints}
        pack = self.pack_dump(trainer)
        callbacks.update({key: v for key, v in pack["callbacks"].items() if key != self.state_key})
        checkpoint = member_checkpoint(
            pack,
            member.index,
            module.net.member_state_dict(member.index),
            module.member_hparams[member.index],
            module.member_hparams_name,
            callbacks,
            {"config": member.identity, "data": trainer.datamodule.members[member.index].fingerprint},
        )
        trainer.strategy.save_checkpoint(checkpoint, filepath)

    def pack_dump(self, trainer: L.Trainer) -> dict[str, Any]:
        """The pack's own checkpoint dict (loops, optimizer, RNG), dumped once per (epoch, step) for all members."""
        at = (trainer.current_epoch, trainer.global_step)
        if self.dump is None or self.dump[0] != at:
            # Lightning's own dump, so that the loops' state is exactly what a solo run stores.
            self.dump = (at, trainer._checkpoint_connector.dump_checkpoint(weights_only=False))
        return self.dump[1]

    def state_dict(self) -> dict[str, Any]:
        return {"members": [{cb.state_key: cb.state_dict() for cb in m.checkpoints} for m in self.members]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for m, states in zip(self.members, state_dict["members"], strict=True):
            for cb in m.checkpoints:
                if cb.state_key in states:
                    cb.load_state_dict(states[cb.state_key])


def not_finite(metrics: dict[str, torch.Tensor], alive: bool, epoch: int) -> str | None:
    """Where a member's epoch went non-finite (as ``DivergenceGuard`` names it), or None."""
    if not alive or not torch.isfinite(metrics.get("train/loss", torch.tensor(0.0))):
        return f"the training loss in epoch {epoch}"
    for name, value in metrics.items():
        if not torch.isfinite(value).all():
            return f"{name} in epoch {epoch}"
    return None
