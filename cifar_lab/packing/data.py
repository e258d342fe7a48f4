"""The pack's data: every member's own batches, from the members' own datamodules, in one loader.

Each member keeps its solo data order (``PackedBatchSampler``: member k's rows come from an
``EpochBatchSampler`` with member k's seed), so batch t of member k is batch t of its solo run.
Members whose data are equal (CIFAR-10, an image folder) share one copy of the arrays; members
whose data differ (synthetic data follows the seed) each bring their own, stacked as (D, n, ...)
and indexed per member. Two shortcuts serve one shared (B, ...) batch instead of (N, B, ...):
validation, when all members share the data (the order is not shuffled), and training, when they
also share the seed (a learning-rate grid); ``PackedNet`` broadcasts a shared batch to every member.
Both loaders work: ``classic`` (a DataLoader over whole batches) and ``gpu`` (resident on the
device, chunks of K batches for the fast path).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from cifar_lab.data import CifarDataModule
from cifar_lab.data.loaders import EpochBatchSampler, ResidentLoader, chunk_batches, classic_loader
from cifar_lab.data.transforms import LazyBatches
from cifar_lab.packing.sampler import PackedBatchSampler
from cifar_lab.plan import SpeedPlan

Batch = tuple[torch.Tensor, torch.Tensor]


class MemberBatches(Dataset):
    """Indexed by an (N, B) index tensor: row k is read from member k's own arrays (``which[k]``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, which: torch.Tensor) -> None:
        self.x, self.y, self.rows = x, y, which.view(-1, 1)  # (D, n, 3, 32, 32), (D, n), (N, 1)

    def __len__(self) -> int:
        return self.y.shape[1]

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        return self.x[self.rows, idx], self.y[self.rows, idx]  # (N, B, 3, 32, 32), (N, B)


class PackedResidentLoader:
    """The ``gpu`` loader for (N, B) batches: the arrays resident on the device, each member its own order.

    As :class:`~cifar_lab.data.loaders.ResidentLoader`: the orders are drawn on the CPU from (seed,
    epoch) and only the index tensor crosses to the device; ``chunk=K`` yields lists of K batches.
    """

    def __init__(
        self, data: MemberBatches, sampler: PackedBatchSampler, device: torch.device, chunk: int | None = None
    ) -> None:
        self.data = MemberBatches(data.x.to(device), data.y.to(device), data.rows.to(device))
        self.sampler, self.device, self.chunk = sampler, device, chunk
        self.batch_sampler = None  # read by Lightning, which inspects loaders like DataLoaders

    def __len__(self) -> int:
        return len(self.sampler) if self.chunk is None else -(-len(self.sampler) // self.chunk)

    def batches(self) -> Iterator[Batch]:
        for idx in self.sampler:
            yield self.data[idx.to(self.device, non_blocking=True)]

    def __iter__(self) -> Iterator:
        return self.batches() if self.chunk is None else chunk_batches(self.batches(), self.chunk)


class PackedDataModule(L.LightningDataModule):
    """The members' datamodules (one per member; members with equal data share one object) behind one loader.

    ``seeds`` are the members' data seeds (``data.seed``): each member's own data order."""

    def __init__(self, members: Sequence[CifarDataModule], seeds: Sequence[int], plan: SpeedPlan) -> None:
        super().__init__()
        self.members = list(members)
        self.unique = list({id(d): d for d in members}.values())
        self.which = torch.tensor([next(i for i, u in enumerate(self.unique) if u is d) for d in members])
        self.seeds = list(seeds)
        self.plan = plan
        first = members[0]
        self.batch_size, self.drop_last, self.augment = first.batch_size, first.drop_last, first.augment
        self.transform = first.transform

    @property
    def classes(self) -> list[str]:
        return self.members[0].classes

    def prepare_data(self) -> None:
        for d in self.unique:
            d.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for d in self.unique:
            d.setup(stage)

    # ------------------------------------------------------------------ loaders

    def device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device(self.plan.device)

    def shared(self, shuffle: bool) -> bool:
        """Whether every member gets the same batch: the same arrays, and the same order."""
        return len(self.unique) == 1 and (not shuffle or len(set(self.seeds)) == 1)

    def make_loader(self, split: str, shuffle: bool) -> Any:
        first = self.members[0]
        drop = self.drop_last and shuffle
        if self.shared(shuffle):  # one (B, ...) batch for everyone, exactly as a solo run's loader serves it
            x, y = first.tensors[split]
            sampler = EpochBatchSampler(len(y), self.batch_size, shuffle, self.seeds[0], drop)
        else:
            x = stack([d.tensors[split][0] for d in self.unique])  # (D, n, 3, 32, 32)
            y = stack([d.tensors[split][1] for d in self.unique])  # (D, n)
            seeds = self.seeds if shuffle else [0] * len(self.members)
            sampler = PackedBatchSampler(y.shape[1], self.batch_size, seeds, shuffle, drop)
        if self.trainer is not None:
            # A resumed fit fetches its first batch before Lightning calls set_epoch (Lightning issue #21938).
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        if self.shared(shuffle):
            if self.plan.fast:
                return ResidentLoader(x, y, sampler, self.device(), self.plan.steps_per_call)
            pin = self.device().type == "cuda" if first.pin_memory is None else first.pin_memory
            return classic_loader(x, y, sampler, first.num_workers, pin, first.persistent_workers, self.seeds[0])
        data = MemberBatches(x, y, self.which)
        if self.plan.fast:
            return PackedResidentLoader(data, sampler, self.device(), self.plan.steps_per_call)
        pin = self.device().type == "cuda" if first.pin_memory is None else first.pin_memory
        return packed_classic_loader(data, sampler, first.num_workers, pin, first.persistent_workers, self.seeds[0])

    def train_dataloader(self) -> Any:
        return self.make_loader("train", shuffle=True)

    def val_dataloader(self) -> Any:
        return self.make_loader("val", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        augment = self.augment and self.trainer is not None and self.trainer.training
        if self.plan.fast:  # a chunk of K batches, each transformed when its step uses it
            return LazyBatches(x, lambda b: self.prepare(b, augment)), y
        return self.prepare(x, augment), y

    def prepare(self, x: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 (..., 3, 32, 32) -> normalised (and augmented) images of the same leading shape."""
        flat = self.transform(x.reshape(-1, *x.shape[-3:]), augment)  # the solo transform, image by image
        return flat.view(*x.shape[:-3], *flat.shape[1:])


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(D, ...) from D tensors; one tensor becomes a view, not a copy (CIFAR-10 is 150 MB)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def packed_classic_loader(
    data: MemberBatches, sampler: PackedBatchSampler, workers: int, pin: bool, persistent: bool, seed: int
) -> torch.utils.data.DataLoader:
    """As ``classic_loader``, over (N, B) index batches."""
    return torch.utils.data.DataLoader(
        data,
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(seed),  # never the global RNG (dropout draws from it)
    )
