"""The fast path (resident loader, K steps per Lightning step) against the classic DataLoader path."""

from __future__ import annotations

import csv

import pytest
import torch

from cifar_lab.data.loaders import chunk_batches
from cifar_lab.errors import UserError
from cifar_lab.fast import StepEngine
from cifar_lab.models import create_model
from cifar_lab.plan import SpeedPlan, resolve_plan
from tests.conftest import FAST, compose_cfg, run_inprocess

EQUIV = [
    *FAST,
    "data.n_train=300",
    "data.n_test=100",
    "data.batch_size=32",
    "trainer.max_epochs=2",
    "deterministic=true",
    "seed=7",
]


def rows(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


@pytest.mark.parametrize("experiment", ["p1a", "p2b_batchnorm", "p2b_dropout"])
def test_fast_path_matches_classic_per_epoch(tmp_path, experiment):
    """Same seed, deterministic: identical per-epoch losses, BatchNorm running stats and dropout draws.

    300 images at batch 32 is 10 batches (the last holds 12), served in chunks of 3: three full
    chunks and a final chunk of one partial batch, so chunk edges and the partial batch are covered.
    """
    extra = ["model.n_blocks=3"] if experiment != "p1a" else []
    results = {}
    for loader in ("classic", "gpu"):
        summary = run_inprocess(
            tmp_path / loader,
            f"experiment={experiment}",
            *EQUIV,
            *extra,
            f"data.loader={loader}",
            "speed.steps_per_call=3",
        )
        assert summary["status"] == "completed" and summary["data"]["loader"] == loader
        results[loader] = tmp_path / loader
    classic, fast = rows(results["classic"]), rows(results["gpu"])
    assert len(classic) == len(fast) == 2
    for a, b in zip(classic, fast):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)
    sd = [
        torch.load(results[k] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for k in ("classic", "gpu")
    ]
    assert sd[0].keys() == sd[1].keys()
    for key in sd[0]:  # weights, and BatchNorm running statistics where present
        assert torch.allclose(sd[0][key].float(), sd[1][key].float(), rtol=1e-5, atol=1e-6), key
    if experiment == "p2b_batchnorm":
        assert any("running_mean" in k for k in sd[0])


@pytest.mark.parametrize("loader", ["classic", "gpu"])
def test_global_step_counts_every_optimizer_step(loader, monkeypatch):
    """Lightning's global_step equals the optimizer steps taken, on both paths.

    The fast path steps the raw optimizer K times per Lightning step and advances Lightning's
    (private) step counter itself (``cifar_lab.fast.advance_global_step``); this guards that.
    300 images at batch 32 = 10 batches per epoch, 2 epochs; chunks of 3 (3 + 3 + 3 + 1).
    """
    from cifar_lab.build import build

    steps: list[int] = []
    original = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: (steps.append(1), original(self, *a, **k))[1])
    cfg = compose_cfg("experiment=p1a", *EQUIV, f"data.loader={loader}", "speed.steps_per_call=3")
    parts = build(cfg, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    assert parts.plan.fast == (loader == "gpu")
    assert len(steps) == 20
    assert parts.trainer.global_step == 20


def test_chunking_keeps_every_batch_in_order():
    batches = [(torch.full((2,), i), torch.full((2,), -i)) for i in range(7)]
    chunks = list(chunk_batches(iter(batches), 3))
    assert [len(xs) for xs, _ in chunks] == [3, 3, 1]
    assert [int(x[0]) for xs, _ in chunks for x in xs] == list(range(7))


def test_engine_eager_steps_equal_plain_sgd_steps():
    """StepEngine on the CPU performs exactly the steps of a plain training loop."""
    torch.manual_seed(0)
    net_a = create_model("cnn")
    net_b = create_model("cnn")
    net_b.load_state_dict(net_a.state_dict())
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(4)]
    loss_fn = lambda logits, y: (torch.nn.functional.cross_entropy(logits, y),) * 2  # noqa: E731
    engine = StepEngine(
        net_a, torch.optim.SGD(net_a.parameters(), lr=0.1), loss_fn, SpeedPlan(loader="gpu", steps_per_call=4)
    )
    out = engine.run([x for x, _ in data], [y for _, y in data])
    opt_b = torch.optim.SGD(net_b.parameters(), lr=0.1)
    for (x, y), (loss, preds) in zip(data, out):
        opt_b.zero_grad()
        logits = net_b(x)
        ref = torch.nn.functional.cross_entropy(logits, y)
        ref.backward()
        opt_b.step()
        assert torch.allclose(loss, ref.detach()) and torch.equal(preds, logits.argmax(1))
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)


