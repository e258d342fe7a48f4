"""The fast path's optimizer steps: K steps per Lightning step, optionally captured in a CUDA graph.

Lightning costs about a millisecond per training step, which is as long as a whole step of the
seed's small models on a modern GPU. The fast path therefore hands each ``training_step`` a
chunk of K batches, and :class:`StepEngine` runs the K optimizer steps itself. On CUDA it can
capture the K steps (forward, backward, optimizer update, metric inputs) in one CUDA graph and
replay it, which removes the per-kernel launch cost as well. On CPU, and for any chunk whose
shapes differ from the captured one (the last, partial batch), the same steps run eagerly, so the
arithmetic is the same code either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cifar_lab import compat
from cifar_lab.plan import SpeedPlan

Batch = tuple[torch.Tensor, torch.Tensor]
StepOut = tuple[torch.Tensor, torch.Tensor]  # (data loss, predictions)


class StepEngine:
    """Runs chunks of optimizer steps for one net/optimizer/loss, eagerly or as a replayed CUDA graph."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        options: SpeedPlan,
        scheduler: Any = None,
    ) -> None:
        self.net, self.optimizer, self.loss_fn, self.options = net, optimizer, loss_fn, options
        self.scheduler = scheduler  # a per-step learning-rate schedule, stepped after each optimizer step (eager only)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: list[Batch] = []
        self.static_out: list[StepOut] = []
        self.eager_chunks = 0  # full chunks run eagerly; the first warms up the CUDA caches before capture

    def step(self, x: torch.Tensor, y: torch.Tensor, zero_in_place: bool = False) -> StepOut:
        """One optimizer step on one batch; returns (data loss, predictions) without a host sync."""
        self.optimizer.zero_grad(set_to_none=not zero_in_place)
        logits = self.net(x)
        objective, data_loss = self.loss_fn(logits, y)
        objective.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return data_loss.detach(), logits.detach().argmax(1)

    def run(self, xs: Sequence[torch.Tensor], ys: list[torch.Tensor]) -> list[StepOut]:
        """K steps; ``xs`` may normalise each batch on access (``LazyBatches``), so each is read once."""
        if not self.options.cuda_graph or not self.capturable(ys):
            # Once a graph holds the .grad buffers, eager steps must zero them in place, not free them.
            return [self.step(x, y, zero_in_place=self.graph is not None) for x, y in zip(xs, ys)]
        if self.graph is None:
            if self.eager_chunks == 0:  # warm-up: real steps, eagerly, on a side stream
                self.eager_chunks += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = [self.step(x, y, zero_in_place=True) for x, y in zip(xs, ys)]
                torch.cuda.current_stream().wait_stream(side)
                return out
            self.capture(xs, ys)  # fills the static inputs from this chunk
        else:
            for k, ((sx, sy), y) in enumerate(zip(self.static_in, ys)):
                sx.copy_(xs[k], non_blocking=True)
                sy.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.static_out

    def capturable(self, ys: list[torch.Tensor]) -> bool:
        """Only full chunks of equal batches go through the graph (the shapes it was captured with).

        Image shapes are fixed for a run, so the label shapes decide."""
        if len(ys) != self.options.steps_per_call:
            return False
        if self.static_in:
            return all(y.shape == sy.shape for (_, sy), y in zip(self.static_in, ys))
        return len({y.shape for y in ys}) == 1

    def capture(self, xs: Sequence[torch.Tensor], ys: list[torch.Tensor]) -> None:
        """Record K whole steps into one graph; replayed by ``run``. Nothing executes during capture."""
        self.static_in = [(xs[k].clone(), y.clone()) for k, y in enumerate(ys)]
        for p in self.net.parameters():  # gradients live outside the graph's pool and are zeroed in place
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        autocast = (
            torch.autocast("cuda", dtype=self.options.autocast_dtype, cache_enabled=False)
            if self.options.autocast_dtype
            else contextlib.nullcontext()
        )
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph), autocast:
            self.static_out = [self.step(x, y, zero_in_place=True) for x, y in self.static_in]


def advance_global_step(trainer, n: int) -> None:
    """Tell Lightning that ``n`` optimizer steps happened, so ``trainer.global_step`` counts them (the engine
    steps the raw optimizer; tests/test_fast.py checks ``global_step`` equals the optimizer steps on both paths)."""
    progress = compat.optimizer_step_progress(trainer)
    for _ in range(n):
        progress.increment_ready()
        progress.increment_completed()
