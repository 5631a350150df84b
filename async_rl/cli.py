"""Entry-point wrapper: user mistakes and deliberate stops become one line on stderr, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from async_rl.errors import TrainingAborted, UserInputError
from async_rl.orphan_reaper import reap_on_death
from async_rl.pipe_safe_output import guard_standard_streams


def run_cli(prog: str, body: Callable[[], None]) -> None:
    """Bad input exits 2, a deliberate stop 1 and an interrupt 130, each with one line on stderr.

    The output survives its reader (a `| tee` killed by Ctrl-C), and the processes the run starts die with
    it even when it is killed outright.
    """
    guard_standard_streams()
    try:
        with reap_on_death():
            body()
    except UserInputError as e:
        for line in str(e).splitlines():
            print(f"{prog}: error: {line}", file=sys.stderr)
        sys.exit(2)
    except TrainingAborted as e:
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(130)
