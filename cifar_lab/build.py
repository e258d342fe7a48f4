"""Config -> the parts of a run: trainer, speed plan, datamodule, LightningModule.

Shared by ``python -m cifar_lab`` (cifar_lab/train.py) and the bench (cifar_lab/bench.py). The order
is the point: the trainer first (it knows the device and the world size), then the speed plan
resolved once from it, then the datamodule and the module, each given the plan in its constructor.
Data is not loaded here: Lightning calls ``prepare_data`` (once per node) and ``setup`` inside fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from cifar_lab.console import quiet_lightning
from cifar_lab.data import CifarDataModule
from cifar_lab.errors import UserError
from cifar_lab.plan import SpeedPlan, optimizer_capability, resolve_plan
from cifar_lab.task import ClassifierModule
from cifar_lab.trusted import UntrustedConfig, instantiate


@dataclass(frozen=True)
class Parts:
    trainer: L.Trainer
    plan: SpeedPlan
    datamodule: CifarDataModule
    module: ClassifierModule


def seed_and_backends(cfg: DictConfig) -> None:
    """Seed every RNG; TF32 matmuls/convs on Ampere and later GPUs."""
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """``cfg.trainer`` as a Trainer; ``overrides`` (callbacks, logger, ...) win over the config."""
    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            "trainer=gpu (accelerator gpu) needs a CUDA GPU, and this machine has none. Use "
            "trainer=default (picks what is there) or trainer=cpu."
        )
    return instantiate(cfg.trainer, **overrides)


def capturable(cfg: DictConfig) -> bool:
    """Whether a CUDA graph can replay this run's optimizer step: one the table allows, at a constant learning rate."""
    return optimizer_capability(cfg.optimizer.get("_target_")).graph and cfg.scheduler.get("name", "none") == "none"


DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (one per core, or OMP_NUM_THREADS), before any plan
# glibc's mallopt parameters (malloc.h). By default an allocation above the mmap threshold (which glibc raises
# itself, up to 32 MiB, as such blocks are freed) is a fresh mapping, returned to the kernel when freed, so every
# larger tensor is page-faulted and zeroed anew each step. Setting any of these turns that adaptation off for good.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
WARM_MMAP_THRESHOLD = 32 * 2**20  # where glibc's own adaptation ends (64-bit)
HEAP_STATE = {"changed": False}  # glibc untouched until a plan asks for the heap


def use_heap(on: bool) -> bool:
    """``on``: serve every allocation from the heap and keep freed memory there, so a step's large CPU tensors
    reuse the previous step's pages. Off: glibc's own behaviour, untouched if this process never turned the
    heap on; after it did (the bench's rows), glibc's warmed-up settings (mmap above 32 MiB, freed heap trimmed).
    False where the C library has no ``mallopt`` (not glibc), which then keeps its own behaviour."""
    import ctypes

    if not on and not HEAP_STATE["changed"]:
        return True
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    HEAP_STATE["changed"] = True
    if on:
        return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**62))
    ok = mallopt(M_MMAP_MAX, 65536) and mallopt(M_MMAP_THRESHOLD, WARM_MMAP_THRESHOLD)
    ok = ok and mallopt(M_TRIM_THRESHOLD, 2 * WARM_MMAP_THRESHOLD)
    malloc_trim(0)
    return bool(ok)


def use_host(plan: SpeedPlan) -> None:
    """The process settings of ``plan`` (torch's CPU threads, the heap), applied now: they are per process, so
    the last plan applied wins (the bench applies each row's before timing it)."""
    torch.set_num_threads(plan.cpu_threads or DEFAULT_THREADS)
    use_heap(plan.cpu_heap)


def element_dropout(cfg: DictConfig) -> bool:
    """The model drops single elements (masks drawn in memory order: the layout changes which ones)."""
    return bool(cfg.model.get("dropout", 0)) and cfg.model.get("dropout_kind", "element") == "element"


def plan_for(cfg: DictConfig, trainer: L.Trainer, pack: bool = False) -> SpeedPlan:
    """The run's speed plan for this trainer (``pack``: a packed run's), its process settings applied."""
    plan = resolve_plan(OmegaConf.to_container(cfg.speed), cfg.data.loader, trainer.strategy.root_device,
                        trainer.world_size, str(trainer.precision), capturable(cfg),
                        keep_nchw=pack or element_dropout(cfg))  # fmt: skip
    if plan.fast and (trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val):
        raise UserError(
            "the fast path (data.loader=gpu) steps the optimizer itself, so trainer.accumulate_grad_batches and "
            "trainer.gradient_clip_val do not apply there; use data.loader=classic with them."
        )
    use_host(plan)
    return plan


def build_data(cfg: DictConfig, plan: SpeedPlan) -> CifarDataModule:
    """The source (only its own options) inside the datamodule (only the loading options)."""
    # Objects go to the partial, not through instantiate (which would turn the dataclass plan into a config).
    return instantiate(cfg.data.datamodule, _partial_=True)(source=instantiate(cfg.data.reader), plan=plan)


def build_module(cfg: DictConfig, classes: list[str], plan: SpeedPlan) -> ClassifierModule:
    """The LightningModule from the model and optimizer configs, which it keeps in its checkpoints."""
    try:
        return ClassifierModule(
            OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.optimizer, resolve=True),
            l2=cfg.l2, num_classes=len(classes), plan=plan, classes=list(classes),
            scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        )  # fmt: skip
    except UntrustedConfig as err:  # e.g. model._target_=... on the command line
        raise UserError(
            f"this run's {str(err).removeprefix('its ')}. cifar_lab builds only the models, optimizers and "
            "schedulers of its conf/ folder (their checkpoints must load safely anywhere): choose one with "
            "model=, optimizer=, scheduler= and set its options, or add an architecture to cifar_lab.models."
        ) from None


def build(cfg: DictConfig, **trainer_overrides: Any) -> Parts:
    """Every part of one run, in dependency order; the data is loaded later, by the fit."""
    seed_and_backends(cfg)
    trainer = build_trainer(cfg, **trainer_overrides)
    plan = plan_for(cfg, trainer)
    datamodule = build_data(cfg, plan)
    module = build_module(cfg, datamodule.classes, plan)
    return Parts(trainer, plan, datamodule, module)
