"""The floor a timing is measured against: counted FLOPs of a call, and the machine's measured matmul peak.

``count_flops`` counts what :class:`torch.utils.flop_counter.FlopCounterMode` counts: matrix products and
convolutions, forward and (when the call runs a backward) backward, at 2 FLOPs per multiply-add. Elementwise
work (ReLU, pooling, the loss, the optimizer's update) is not counted: it is memory traffic, not arithmetic.
``peak_flops`` times a large matmul in the given dtype, a few repeats, the fastest: what this process can
get from the machine now (on a shared machine that is less than its data sheet). Used by the bench
(``python -m cifar_lab.bench``) for its GFLOP/s and % of peak columns. torch is imported where it is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # the matmul's n: large enough to run at the vector units' rate
PEAK_REPEATS = 5


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` on ``device`` (n = ``size``, default :data:`PEAK_SIZE`), the
    fastest of a few repeats after a warm-up. On CUDA float32 runs in TF32 (as a run does:
    build.seed_and_backends sets matmul precision "high")."""
    import torch

    n = size or PEAK_SIZE.get(device.type, PEAK_SIZE["cpu"])
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    previous = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        best = float("inf")
        for k in range(PEAK_REPEATS + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k:  # the first call warms up (library dispatch, CPU frequency)
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_float32_matmul_precision(previous)
    return 2 * n**3 / best
