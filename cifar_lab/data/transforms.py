"""What happens to a batch on the training device: uint8 -> normalised float, optional flip/crop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

CIFAR_MEAN = (0.4915, 0.4823, 0.4468)  # the seed's per-channel mean
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # and std


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, augment: bool = False) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> normalised with the seed's mean/std (given on x's device, in the output dtype)."""
    x = x.to(mean.dtype)
    if augment:
        x = flip_crop(x)
    return (x - mean) / std


def flip_crop(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after ``pad``-pixel reflect padding, batched on x's device."""
    b, c, h, w = x.shape
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")  # (B, C, H+2p, W+2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), device=x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


class DeviceTransform:
    """uint8 batch -> normalised float batch in the plan's memory format, augmented when asked.

    ``dtype`` is float32, or float64 for ``trainer.precision=64-true`` (Lightning converts floating
    inputs before the transfer hook, so the uint8 images would otherwise reach a float64 model as
    float32). The mean and std move to the batch's device once (a per-batch CPU->GPU copy would sync
    the host).
    """

    def __init__(self, channels_last: bool = False, dtype: torch.dtype = torch.float32) -> None:
        self.mean = torch.tensor(CIFAR_MEAN, dtype=dtype).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR_STD, dtype=dtype).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 (..., 3, 32, 32) -> float, image by image: a pack's (N, B, ...) batches keep their leading dims."""
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        flat = normalize(x.reshape(-1, *x.shape[-3:]), self.mean, self.std, augment)
        return flat.view(*x.shape[:-3], *flat.shape[1:]).contiguous(memory_format=self.memory_format)


class LazyBatches(Sequence):
    """A chunk's batches, each transformed when it is used: one float batch in memory at a time, and
    augmentation draws its random numbers between the steps exactly as on the classic path."""

    def __init__(self, raw: list[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.raw, self.prepare = raw, prepare

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        return self.prepare(self.raw[i])
