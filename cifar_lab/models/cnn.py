"""The seed's small CNNs: p1a (two conv layers) and p1b (three)."""

from __future__ import annotations

import torch
from torch import nn

from cifar_lab.errors import UserError
from cifar_lab.model_options import ACTIVATIONS, choice_problem
from cifar_lab.models.registry import register_model


def conv_pool(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (pad 1) + ReLU + 2x2 max-pool: halves the spatial size."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


def head(features: int, hidden: int, num_classes: int, act: str = "relu") -> nn.Sequential:
    """Flatten, fc features->hidden, activation, fc hidden->classes."""
    if problem := choice_problem("cnn3", "fc_act", act):
        raise UserError(problem)
    activation = getattr(nn, ACTIVATIONS[act])()
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), activation, nn.Linear(hidden, num_classes))


@register_model("cnn")
class SmallCNN(nn.Module):
    """p1a: conv 3->32, conv 32->16, fc 1024->32->10 (38,650 parameters)."""

    def __init__(self, width: int = 32, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_pool(3, width),  # (B, 32, 16, 16)
            conv_pool(width, width // 2),  # (B, 16, 8, 8)
        )
        self.head = head(width // 2 * 8 * 8, hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn3")
class SmallCNN3(nn.Module):
    """p1b: p1a plus a third conv 16->8, fc 128->32->10 (11,138 parameters).

    ``fc_act`` is the hidden fc layer's activation: the seed's notebook uses tanh there (and ReLU after
    each conv); ``relu`` is the layout cifar_lab started with.
    """

    def __init__(self, width: int = 32, hidden: int = 32, num_classes: int = 10, fc_act: str = "relu") -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_pool(3, width),  # (B, 32, 16, 16)
            conv_pool(width, width // 2),  # (B, 16, 8, 8)
            conv_pool(width // 2, width // 4),  # (B, 8, 4, 4)
        )
        self.head = head(width // 4 * 4 * 4, hidden, num_classes, fc_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
