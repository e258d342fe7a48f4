"""One process per pack, from the standard library's forkserver: the imports are paid once per sweep.

A fresh interpreter per pack costs the imports of torch, Lightning and torchvision, about 5 s per
pack on this project's 2-core machine. :class:`PackServer` starts each pack from
``multiprocessing``'s forkserver instead, which imports :data:`PRELOAD` once (on the first pack) and
forks a child per pack; each pack is still a process of its own, so one that dies hard (a signal,
out of memory, a segfault) takes no other pack and not the sweep with it. Where there is no
forkserver (Windows) a pack is a fresh interpreter (``spawn``).

SIGTERM or SIGUSR1 to the launcher (``launchers.SweepStop`` calls :meth:`PackServer.interrupt`)
goes to the running pack as SIGTERM: it stops after the current step, its members ``interrupted``.
A pack never outlives its launcher: a thread in the pack waits on the launcher's end of the pipe it
was started through (``multiprocessing.parent_process().sentinel``) and sends the pack SIGTERM when
that closes, however the launcher ended (SIGKILL included); the forkserver ends with its last pack.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

# What a pack imports before it trains: the forkserver imports it once per launcher process.
PRELOAD = ["cifar_lab.packing.run", "cifar_lab.packing.build", "cifar_lab.packing.record", "cifar_lab.recording",
           "cifar_lab.resilience", "cifar_lab.models", "lightning.pytorch.callbacks"]  # fmt: skip


def watch_launcher() -> None:
    """SIGTERM to this process when the process that started it ends (its end of the start pipe closes)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def pack_main(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> None:
    """In the pack's process: its environment and directory, tied to the launcher; ``packing.run.main(argv)``."""
    watch_launcher()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    from cifar_lab.packing.run import main

    try:
        code = main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class PackServer:
    """The launcher's handle: ``run`` one pack at a time (its exit status), ``interrupt`` the running one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        forkserver = "forkserver" in multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("forkserver" if forkserver else "spawn")
        if forkserver:
            self.context.set_forkserver_preload(PRELOAD)
        self.pid: int | None = None  # the running pack
        self.stopping = False  # interrupted: the running pack, and one about to start, get SIGTERM

    def run(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> int:
        """Run one pack (``cifar_lab.packing.run.main(argv)`` in ``env`` and ``cwd``); its exit status
        (negative: the signal that killed it)."""
        sys.stdout.flush()
        sys.stderr.flush()
        proc = self.context.Process(target=pack_main, args=(list(argv), dict(env), cwd), name="pack")
        proc.start()
        self.pid = proc.pid
        try:
            if self.stopping:  # interrupted while it started
                self.interrupt()
            proc.join()
        finally:
            self.pid = None
        return proc.exitcode if proc.exitcode is not None else 1

    def interrupt(self) -> None:
        """Stop the running pack after its current step (SIGTERM), or the next one as it starts.
        Safe in a signal handler."""
        self.stopping = True
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:  # it has just ended
                pass

    def close(self) -> None:
        """Nothing to end: the forkserver ends with the launcher (and its last pack)."""
