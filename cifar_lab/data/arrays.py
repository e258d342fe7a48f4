"""The one representation every source produces: uint8 images (N, 32, 32, 3) and int64 labels, per split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IMAGE_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Split:
    """One split: uint8 images (N, 32, 32, 3) and int64 labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Arrays:
    """Every source's output; downstream code never looks at where it came from."""

    train: Split
    test: Split
    classes: list[str]
    source: str
    root: str | None = None
    synthetic: bool = False
    info: dict[str, object] = field(default_factory=dict)
