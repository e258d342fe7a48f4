"""Packed sweeps: N models of one architecture trained as one vmapped model (``hydra/launcher=packed``).

The numerical core (no Lightning or Hydra) is ``stack``, ``conv``, ``loss``, ``step`` and ``sampler``;
``data``, ``module``, ``build``, ``record``, ``checkpoint`` and ``run`` make one pack a Lightning run;
``grouping``, ``launch`` and ``server`` run a sweep's packs (docs/architecture.md has the map,
docs/packed.md the promises). The names below load lazily, so that the launcher imports no torch.

Use::

    net = PackedNet(members)                       # N solo modules, built/seeded as solo runs build them
    opt = torch.optim.SGD(member_param_groups(net, lr=lrs, momentum=moms, weight_decay=wds))
    engine = PackedStepEngine(net, opt, PackedLoss(l2s))
    sampler = PackedBatchSampler(n_train, batch_size, seeds)   # (N, B) indices, solo order per seed
    for idx in sampler:
        loss, preds = engine.step(x[idx], y[idx])  # (N,), (N, B); no host sync; NaN once a member died
    logits = net.eval()(x_val)                     # shared (B, ...) batch -> (N, B, 10)
    sd = net.member_state_dict(k)                  # loads strictly into create_model(...)

In float64 each member equals a solo run of its config within rtol 1e-9 (tests/test_packed_core.py,
tests/test_packed_sweeps.py).
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
