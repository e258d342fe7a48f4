"""User-facing errors: one paragraph, no traceback, a non-zero exit code."""

from __future__ import annotations

import sys
import textwrap

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data); printed without a traceback."""


def print_user_error(err: BaseException) -> None:
    text = " ".join(str(err).split())
    print("\n" + textwrap.fill(f"Error: {text}", width=100) + "\n", file=sys.stderr)
