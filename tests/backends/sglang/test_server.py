"""Waiting for a server process (SGLang servers, sglang-router) to answer, with real processes."""

import subprocess
import sys

import pytest

from async_rl.backends.sglang.server import stop_process_group, wait_until_answering
from async_rl.net import free_port


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], start_new_session=True, stderr=subprocess.DEVNULL)


def test_waits_for_a_server_that_takes_a_while_to_listen():
    port = free_port("127.0.0.1")
    server = start("-c", f"import time, runpy, sys; time.sleep(1); sys.argv = ['http.server', '--bind', '127.0.0.1', "
                         f"'{port}']; runpy.run_module('http.server', run_name='__main__')")
    try:
        wait_until_answering(server, f"http://127.0.0.1:{port}/", 30, stop=lambda: stop_process_group(server))
        assert server.poll() is None
    finally:
        stop_process_group(server)


def test_a_process_that_exits_while_starting_is_reported_with_its_code():
    exiting = start("-c", "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match="exited with code 3"):
        wait_until_answering(exiting, f"http://127.0.0.1:{free_port('127.0.0.1')}/", 30, stop=lambda: None)


def test_a_server_that_never_answers_is_stopped_after_the_timeout():
    silent = start("-c", "import time; time.sleep(60)")
    with pytest.raises(TimeoutError, match="did not answer within 1 s"):
        wait_until_answering(silent, f"http://127.0.0.1:{free_port('127.0.0.1')}/", 1,
                             stop=lambda: stop_process_group(silent))
    assert silent.poll() is not None  # stopped, not left running
