"""What dropout costs per training step (a research tool, not part of the product), issue 24.

Times one fp32 SGD step (plain SGD, lr 0.003) of the p2b_dropout ResNet on SYNTHETIC data (random
images, random labels: only the time means anything) in the two dropout layouts, side by side in one
process: ``element`` (nn.Dropout in the blocks; cifar_lab's earlier preset) and ``channel`` (the seed's
nn.Dropout2d in the blocks and after the stem conv), solo (``speed.channels_last`` as the fidelity runs
use it) and, with ``--pack N``, as a pack of N members of one layout (contiguous: packs refuse
channels_last), with the packing code of this checkout (``new``) and of a git revision (``--before``,
element layout only: the old packs refused the channel layout). Solo rows come twice: the dropout out
of place (as before issue 24) and in place (now; the same draws and bits). Rows alternate, in reversed
order every other round, and each row reports the median of ``--rounds`` rounds of ``--steps`` steps.
``--profile`` prints torch.profiler's top ops of one solo step per layout.

Usage:
  OMP_NUM_THREADS=1 PYTHONPATH=. python tools/dropout_cost.py --batch 1024 --rounds 5 --steps 2 \
      --pack 2 --before e431038 [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cifar_lab.models import create_model
from cifar_lab.packing import PackedLoss, PackedNet, PackedStepEngine, member_param_groups

LAYOUTS = {
    "element": {"dropout": 0.3, "dropout_kind": "element", "stem_dropout": False},
    "channel": {"dropout": 0.3, "dropout_kind": "channel", "stem_dropout": True},
}
STEPS_PER_EPOCH = 49  # 50,000 training images at batch 1024 (the last batch partial)


def solo_step(layout: str, batch: int, inplace: bool = True) -> Callable[[], None]:
    """``inplace=False``: the dropout out of place, as the model had it before issue 24 (same draws, same bits)."""
    torch.manual_seed(0)
    net = create_model("resnet", **LAYOUTS[layout]).to(memory_format=torch.channels_last).train()
    for m in net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.inplace = inplace
    opt = torch.optim.SGD(net.parameters(), lr=0.003)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def old_stack(rev: str) -> types.ModuleType:
    """cifar_lab/packing/stack.py as it was at ``rev`` (its imports are this checkout's)."""
    source = subprocess.run(["git", "show", f"{rev}:cifar_lab/packing/stack.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parent).stdout  # fmt: skip
    module = types.ModuleType(f"stack_{rev}")
    exec(compile(source, f"stack.py@{rev}", "exec"), module.__dict__)
    return module


def pack_step(layout: str, batch: int, n: int, packed_net: type = PackedNet) -> Callable[[], None]:
    nets = []
    for k in range(n):
        torch.manual_seed(k)
        nets.append(create_model("resnet", **LAYOUTS[layout]))
    net = packed_net(nets).train()
    opt = torch.optim.SGD(member_param_groups(net, lr=[0.003] * n))
    engine = PackedStepEngine(net, opt, PackedLoss([0.0] * n))
    x, y = torch.randn(n, batch, 3, 32, 32), torch.randint(0, 10, (n, batch))
    return lambda: engine.step(x, y)


def profile(layout: str, batch: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = solo_step(layout, batch)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"\n== profile: one solo step, {layout} layout, batch {batch}, channels_last, fp32")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row and round")
    parser.add_argument("--pack", type=int, default=0, help="also time packs of this many members (0: none)")
    parser.add_argument("--before", default="", help="a git revision: also time its packs (element layout)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, fp32, "
          "SYNTHETIC data (timing only)")  # fmt: skip
    if args.profile:
        for layout in LAYOUTS:
            profile(layout, args.batch)
    rows: dict[str, Callable[[], None]] = {}
    for lay in LAYOUTS:
        rows[f"solo {lay}, before (out of place)"] = solo_step(lay, args.batch, inplace=False)
        rows[f"solo {lay}, now (in place)"] = solo_step(lay, args.batch)
    if args.pack:
        if args.before:
            old = old_stack(args.before).PackedNet
            name = f"pack x{args.pack} element, before ({args.before})"
            rows[name] = pack_step("element", args.batch, args.pack, old)
        for layout in LAYOUTS:
            rows[f"pack x{args.pack} {layout}, new"] = pack_step(layout, args.batch, args.pack)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for step in rows.values():
        step()  # warm-up
    for r in range(args.rounds):
        for name in list(rows)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(args.steps):
                rows[name]()
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["solo element, before (out of place)"])
    print(f"\n| row | s per step (median of {args.rounds}) | min–max | s per epoch (x{STEPS_PER_EPOCH} steps) | "
          "/ solo element before |\n|---|---|---|---|---|")  # fmt: skip
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {min(ts):.3f}–{max(ts):.3f} | {med * STEPS_PER_EPOCH:.1f} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
