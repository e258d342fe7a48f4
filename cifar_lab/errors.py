"""User-facing errors: one paragraph, no traceback, a non-zero exit code."""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data); printed without a traceback."""


def print_user_error(err: BaseException) -> None:
    """One unwrapped paragraph (the terminal wraps it), so paths and options stay copyable."""
    text = " ".join(str(err).split())
    print(f"\nError: {text}\n", file=sys.stderr)
