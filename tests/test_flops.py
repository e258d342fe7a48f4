"""The bench's floor (cifar_lab.flops) and the CPU's default speed settings (issue 23, items 1 and 2)."""

from __future__ import annotations

import copy

import pytest
import torch

from cifar_lab.build import build_module, build_trainer, plan_for, use_heap
from cifar_lab.flops import count_flops, peak_flops
from cifar_lab.plan import SpeedPlan
from tests.conftest import EXPERIMENTS, compose_cfg


def test_count_flops_of_a_linear_layer_forward_and_step():
    batch, n_in, n_out = 16, 12, 5
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in)
    assert count_flops(layer, x) == 2 * batch * n_in * n_out  # one multiply-add = 2 FLOPs

    def step(inputs: torch.Tensor) -> None:
        layer(inputs).sum().backward()

    # backward: the weight's gradient (one more product of the same size); the input's only when it needs one
    assert count_flops(step, x) == 2 * (2 * batch * n_in * n_out)
    assert count_flops(step, x.clone().requires_grad_()) == 3 * (2 * batch * n_in * n_out)


def test_peak_is_a_positive_rate():
    peak = peak_flops(torch.device("cpu"), torch.float32, size=128)
    assert peak > 0 and peak != float("inf")


def cpu_plan(*overrides: str) -> SpeedPlan:
    cfg = compose_cfg("data=synthetic", *overrides)
    return plan_for(cfg, build_trainer(cfg, logger=False))


@pytest.mark.parametrize("trainer", ["trainer=cpu", "trainer=default"])
def test_the_cpu_default_is_the_measured_fastest_fp32(trainer):
    """trainer=cpu, and trainer=default's accelerator auto on this (GPU-less) machine: NHWC, the kept heap, fp32."""
    if trainer == "trainer=default" and torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    plan = cpu_plan("experiment=p1a", trainer)
    assert plan.channels_last and plan.cpu_heap and plan.precision == "32-true" and plan.autocast_dtype is None
    assert plan.cpu_threads is None and not plan.compile  # torch's own thread count; no compiler needed
    explicit = cpu_plan("experiment=p1a", trainer, "speed.channels_last=false", "speed.cpu_heap=false")
    assert not explicit.channels_last and not explicit.cpu_heap  # the previous default, on request


def test_auto_keeps_nchw_where_the_layout_would_change_a_run():
    """Element-wise dropout draws its mask in memory order; a pack's vmapped convolutions have no NHWC layout."""
    assert not cpu_plan("experiment=p2a", "trainer=cpu", "reg=dropout").channels_last
    assert cpu_plan("experiment=p2a", "trainer=cpu", "reg=dropout", "model.dropout_kind=channel").channels_last
    cfg = compose_cfg("data=synthetic", "experiment=p1a", "trainer=cpu")
    assert not plan_for(cfg, build_trainer(cfg, logger=False), pack=True).channels_last


def step_in_float64(cfg, channels_last: bool, heap: bool = False):
    """One SGD step of the preset's module in float64, NCHW or NHWC: (loss, gradients, new weights)."""
    torch.manual_seed(0)
    plan = SpeedPlan(channels_last=channels_last, precision="64-true")
    module = build_module(cfg, [str(c) for c in range(10)], plan)
    module.train()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    use_heap(heap)
    try:
        torch.manual_seed(2)  # the dropout draws
        objective, loss = module.loss_fn(module(x), y)
        objective.backward()
        grads = [p.grad.clone() for p in module.net.parameters()]
        opt.step()
    finally:
        use_heap(False)
    return loss.detach(), grads, [p.detach().clone() for p in module.net.parameters()]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_a_channels_last_step_equals_the_nchw_step_in_float64(experiment):
    """Same weights, same batch: NHWC gives the NCHW step's loss, gradients and updated weights to float64
    rounding (other kernels sum in another order: ~1e-16 relative, far below any fp32 difference)."""
    channel = ["model.dropout_kind=channel"] if experiment == "p2b_dropout" else []  # element masks: layout-bound
    cfg = compose_cfg("data=synthetic", "trainer=cpu", f"experiment={experiment}", *channel)
    reference = step_in_float64(copy.deepcopy(cfg), channels_last=False)
    nhwc = step_in_float64(copy.deepcopy(cfg), channels_last=True)
    torch.testing.assert_close(nhwc[0], reference[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(nhwc[1] + nhwc[2], reference[1] + reference[2]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_kept_heap_changes_no_number():
    """cpu_heap changes where tensors live, not what is computed: the step is bit-identical."""
    cfg = compose_cfg("data=synthetic", "trainer=cpu", "experiment=p1a")
    plain, heap = step_in_float64(copy.deepcopy(cfg), False), step_in_float64(copy.deepcopy(cfg), False, heap=True)
    assert torch.equal(plain[0], heap[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1] + plain[2], heap[1] + heap[2]))