def test_resolve_picks_the_path():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    speed = {"steps_per_call": 8, "cuda_graph": "auto", "compile": False}
    plan = resolve_plan(speed, "auto", cpu, 1, "32-true")
    assert plan.loader == "classic" and not plan.fast and plan.steps_per_call == 1
    plan = resolve_plan(speed, "auto", cuda, 1, "bf16-mixed")
    assert plan.fast and plan.cuda_graph and plan.steps_per_call == 8 and plan.autocast_dtype == torch.bfloat16
    plan = resolve_plan(speed, "auto", cuda, 2, "32-true")
    assert plan.loader == "classic" and not plan.fast  # DDP keeps the classic path
    plan = resolve_plan(speed, "gpu", cpu, 1, "32-true")
    assert plan.fast and not plan.cuda_graph  # the resident loader on the CPU: eager steps
    with pytest.raises(UserError, match="needs a CUDA device"):
        resolve_plan({**speed, "cuda_graph": True}, "gpu", cpu, 1, "32-true")
    with pytest.raises(UserError, match="16-mixed"):
        resolve_plan(speed, "gpu", cuda, 1, "16-mixed")


def count_graphs(monkeypatch) -> dict[str, int]:
    """Count CUDA graph captures and replays: every ``torch.cuda.CUDAGraph`` made from now on is a counting one."""
    counts = {"captures": 0, "replays": 0}

    class CountingGraph(torch.cuda.CUDAGraph):
        def capture_end(self) -> None:
            super().capture_end()
            counts["captures"] += 1

        def replay(self) -> None:
            super().replay()
            counts["replays"] += 1

    monkeypatch.setattr(torch.cuda, "CUDAGraph", CountingGraph)
    return counts


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_match_eager_steps_on_gpu(monkeypatch):
    """On CUDA: the captured-and-replayed K steps give the eager steps' losses and weights."""
    counts = count_graphs(monkeypatch)
    torch.manual_seed(0)
    dev = torch.device("cuda")
    torch.backends.cudnn.deterministic = True
    nets = [create_model("resnet", n_blocks=3, batchnorm=True).to(dev) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    loss_fn = lambda logits, y: (torch.nn.functional.cross_entropy(logits, y),) * 2  # noqa: E731
    engines = [
        StepEngine(n, torch.optim.SGD(n.parameters(), lr=0.05), loss_fn, SpeedPlan("gpu", 4, cuda_graph=g))
        for n, g in zip(nets, (False, True))
    ]
    g = torch.Generator(device="cpu").manual_seed(1)
    for chunk in range(5):  # chunk 1 warms up, chunk 2 captures, chunks 2-5 replay
        xs = [torch.randn(32, 3, 32, 32, generator=g).to(dev) for _ in range(4)]
        ys = [torch.randint(0, 10, (32,), generator=g).to(dev) for _ in range(4)]
        eager, graph = (e.run(xs, ys) for e in engines)
        assert counts == {"captures": int(chunk >= 1), "replays": chunk}, chunk  # the graph ran the steps
        assert graph is engines[1].static_out or chunk == 0  # its losses are the graph's outputs, not eager ones
        for (la, _), (lb, _) in zip(eager, graph):
            assert torch.allclose(la, lb, rtol=1e-4, atol=1e-5)
    assert isinstance(engines[1].graph, torch.cuda.CUDAGraph) and engines[0].graph is None
    for pa, pb in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("extra", [[], ["trainer.precision=bf16-mixed", "speed.channels_last=true"]])
def test_trainer_gpu_runs_the_fast_path_end_to_end(tmp_path, extra, monkeypatch):
    """trainer=gpu through the real entry point: resident loader, chunks, CUDA graph, partial batch.

    2,000 images at batch 128 are 16 batches (the last of 80), chunks of 4: each epoch has 3 full
    chunks and one holding the partial batch, which runs eagerly. Epoch 1's first full chunk warms
    up and its second is captured and replayed, so 3 epochs replay the graph 2 + 3 + 3 = 8 times.
    """
    counts = count_graphs(monkeypatch)
    summary = run_inprocess(
        tmp_path,
        "experiment=p2b_batchnorm",
        "trainer=gpu",
        "data=synthetic",
        "data.n_train=2000",
        "data.n_test=500",
        "data.batch_size=128",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "speed.steps_per_call=4",
        *extra,
    )
    assert summary["status"] == "completed"
    assert summary["speed"]["loader"] == "gpu" and summary["speed"]["cuda_graph"] is True
    assert counts == {"captures": 1, "replays": 8}  # the flag above, and the graph really ran the steps
    assert summary["best"]["val_acc"] > 0.2  # learns (synthetic classes are easy)
