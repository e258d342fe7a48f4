"""Per-member data order for a pack: each member sees exactly the batches of its solo run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from cifar_lab.data.loaders import EpochBatchSampler


class PackedBatchSampler(Sampler[torch.Tensor]):
    """Yields (N, B) index tensors: row k is member k's batch, from an ``EpochBatchSampler`` with seed k.

    The solo rule (order from (seed, epoch) only) is reused, not copied, so packed and solo data
    order cannot drift apart. All members share ``n`` and ``batch_size``, so their batches have
    the same sizes (the last one may be partial unless ``drop_last``).
    """

    def __init__(
        self, n: int, batch_size: int, seeds: Sequence[int], shuffle: bool = True, drop_last: bool = False
    ) -> None:
        self.samplers = [EpochBatchSampler(n, batch_size, shuffle, seed, drop_last) for seed in seeds]

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for rows in zip(*self.samplers):
            yield torch.stack(rows)  # (N, B)

    def __len__(self) -> int:
        return len(self.samplers[0])
