"""PackedModule: the members' ClassifierModules trained as one LightningModule, mirroring its steps.

The classic path uses Lightning's automatic optimisation, with the isolation of a diverging member
around its optimizer step; the fast path runs K steps per Lightning step in a ``PackedStepEngine``.
Metrics are (N,) per-member sums on the device, read once per epoch, computed as the solo run's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from cifar_lab import compat
from cifar_lab.fast import advance_global_step
from cifar_lab.packing.checkpoint import RNG_KEY
from cifar_lab.packing.loss import PackedLoss, member_losses
from cifar_lab.packing.stack import PackedNet
from cifar_lab.packing.step import PackedStepEngine
from cifar_lab.packing.variants import make_engine, make_packed_net
from cifar_lab.plan import SpeedPlan, optimizer_capability
from cifar_lab.task import ClassifierModule


class PackedModule(L.LightningModule):
    """N members as one vmapped model, each with its own weights, L2, optimiser group and hyperparameters;
    ``net.alive[k]`` turns False when member k diverges."""

    def __init__(
        self, members: Sequence[ClassifierModule], plan: SpeedPlan, rng_states: Sequence[torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        self.net: PackedNet = make_packed_net([m.net for m in members], plan.pack_conv, rng_states=rng_states)
        self.loss = PackedLoss([m.l2 for m in members])
        self.factories = [m.optimizer_factory for m in members]
        self.member_hparams = [dict(m.hparams) for m in members]  # what each member's checkpoint stores
        self.name_of_hparams = compat.hparams_name(members[0])  # as save_hyperparameters named them
        self.plan = plan
        self.automatic_optimization = not plan.fast
        self.engine: PackedStepEngine | None = None
        # "train"/"val" -> [loss sum (N,) float64, correct (N,), images]
        self.sums: dict[str, list[Any]] = {"train": [0.0, 0, 0], "val": [0.0, 0, 0]}
        self.epoch_metrics: dict[str, torch.Tensor] = {}  # "val/acc" -> (N,), after each epoch
        self.step_out: tuple[torch.Tensor, ...] = ()  # the classic path's forward, for optimizer_step

    def accumulate(self, stage: str, data_loss: torch.Tensor, preds: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: (N,) data losses, (N, B) predictions, labels (N, B) or shared (B,). No host sync."""
        sums = self.sums[stage]
        sums[0] = sums[0] + data_loss.detach().to(torch.float64) * y.shape[-1]  # per image, as MeanMetric
        sums[1] = sums[1] + (preds == y.expand(preds.shape)).sum(-1)
        sums[2] += y.shape[-1]

    def stage_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        loss_sum, correct, images = self.sums[stage]
        self.sums[stage] = [0.0, 0, 0]
        if not images:
            return {}
        count = torch.full_like(correct, images, dtype=torch.float32)  # a tensor divisor, as torchmetrics divides
        return {f"{stage}/loss": loss_sum / images, f"{stage}/acc": correct.float() / count}

    def metrics_of(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's epoch metrics, named as a solo run logs them (``trainer.callback_metrics``)."""
        return {name: values[k] for name, values in self.epoch_metrics.items()}

    def on_train_epoch_end(self) -> None:
        self.epoch_metrics.update(self.stage_metrics("train"))

    def on_validation_epoch_end(self) -> None:
        self.epoch_metrics.update(self.stage_metrics("val"))  # a member's best val/acc: its EpochWriter's rows

    def engine_for(self, optimizer: Any) -> PackedStepEngine:
        if self.engine is None:  # after a resume restored the optimiser state: priming leaves it alone
            opt = getattr(optimizer, "optimizer", optimizer)
            self.engine = make_engine(self.net, opt, self.loss, self.plan, self.plan.pack_isolation)
        return self.engine

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if not self.automatic_optimization:
            return self.fast_training_step(*batch)
        x, y = batch
        assert self.engine is not None  # made by optimizer_step, which runs this step inside its closure
        objectives, data, logits = self.engine.losses(x, y)
        self.step_out = (objectives.detach(), data.detach(), logits.detach().argmax(-1), y)
        return objectives.sum()  # a sum: each member's gradient is its own objective's

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step (the closure runs ``training_step`` and backward), with the members' isolation."""
        engine = self.engine_for(optimizer)
        saved = engine.snapshot()
        optimizer.step(closure=optimizer_closure)
        objectives, data, preds, y = self.step_out
        self.accumulate("train", engine.settle(saved, objectives, data), preds, y)

    def fast_training_step(self, xs: Any, ys: list[torch.Tensor]) -> None:
        """K optimizer steps in the engine; Lightning sees one step and counts K."""
        engine = self.engine_for(self.optimizers())
        for (data, preds), y in zip(engine.run(xs, ys), ys):
            self.accumulate("train", data, preds, y)
        advance_global_step(self.trainer, len(ys))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = self.net.rng.states()  # each member's file gets its own (packing.checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:  # a resuming pack: each member's generator where its checkpoint left it
            self.net.rng.set_states(checkpoint[RNG_KEY])

    def on_fit_start(self) -> None:
        self.engine = None  # a CUDA graph must not outlive the fit that captured it

    def teardown(self, stage: str) -> None:
        self.engine = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for x, y in zip(*batch) if self.plan.fast else (batch,):  # the fast path's chunk: K batches
            logits = self.net(x)  # (N, B, classes), from a shared (B, ...) or per-member (N, B, ...) batch
            self.accumulate("val", member_losses(logits, y), logits.argmax(-1), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One param group per member with its options; the first member's class serves all (grouping made
        them equal). Off the CPU, Adam/AdamW keep their step on the device for the snapshot (``capturable``)."""
        groups = []
        for member, factory in zip(self.net.members, self.factories):
            group = {"params": list(member.parameters()), **factory.keywords}
            if optimizer_capability(factory.func).device_step and self.plan.device != "cpu":
                group["capturable"] = True
            groups.append(group)
        return self.factories[0].func(groups)
