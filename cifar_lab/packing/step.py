"""Optimiser steps for a pack: per-member hyperparameters, and isolation of members that diverge.

Isolation: a member whose objective is NaN/inf is marked dead in ``PackedNet.alive`` (sticky) and keeps
its pre-step parameters, optimiser state and BatchNorm statistics through ``torch.where(alive_k, new,
old)`` (a select: NaN·0 would leak), on the device with no host sync, so the step can be a CUDA graph.
The snapshot costs one copy of the members' state per step (measured on a 2-core CPU at N=5: 3.8 ms
(p1a) / 7.0 ms (p2a), under 1 % of a step). The optimiser state is primed (zeros, as the lazy first step
makes it; for SGD exact only with ``dampening=0``, checked) so that the snapshot covers it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cifar_lab.fast import StepEngine, StepOut
from cifar_lab.packing.loss import PackedLoss
from cifar_lab.packing.stack import PackedNet
from cifar_lab.plan import SpeedPlan, optimizer_capability

Snapshot = tuple[list[torch.Tensor], list[torch.Tensor]]  # (parameters and optimiser state, BN statistics)


def member_param_groups(net: PackedNet, **hparams: Sequence[float]) -> list[dict[str, object]]:
    """One optimiser param group per member; ``hparams`` maps an option to its N per-member values.

    e.g. ``torch.optim.SGD(member_param_groups(net, lr=[0.1, 0.01], momentum=[0.9, 0.0]))``."""
    for key, values in hparams.items():
        if len(values) != net.n:
            raise ValueError(f"{key}: {len(values)} values for {net.n} members")
    return [
        {"params": list(m.parameters()), **{key: float(v[k]) for key, v in hparams.items()}}
        for k, m in enumerate(net.members)
    ]


def prime_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create SGD/Adam/AdamW state now (as their lazy first step would) so a snapshot can cover it."""
    prime = optimizer_capability(type(optimizer)).prime
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            if prime == "momentum":
                if group["momentum"] != 0:
                    if group["dampening"] != 0:
                        raise ValueError("isolation primes SGD momentum buffers with zeros, exact only for dampening=0")
                    state["momentum_buffer"] = torch.zeros_like(p)  # zeros_like preserves the memory format
            elif prime == "adam":
                on_device = group["capturable"] or group["fused"]
                if not on_device and p.device.type != "cpu":
                    raise ValueError(
                        "isolation with Adam/AdamW off the CPU needs capturable=True (step count on the device)"
                    )
                f64 = torch.get_default_dtype() == torch.float64 and not group["fused"]
                scalar = torch.float64 if f64 else torch.float32
                state["step"] = torch.zeros((), dtype=scalar, device=p.device if on_device else "cpu")
                for name in ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else []):
                    state[name] = torch.zeros_like(p)
            else:
                raise TypeError(f"isolation supports SGD, Adam and AdamW, not {type(optimizer).__name__}")


class PackedStepEngine(StepEngine):
    """``StepEngine`` for a pack (K steps per call and CUDA graphs inherited): ``step(x (N, B, ...), y (N, B))``
    gives (data loss (N,), NaN once dead; predictions (N, B)), no host sync. ``isolate=False``: no snapshot,
    and a diverging member trains on (still without touching the others)."""

    def __init__(
        self,
        net: PackedNet,
        optimizer: torch.optim.Optimizer,
        loss: PackedLoss,
        options: SpeedPlan | None = None,
        isolate: bool = True,
    ) -> None:
        super().__init__(net, optimizer, loss, options or SpeedPlan())
        self.pack, self.loss, self.isolate = net, loss, isolate
        if isolate:
            prime_optimizer_state(optimizer)

    def member_tensors(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(member index, tensor) for every parameter and optimiser-state tensor of every member."""
        for k, m in enumerate(self.pack.members):
            for p in m.parameters():
                yield k, p
                for v in self.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor):
                        yield k, v

    def snapshot(self) -> Snapshot | None:
        """The members' parameters, optimiser state and BatchNorm statistics before a step, for ``settle``."""
        if not self.isolate:
            return None
        with torch.no_grad():
            return [t.clone() for _, t in self.member_tensors()], [t.clone() for t in self.pack.statistics()]

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objectives (N,), data losses (N,), logits (N, B, classes)) of one forward pass."""
        logits = self.pack(x)
        penalties = self.pack.penalties() if self.loss.uses_penalty else None
        objectives, data = self.loss(logits, y, penalties)
        return objectives, data, logits

    @torch.no_grad()
    def settle(self, saved: Snapshot | None, objectives: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        """After the optimiser step: a member whose objective was not finite is dead from now on and gets its
        pre-step state back (a select, never a product). Returns the data losses, NaN for dead members."""
        if saved is None:
            return data.detach()
        alive, (tensors, statistics) = self.pack.alive, saved
        alive.logical_and_(torch.isfinite(objectives))
        for (k, t), old in zip(self.member_tensors(), tensors, strict=True):
            t.copy_(torch.where(alive[k], t, old))
        for t, old in zip(self.pack.statistics(), statistics, strict=True):
            t.copy_(torch.where(alive.view(-1, *[1] * (t.dim() - 1)), t, old))
        return torch.where(alive, data, torch.full_like(data, float("nan")))

    def step(self, x: torch.Tensor, y: torch.Tensor, zero_in_place: bool = False) -> StepOut:
        """One optimiser step for all members on their own batches (x (N, B, ...), y (N, B))."""
        saved = self.snapshot()
        self.optimizer.zero_grad(set_to_none=not zero_in_place)
        objectives, data, logits = self.losses(x, y)  # (N,), (N,), (N, B, classes)
        objectives.sum().backward()  # a sum: each member's gradient is its own objective's
        self.optimizer.step()
        return self.settle(saved, objectives, data), logits.detach().argmax(-1)
