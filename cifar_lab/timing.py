"""The bench's clocks, shared by its rows (``python -m cifar_lab.bench``): a plain loop's epochs, a Lightning
fit's epochs, a step's fastest time. No CLI here: importing this module changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_epochs(run_epoch: Callable[[int], None], warmup: int, epochs: int, device: torch.device) -> float:
    """Mean seconds of ``epochs`` calls of ``run_epoch`` after ``warmup`` untimed ones."""
    for e in range(warmup):
        run_epoch(e)
    sync(device)
    t0 = time.perf_counter()
    for e in range(warmup, warmup + epochs):
        run_epoch(e)
    sync(device)
    return (time.perf_counter() - t0) / epochs


def fastest(step: Callable[[], None], warmup: int, steps: int, device: torch.device | None = None) -> float:
    """Fastest of ``steps`` timed calls after ``warmup`` untimed ones (the device synchronised around each).
    The minimum, not the mean: on a shared machine other work only ever adds time."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def timed_fit(cfg: DictConfig, make: Callable[..., Any]) -> tuple[float, Any]:
    """``make(**trainer overrides)`` builds the parts (trainer, module, datamodule); fit ``bench.warmup_epochs``
    then ``bench.epochs`` epochs, no logger or checkpoints. The mean seconds of a timed epoch, and the parts."""
    import lightning as L

    marks: list[float] = []

    class EpochClock(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            sync(trainer.strategy.root_device)
            marks.append(time.perf_counter())

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            sync(trainer.strategy.root_device)
            marks.append(time.perf_counter())

    parts = make(
        max_epochs=cfg.bench.warmup_epochs + cfg.bench.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochClock()],
    )
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    timed = marks[cfg.bench.warmup_epochs :]
    return (timed[-1] - timed[0]) / cfg.bench.epochs, parts


def split_images(datamodule: Any) -> tuple[int, int]:
    """(training images, validation images) of one epoch."""
    return len(datamodule.tensors["train"][1]), len(datamodule.tensors["val"][1])


def images_per_epoch(datamodule: Any) -> int:
    return sum(split_images(datamodule))
