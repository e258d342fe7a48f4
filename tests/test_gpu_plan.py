"""The GPU plan's packed variants (cifar_lab.packing.variants) against today's pack, in float64 on the CPU,
and the GPU matrix (cifar_lab.gpu_plan, ``.ci/gpu-speed``) run whole in its CPU dry-run.

On the CPU the streams variant runs its members' convs one after another (no CUDA streams): these tests
check its code path and arithmetic, not the streams' overlap, which only a GPU can show.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_lab.models import create_model
from cifar_lab.packing import PackedLoss, PackedNet, PackedStepEngine, member_param_groups
from cifar_lab.packing.conv import MemberConv2d
from cifar_lab.packing.variants import (
    ChunkIsolatedEngine,
    GroupedChannelsLastConv2d,
    StreamConv2d,
    make_engine,
    make_packed_net,
)
from cifar_lab.plan import SpeedPlan

REPO = Path(__file__).resolve().parent.parent
RTOL, ATOL = 1e-9, 1e-12
K = 4  # steps per chunk
SMALL = {"resnet": {"n_blocks": 3, "width": 8, "batchnorm": True}, "cnn": {"width": 8}}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def inits(name: str, n: int = 3) -> list[torch.nn.Module]:
    out = []
    for k in range(n):
        torch.manual_seed(100 + k)
        out.append(create_model(name, **SMALL[name]))
    return out


def batches(n: int, steps: int, bad: dict[int, int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` (N, 8) batches; ``bad={step: k}`` puts an inf in member k's batch at that step."""
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        y = torch.randint(0, 10, (n, 8), generator=g)
        x = torch.randn(n, 8, 3, 32, 32, generator=g, dtype=torch.get_default_dtype())
        x[..., 0, :, :] += (y.to(x.dtype) / 5 - 1)[..., None, None]
        if bad and s in bad:
            x[bad[s], 0, 0, 0, 0] = float("inf")
        out.append((x, y))
    return out


def train(
    models: list[torch.nn.Module],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    conv: str = "member",
    isolation: str = "step",
    lrs: list[float] | None = None,
) -> tuple[PackedNet, torch.optim.Optimizer, list[torch.Tensor]]:
    """The pack trained on ``data`` in chunks of K through the engine's ``run`` (the fast path's call);
    returns the net, its optimiser and the per-step data losses (N,)."""
    n = len(models)
    net = make_packed_net(models, conv).train()
    opt = torch.optim.SGD(member_param_groups(net, lr=lrs or [0.05] * n, momentum=[0.9] * n))
    engine = make_engine(net, opt, PackedLoss([0.0, 1e-3, 0.0][:n]), SpeedPlan(steps_per_call=K), isolation)
    losses = []
    for start in range(0, len(data), K):
        chunk = data[start : start + K]
        losses += [loss for loss, _ in engine.run([x for x, _ in chunk], [y for _, y in chunk])]
    return net, opt, losses


def member_state(net: PackedNet, opt: torch.optim.Optimizer, k: int) -> list[torch.Tensor]:
    optim = [v for p in net.members[k].parameters() for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    return [t.detach().clone() for t in [*net.member_state_dict(k).values(), *optim]]


def assert_states(a: list[torch.Tensor], b: list[torch.Tensor], exact: bool = False, rtol: float = RTOL) -> None:
    assert len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        if exact:
            assert torch.equal(s, t)
        else:
            torch.testing.assert_close(s, t, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("name", ["resnet", "cnn"])
@pytest.mark.parametrize("conv", ["streams", "grouped_cl"])
def test_conv_variants_train_as_member_convs(float64, conv, name):
    """Two chunks of K steps (SGD momentum, BatchNorm in the ResNet, L2 on one member): every member's weights,
    momentum buffers, statistics and per-step losses equal today's member convs': bitwise for streams (on the
    CPU the very same convs), within 1e-8 for the grouped conv (another summation order, which 8 steps of
    training with momentum amplify from ~1e-16 to ~1e-9 relative)."""
    models, data = inits(name), batches(3, 2 * K)
    ref_net, ref_opt, ref_losses = train(models, data)
    net, opt, losses = train(models, data, conv=conv)
    expected = {"streams": StreamConv2d, "grouped_cl": GroupedChannelsLastConv2d}[conv]
    assert {type(m) for m in net.base.modules() if isinstance(m, torch.nn.Conv2d)} == {expected}
    exact, rtol = conv == "streams", 1e-8
    assert_states(losses, ref_losses, exact, rtol)
    for k in range(3):
        assert_states(member_state(net, opt, k), member_state(ref_net, ref_opt, k), exact, rtol)
    assert not torch.equal(member_state(net, opt, 0)[0], models[0].state_dict()[next(iter(models[0].state_dict()))])


@pytest.mark.parametrize("conv", ["streams", "grouped_cl"])
def test_conv_variants_forward_on_a_shared_batch(float64, conv):
    """The validation pass feeds one (B, ...) batch to all members (an unbatched input under vmap)."""
    models = inits("resnet")
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = make_packed_net(models).eval()(x)
        out = make_packed_net(models, conv).eval()(x)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_grouped_cl_runs_its_conv_in_channels_last(monkeypatch):
    """The grouped conv's input and weight reach F.conv2d as NHWC (B, N*C, H, W), groups N."""
    import cifar_lab.packing.variants as variants

    seen = []
    real = variants.F.conv2d

    def spy(x, w, *args):
        seen.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last),
                     w.is_contiguous(memory_format=torch.channels_last), args[-1]))  # fmt: skip
        return real(x, w, *args)

    monkeypatch.setattr(variants.F, "conv2d", spy)
    net = make_packed_net(inits("cnn"), "grouped_cl")
    net(torch.randn(3, 8, 3, 32, 32))
    assert seen and all(x_cl and w_cl for _, x_cl, w_cl, _ in seen)
    assert seen[0][0] == (8, 9, 32, 32) and seen[0][3] == 3


