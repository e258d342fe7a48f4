"""Member configs -> one pack's trainer, plan, datamodule and PackedModule, in ``cifar_lab.build``'s order.

Each member is seeded and built as its solo run builds itself, so its initial weights are the solo run's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from cifar_lab.build import build_data, build_module, build_trainer, plan_for, seed_and_backends
from cifar_lab.data import CifarDataModule
from cifar_lab.packing.data import PackedDataModule
from cifar_lab.packing.module import PackedModule
from cifar_lab.plan import SpeedPlan
from cifar_lab.task import ClassifierModule


@dataclass(frozen=True)
class PackParts:
    trainer: L.Trainer
    plan: SpeedPlan
    datamodule: PackedDataModule
    module: PackedModule
    members: list[ClassifierModule]  # each member as its solo run builds it (the pack trains copies of their nets)


def member_datamodules(cfgs: Sequence[DictConfig], plan: SpeedPlan) -> list[CifarDataModule]:
    """One datamodule per member; members with equal data share one (one copy of the arrays)."""
    shared: dict[str, CifarDataModule] = {}
    out = []
    for cfg in cfgs:
        key = json.dumps(OmegaConf.to_container(cfg.data.reader, resolve=True), sort_keys=True, default=str)
        if key not in shared:
            shared[key] = build_data(cfg, plan)
        out.append(shared[key])
    return out


def build_pack(cfgs: Sequence[DictConfig], **trainer_overrides: Any) -> PackParts:
    """Every part of one pack; trainer and plan from the first member's config (grouping made those equal)."""
    first = cfgs[0]
    seed_and_backends(first)
    trainer = build_trainer(first, **trainer_overrides)
    plan = plan_for(first, trainer, pack=True)
    datamodules = member_datamodules(cfgs, plan)
    members, rng_states = [], []
    for cfg, datamodule in zip(cfgs, datamodules):
        seed_and_backends(cfg)  # as its solo run: seeded, then built, so its initial weights are the solo run's
        members.append(build_module(cfg, datamodule.classes, plan))
        rng_states.append(torch.get_rng_state())  # where its solo run's dropout masks start (CPU)
    seeds = [int(cfg.data.seed) for cfg in cfgs]
    module = PackedModule(members, plan, rng_states)
    return PackParts(trainer, plan, PackedDataModule(datamodules, seeds), module, members)
