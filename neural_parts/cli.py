"""Shared entry-point wrapper: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import UserError

USER_ERRORS = (UserError, OSError, ValueError, IndexError, FloatingPointError)


def run_command(name: str, parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], int],
                argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``run``; a user error prints ``<name>: error: ...`` and returns 2, an
    interrupt that reaches here (Ctrl-C; train's second one) prints ``<name>: interrupted`` and returns 130."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