def test_chunk_isolation_equals_per_step_isolation_without_divergence(float64):
    """No member diverges: chunk-level isolation gives exactly (bitwise) today's per-step results."""
    models, data = inits("resnet"), batches(3, 3 * K)
    ref_net, ref_opt, ref_losses = train(models, data)
    net, opt, losses = train(models, data, isolation="chunk")
    assert torch.equal(torch.stack(losses), torch.stack(ref_losses))
    assert net.alive.tolist() == [True, True, True]
    for k in range(3):
        assert_states(member_state(net, opt, k), member_state(ref_net, ref_opt, k), exact=True)


@pytest.mark.parametrize("cause", ["inf_input", "huge_lr"])
def test_chunk_isolation_rolls_a_diverged_member_back_to_its_chunk_start(float64, cause):
    """Member 1 diverges mid-chunk (an inf in its batch at step K+1, or a huge learning rate): it ends at its
    state after the first chunk (the chunk-start of the chunk it diverged in, then frozen through the third),
    flagged dead, its losses NaN for that whole chunk and after; members 0 and 2 equal their per-step-isolation
    results exactly."""
    models = inits("resnet")
    bad = {K + 1: 1} if cause == "inf_input" else None
    lrs = [0.05, 1e150 if cause == "huge_lr" else 0.05, 0.02]
    data = batches(3, 3 * K, bad)
    ref_net, ref_opt, _ = train(models, data, lrs=lrs)
    net, opt, losses = train(models, data, isolation="chunk", lrs=lrs)
    first_net, first_opt, first_losses = train(models, data[:K], isolation="chunk", lrs=lrs)
    steps = torch.stack(losses)  # (steps, N)
    assert net.alive.tolist() == [True, False, True] == ref_net.alive.tolist()
    for k in (0, 2):
        assert_states(member_state(net, opt, k), member_state(ref_net, ref_opt, k), exact=True)
        assert torch.isfinite(steps[:, k]).all()
    if cause == "inf_input":  # it diverged in the second chunk: its state after the first one
        assert first_net.alive.tolist() == [True, True, True]
        assert torch.isfinite(steps[:K, 1]).all() and torch.isnan(steps[K:, 1]).all()
        assert_states(member_state(net, opt, 1), member_state(first_net, first_opt, 1), exact=True)
        # per-step isolation keeps the step before the inf, one step further than the chunk start
        assert not torch.equal(member_state(ref_net, ref_opt, 1)[0], member_state(net, opt, 1)[0])
    else:  # a huge lr diverges within the first chunk: member 1 is back at its initial weights
        assert torch.isnan(steps[:, 1]).all()
        initial = models[1].state_dict()
        for key, t in net.member_state_dict(1).items():
            assert torch.equal(t, initial[key]), key
    assert all(torch.isfinite(t.double()).all() for t in member_state(net, opt, 1))


def test_make_engine_picks_the_isolation():
    net = make_packed_net(inits("cnn", 2))
    opt = torch.optim.SGD(member_param_groups(net, lr=[0.1, 0.1]))
    assert type(make_engine(net, opt, PackedLoss([0, 0]))) is PackedStepEngine
    assert type(make_engine(net, opt, PackedLoss([0, 0]), isolation="chunk")) is ChunkIsolatedEngine
    assert {type(m) for m in make_packed_net(inits("cnn", 2)).base.modules() if isinstance(m, torch.nn.Conv2d)} == {
        MemberConv2d
    }
    with pytest.raises(ValueError, match="pack_isolation"):
        make_engine(net, opt, PackedLoss([0, 0]), isolation="epoch")
    with pytest.raises(ValueError, match="pack_conv"):
        make_packed_net(inits("cnn", 2), "fused")
