"""Per-member losses and accuracy counts for a pack: (N, B, classes) logits in, (N,) tensors out.

Nothing here reduces across members: member k's numbers depend on member k's logits only, so one
member's NaN cannot reach another's. Everything stays on the device (no ``.item()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, B, C) logits, (N, B) or shared (B,) labels -> (N,) mean cross-entropy per member (as solo)."""
    n, b, c = logits.shape
    per_image = F.cross_entropy(logits.reshape(n * b, c), y.expand(n, b).reshape(n * b), reduction="none")
    return per_image.view(n, b).mean(1)


def member_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) number of correct argmax predictions per member (int64)."""
    return (logits.argmax(-1) == y.expand(logits.shape[:2])).sum(1)


class PackedLoss(nn.Module):
    """Per-member objective ``loss_k + l2_k Σ‖w_k‖²`` and data loss ``loss_k``, both (N,); the step sums the
    objectives (a mean would scale each member's gradient by 1/N). As in ``ClassifierModule.loss_fn`` the
    penalty is optimised, not reported. ``l2`` is kept in float64 (a float64 pack gets the exact λ whatever
    the default dtype was); with every λ = 0 the penalty is not computed."""

    def __init__(self, l2: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("l2", torch.tensor([float(v) for v in l2], dtype=torch.float64), persistent=False)
        self.uses_penalty = any(float(v) != 0.0 for v in l2)

    def forward(
        self, logits: torch.Tensor, y: torch.Tensor, penalties: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data = member_losses(logits, y)
        if not self.uses_penalty:
            return data, data
        if penalties is None:
            raise ValueError("this loss has a non-zero l2: pass the members' penalties (PackedNet.penalties())")
        return data + self.l2.to(penalties.dtype) * penalties, data
