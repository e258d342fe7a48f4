"""One process per pack, forked from a warm server: the imports are paid once per sweep, not per pack.

Starting ``python -m cifar_lab.packing.run`` costs an interpreter and the imports of torch, Lightning
and torchvision: about 4 s on a quiet 2-core machine, 11 s on this project's loaded one, for every
pack. :class:`PackServer` starts one server process per launch instead; the server imports what a
pack needs, then forks one child per pack and reports the child's exit status. Each pack still runs
in a process of its own (the child), so a pack that dies hard (a signal, out of memory, a segfault)
takes no other pack and not the sweep with it, exactly as with a fresh interpreter.

The fork is safe because the server itself never runs torch: no intra-op threads and no CUDA
context exist in it when it forks (it checks that it has no other thread, else it starts the pack
as a fresh interpreter). Where ``os.fork`` is not dependable (not Linux), or when the server dies,
the launcher starts fresh interpreters (:func:`run_fresh`).

A pack never outlives its launcher. SIGTERM or SIGUSR1 to the server (the launcher sends it when it
is stopped, :meth:`PackServer.interrupt`) goes to the running pack as SIGTERM: it stops after the
current step and records its members ``interrupted``. On Linux each process asks the kernel for
SIGTERM when its parent dies (:func:`tie_to_parent`, ``PR_SET_PDEATHSIG``): a launcher killed with
SIGKILL takes its server with it, and the server's death stops its pack.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}


def tie_to_parent(parent: int) -> None:
    """Linux: the kernel sends this process SIGTERM when its parent (pid ``parent``) dies, and it is sent now if
    the parent is already gone. Elsewhere nothing (the launcher's SIGTERM still reaches the pack)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no libc prctl: not dependable here
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def start_fresh(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> subprocess.Popen:
    """The pack in a new interpreter, tied to this process: ``cifar_lab.packing.run.main(ARGV)`` (see ``fresh``)."""
    command = [sys.executable, "-m", "cifar_lab.packing.server", "--fresh", str(os.getpid()), *argv]
    return subprocess.Popen(command, env=dict(env), cwd=cwd)


def fresh(parent: int, argv: Sequence[str]) -> int:
    """``python -m cifar_lab.packing.server --fresh PARENT ARGV``: one pack, ended when ``parent`` dies."""
    tie_to_parent(parent)
    from cifar_lab.packing.run import main

    return main(argv)


def run_fresh(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, running: Callable[[int | None], None] = lambda pid: None
) -> int:
    """:func:`start_fresh`, waited for; its exit status. ``running`` hears its pid, then None when it ended."""
    proc = start_fresh(argv, env, cwd)
    running(proc.pid)
    try:
        return proc.wait()
    finally:
        running(None)


class PackServer:
    """The launcher's handle on the server: ``run`` one pack at a time, ``close`` at the end of a launch."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.proc: subprocess.Popen | None = None
        self.replies: IO[str] | None = None
        self.usable = sys.platform.startswith("linux") and hasattr(os, "fork")
        self.fresh: int | None = None  # the pid of a pack running as a fresh interpreter
        self.stopping = False  # interrupted: the running pack, and one about to start, get SIGTERM

    def start(self) -> None:
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cifar_lab.packing.server", str(write), str(os.getpid())],
            stdin=subprocess.PIPE,
            env=self.env,
            pass_fds=(write,),
            text=True,
        )
        os.close(write)
        self.replies = os.fdopen(read)

    def run(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> int:
        """Run one pack (``cifar_lab.packing.run.main(argv)`` in ``env`` and ``cwd``); its exit status
        (negative: the signal that killed it)."""
        if not self.usable:
            return run_fresh(argv, env, cwd, self.running)
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.replies is not None
        try:
            self.proc.stdin.write(json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}) + "\n")
            self.proc.stdin.flush()
            if self.stopping:  # interrupted before the server existed: it passes SIGTERM to the pack it starts
                self.interrupt()
            reply = self.replies.readline()
        except OSError:
            reply = ""
        if not reply:  # the server itself died: this pack ran nowhere or died with it
            self.usable = False
            code = self.proc.wait()
            return code if code else 1
        return int(reply)

    def running(self, pid: int | None) -> None:
        self.fresh = pid
        if pid is not None and self.stopping:
            self.interrupt()

    def interrupt(self) -> None:
        """Stop the running pack after its current step (SIGTERM): through the server, which forwards it (and
        to a pack it is about to start), or to a pack running as a fresh interpreter. Safe in a signal handler."""
        self.stopping = True
        if self.fresh is not None:
            pid = self.fresh
        elif self.usable and self.proc is not None and self.proc.returncode is None:  # not reaped: still its pid
            pid = self.proc.pid
        else:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # it has just ended
            pass

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()
        if self.replies is not None:
            self.replies.close()
        self.proc, self.replies = None, None


def child(request: dict[str, Any], server: int) -> int:
    """In the forked child: become the pack's process (its environment, directory, stdin, signals) and run it."""
    from cifar_lab.packing.run import main

    try:
        for s in STOP_SIGNALS:  # the server's forwarding is not the pack's; a SIGTERM that came meanwhile acts now
            signal.signal(s, signal.SIG_DFL)
        tie_to_parent(server)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the server's stdin carries the requests
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        return main(request["argv"])
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class Forwarder:
    """The server's SIGTERM/SIGUSR1 handler: SIGTERM to the running pack; one that comes between packs goes to
    the next pack as soon as it exists (the launcher sends it while it starts a pack)."""

    def __init__(self) -> None:
        self.pack: int | None = None
        self.pending = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.pending = True
        if self.pack is not None:
            os.kill(self.pack, signal.SIGTERM)

    def started(self, pid: int | None) -> None:
        self.pack = pid
        if pid is not None and self.pending:
            os.kill(pid, signal.SIGTERM)


def serve(reply_fd: int, launcher: int) -> None:
    """The server: import once, then for each request (a JSON line on stdin) fork, wait, reply the status."""
    tie_to_parent(launcher)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the pack's process and the launcher
    forward = Forwarder()
    for s in STOP_SIGNALS:
        signal.signal(s, forward)
    from cifar_lab.packing.run import preload

    preload()
    replies = os.fdopen(reply_fd, "w")
    for line in sys.stdin:
        request = json.loads(line)
        if threading.active_count() > 1:  # something started a thread: forking would not be safe
            code = run_fresh(request["argv"], request["env"], request["cwd"], forward.started)
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # until the child has its own handlers
            pid = os.fork()
            if pid == 0:
                os._exit(child(request, os.getppid()))
            forward.started(pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            forward.started(None)
        try:
            replies.write(f"{code}\n")
            replies.flush()
        except OSError:  # the launcher is gone (the pipe is broken): nothing more to serve
            return


if __name__ == "__main__":
    # As a forked pack ends (os._exit): nothing is left to tear down, so skip the seconds of unloading torch.
    args = sys.argv[1:]
    code = fresh(int(args[1]), args[2:]) if args[0] == "--fresh" else serve(int(args[0]), int(args[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
