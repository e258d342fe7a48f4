"""The two loaders, over the same batches in the same order (both use :class:`EpochBatchSampler`).

``classic`` is a torch DataLoader (workers, pin_memory); ``gpu`` (:class:`ResidentLoader`) keeps a
split resident on the training device as uint8 and slices batches there, with no workers and no
per-image Python, optionally in chunks of K batches for the fast path.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.context import BaseContext

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cifar_lab.data.arrays import Split

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochBatchSampler(Sampler[torch.Tensor]):
    """Yields index tensors, one per batch; the order depends only on (seed, epoch).

    Restarting at any epoch therefore reproduces the data order. Under DDP each rank takes
    ``batch[rank::world_size]``, so the global batch stays ``batch_size``.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """Cut ``order`` (on any device; its last dimension) into this rank's batches."""
        for batch in order.split(self.batch_size, dim=-1):
            if self.drop_last and batch.shape[-1] < self.batch_size:
                break
            yield batch[..., self.rank :: self.world_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.order())

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class BatchDataset(Dataset):
    """Indexed by a whole batch of indices at once (used with ``batch_size=None``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        return self.x[idx], self.y[idx]


def chunk_batches(batches: Iterator[Batch], k: int) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Group an iterator of (x, y) batches into lists of ``k`` (the last group may be shorter)."""
    batches = iter(batches)  # islice on a list would start again at its front
    while chunk := list(itertools.islice(batches, k)):
        yield [x for x, _ in chunk], [y for _, y in chunk]


class ResidentLoader:
    """The ``gpu`` loader: a split resident on ``device`` as uint8, sliced by the shared sampler.

    With ``chunk=K`` it yields lists of K batches, one list per Lightning step (the fast path).
    The permutation is drawn on the CPU from (seed, epoch), as for the classic loader, so both
    loaders serve identical batches; only its 8-byte-per-image index tensor crosses to the device.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        sampler: EpochBatchSampler,
        device: torch.device,
        chunk: int | None = None,
    ) -> None:
        self.x, self.y = x.to(device), y.to(device)
        self.sampler, self.device, self.chunk = sampler, device, chunk
        self.batch_sampler = None  # read by Lightning, which inspects loaders like DataLoaders

    def __len__(self) -> int:
        return len(self.sampler) if self.chunk is None else -(-len(self.sampler) // self.chunk)

    def batches(self) -> Iterator[Batch]:
        order = self.sampler.order().to(self.device, non_blocking=True)
        for idx in self.sampler.batches(order):
            yield self.x[idx], self.y[idx]

    def __iter__(self) -> Iterator:
        return self.batches() if self.chunk is None else chunk_batches(self.batches(), self.chunk)


def available_cpus() -> int:
    """CPUs this process may use (affinity where the OS has it, e.g. not on macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_context(num_workers: int) -> BaseContext | None:
    """How the DataLoader starts its workers: the process's start method, or the platform's own where that
    is not one of Python's (None: torch's default).

    A joblib (loky) worker makes loky's start method the process-wide default, and loky's ``Popen``
    cannot start a plain ``Process``: without this, every DataLoader with workers fails inside
    ``hydra/launcher=joblib`` (``'Process' object has no attribute 'env'``).
    """
    if num_workers == 0:
        return None
    methods = multiprocessing.get_all_start_methods()  # Python's own, the platform's default first
    if multiprocessing.get_start_method(allow_none=True) in (None, *methods):
        return None
    return multiprocessing.get_context(methods[0])


def classic_loader(
    x: torch.Tensor,
    y: torch.Tensor,
    sampler: EpochBatchSampler,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader serving the sampler's batches whole (one index tensor per fetch)."""
    return DataLoader(
        BatchDataset(x, y),
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        multiprocessing_context=worker_context(num_workers),
        # Its own generator: a DataLoader draws a worker seed per epoch, which would otherwise
        # consume the global RNG that dropout uses (and make the two loaders differ).
        generator=torch.Generator().manual_seed(seed),
    )


def to_tensors(split: Split) -> Batch:
    """(N, 32, 32, 3) uint8 -> contiguous (N, 3, 32, 32) uint8, plus int64 labels."""
    x = torch.from_numpy(np.ascontiguousarray(split.x)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(split.y, dtype=np.int64))
