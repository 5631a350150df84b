"""One SGLang HTTP server in a process of its own: started on a free port, waited for, stopped with its children.

The server is started from SGLang's `ServerArgs` object (pickled to a file the child reads), not a
command line, so every `--sglang-*` value reaches SGLang with the type SGLang declared. The child
watches the process that started it and takes its whole process tree down when that process dies
(a killed engine actor must not leave a server holding GPU memory).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any


class SGLangServer:
    def __init__(self, server_args: Any, startup_timeout_s: float = 900.0):
        """Start `python -m async_rl.rollout.sglang_server ARGS` and wait until it generates (`/health_generate`)."""
        self.url = f"http://{server_args.host}:{server_args.port}"
        with tempfile.NamedTemporaryFile("wb", suffix=".server_args.pkl", delete=False) as f:
            pickle.dump(server_args, f)
        try:
            self.process = subprocess.Popen([sys.executable, "-m", __name__, f.name, str(os.getpid())],
                                            start_new_session=True)
            self._wait_ready(startup_timeout_s)
        finally:
            os.unlink(f.name)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive:
                raise RuntimeError(f"SGLang server for {self.url} exited with code {self.process.returncode} while "
                                   "starting (its log is above)")
            try:
                with urllib.request.urlopen(self.url + "/health_generate", timeout=10) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"SGLang server for {self.url} did not become healthy within {timeout_s:.0f} s")
            time.sleep(1)

    def stop(self) -> None:
        stop_process_group(self.process)


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group `process` leads, SIGKILL what is left after `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os.killpg(0, signal.SIGKILL)


def main(args_file: str, parent_pid: int) -> None:
    from sglang.launch_server import run_server
    from sglang.srt.utils import kill_process_tree

    with open(args_file, "rb") as f:
        server_args = pickle.load(f)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
