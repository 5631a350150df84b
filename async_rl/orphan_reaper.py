"""The processes a run starts die with it, even when the driver is killed outright.

`kill -9` or the out-of-memory killer gives the driver no chance to close its reward workers (which ignore
Ctrl-C and SIGTERM on purpose, so that the driver can save first), multiprocessing's resource tracker or
the local Ray it started; left alone they live on for minutes. A watcher process, in its own session so that
no terminal signal reaches it, reads a pipe from the driver and records the driver's descendants every
second. When the pipe closes without the driver's goodbye, the driver is gone: the watcher kills every
process it recorded (checked by start time, so a reused pid is spared) and exits. A Ray cluster the run
only connected to (`--ray-address`) is not a descendant and is never touched.

    python -m async_rl.orphan_reaper DRIVER_PID     (started by `reap_on_death`, not by hand)
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import psutil

GOODBYE = b"exit\n"
_SNAPSHOT_INTERVAL_S = 1.0


@contextmanager
def reap_on_death() -> Iterator[None]:
    """Watch this process for the duration of the block; leaving the block normally (or by an exception) says
    goodbye, so only a driver that dies without running Python's cleanup has its descendants killed."""
    watcher = subprocess.Popen([sys.executable, "-m", "async_rl.orphan_reaper", str(os.getpid())],
                               stdin=subprocess.PIPE, start_new_session=True)
    try:
        yield
    finally:
        try:
            watcher.stdin.write(GOODBYE)
            watcher.stdin.close()
        except BrokenPipeError:  # the watcher died first; nothing left to tell
            pass
        watcher.wait()


def _descendants(pid: int) -> dict[int, float]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    own = os.getpid()
    snapshot = {}
    for child in children:
        try:
            if child.pid != own:
                snapshot[child.pid] = child.create_time()
        except psutil.Error:
            pass
    return snapshot


def _kill(recorded: dict[int, float]) -> None:
    for pid, created in recorded.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created:
                process.kill()
        except psutil.Error:
            pass


def watch(driver_pid: int) -> None:
    recorded: dict[int, float] = {}
    received = b""
    while True:
        recorded |= _descendants(driver_pid)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], _SNAPSHOT_INTERVAL_S)
        if not ready:
            continue
        chunk = os.read(sys.stdin.fileno(), 64)
        received += chunk
        if not chunk:  # the pipe closed: a goodbye first means a normal end
            if GOODBYE not in received:
                _kill(recorded)
            return


if __name__ == "__main__":
    watch(int(sys.argv[1]))
