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


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], steps: int, device: torch.device | None = None) -> float:
    """Fastest of ``steps`` timed calls, after one untimed warm-up call (the device synchronised around each).

    The minimum, not the mean: this 2-core machine is shared, and other jobs only ever add time."""
    step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def solo_step(members: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The N members stepped one after another by the solo StepEngine, each on its own batch."""
    engines = []
    for m in members:
        m.to(x.device)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        engines.append(
            StepEngine(m, opt, lambda logits, t: (torch.nn.functional.cross_entropy(logits, t),) * 2, SpeedPlan())
        )

    def step() -> None:
        for k, e in enumerate(engines):
            e.step(x[k], y[k])

    return step


def packed_step(
    members: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, isolate: bool, conv: str = "member"
) -> Callable[[], None]:
    net = PackedNet(members, conv=conv).to(x.device).train()
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, N={args.n}, float32, SGD momentum 0.9, member-steps/s")
    print(
        "| preset | batch | solo, one after another | pack, member convs | pack, grouped convs "
        "| pack, member convs, no isolation | member / solo | grouped / solo |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        name, options = PRESETS[preset]
        for batch in args.batch:
            torch.manual_seed(0)
            members = [create_model(name, **options) for _ in range(args.n)]
            x = torch.randn(args.n, batch, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (args.n, batch), device=device)
            solo = args.n / timed(solo_step(copy.deepcopy(members), x, y), args.steps, device)
            member = args.n / timed(packed_step(members, x, y, isolate=True), args.steps, device)
            grouped = args.n / timed(packed_step(members, x, y, isolate=True, conv="grouped"), args.steps, device)
            bare = args.n / timed(packed_step(members, x, y, isolate=False), args.steps, device)
            print(
                f"| {preset} | {batch} | {solo:.2f} | {member:.2f} | {grouped:.2f} | {bare:.2f} "
                f"| {member / solo:.2f}x | {grouped / solo:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
