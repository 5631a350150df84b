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
from typing import Any, Callable

from async_rl.backends.sglang.deepgemm_env import server_environment


class SGLangServer:
    def __init__(self, server_args: Any, startup_timeout_s: float = 900.0):
        """Start `python -m async_rl.backends.sglang.server ARGS` and wait until it generates (`/health_generate`)."""
        self.url = f"http://{server_args.host}:{server_args.port}"
        with tempfile.NamedTemporaryFile("wb", suffix=".server_args.pkl", delete=False) as f:
            pickle.dump(server_args, f)
        try:
            self.process = subprocess.Popen([sys.executable, "-m", __name__, f.name, str(os.getpid())],
                                            start_new_session=True, env=server_environment(os.environ))
            wait_until_answering(self.process, self.url + "/health_generate", startup_timeout_s, stop=self.stop)
        finally:
            os.unlink(f.name)

    def stop(self) -> None:
        stop_process_group(self.process)


def wait_until_answering(process: subprocess.Popen, url: str, timeout_s: float, stop: Callable[[], None]) -> None:
    """Poll `url` until it answers 2xx; if `process` exits first, or `timeout_s` passes (then `stop()`), raise."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=10):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # not up yet, or 503 while starting
            if time.monotonic() > deadline:
                stop()
                raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(0.5)
    raise RuntimeError(f"the process serving {url} exited with code {process.returncode} while starting "
                       "(its log is above)")


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
