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
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import IO, Any

MODULE = "cifar_lab.packing.run"


def run_fresh(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> int:
    """The pack in a new interpreter: ``python -m cifar_lab.packing.run ARGV``; its exit status."""
    return subprocess.run([sys.executable, "-m", MODULE, *argv], env=dict(env), cwd=cwd, check=False).returncode


class PackServer:
    """The launcher's handle on the server: ``run`` one pack at a time, ``close`` at the end of a launch."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.proc: subprocess.Popen | None = None
        self.replies: IO[str] | None = None
        self.usable = sys.platform.startswith("linux") and hasattr(os, "fork")

    def start(self) -> None:
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cifar_lab.packing.server", str(write)],
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
            return run_fresh(argv, env, cwd)
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.replies is not None
        try:
            self.proc.stdin.write(json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}) + "\n")
            self.proc.stdin.flush()
            reply = self.replies.readline()
        except OSError:
            reply = ""
        if not reply:  # the server itself died: this pack ran nowhere or died with it
            self.usable = False
            code = self.proc.wait()
            return code if code else 1
        return int(reply)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()
        if self.replies is not None:
            self.replies.close()
        self.proc, self.replies = None, None


def child(request: dict[str, Any]) -> int:
    """In the forked child: become the pack's process (its environment, directory, stdin) and run it."""
    from cifar_lab.packing.run import main

    try:
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


def serve(reply_fd: int) -> None:
    """The server: import once, then for each request (a JSON line on stdin) fork, wait, reply the status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the pack's process and the launcher
    from cifar_lab.packing.run import preload

    preload()
    replies = os.fdopen(reply_fd, "w")
    for line in sys.stdin:
        request = json.loads(line)
        if threading.active_count() > 1:  # something started a thread: forking would not be safe
            code = run_fresh(request["argv"], request["env"], request["cwd"])
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os._exit(child(request))
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        replies.write(f"{code}\n")
        replies.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
