"""Entry-point wrapper: user mistakes and deliberate stops become one line on stderr, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from async_rl.errors import TrainingAborted, UserInputError


def run_cli(prog: str, body: Callable[[], None]) -> None:
    """Bad input exits 2 and a deliberate stop exits 1, each with one line on stderr."""
    try:
        body()
    except UserInputError as e:
        for line in str(e).splitlines():
            print(f"{prog}: error: {line}", file=sys.stderr)
        sys.exit(2)
    except TrainingAborted as e:
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        sys.exit(1)
