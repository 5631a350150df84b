"""`--rm-type remote_rm` against a real HTTP server on 127.0.0.1 that answers, is slow, fails, or talks nonsense."""

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from async_rl.errors import UserInputError
from async_rl.sample import Sample
from rewards.grading import RewardFunctionBroken, RewardGrader
from rewards.registry import resolve_reward


class RewardServer(ThreadingHTTPServer):
    """Scores 1 when the response holds the label; `mode` makes it slow, fail the first calls, or answer garbage."""

    daemon_threads = True

    def __init__(self, mode: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.calls, self.in_flight, self.most_in_flight = mode, 0, 0, 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/reward"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server: RewardServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.calls += 1
            calls = server.calls
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            if server.mode == "slow":
                time.sleep(3)
            time.sleep(0.05)  # long enough for concurrent requests to overlap
            if server.mode == "flaky" and calls <= 2:
                return self._answer(503, b"busy")
            if server.mode == "garbage":
                return self._answer(200, b"<html>not a reward</html>")
            score = float(body["label"] in body["response"])
            self._answer(200, json.dumps({"score": score, "judge": "exact"}).encode())
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self, status: int, payload: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server(request):
    srv = RewardServer(request.param)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def samples(n):
    return [Sample(prompt="1+1=", prompt_tokens=[1], response="2" if i % 2 else "3", label="2", group_id=i, index=i)
            for i in range(n)]


def grade(url, batch, timeout=5.0, concurrency=64, retries=3):
    args = argparse.Namespace(rm_url=url, rm_max_concurrency=concurrency, rm_max_retries=retries)
    grader = RewardGrader(resolve_reward("remote_rm", rm_url=url), args=args, timeout=timeout, default=-1.0)
    try:
        return grader.grade(batch)
    finally:
        grader.close()


@pytest.mark.parametrize("server", ["ok"], indirect=True)
def test_the_server_scores_every_sample_within_the_concurrency_limit(server):
    rewards, counts = grade(server.url, samples(12), concurrency=3)
    assert [r["score"] for r in rewards] == [float(i % 2) for i in range(12)]
    assert rewards[0]["judge"] == "exact" and sum(counts.values()) == 0
    assert 1 < server.most_in_flight <= 3


@pytest.mark.parametrize("server", ["flaky"], indirect=True)
def test_a_busy_server_is_retried(server):
    rewards, counts = grade(server.url, samples(1))
    assert rewards[0]["score"] == 0.0 and server.calls == 3 and sum(counts.values()) == 0


@pytest.mark.parametrize("server", ["slow"], indirect=True)
def test_a_server_that_does_not_answer_costs_one_timeout_per_batch(server, caplog):
    start = time.monotonic()
    rewards, counts = grade(server.url, samples(8), timeout=0.5)
    assert time.monotonic() - start < 2.5  # 8 samples, each allowed 0.5 s: in parallel, one timeout in all
    assert rewards == [-1.0] * 8 and counts["timeouts"] == 8
    assert f"--rm-url {server.url}: 8 of 8 samples scored -1" in caplog.text


@pytest.mark.parametrize("server", ["garbage"], indirect=True)
def test_garbage_answers_are_errors_named_with_the_url(server):
    with pytest.raises(RewardFunctionBroken, match=f"--rm-url {server.url}: 4 of 4 samples scored -1 .*failed:"):
        grade(server.url, samples(4))


def test_a_server_that_is_down_is_named_after_the_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/reward"  # bound, never listening: connections are refused
        with pytest.raises(RewardFunctionBroken, match=f"failed: RewardServerError: {url}: .* \\(2 tries\\)"):
            grade(url, samples(2), retries=1)


def test_remote_rm_needs_its_url_and_the_url_needs_it():
    with pytest.raises(UserInputError, match="--rm-type remote_rm needs --rm-url"):
        resolve_reward("remote_rm")
    with pytest.raises(UserInputError, match="--rm-url applies to --rm-type remote_rm"):
        resolve_reward("math", rm_url="http://127.0.0.1:1/")
