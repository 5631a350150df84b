"""A run must not die because whoever reads its output went away.

`python -m async_rl.train ... | tee log` and Ctrl-C: the terminal's SIGINT kills `tee` too, and the next
print raises BrokenPipeError, from inside the stop handler or the step line, before the checkpoint is
written. Guarded streams catch that: stdout's output moves to stderr (often a file of its own), and a
stream with no reader left writes to /dev/null, so the run finishes its step and saves.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


class PipeSafeStream:
    """Wraps a text stream; a write or flush into a closed pipe redirects the file descriptor instead of raising."""

    def __init__(self, stream: TextIO, fallbacks: tuple[int, ...]):
        self._stream = stream
        self._fallbacks = list(fallbacks)  # descriptors of our own (dups) to follow, in order, before /dev/null

    def write(self, text: str) -> int:
        while True:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._redirect()

    def flush(self) -> None:
        while True:
            try:
                return self._stream.flush()
            except BrokenPipeError:
                self._redirect()

    def _redirect(self) -> None:
        fd = self._stream.fileno()
        target = self._fallbacks.pop(0) if self._fallbacks else os.open(os.devnull, os.O_WRONLY)
        os.dup2(target, fd)
        os.close(target)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def guard_standard_streams() -> None:
    """Idempotent: stdout falls back to stderr, then /dev/null; stderr to /dev/null."""
    if isinstance(sys.stdout, PipeSafeStream) or sys.stdout is None or sys.stderr is None:
        return
    try:
        err_fd = sys.stderr.fileno()
        sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured streams (pytest, notebooks) have no pipe to lose
        return
    sys.stdout = PipeSafeStream(sys.stdout, fallbacks=(os.dup(err_fd),))
    sys.stderr = PipeSafeStream(sys.stderr, fallbacks=())
