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
    the same sizes (the last one may be partial unless ``drop_last``). ``offsets[k]`` is added to
    member k's indices: where its images start when the members' arrays are concatenated. Like an
    ``EpochBatchSampler`` it has ``order()`` and ``batches(order)``, so the solo loaders serve it.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seeds: Sequence[int],
        shuffle: bool = True,
        drop_last: bool = False,
        offsets: Sequence[int] | None = None,
    ) -> None:
        self.samplers = [EpochBatchSampler(n, batch_size, shuffle, seed, drop_last) for seed in seeds]
        self.offsets = torch.tensor(offsets if offsets is not None else [0] * len(seeds)).view(-1, 1)

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def order(self) -> torch.Tensor:
        """(N, n): each member's epoch order, offset."""
        return torch.stack([s.order() for s in self.samplers]) + self.offsets

    def batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """Cut ``order`` (on any device) into (N, B) batches, as each member's sampler cuts its own."""
        first = self.samplers[0]
        for batch in order.split(first.batch_size, dim=1):
            if first.drop_last and batch.shape[1] < first.batch_size:
                break
            yield batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.order())

    def __len__(self) -> int:
        return len(self.samplers[0])
