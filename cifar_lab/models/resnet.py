"""The seed's ResNet-like CNN (p2a) and its regularised variants (p2b)."""

from __future__ import annotations

import torch
from torch import nn

from cifar_lab.models import register_model
from cifar_lab.models.cnn import head


class ResBlock(nn.Module):
    """x + bn(relu(dropout(conv(x)))): dropout sits between conv and activation, BN after it."""

    def __init__(self, width: int, dropout: float = 0.0, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.ReLU()
        self.norm = nn.BatchNorm2d(width) if batchnorm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.act(self.drop(self.conv(x))))


@register_model("resnet")
class ResNet(nn.Module):
    """Stem conv + pool, ``n_blocks`` residual blocks, pool, fc 2048->32->10.

    ``tied_blocks=True`` repeats one block instance, as the seed did (76,042 parameters);
    ``False`` gives independent blocks (159,274).
    """

    def __init__(
        self,
        n_blocks: int = 10,
        width: int = 32,
        tied_blocks: bool = True,
        dropout: float = 0.0,
        batchnorm: bool = False,
        hidden: int = 32,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width) if batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 16, 16)
        )
        if tied_blocks:
            block = ResBlock(width, dropout, batchnorm)
            blocks = [block] * n_blocks  # one weight set, applied n_blocks times
        else:
            blocks = [ResBlock(width, dropout, batchnorm) for _ in range(n_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.MaxPool2d(2)  # (B, 32, 8, 8)
        self.head = head(width * 8 * 8, hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))))
