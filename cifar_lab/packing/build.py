"""Member configs -> the parts of one pack: trainer, speed plan, datamodule, PackedModule.

The order is ``cifar_lab.build``'s, and each member is built exactly as its solo run builds itself:
seeded with its own seed, then its own ClassifierModule (``build_module``), so member k's initial
weights are its solo run's. Members whose data are equal share one datamodule (one copy of the
arrays). Shared by the pack process (``cifar_lab.packing.run``) and the bench's packed row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
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
    """One datamodule per member; members whose data source and options are equal share one."""
    shared: dict[str, CifarDataModule] = {}
    out = []
    for cfg in cfgs:
        key = json.dumps(OmegaConf.to_container(cfg.data.reader, resolve=True), sort_keys=True, default=str)
        if key not in shared:
            shared[key] = build_data(cfg, plan)
        out.append(shared[key])
    return out


def build_pack(cfgs: Sequence[DictConfig], **trainer_overrides: Any) -> PackParts:
    """Every part of one pack, in dependency order; the data is loaded later, by the fit.

    The trainer and the plan come from the first member's config (grouping made the members'
    trainer, data-loading and speed settings equal)."""
    first = cfgs[0]
    seed_and_backends(first)
    trainer = build_trainer(first, **trainer_overrides)
    plan = plan_for(first, trainer)
    datamodules = member_datamodules(cfgs, plan)
    members = []
    for cfg, datamodule in zip(cfgs, datamodules):
        seed_and_backends(cfg)  # as its solo run: seeded, then built, so its initial weights are the solo run's
        members.append(build_module(cfg, datamodule.classes, plan))
    seeds = [int(cfg.data.seed) for cfg in cfgs]
    return PackParts(trainer, plan, PackedDataModule(datamodules, seeds), PackedModule(members, plan), members)
