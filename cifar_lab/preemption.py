"""SIGTERM and SIGUSR1 stop a run from its first line to its last: after the current step inside ``fit``,
at once outside it, always as ``interrupted`` (exit 143, the code SLURM requeue scripts look for).

During ``fit`` Lightning handles SIGTERM: it lets the running step finish, then raises
``SIGTERMException``. It installs that handler only once the data is set up, and puts back the one it
found when the fit ends; that one is this module's, which stops the run at once as :class:`SignalStop`
(so a signal during imports, data setup or the final test is an ``interrupted`` run, not a process
killed by the default action with summary.json left ``running``). Lightning chains the handler it
finds after its own, so inside ``fit`` ours is called second and leaves the signal to Lightning.
SIGUSR1 is handed to whatever handles SIGTERM. A handler that something else installed first (a
cluster launcher) is left alone. Light: no torch import.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

from cifar_lab.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class SignalStop(Interrupted):
    """SIGTERM or SIGUSR1 outside a training step (before training started, or after it ended)."""

    def __init__(self, signame: str) -> None:
        super().__init__(
            f"stopped by {signame} outside a training step (before training started or after it ended); start the "
            "same command again with resume=auto to continue from checkpoints/last.ckpt if there is one."
        )
        self.signame = signame


def on_signal(signum: int, frame: FrameType | None) -> None:
    current = signal.getsignal(signal.SIGTERM)
    if current is not on_signal and callable(current):
        # Inside fit (or under a launcher's SIGTERM handler): that handler stops the run after the step.
        # It calls this one in turn for SIGTERM (Lightning chains the handler it found), which then returns.
        if signum != signal.SIGTERM:
            current(signal.SIGTERM, frame)
        return
    raise SignalStop(signal.Signals(signum).name)


def preemption_signals() -> AbstractContextManager[None]:
    """SIGTERM and SIGUSR1 handled as above while the block runs (where nothing else handles them)."""
    return handling(on_signal, only_default=True)


@contextmanager
def handling(handler: Callable[[int, FrameType | None], None], only_default: bool = False) -> Iterator[None]:
    """``handler`` for SIGTERM and SIGUSR1 while the block runs, in the main thread (signals reach no other);
    with ``only_default``, only for a signal that nothing else handles."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        if not only_default or signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if previous_handler is None else previous_handler)
