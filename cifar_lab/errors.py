"""How a run ends: the exceptions that stop it, and the one table that turns any exception into
(status, exit code, message) for the run's summary, the process exit and the sweep summary.

No torch or Lightning import at module level: config errors are reported before those load.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception (a bug, an OS error); the traceback is printed
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_IO = 4  # the machine could not write or read a file (disk full, read-only, no permission)
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a shell reports for a job ended by SIGTERM
EXIT_CTRL_C = 130  # 128 + SIGINT: what a shell reports for a job ended by Ctrl-C

STATUSES = ("running", "completed", "stopped", "failed", "diverged", "interrupted")


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data); printed without a traceback."""


class AlreadyComplete(UserError):
    """A resume of a run that has trained all of its ``trainer.max_epochs``: nothing to do, and nothing
    was changed. A UserError, so that every caller that admits runs (a pack too) leaves the directory as
    it was; its outcome is exit 0 with the message (``outcome_of``)."""


class RunStopped(Exception):
    """The run stopped early for a reason that is not a bug; ``status`` goes into summary.json."""

    status = "failed"
    exit_code = EXIT_CRASH


class Diverged(RunStopped):
    """The loss (or an epoch metric) became NaN or infinite."""

    status = "diverged"
    exit_code = EXIT_DIVERGED


class Interrupted(RunStopped):
    """SIGTERM or SIGUSR1 (preemption, timeout, ``scancel``) stopped the run after a step."""

    status = "interrupted"
    exit_code = EXIT_INTERRUPTED


class Stopped(RunStopped):
    """Lightning ended the fit before ``trainer.max_epochs`` were trained, as one of its own options asked
    (``trainer.max_time``, ``trainer.max_steps``, ``trainer.fast_dev_run``): the run did what it was told,
    so exit 0, but it is not ``completed``."""

    status = "stopped"
    exit_code = EXIT_OK


@dataclass(frozen=True)
class Outcome:
    """What an exception means for a run: its summary status, the process exit code, the message."""

    status: str
    exit_code: int
    message: str
    expected: bool  # a user error or a deliberate stop: one paragraph, no traceback


COMPLETED = Outcome("completed", EXIT_OK, "", True)


def is_sigterm(err: BaseException) -> bool:
    """Lightning's SIGTERMException (a SystemExit), recognised without importing Lightning."""
    return isinstance(err, SystemExit) and type(err).__name__ == "SIGTERMException"


def outcome_of(err: BaseException) -> Outcome:
    """The one table: every exception that ends a run maps to exactly one Outcome."""
    if isinstance(err, AlreadyComplete):  # the recorded run stays as it was: its own status, exit 0
        return Outcome("completed", EXIT_OK, str(err), True)
    if isinstance(err, UserError):
        return Outcome("failed", EXIT_USER_ERROR, str(err), True)
    if isinstance(err, RunStopped):
        return Outcome(err.status, err.exit_code, str(err), True)
    if is_sigterm(err):
        return Outcome("interrupted", EXIT_INTERRUPTED, "stopped by SIGTERM/SIGUSR1 after the current step", True)
    if isinstance(err, KeyboardInterrupt):
        return Outcome("interrupted", EXIT_CTRL_C, "stopped by Ctrl-C (KeyboardInterrupt)", True)
    if isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else EXIT_CRASH
        # Not the end of the training: a status code 0 still never makes the run ``completed``.
        return Outcome("interrupted" if code else "stopped", code, f"the process exited with code {code}", True)
    stop = stop_in_chain(err)  # a signal's stop raised inside a library that wrapped it (Hydra's instantiate)
    if stop is not None:
        return Outcome(stop.status, stop.exit_code, str(stop), True)
    io = io_error(err)
    if io is not None:
        return Outcome("failed", EXIT_IO, io, True)
    return Outcome("failed", EXIT_CRASH, f"{type(err).__name__}: {err}", False)


def chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and what caused it (``__cause__``, else ``__context__``), each once."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def stop_in_chain(err: BaseException) -> RunStopped | None:
    """A deliberate stop (a signal's) that caused ``err``, found in its chain of causes; else None."""
    return next((e for e in chain(err) if isinstance(e, Interrupted)), None)


# What the machine, not the code, got wrong: one paragraph that names the file and the cause.
IO_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "an input/output error of the device",
}


RUN_IO_FIX = (
    "Free space or fix the permissions, or point hydra.run.dir (and data_dir) at another disk. "
    "Files are written atomically, so what the run wrote before is intact; continue it with "
    "resume=true once the cause is fixed."
)


def io_error(err: BaseException, fix: str = RUN_IO_FIX) -> str | None:
    """The message for an OS error a user can fix, found anywhere in the exception's chain; else None.

    ``fix`` is the advice that ends the paragraph: a run's by default, a tool's own (its ``--out``) otherwise.
    """
    for e in chain(err):
        if isinstance(e, OSError) and e.errno in IO_ERRNOS:
            where = f"could not write {e.filename}" if e.filename else "a file could not be written"
            return f"{where}: {IO_ERRNOS[e.errno]} ({errno.errorcode[e.errno]}: {os.strerror(e.errno)}). {fix}"
    return None


def tool_exit(err: BaseException, fix: str) -> int:
    """How a tool around a run (evaluate, predict, report) ends on ``err``: a user error (exit 2) or a file
    the machine could not write (exit 4, ``fix`` says what to do) as one paragraph; anything else is raised."""
    message = str(err) if isinstance(err, UserError) else io_error(err, fix)
    if message is None:
        raise err
    print_user_error(message)
    return EXIT_USER_ERROR if isinstance(err, UserError) else EXIT_IO


def interrupted(cause: str, resume_command: str, exit_code: int = EXIT_INTERRUPTED) -> Interrupted:
    """What a stopped run says: what stopped it, and the exact command that continues it."""
    err = Interrupted(
        f"stopped by {cause}. Every completed epoch is kept (checkpoints/last.ckpt; at most the running epoch is "
        f"lost); continue the run with: {resume_command}"
    )
    err.exit_code = exit_code
    return err


def print_outcome(outcome: Outcome, where: str = "") -> None:
    """How a run that did not complete ends on the console: a Ctrl-C is the user's own stop, no error, so its
    paragraph is plain; anything else is a :func:`print_user_error`. ``where``: what it happened to (a pack's
    "pack 0: "), before the message."""
    if outcome.exit_code != EXIT_CTRL_C:
        print_user_error(where + outcome.message)
        return
    text = " ".join(outcome.message.split())
    print(f"\n{where}{text[:1].upper()}{text[1:]}\n", file=sys.stderr, flush=True)


def print_user_error(err: BaseException | str) -> None:
    """One unwrapped paragraph (the terminal wraps it), so paths and options stay copyable."""
    text = " ".join(str(err).split())
    print(f"\nError: {text}\n", file=sys.stderr)
