"""Member-steps per second: N solo steps one after another vs one packed step of N members.

``python -m cifar_lab.packing.bench --threads 1 --batch 128 1024`` prints a Markdown table row per
(preset, batch, method). Float32, random data, SGD with momentum; a warm-up step is not timed and the fastest
of ``--steps`` steps counts (the machine is shared). The table in
``cifar_lab/packing/__init__.py`` came from this script.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch

from cifar_lab.fast import StepEngine
from cifar_lab.models import create_model
from cifar_lab.packing.loss import PackedLoss
from cifar_lab.packing.stack import PackedNet
from cifar_lab.packing.step import PackedStepEngine, member_param_groups
from cifar_lab.plan import SpeedPlan

PRESETS = {"p1a": ("cnn", {}), "p2a": ("resnet", {})}


def timed(step: Callable[[], None], steps: int) -> float:
    """Fastest of ``steps`` timed calls, after one untimed warm-up call.

    The minimum, not the mean: this 2-core machine is shared, and other jobs only ever add time."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def solo_step(members: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The N members stepped one after another by the solo StepEngine, each on its own batch."""
    engines = []
    for m in members:
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        engines.append(
            StepEngine(m, opt, lambda logits, t: (torch.nn.functional.cross_entropy(logits, t),) * 2, SpeedPlan())
        )

    def step() -> None:
        for k, e in enumerate(engines):
            e.step(x[k], y[k])

    return step


def packed_step(members: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, isolate: bool) -> Callable[[], None]:
    net = PackedNet(members).train()
    opt = torch.optim.SGD(member_param_groups(net, lr=[0.01] * net.n, momentum=[0.9] * net.n))
    engine = PackedStepEngine(net, opt, PackedLoss([0.0] * net.n), isolate=isolate)
    return lambda: engine.step(x, y) and None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per method (after one warm-up); the fastest counts"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), N={args.n}, float32, SGD momentum 0.9")
    print("| preset | batch | solo, one after another | vmap pack | vmap pack, no isolation | pack / solo |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        name, options = PRESETS[preset]
        for batch in args.batch:
            torch.manual_seed(0)
            members = [create_model(name, **options) for _ in range(args.n)]
            x = torch.randn(args.n, batch, 3, 32, 32)
            y = torch.randint(0, 10, (args.n, batch))
            solo = args.n / timed(solo_step(copy.deepcopy(members), x, y), args.steps)
            pack = args.n / timed(packed_step(members, x, y, isolate=True), args.steps)
            bare = args.n / timed(packed_step(members, x, y, isolate=False), args.steps)
            print(f"| {preset} | {batch} | {solo:.2f} | {pack:.2f} | {bare:.2f} | {pack / solo:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
