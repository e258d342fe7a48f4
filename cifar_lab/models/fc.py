"""The fully connected baseline from the seed's previous homework."""

from __future__ import annotations

import torch
from torch import nn

from cifar_lab.models.registry import register_model


@register_model("fc")
class FullyConnected(nn.Module):
    """3072 -> hidden -> 10 with tanh: 1,578,506 parameters at hidden=512."""

    def __init__(self, hidden: int = 512, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (B, 3072)
            nn.Linear(3 * 32 * 32, hidden),
            nn.Tanh(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
