"""Convolutions in a pack: one solo-shaped conv per member (``"member"``, the default), or vmap's own rule,
one grouped conv (``groups = N``) for all (``"grouped"``).

Why member convs: with grouped convs a pack of 5 p2a members ran at 0.26x the speed of the same 5 runs
in sequence on an H100 (not profiled there); grouped convolutions are a known slow path of cuDNN's
training kernels (pytorch issue 70954), and on this project's CPU they were slower than member convs.
``MemberConv2d`` calls, for each member, the very conv a solo run calls, while every other op stays
fused across members. Which is faster is a measurement per device (the bench's ``steps`` pipeline
times both; on a GPU not measured yet). Both are exact in float64 (tests/test_packed_core.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONV_MODES = ("member", "grouped")


class MemberConv(torch.autograd.Function):
    """``F.conv2d`` whose rule under ``vmap`` is one conv per member; autograd records those calls, so the
    backward is each member's solo backward (outside ``vmap``: a plain conv and its gradient)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *conf: Any) -> torch.Tensor:
        return F.conv2d(x, weight, bias, *conf)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias, *conf = inputs
        ctx.save_for_backward(x, weight)
        ctx.conf, ctx.has_bias = conf, bias is not None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        needs = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
            stride, padding, dilation, False, [0, 0], groups,
            [needs[0], needs[1], ctx.has_bias and needs[2]],
        )  # fmt: skip
        return gx, gw, gb, None, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, weight: torch.Tensor, bias: Any, *conf: Any):  # type: ignore[no-untyped-def]
        def members(t: torch.Tensor | None, dim: int | None) -> Sequence[torch.Tensor | None]:
            # unbind, not select(k) N times: select's backward writes a zero-filled tensor of the
            # whole (N, ...) input per member (N^2 work); unbind's backward is one stack
            return [t] * info.batch_size if t is None or dim is None else t.unbind(dim)

        xs, ws, bs = (members(t, d) for t, d in zip((x, weight, bias), in_dims[:3]))
        return torch.stack([F.conv2d(xk, wk, bk, *conf) for xk, wk, bk in zip(xs, ws, bs)]), 0


class MemberConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state_dict) that runs as one conv per member under ``vmap``."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return MemberConv.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def use_member_convs(model: nn.Module) -> None:
    """Every plain ``nn.Conv2d`` of ``model`` a ``MemberConv2d``, in place: the class is swapped on the module
    itself, so a tied conv changes at every use and names stay. Another padding mode or a string padding
    ("same") keeps vmap's grouped conv, equally exact."""
    for m in model.modules():
        if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.__class__ = MemberConv2d
