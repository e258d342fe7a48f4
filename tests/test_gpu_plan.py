"""The GPU plan's packed variants (cifar_lab.packing.variants) against today's pack, in float64 on the CPU,
and the GPU matrix (cifar_lab.gpu_plan, ``.ci/gpu-speed``) run whole in its CPU dry-run.

On the CPU the streams variant runs its members' convs one after another (no CUDA streams): these tests
check its code path and arithmetic, not the streams' overlap, which only a GPU can show.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
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


def dry_rows(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    """``.ci/gpu-speed --dry-run [args]`` with OUT=tmp_path: its JSON lines and its progress (stderr)."""
    env = {**__import__("os").environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / ".ci" / "gpu-speed"), "--dry-run", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "gpu-speed.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], done.stderr


def in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], only: str) -> tuple[list[dict], str]:
    """``python -m cifar_lab.gpu_plan --dry-run --only <only>`` in this process: its JSON lines and stderr."""
    from cifar_lab.gpu_plan import main

    out = tmp_path / f"{only.replace(' ', '_')}.jsonl"
    assert main(["--dry-run", "--only", only, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()], capsys.readouterr().err


def test_a_few_rows_of_the_matrix_on_the_cpu(tmp_path, capsys):
    """Each packed variant, with the fast row their ratio needs: written as JSON lines with their figures, the
    CPU fallbacks named; a progress line per row. (The solo rows: the next tests and the whole matrix's.)"""
    rows, err = in_process(tmp_path, capsys, "p1a b1024 packed x2")
    head, fast, *results = rows
    assert head["row"] == "machine" and head["dry_run"] is True and head["peak_tflop_per_s"]["float32"] > 0
    assert fast["row"] == "fast"  # run too: the packs' vs_sequential is N x its time over theirs
    assert [r["row"] for r in results] == [f"packed x2 {v}" for v in ("member", "streams", "grouped_cl", "chunk")]
    assert all(r["vs_sequential"] == round(2 * fast["s_per_epoch"] / r["s_per_epoch"], 3) for r in results)
    for r in [fast, *results]:
        assert r["status"] == "ok", r
        assert r["s_per_epoch"] > 0 and r["images_per_s"] > 0 and 0 < r["pct_of_peak"]
        assert r["tflop_per_epoch"] > 0 and r["ran_batch"] == 4
        assert "no CUDA graph on the CPU: chunks run eagerly" in r["fallback"]
    assert any("no CUDA streams" in f for f in results[1]["fallback"])
    assert results[0]["tflop_per_epoch"] == pytest.approx(results[3]["tflop_per_epoch"])  # the same arithmetic
    assert err.count("] p1a b1024 packed x2") == 4 and "DRY RUN" in err and "What the matrix would decide" in err


def test_rows_are_time_boxed_and_the_budget_skips_the_rest():
    """A row past its time box is written 'timeout' and the matrix goes on; rows past the budget 'skipped'."""
    from cifar_lab.gpu_plan import Settings, matrix, run_matrix

    settings = Settings(torch.device("cpu"), dry_run=True, steps_per_call=2, warmup_chunks=1, timed_chunks=1,
                        pool=2, tiny_batch=4)  # fmt: skip
    rows = [r for r in matrix((2,)) if r.experiment == "p2a" and r.batch == 128 and r.row in ("fast", "bf16")]
    seen: list[dict] = []
    out = run_matrix(rows, settings, budget=600, emit=seen.append, row_seconds=0.05)
    assert [r["status"] for r in out[1:]] == ["timeout", "timeout"] and seen == out
    out = run_matrix(rows, settings, budget=0, emit=seen.append)
    assert [r["status"] for r in out[1:]] == ["skipped", "skipped"]


@pytest.mark.slow
def test_the_whole_matrix_runs_on_the_cpu(tmp_path):
    """``bash .ci/gpu-speed --dry-run``: every row of the matrix (45) runs to 'ok' on the CPU."""
    from cifar_lab.gpu_plan import matrix

    rows, err = dry_rows(tmp_path)
    assert len(rows) == 1 + len(matrix((2, 3))) == 46
    assert [r["status"] for r in rows[1:]] == ["ok"] * 45, [r for r in rows if r.get("status") != "ok"]
    assert {(r["experiment"], r["batch"]) for r in rows[1:]} == {("p1a", 1024), ("p2a", 1024), ("p2a", 128)}
    compiled = [r for r in rows if r.get("compile")]
    assert len(compiled) == 6 and all(any("backend=" in f for f in r["fallback"]) for r in compiled)
    assert all("vs_sequential" in r for r in rows if r.get("pack"))
    assert err.count("s/epoch") == 45


def test_the_speed_options_choose_a_packs_convs_and_isolation():
    """speed.pack_conv / speed.pack_isolation reach the PackedModule through the plan (resolve_plan)."""
    from cifar_lab.packing.module import PackedModule
    from cifar_lab.plan import resolve_plan
    from cifar_lab.task import ClassifierModule

    speed = {"steps_per_call": 2, "pack_conv": "grouped_cl", "pack_isolation": "chunk"}
    plan = resolve_plan(speed, "gpu", torch.device("cpu"), 1, "32-true")
    assert (plan.pack_conv, plan.pack_isolation) == ("grouped_cl", "chunk")
    assert resolve_plan({}, "classic", torch.device("cpu"), 1, "32-true").pack_isolation == "step"
    sgd = partial(torch.optim.SGD, lr=0.1)
    members = [ClassifierModule.from_modules(net, sgd, plan=plan) for net in inits("cnn", 2)]
    module = PackedModule(members, plan)
    convs = {type(m) for m in module.net.base.modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == {GroupedChannelsLastConv2d}
    assert type(module.engine_for(module.configure_optimizers())) is ChunkIsolatedEngine


def test_a_bad_pack_option_is_refused_in_one_paragraph(tmp_path):
    from tests.conftest import FAST, run_cli

    done = run_cli(tmp_path, *FAST, "speed.pack_isolation=epoch")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "speed.pack_isolation" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_packed_sweep_trains_with_the_variants(tmp_path):
    """Through the real entry point: a pack of two p1a jobs with grouped channels_last convs and the check once
    per chunk completes both members and records the options in their summaries."""
    from tests.conftest import FAST, load_summary, run_cli, run_dirs

    variants = ["speed.steps_per_call=2", "speed.pack_conv=grouped_cl", "speed.pack_isolation=chunk"]
    done = run_cli(tmp_path, "-m", "experiment=p1a", "seed=0,1", "hydra/launcher=packed", *FAST, "data.loader=gpu",
                   *variants, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [load_summary(d) for d in run_dirs(tmp_path)]
    assert len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)
    assert all(s["packed"]["members"] == 2 for s in summaries)
    assert all((s["speed"]["pack_conv"], s["speed"]["pack_isolation"]) == ("grouped_cl", "chunk") for s in summaries)


def test_a_run_from_before_the_pack_options_resumes_at_their_defaults():
    """A checkpoint's stored config from before speed.pack_conv / speed.pack_isolation lacks them: at their
    defaults a resume is the same run; another value is a difference."""
    from cifar_lab.configs import compose
    from cifar_lab.resume import differences, run_identity

    now = run_identity(compose("experiment=p1a"))
    older = {k: v for k, v in now.items() if not k.startswith("speed.pack_")}
    assert len(older) == len(now) - 2 and differences(older, now) == []
    assert differences(older, run_identity(compose("experiment=p1a", "speed.pack_isolation=chunk"))) == [
        "speed.pack_isolation: 'step' -> 'chunk'"
    ]


def test_each_solo_row_turns_on_what_it_names(monkeypatch):
    """The knobs reach the step: cuDNN's benchmark mode, NHWC weights, fused SGD, a compiled forward, bf16
    autocast, each in its row and the rows after it (cumulative), none in ``fast``."""
    import cifar_lab.gpu_plan as gpu_plan

    seen = {}

    class Spy(gpu_plan.StepEngine):
        def __init__(self, net, optimizer, loss_fn, options, scheduler=None):
            super().__init__(net, optimizer, loss_fn, options, scheduler)
            weight = next(p for p in net.parameters() if p.dim() == 4)
            seen[len(seen)] = (torch.backends.cudnn.benchmark, weight.is_contiguous(memory_format=torch.channels_last)
                               and not weight.is_contiguous(), bool(optimizer.defaults.get("fused")),
                               net.compiled_forward is not None, options.autocast_dtype == torch.bfloat16)  # fmt: skip

    monkeypatch.setattr(gpu_plan, "StepEngine", Spy)
    settings = gpu_plan.Settings(torch.device("cpu"), dry_run=True, steps_per_call=2, warmup_chunks=1,
                                 timed_chunks=1, pool=2, tiny_batch=4)  # fmt: skip
    solo = [r for r in gpu_plan.matrix((2,)) if r.experiment == "p1a" and not r.variant.pack]
    rows = gpu_plan.run_matrix(solo, settings, budget=600, emit=lambda r: None)
    names = [r["row"] for r in rows[1:]]
    assert all(r["status"] == "ok" for r in rows[1:]), rows
    got = dict(zip(names, seen.values()))
    assert got == {  # (cudnn.benchmark, channels_last, fused, compiled, bf16)
        "fast": (False, False, False, False, False),
        "+cudnn_benchmark": (True, False, False, False, False),
        "+channels_last": (True, True, False, False, False),
        "+fused_sgd": (True, True, True, False, False),
        "bf16": (True, True, True, False, True),
        "+compile_in_graph": (True, True, True, True, False),
        "+compile_no_graph": (True, True, True, True, False),
    }
    assert torch.backends.cudnn.benchmark is False  # set back after the rows


def test_each_packed_row_runs_the_variant_it_names(monkeypatch):
    """(a) member convs + per-step isolation, (b) stream convs, (c) grouped channels_last convs, (d) member
    convs + the check once per chunk: the classes the rows' steps ran with."""
    import cifar_lab.gpu_plan as gpu_plan

    seen = []

    def spy(net, optimizer, loss, options, isolation):
        convs = {type(m).__name__ for m in net.base.modules() if isinstance(m, torch.nn.Conv2d)}
        engine = make_engine(net, optimizer, loss, options, isolation)
        seen.append((convs, type(engine).__name__))
        return engine

    monkeypatch.setattr(gpu_plan, "make_engine", spy)
    settings = gpu_plan.Settings(torch.device("cpu"), dry_run=True, steps_per_call=2, warmup_chunks=1,
                                 timed_chunks=1, pool=2, tiny_batch=4)  # fmt: skip
    packs = [r for r in gpu_plan.matrix((2,)) if r.experiment == "p1a" and r.variant.pack]
    rows = gpu_plan.run_matrix(packs, settings, budget=600, emit=lambda r: None)
    assert [r["status"] for r in rows[1:]] == ["ok"] * 4
    assert dict(zip([r["row"] for r in rows[1:]], seen)) == {
        "packed x2 member": ({"MemberConv2d"}, "PackedStepEngine"),
        "packed x2 streams": ({"StreamConv2d"}, "PackedStepEngine"),
        "packed x2 grouped_cl": ({"GroupedChannelsLastConv2d"}, "PackedStepEngine"),
        "packed x2 chunk": ({"MemberConv2d"}, "ChunkIsolatedEngine"),
    }
