"""Peak GPU memory of whatever runs, read from nvidia-smi: the same measure for every system, whatever its
allocator or process layout."""

from __future__ import annotations

import subprocess
import threading


class PeakGpuMemory:
    """Polls `nvidia-smi` while the block runs; `peak_gib` is the highest memory in use on the GPU."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_gib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
            except (OSError, subprocess.TimeoutExpired):
                return
            if used:
                gib = max(float(u) for u in used) / 1024
                self.peak_gib = gib if self.peak_gib is None else max(self.peak_gib, gib)

    def __enter__(self) -> "PeakGpuMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
