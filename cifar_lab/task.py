"""ClassifierModule: the one LightningModule that wraps any architecture."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cifar_lab.errors import UserError
from cifar_lab.fast import StepEngine, advance_global_step
from cifar_lab.plan import SpeedPlan
from cifar_lab.trusted import (
    UntrustedConfig,
    instantiate,
    refusal,
    trusted_header,
    trusted_hparams,
)

STAGES = ("train", "val", "test")
Batch = tuple[torch.Tensor, torch.Tensor]


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Σ‖w‖² over every trainable parameter (biases included, as in the seed), each shared tensor once."""
    return torch.stack([p.pow(2).sum() for p in model.parameters() if p.requires_grad]).sum()


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier with an optional explicit L2 penalty ``l2 * Σ‖w‖²`` in the loss.

    The speed plan decides the training step once, at construction: Lightning's automatic
    optimization (classic path), or chunks of K batches stepped by a :class:`StepEngine`
    (fast path). Metrics accumulate on the device (no host sync per step) and are logged once per
    epoch as ``{train,val,test}/{loss,acc}`` plus ``val/acc_best``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        l2: float = 0.0,
        num_classes: int = 10,
        plan: SpeedPlan | None = None,
        classes: list[str] | None = None,
        scheduler: dict[str, Any] | None = None,
    ) -> None:
        """From a run's configs (model, optimizer and scheduler nodes as Hydra composed them, or as a checkpoint
        stored them), each rebuilt from ``conf/`` and checked (``cifar_lab.trusted``: UntrustedConfig) before
        anything is built, and saved as hyperparameters, so that ``load_from_checkpoint`` rebuilds the module
        with no config at hand. The speed plan is how a run trained, not what: it is not saved."""
        if any(isinstance(arg, (nn.Module, partial)) for arg in (net, optimizer)):
            raise TypeError("ClassifierModule takes configs; ClassifierModule.from_modules takes a built network")
        super().__init__()
        args = {"net": net, "optimizer": optimizer, "l2": l2, "num_classes": num_classes, "classes": classes,
                "scheduler": scheduler}  # fmt: skip
        checked = trusted_hparams(args)
        self.save_hyperparameters(args)
        self.assemble(instantiate(checked["net"], num_classes=num_classes), instantiate(checked["optimizer"]),
                      l2, num_classes, plan, classes, checked["scheduler"])  # fmt: skip

    @classmethod
    def from_modules(
        cls, net: nn.Module, optimizer: partial, l2: float = 0.0, num_classes: int = 10, plan: SpeedPlan | None = None,
        classes: list[str] | None = None,
    ) -> ClassifierModule:  # fmt: skip
        """Around a network and an optimizer factory built in code (tests, notebooks). It saves no
        hyperparameters, so its checkpoints hold weights that only the same code can load."""
        module = cls.__new__(cls)
        super(ClassifierModule, module).__init__()
        module.assemble(net, optimizer, l2, num_classes, plan, classes, None)
        return module

    def assemble(
        self, net: nn.Module, optimizer: partial, l2: float, num_classes: int, plan: SpeedPlan | None,
        classes: list[str] | None, scheduler: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        self.classes = classes or [str(i) for i in range(num_classes)]
        self.scheduler_cfg = scheduler if scheduler and scheduler.get("name", "none") != "none" else None
        self.plan = plan or SpeedPlan()
        self.net = net.to(memory_format=torch.channels_last) if self.plan.channels_last else net
        if self.plan.input_dtype == torch.float64:  # now, not at fit start: a resume must not round weights to float32
            self.net.double()
        # A compiled function, not a module: checkpoints keep the plain ``net.*`` keys.
        self.compiled_forward = torch.compile(self.net.forward) if self.plan.compile else None
        self.optimizer_factory = optimizer
        self.l2 = l2
        self.automatic_optimization = not self.plan.fast
        # ModuleDict keys may not shadow nn.Module attributes such as ``train``, hence the suffix.
        self.loss_mean = nn.ModuleDict({f"{s}_": MeanMetric(nan_strategy="disable") for s in STAGES})
        self.keep_loss_dtype()
        self.acc = nn.ModuleDict(
            {f"{s}_": MulticlassAccuracy(num_classes, average="micro", validate_args=False) for s in STAGES}
        )
        self.val_acc_best = MaxMetric(nan_strategy="disable")
        self.engine: StepEngine | None = None

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None, strict: bool | None = None,
        **kwargs: Any,
    ) -> ClassifierModule:  # fmt: skip
        """The module a checkpoint of ours holds, loaded ``weights_only``, its arguments checked by
        ``cifar_lab.trusted`` and built here, not by Lightning's loader (which would also read the older
        ``hparams``/``module_arguments`` entries and hand an ``_instantiator`` the configs). ``kwargs``
        replace stored arguments. A refused checkpoint is one UntrustedConfig naming the file; weights that do
        not fit the stored model are load_state_dict's RuntimeError."""
        if hparams_file is not None:  # a second file of configs: the checkpoint holds its own
            raise UserError(
                "ClassifierModule.load_from_checkpoint takes no hparams_file: the checkpoint holds its configs."
            )
        raw = torch.load(checkpoint_path, map_location=map_location or "cpu", weights_only=True)
        try:
            return cls.from_checkpoint(raw, strict=strict, **kwargs)
        except UntrustedConfig as err:
            raise refusal(checkpoint_path, err) from None

    @classmethod
    def from_checkpoint(cls, raw: Any, strict: bool | None = None, **kwargs: Any) -> ClassifierModule:
        """The module a checkpoint read with ``weights_only`` holds (``raw``), every part of it checked by
        ``cifar_lab.trusted`` before it is built (UntrustedConfig if it is not what a run writes); weights that
        do not fit the stored model are load_state_dict's RuntimeError."""
        trusted_header(raw)
        module = cls(**{**trusted_hparams(raw.get("hyper_parameters")), **kwargs})
        module.load_state_dict(raw["state_dict"], strict=True if strict is None else strict)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if self.compiled_forward is None else self.compiled_forward(x)

    def keep_loss_dtype(self) -> None:
        """A float64 run (trainer.precision=64-true) averages its losses in float64, not float32."""
        if self.plan.input_dtype == torch.float64:
            for metric in self.loss_mean.values():
                metric.set_dtype(torch.float64)

    def _apply(self, fn: Any, recurse: bool = True) -> ClassifierModule:
        # torchmetrics resets a metric's input dtype to float32 on every move (.to(device)), whatever its states.
        super()._apply(fn, recurse)
        if hasattr(self, "loss_mean"):
            self.keep_loss_dtype()
        return self

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to minimise, data loss to report): the penalty is optimised but not reported."""
        data_loss = F.cross_entropy(logits, y)
        if self.l2 > 0:
            return data_loss + self.l2 * l2_penalty(self.net), data_loss
        return data_loss, data_loss

    def update_metrics(self, stage: str, data_loss: torch.Tensor, preds: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate on the device: no host sync."""
        # One value per image (a view, no copy): the epoch loss is the per-image mean, the last partial
        # batch weighted by its size. (MeanMetric's ``weight`` is ignored with nan_strategy="disable".)
        self.loss_mean[f"{stage}_"].update(data_loss.detach().expand(y.shape[0]))
        self.acc[f"{stage}_"].update(preds, y)

    def model_step(self, stage: str, batch: Batch) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        objective, data_loss = self.loss_fn(logits, y)
        self.update_metrics(stage, data_loss, logits.detach().argmax(1), y)
        return objective

    def batches(self, batch: Any) -> Iterable[Batch]:
        """The batches in what a loader served: a chunk of K on the fast path, else one."""
        return zip(*batch) if self.plan.fast else (batch,)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            return self.model_step("train", batch)
        return self.fast_training_step(*batch)

    def fast_training_step(self, xs: Any, ys: list[torch.Tensor]) -> torch.Tensor:
        """K optimizer steps in the engine; Lightning sees one step and counts K."""
        if self.engine is None:
            per_step = self.scheduler_cfg is not None and self.scheduler_cfg["interval"] == "step"
            scheduler = self.lr_schedulers() if per_step else None  # manual optimization: we step it
            self.engine = StepEngine(self, self.optimizers().optimizer, self.loss_fn, self.plan, scheduler=scheduler)
        outputs = self.engine.run(xs, ys)
        for (data_loss, preds), y in zip(outputs, ys):
            self.update_metrics("train", data_loss, preds, y)
        advance_global_step(self.trainer, len(ys))
        return outputs[-1][0]

    def on_fit_start(self) -> None:
        self.engine = None  # a CUDA graph must not outlive the fit that captured it (grads are reset between fits)

    def teardown(self, stage: str) -> None:
        self.engine = None

    # ------------------------------------------------------------------ evaluation

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        for b in self.batches(batch):
            self.model_step("val", b)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        for b in self.batches(batch):
            self.model_step("test", b)

    # ------------------------------------------------------------------ epoch ends

    def log_stage(self, stage: str) -> dict[str, torch.Tensor]:
        loss, acc = self.loss_mean[f"{stage}_"], self.acc[f"{stage}_"]
        values = {f"{stage}/loss": loss.compute(), f"{stage}/acc": acc.compute()}
        loss.reset()
        acc.reset()
        self.log_dict(values, logger=False)  # the Recorder writes the logger's per-epoch scalars
        return values

    def on_train_epoch_end(self) -> None:
        self.log_stage("train")
        if not self.automatic_optimization and self.scheduler_cfg and self.scheduler_cfg["interval"] == "epoch":
            self.lr_schedulers().step()  # manual optimization (the fast path): Lightning leaves it to us

    def on_validation_epoch_end(self) -> None:
        values = self.log_stage("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
        self.log(
            "val/acc_best",
            self.val_acc_best.compute() if self.val_acc_best.update_called else values["val/acc"],
            logger=False,
        )

    def on_test_epoch_end(self) -> None:
        self.log_stage("test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_cfg is None:
            return optimizer
        schedule = dict(self.scheduler_cfg["schedule"])
        if "total_steps" in schedule and schedule["total_steps"] is None:  # OneCycleLR: every optimizer step of the run
            schedule["total_steps"] = self.optimizer_steps()
        scheduler = instantiate(schedule)(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_cfg["interval"]},
        }

    def optimizer_steps(self) -> int:
        """Optimizer steps in the whole fit (an upper bound on the fast path, whose last chunk may be short)."""
        lightning_steps = int(self.trainer.estimated_stepping_batches)
        return lightning_steps * (self.plan.steps_per_call if self.plan.fast else 1)
