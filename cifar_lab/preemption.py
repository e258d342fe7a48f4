"""SIGUSR1 means what SIGTERM means, for the whole run: finish the current step, stop as ``interrupted``.

During ``fit`` Lightning handles SIGTERM (it lets the running step finish, then raises
``SIGTERMException``); SIGUSR1 is handed to that handler. Before training starts, or after it ends,
there is no step to finish: SIGUSR1 stops the run at once, as :class:`Interrupted` (exit 143, the
code SLURM requeue scripts look for), not with the default action's 138. A SIGUSR1 handler that
something else installed first (a cluster launcher) is left alone. Light: no torch import.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from cifar_lab.errors import Interrupted


def on_sigusr1(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        handler(signal.SIGTERM, frame)
        return
    raise Interrupted(
        "stopped by SIGUSR1 outside a training step (before training started or after it ended); nothing was "
        "lost: start the same command again, with resume=auto to continue from checkpoints/last.ckpt if there is one."
    )


@contextmanager
def preemption_signals() -> Iterator[None]:
    """SIGUSR1 handled as above while the block runs; the previous handler afterwards."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGUSR1) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return
    previous = signal.signal(signal.SIGUSR1, on_sigusr1)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)
