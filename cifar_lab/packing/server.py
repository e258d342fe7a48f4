"""One process per pack, from the standard library's forkserver: the imports are paid once per sweep.

A fresh interpreter per pack pays the imports of torch, Lightning and torchvision (5.2 s per pack,
measured on this project's 2-core machine; a later pack from the forkserver: about 0.04 s, see
docs/packed.md). The forkserver imports :data:`PRELOAD` once and forks a child per pack, so a pack
that dies hard takes no other pack and not the sweep with it. Without a forkserver (Windows) a pack
is a fresh interpreter (``spawn``).
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


def pack_main(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> None:
    """In the pack's process: its environment and directory; ``packing.run.main(argv)``. A pack never outlives
    its launcher: a thread waits on the launcher's end of the start pipe and sends SIGTERM when it closes,
    however the launcher ended (SIGKILL included)."""
    parent = multiprocessing.parent_process()
    if parent is not None:

        def watch() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
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
    """The launcher's handle: ``run`` one pack at a time (its exit status, negative: the signal that killed it),
    ``interrupt`` the running one (SIGTERM: it stops after the current step)."""

    def __init__(self) -> None:
        forkserver = "forkserver" in multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("forkserver" if forkserver else "spawn")
        if forkserver:
            self.context.set_forkserver_preload(PRELOAD)
        self.pid: int | None = None  # the running pack
        self.stopping = False  # interrupted: the running pack, and one about to start, get SIGTERM

    def run(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> int:
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
        """Safe in a signal handler."""
        self.stopping = True
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:  # it has just ended
                pass
