"""Ctrl-C and SIGTERM end a run between steps: the loop finishes its step, saves, and shuts Ray down."""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class StopSignal:
    """While active, records SIGINT/SIGTERM instead of interrupting mid-step; a second signal interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"received {signal.Signals(signum).name}: stopping after this step", flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def exit(self, step: int, checkpoint: Path | None) -> None:
        """End a stopped run with one line saying what was kept, and the signal's exit status."""
        name = signal.Signals(self.signum).name
        kept = (f"checkpoint of step {step} saved at {checkpoint} (resume with --load {checkpoint.parent})"
                if checkpoint is not None else "no checkpoint written (set --save to keep the state)")
        print(f"stopped by {name} after step {step}: {kept}", flush=True)
        raise SystemExit(128 + self.signum)
