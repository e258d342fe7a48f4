"""The pack's data: every member's own batches, from the members' own datamodules and solo loaders.

Member k's rows come in its solo order (``PackedBatchSampler``, its seed), from its own images
(members with different data are concatenated, each indexed at its offset). One shared (B, ...) batch
from the first member's loader serves all when the data are equal and unshuffled (validation) or
shuffled with one seed (a learning-rate grid); ``PackedNet`` broadcasts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from cifar_lab.data import CifarDataModule
from cifar_lab.packing.sampler import PackedBatchSampler


class PackedDataModule(L.LightningDataModule):
    """The members' datamodules (equal data: one shared object) behind one loader; ``seeds``: their data seeds."""

    def __init__(self, members: Sequence[CifarDataModule], seeds: Sequence[int]) -> None:
        super().__init__()
        self.members = list(members)
        self.unique = list({id(d): d for d in members}.values())
        self.which = [next(i for i, u in enumerate(self.unique) if u is d) for d in members]
        self.seeds = list(seeds)

    @property
    def classes(self) -> list[str]:
        return self.members[0].classes

    def prepare_data(self) -> None:
        for d in self.unique:
            d.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for d in self.unique:
            d.trainer = self.trainer  # their loaders read the trainer's device and epoch, as in a solo run
            d.setup(stage)

    def make_loader(self, split: str, shuffle: bool) -> Any:
        first = self.members[0]
        if len(self.unique) == 1 and (not shuffle or len(set(self.seeds)) == 1):  # same arrays, same order:
            # one (B, ...) batch for everyone, exactly the solo run's loader
            return first.make_loader(split, shuffle)
        arrays = [d.tensors[split] for d in self.unique]
        n = len(arrays[0][1])
        x, y = (arrays[0][i] if len(arrays) == 1 else torch.cat([a[i] for a in arrays]) for i in (0, 1))
        seeds = self.seeds if shuffle else [0] * len(self.members)
        offsets = [n * i for i in self.which]
        sampler = PackedBatchSampler(n, first.batch_size, seeds, shuffle, first.drop_last and shuffle, offsets)
        return first.serve(x, y, sampler)

    def train_dataloader(self) -> Any:
        return self.make_loader("train", shuffle=True)

    def val_dataloader(self) -> Any:
        return self.make_loader("val", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.members[0].on_after_batch_transfer(batch, dataloader_idx)  # the solo transform, per image
