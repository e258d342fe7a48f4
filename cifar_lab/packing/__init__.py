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
* the sweep: ``grouping`` (which jobs pack; no torch), ``launch`` (the launcher's logic), ``server``
  (one process per pack, from the forkserver). The bench's packed rows and the core's step-level
  micro-bench are pipelines of ``python -m cifar_lab.bench`` (``packed``, ``steps``).

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
and weight decay, and AdamW, with convolutions run either way (below). Float32 only agrees
approximately: p1a at lr 0.01 within 1e-4 (measured ~2e-7 on losses).

Choices, and why.
- ``vmap(functional_call)`` over a meta-device base: one code path for every architecture (tied
  blocks, BatchNorm, dropout) that is exact in float64.
- Convolutions one per member (``conv.MemberConv``, the kernels of a solo run), everything else
  fused across members. Under plain vmap a conv becomes one grouped conv: with those, a pack of 5
  p2a members ran at 0.26x sequential on an H100 (where the time went was not profiled there), and
  on this CPU they were the slower conv (docs/packed.md has the figures and commands; the bench's
  ``steps`` pipeline times both, ``PackedNet(conv="grouped")`` keeps the other way). Member convs on a
  GPU: not measured.
- One ``nn.Parameter`` per member and tensor, stacked in ``forward``: the built-in optimisers run
  unchanged with one param group per member, and export is the member's own ``state_dict``. The
  stack costs 0.35 ms (p1a) / 0.56 ms (p2a) per step at N=5 on this CPU, under 0.1 % of a step.
- Isolation by snapshot + ``torch.where`` (``step.py``): 3.8 ms (p1a) / 7.0 ms (p2a) per step at N=5
  on this CPU, under 1 % of a step.
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
