"""The packed variants of the GPU plan (issue 23, item 3), each equal to today's pack in float64 (test_gpu_plan.py).

- **Convolutions** (``speed.pack_conv``), on top of :mod:`cifar_lab.packing.conv`:
  ``member`` (today's: one solo conv per member, one after another on one stream); ``streams`` (the same
  member convs, member k's issued on CUDA stream k, forked from and joined back into the current stream,
  so a captured CUDA graph holds them as parallel branches; autograd runs each backward on its forward's
  stream; on the CPU there are no streams and the same loop runs one conv after another); ``grouped_cl``
  (one grouped conv for all members, written out by hand in channels_last: the members' (N, B, C, H, W)
  activations as one (B, N*C, H, W) NHWC tensor and (N*O, C, kh, kw) NHWC weights, ``groups = N``; the
  output goes back as a strided view, so the next conv's layout change is free when elementwise ops kept
  the strides).
- **Isolation** (``speed.pack_isolation``): ``step`` (today's ``PackedStepEngine``: a snapshot of every
  member's parameters and optimiser state per step, a select after it); ``chunk`` (:class:`ChunkIsolatedEngine`:
  one snapshot per chunk of ``speed.steps_per_call`` steps, one finiteness flag per member accumulated on the
  device through the chunk, and at the chunk's end a member whose objective was not finite at any step gets its
  chunk-start state back and is frozen, as ``alive`` is sticky; its losses for the whole chunk read NaN).

``make_packed_net`` and ``make_engine`` build either from the option values; the options are resolved into
:class:`cifar_lab.plan.SpeedPlan` (``pack_conv``, ``pack_isolation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifar_lab.fast import StepOut
from cifar_lab.packing.conv import MemberConv, MemberConv2d
from cifar_lab.packing.loss import PackedLoss
from cifar_lab.packing.stack import PackedNet
from cifar_lab.packing.step import PackedStepEngine
from cifar_lab.plan import SpeedPlan

PACK_CONVS = ("member", "streams", "grouped_cl")
PACK_ISOLATIONS = ("step", "chunk")

_streams: dict[tuple[int, int], list[torch.cuda.Stream]] = {}  # (device index, N) -> the side streams, made once


def member_streams(device: torch.device, n: int) -> list[torch.cuda.Stream] | None:
    """N side streams on a CUDA ``device`` (the same N streams every call, so a graph's branches are stable);
    None off CUDA (the members' convs then run one after another)."""
    if device.type != "cuda":
        return None
    key = (device.index if device.index is not None else torch.cuda.current_device(), n)
    if key not in _streams:
        _streams[key] = [torch.cuda.Stream(device) for _ in range(n)]
    return _streams[key]


class StreamConv(MemberConv):
    """``MemberConv`` whose vmap rule issues member k's conv on side stream k (CUDA), forked from the current
    stream and joined back before the stack; the forward outside ``vmap`` and the backward are MemberConv's."""

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, weight: torch.Tensor, bias: Any, *conf: Any):  # type: ignore[no-untyped-def]
        def members(t: torch.Tensor | None, dim: int | None) -> Sequence[torch.Tensor | None]:
            return [t] * info.batch_size if t is None or dim is None else t.unbind(dim)

        xs, ws, bs = (members(t, d) for t, d in zip((x, weight, bias), in_dims[:3]))
        streams = member_streams(x.device, info.batch_size)
        if streams is None:
            return torch.stack([F.conv2d(xk, wk, bk, *conf) for xk, wk, bk in zip(xs, ws, bs)]), 0
        current = torch.cuda.current_stream(x.device)
        outs = []
        for stream, xk, wk, bk in zip(streams, xs, ws, bs):
            stream.wait_stream(current)  # fork: the inputs are ready
            with torch.cuda.stream(stream):
                outs.append(F.conv2d(xk, wk, bk, *conf))
        for stream in streams:
            current.wait_stream(stream)  # join: every member's output is ready before the stack reads it
        return torch.stack(outs), 0


class StreamConv2d(MemberConv2d):
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return StreamConv.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def grouped_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> torch.Tensor:
    """N members' convs as one grouped conv in NHWC: x (N, B, C, H, W), weight (N, O, C/g, kh, kw), bias (N, O)
    or None -> (N, B, O, H', W'), each member's slice its own conv."""
    n, b, c, h, w = x.shape
    o = weight.shape[1]
    xg = x.permute(1, 0, 2, 3, 4).reshape(b, n * c, h, w).contiguous(memory_format=torch.channels_last)
    wg = weight.reshape(n * o, *weight.shape[2:]).contiguous(memory_format=torch.channels_last)
    bg = None if bias is None else bias.reshape(n * o)
    out = F.conv2d(xg, wg, bg, stride, padding, dilation, groups * n)  # (B, N*O, H', W'), NHWC
    return out.unflatten(1, (n, o)).transpose(0, 1)  # (N, B, O, H', W'): a view, the NHWC storage kept


class GroupedChannelsLastConv(torch.autograd.Function):
    """``F.conv2d`` whose rule under ``vmap`` is :func:`grouped_channels_last` (autograd records its ops, so
    the backward is the grouped conv's); outside ``vmap`` a plain conv."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *conf: Any) -> torch.Tensor:
        return F.conv2d(x, weight, bias, *conf)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        MemberConv.setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return MemberConv.backward(ctx, grad)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: torch.Tensor, weight: torch.Tensor, bias: Any, *conf: Any):  # type: ignore[no-untyped-def]
        n = info.batch_size

        def batched(t: torch.Tensor | None, dim: int | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.expand(n, *t.shape) if dim is None else t.movedim(dim, 0)

        xb, wb, bb = (batched(t, d) for t, d in zip((x, weight, bias), in_dims[:3]))
        return grouped_channels_last(xb, wb, bb, *conf), 0


class GroupedChannelsLastConv2d(MemberConv2d):
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return GroupedChannelsLastConv.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


CONV_CLASSES: dict[str, type[nn.Conv2d]] = {
    "member": MemberConv2d,
    "streams": StreamConv2d,
    "grouped_cl": GroupedChannelsLastConv2d,
}


def make_packed_net(
    members: Sequence[nn.Module], conv: str = "member", rng_states: Sequence[torch.Tensor] | None = None
) -> PackedNet:
    """A ``PackedNet`` whose member convs (today's) are swapped for ``conv``'s class on the (meta) base; the
    classes share ``nn.Conv2d``'s parameters, so state_dicts, members and exports are unchanged."""
    if conv not in PACK_CONVS:
        raise ValueError(f"pack_conv must be one of {PACK_CONVS}, got {conv!r}")
    net = PackedNet(members, conv="member", rng_states=rng_states)
    for m in net.base.modules():
        if type(m) is MemberConv2d:
            m.__class__ = CONV_CLASSES[conv]
    return net


class ChunkIsolatedEngine(PackedStepEngine):
    """``PackedStepEngine`` with the isolation once per chunk (``run``'s K steps) instead of once per step:
    snapshot at the chunk's first step, ``ok &= isfinite(objective)`` per step, and after the last step a
    member not ok is dead (``alive``, sticky) and gets its chunk-start parameters, optimiser state and
    BatchNorm statistics back; every step's returned loss of a dead member is then NaN (rewritten in place,
    so a replayed CUDA graph does it too). No host sync. ``step`` alone (outside ``run``) is a chunk of one."""

    def __init__(self, net: PackedNet, optimizer: torch.optim.Optimizer, loss: PackedLoss,
                 options: SpeedPlan | None = None) -> None:  # fmt: skip
        super().__init__(net, optimizer, loss, options, isolate=True)
        self.chunk_len, self.pos = 1, 0
        self.saved: Any = None
        self.ok: torch.Tensor | None = None
        self.chunk_out: list[torch.Tensor] = []

    def run(self, xs: Sequence[torch.Tensor], ys: list[torch.Tensor]) -> list[StepOut]:
        self.chunk_len, self.pos = len(ys), 0  # capture and the eager paths call step len(ys) times, in order
        try:
            return super().run(xs, ys)
        finally:
            self.chunk_len, self.pos = 1, 0

    @torch.no_grad()
    def end_chunk(self) -> None:
        alive, (tensors, statistics) = self.pack.alive, self.saved
        assert self.ok is not None
        alive.logical_and_(self.ok)
        for (k, t), old in zip(self.member_tensors(), tensors, strict=True):
            t.copy_(torch.where(alive[k], t, old))
        for t, old in zip(self.pack.statistics(), statistics, strict=True):
            t.copy_(torch.where(alive.view(-1, *[1] * (t.dim() - 1)), t, old))
        for data in self.chunk_out:
            data.copy_(torch.where(alive, data, torch.full_like(data, float("nan"))))
        self.saved, self.ok, self.chunk_out = None, None, []

    def step(self, x: torch.Tensor, y: torch.Tensor, zero_in_place: bool = False) -> StepOut:
        if self.pos == 0:
            self.saved = self.snapshot()
            self.ok = torch.ones_like(self.pack.alive)
            self.chunk_out = []
        self.optimizer.zero_grad(set_to_none=not zero_in_place)
        objectives, data, logits = self.losses(x, y)
        objectives.sum().backward()
        self.optimizer.step()
        assert self.ok is not None
        self.ok.logical_and_(torch.isfinite(objectives.detach()))
        out = data.detach().clone()  # its own tensor: end_chunk rewrites it in place
        self.chunk_out.append(out)
        self.pos += 1
        if self.pos >= self.chunk_len:
            self.end_chunk()
            self.pos = 0
        return out, logits.detach().argmax(-1)


def make_engine(
    net: PackedNet,
    optimizer: torch.optim.Optimizer,
    loss: PackedLoss,
    options: SpeedPlan | None = None,
    isolation: str = "step",
) -> PackedStepEngine:
    """Today's per-step isolation (``"step"``) or :class:`ChunkIsolatedEngine` (``"chunk"``)."""
    if isolation not in PACK_ISOLATIONS:
        raise ValueError(f"pack_isolation must be one of {PACK_ISOLATIONS}, got {isolation!r}")
    if isolation == "chunk":
        return ChunkIsolatedEngine(net, optimizer, loss, options)
    return PackedStepEngine(net, optimizer, loss, options)
