"""User-facing errors: one paragraph, no traceback, a non-zero exit code."""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a shell reports for a job ended by SIGTERM


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data); printed without a traceback."""


class RunStopped(Exception):
    """The run stopped early for a reason that is not a bug; ``status`` goes into summary.json."""

    status = "failed"
    exit_code = 1


class Diverged(RunStopped):
    """The loss (or an epoch metric) became NaN or infinite."""

    status = "diverged"
    exit_code = EXIT_DIVERGED


class Interrupted(RunStopped):
    """SIGTERM or SIGUSR1 (preemption, timeout, ``scancel``) stopped the run after a step."""

    status = "interrupted"
    exit_code = EXIT_INTERRUPTED


def print_user_error(err: BaseException) -> None:
    """One unwrapped paragraph (the terminal wraps it), so paths and options stay copyable."""
    text = " ".join(str(err).split())
    print(f"\nError: {text}\n", file=sys.stderr)
