"""A bound on megatron-core's checkpoint writer.

megatron-core writes a torch_dist checkpoint from forked worker processes and waits for them on a queue with
no timeout: a worker that dies (a missing package, the OOM killer) leaves the parent waiting forever. While a
save runs, `watch_writer` polls this process's children; one that exits with an error ends the process with
one line and exit status 1, after killing the other children, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import os
import sys
import threading
from typing import Iterator


def _children() -> set:
    """multiprocessing's own registry of this process's children, which still holds finished ones until someone
    joins them (`active_children()` would reap them and lose their exit codes)."""
    return set(multiprocessing.process._children)


def _dead_child(earlier: set) -> int | None:
    """The exit code of a child started during the save that ended with an error, if any."""
    for child in _children() - earlier:
        code = child.exitcode
        if code not in (None, 0):
            return code
    return None


@contextlib.contextmanager
def watch_writer(prog: str, destination: str, poll_s: float = 0.2) -> Iterator[None]:
    stop = threading.Event()
    earlier = _children()  # what this process ran before the save is not the writer

    def watch() -> None:
        while not stop.wait(poll_s):
            code = _dead_child(earlier)
            if code is not None:
                print(f"{prog}: error: a checkpoint writer process died (exit code {code}, its error is above); "
                      f"{destination} is incomplete", file=sys.stderr, flush=True)
                for child in multiprocessing.active_children():
                    child.kill()
                os._exit(1)

    thread = threading.Thread(target=watch, name="checkpoint-writer-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
