"""Per-member data order for a pack: each member sees exactly the batches of its solo run."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cifar_lab.data.loaders import EpochBatchSampler


class PackedBatchSampler(EpochBatchSampler):
    """Yields (N, B) index tensors: row k is member k's batch, as the solo ``EpochBatchSampler`` with seed k cuts it.

    The solo rule (order from (seed, epoch) only, batches cut along the last dimension) is inherited, not
    copied, so packed and solo data order cannot drift apart, and the solo loaders serve it. ``offsets[k]``
    is added to member k's indices: where its images start when the members' arrays are concatenated.
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
        super().__init__(n, batch_size, shuffle, drop_last=drop_last)
        self.samplers = [EpochBatchSampler(n, batch_size, shuffle, seed) for seed in seeds]
        self.offsets = torch.tensor(offsets if offsets is not None else [0] * len(seeds)).view(-1, 1)

    def order(self) -> torch.Tensor:
        """(N, n): each member's epoch order, offset."""
        for s in self.samplers:
            s.set_epoch(self.epoch)
        return torch.stack([s.order() for s in self.samplers]) + self.offsets
