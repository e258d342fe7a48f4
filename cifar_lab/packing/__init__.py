"""Packed sweeps: N models of one architecture trained as one vmapped model (``hydra/launcher=packed``).

Members may differ in seed (initial weights and data order), learning rate, momentum, weight
decay, explicit L2 λ and dropout rate (0 included); model, width, n_blocks, tied_blocks,
batchnorm and batch size are shared. The package, from the numbers up:

* numerical core, no Lightning or Hydra: ``stack`` (PackedNet, PackedDropout), ``loss``,
  ``step`` (PackedStepEngine: per-member optimiser groups, isolation of a diverging member),
  ``sampler`` (each member's solo data order);
* one pack as a Lightning run: ``data`` (PackedDataModule), ``module`` (PackedModule), ``build``
  (member configs -> trainer, plan, datamodule, module), ``checkpoint`` (a member's checkpoint in
  the solo format and back), ``record`` (each member's own Recorder, summary and checkpoints),
  ``run`` (``python -m cifar_lab.packing.run``: the process of one pack);
* the sweep: ``grouping`` (which jobs pack; no torch), ``launch`` (the launcher's logic), and
  ``throughput`` (the bench's packed row); ``bench`` is the core's step-level micro-bench.

The names below load lazily, so that the launcher (``grouping``, ``launch``) imports no torch.

Use::

    net = PackedNet(members)                       # N solo modules, built/seeded as solo runs build them
    opt = torch.optim.SGD(member_param_groups(net, lr=lrs, momentum=moms, weight_decay=wds))
    engine = PackedStepEngine(net, opt, PackedLoss(l2s))
    sampler = PackedBatchSampler(n_train, batch_size, seeds)   # (N, B) indices, solo order per seed
    for idx in sampler:
        loss, preds = engine.step(x[idx], y[idx])  # (N,), (N, B); no host sync; NaN once a member died
    logits = net.eval()(x_val)                     # shared (B, ...) batch -> (N, B, 10)
    sd = net.member_state_dict(k)                  # loads strictly into create_model(...)

Equivalence (tests/test_packed_core.py). In float64 each member equals a solo run of its config
(``StepEngine`` + ``ClassifierModule.loss_fn``, same initial weights and batches) within rtol 1e-9
over 3 epochs: per-step and per-epoch losses and accuracies, final weights, BN statistics and
optimiser state, for fc, p1a, p1b, p2a, p2b_l2, p2b_batchnorm, mixed lr/L2, per-member momentum
and weight decay, and AdamW. A vmapped conv is a grouped conv that sums in another order, so float32
only agrees approximately: p1a at lr 0.01 within 1e-4 (measured ~2e-7 on losses).

Choices, and why.
- ``vmap(functional_call)`` over a meta-device base, not hand-written grouped convolutions: one code
  path for every architecture (tied blocks, BatchNorm, dropout) that is exact in float64, and the
  GPU is where packing pays (fewer, fuller kernels). On this CPU grouped convs were at best
  marginally faster (PACKED.md: p1a 8.6 vs 6.6, p2a 2.57 vs 2.60 member-steps/s at 1 thread), and
  neither beats sequential solo steps, so they were not built.
- One ``nn.Parameter`` per member and tensor, stacked in ``forward``: the built-in optimisers run
  unchanged with one param group per member, and export is the member's own ``state_dict``. The
  stack costs 0.35 ms (p1a) / 0.56 ms (p2a) per step at N=5 on this CPU, under 0.1 % of a step.
- Isolation by snapshot + ``torch.where`` (``step.py``): 3.8 ms (p1a) / 7.0 ms (p2a) per step at N=5,
  under 1 %; the "no isolation" column below differs from the isolated one by noise only.

Speed on this CPU (2 cores shared with other jobs: load average 2.2 to 4 during the runs), member-steps
per second, float32, N=5, SGD momentum 0.9, fastest of 3 timed steps after a warm-up
(``OMP_NUM_THREADS=1 taskset -c 0 python -m cifar_lab.packing.bench --threads 1``; for 2 threads
``OMP_NUM_THREADS=2 taskset -c 0,1 ... --threads 2``)::

    | threads | preset | batch | solo, one after another | vmap pack | vmap pack, no isolation | pack / solo |
    |---|---|---|---|---|---|---|
    | 1 | p1a | 128  | 6.55 | 5.19 | 3.47 | 0.79x |
    | 1 | p1a | 1024 | 0.83 | 0.56 | 0.59 | 0.67x |
    | 1 | p2a | 128  | 2.62 | 2.45 | 2.38 | 0.93x |
    | 1 | p2a | 1024 | 0.19 | 0.11 | 0.14 | 0.55x |
    | 2 | p1a | 128  | 3.06 | 1.47 | 2.16 | 0.48x |
    | 2 | p1a | 1024 | 0.71 | 0.32 | 0.46 | 0.45x |
    | 2 | p2a | 128  | 0.86 | 0.93 | 0.98 | 1.09x |
    | 2 | p2a | 1024 | 0.14 | 0.07 | 0.11 | 0.51x |

A repeat at batch 128 (``--steps 8``) gave p1a 9.81 / 6.97 (0.71x) and p2a 3.06 / 1.75 (0.57x) at
1 thread, and p1a 3.87 / 4.16 (1.08x), p2a 0.86 / 1.02 (1.18x) at 2 threads. The 2-thread runs were
slower than the 1-thread ones, i.e. starved by other jobs, and single figures move by up to 2x
between runs. What holds across runs: on this CPU packing is not faster than training the members
one after another (mostly 0.45-0.95x, as PACKED.md found), and it is slowest at batch 1024, where
the vmapped conv's layout copies (N, B, C) <-> (B, N*C) cost most. The GPU target is unaffected.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "PackedBatchSampler": "sampler",
    "PackedDropout": "stack",
    "PackedLoss": "loss",
    "PackedNet": "stack",
    "PackedStepEngine": "step",
    "member_correct": "loss",
    "member_losses": "loss",
    "member_param_groups": "step",
    "prime_optimizer_state": "step",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
