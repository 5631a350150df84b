"""Where a start's time goes: one line when the run is ready, and `perf/startup_*` scalars with its first step.

A start on a fresh GPU machine takes minutes (imports, Ray, the trainer, engines compiling kernels); the split
says which part to look at. Ray builds the trainer while the engines start, so "trainer" is the time to ask for
it and "first weights" includes waiting for it to be ready.
"""

from __future__ import annotations

import time


class StartupClock:
    """A lap timer: each `lap(name)` is the time since the previous one (or since the clock was made)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._began = self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now

    def summary(self) -> str:
        parts = " | ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())
        return f"start-up {self._last - self._began:.0f} s: {parts}"

    def metrics(self) -> dict[str, float]:
        laps = {f"perf/startup_{name.replace(' ', '_')}_s": seconds for name, seconds in self.seconds.items()}
        return laps | {"perf/startup_s": self._last - self._began}
