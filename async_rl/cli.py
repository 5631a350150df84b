"""Entry-point wrapper: user mistakes become one line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from async_rl.errors import UserInputError


def run_cli(prog: str, body: Callable[[], None]) -> None:
    try:
        body()
    except UserInputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
