"""One benchmark case per process: GPU kernels, memory pools and engines do not carry over between cases.

The driver re-runs its own script with `--one CASE ...`; the case prints `RESULT {json}` as its last word.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MARK = "RESULT "


def report(result: dict) -> None:
    print(MARK + json.dumps(result), flush=True)


def run_case(name: str, argv: list[str], timeout: int = 900, env: dict[str, str] | None = None) -> dict | None:
    """Run `python argv...` (with `env` added to the environment) and return its result; on failure print its
    stderr's tail and return None."""
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        print(f"{name} failed:\n{out.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1][len(MARK):])
