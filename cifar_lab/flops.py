"""FLOPs of a call and the machine's measured peak, for "% of peak" columns (issue 23).

``count_flops(fn, *args, **kwargs)``: the FLOPs of one call of ``fn``, counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward when the
call runs a backward; elementwise ops are not counted). ``peak_flops(device, dtype)``: FLOP/s of a large
matmul in ``dtype`` on ``device``, measured now (TF32 allowed for float32 on CUDA), the best of a few.
torch is imported where it is used: importing this module is cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (it runs once, for real)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` on ``device`` (n = 8192 on CUDA, 1024 on the CPU), the best of
    five timed calls after a warm-up; on CUDA float32 runs as TF32 (``allow_tf32``), as the fast path does."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        best = float("inf")
        for i in range(6):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            if cuda:
                torch.cuda.synchronize(device)
            if i:  # the first call warms up
                best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2.0 * n**3 / best
