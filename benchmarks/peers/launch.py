"""Runs one system's training command under a time budget, logging to a file and watching GPU memory.

A system stopped at its budget still reports the steps it finished: a partial row beats a lost one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_memory import PeakGpuMemory


@dataclass
class Launch:
    log: str
    wall_s: float
    stopped: bool  # ran into its time budget and was stopped
    peak_gpu_memory_gib: float | None


def launch(name: str, cmd: list[str], log_path: Path, cwd: Path, budget_s: float | None,
           env: dict | None = None) -> Launch:
    """Runs `cmd` in its own process group (so its Ray and engine children go with it when stopped).
    Raises RuntimeError with the log's tail if it fails on its own."""
    start = time.perf_counter()
    stopped = False
    with PeakGpuMemory() as memory, log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            stopped = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
    text = log_path.read_text(errors="replace")
    if code and not stopped:
        tail = "\n".join(text.splitlines()[-40:])
        raise RuntimeError(f"{name} exited {code}:\n{tail}")
    return Launch(text, time.perf_counter() - start, stopped, memory.peak_gib)
