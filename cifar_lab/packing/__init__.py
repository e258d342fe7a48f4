"""Packed sweeps: N models of one architecture trained as one vmapped model (``hydra/launcher=packed``).

Members may differ in seed (initial weights and data order), learning rate, momentum, weight
decay, explicit L2 λ and dropout rate (0 included); model, width, n_blocks, tied_blocks,
batchnorm and batch size are shared. The package, from the numbers up:

* numerical core, no Lightning or Hydra: ``stack`` (PackedNet, PackedDropout), ``loss``,
  ``step`` (PackedStepEngine: per-member optimiser groups, isolation of a diverging member),
  ``sampler`` (each member's solo data order);
* one pack as a Lightning run: ``data`` (PackedDataModule, over the members' own loaders),
  ``module`` (PackedModule), ``build`` (member configs -> trainer, plan, datamodule, module),
  ``record`` (MemberRecords: each member's EpochWriter, divergence and checkpoint choice),
  ``checkpoint`` (MemberCheckpointIO: a member's checkpoint in the solo format, and back), ``run``
  (``python -m cifar_lab.packing.run``: the process of one pack);
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

Equivalence: in float64 each member equals a solo run of its config within rtol 1e-9
(tests/test_packed_core.py for the core, tests/test_packed_sweeps.py end to end). Why vmap over a
meta-device base, one conv per member and one parameter per member and tensor, with the measured
costs: the docstrings of ``stack``, ``conv`` and ``step``, and docs/packed.md.
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
