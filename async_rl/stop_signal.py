"""Ctrl-C and SIGTERM end a run between steps: the loop finishes its step, saves, and shuts Ray down."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

_SIGNALS_TO_END_AT_ONCE = 3


class StopSignal:
    """While active, records SIGINT/SIGTERM instead of interrupting mid-step.

    A second signal (an impatient Ctrl-C) still ends with the checkpoint: it only says so. A third ends at once,
    without one, for a run that no longer finishes its step.
    """

    def __init__(self):
        self.signum: int | None = None
        self.received = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        """After a stop the handlers stay: the process is on its way out (closing the session, Ray), and a late Ctrl-C
        must not become a KeyboardInterrupt in its last lines. Entered after the session started Ray, whose own
        SIGTERM handler would otherwise win."""
        if self.requested:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received >= _SIGNALS_TO_END_AT_ONCE:
            raise KeyboardInterrupt(f"{name} received {self.received} times: ended at once, this step is not saved")
        if self.signum is None:
            self.signum = signum
            print(f"received {name}: stopping after this step", flush=True)
        else:
            print(f"received {name} again: still stopping after this step, and saving it if --save is set "
                  f"(a third signal ends at once, without that)", flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def exit(self, completed: int, checkpoint: Path | None) -> None:
        """End a stopped run with one line saying what was kept, and the signal's exit status.

        `completed` counts steps; the step lines number them from 0, so the last one printed is `completed - 1`.
        """
        name = signal.Signals(self.signum).name
        kept = (f"checkpoint saved at {checkpoint} (resume with --load {checkpoint.parent})"
                if checkpoint is not None else "no checkpoint written (set --save to keep the state)")
        print(f"stopped by {name} after step {completed - 1}: {kept}", flush=True)
        raise SystemExit(128 + self.signum)
