"""sglang-router in front of several SGLang engines: one URL that balances requests over their servers.

The batch assembler sends each group of samples to one engine itself (the group shares its prompt's
KV cache there, and an abort must reach the server running the request), so the router serves
everything else that wants "the policy" as one endpoint: user rollout functions, agent environments,
evaluation clients. It starts empty; each engine registers its server when it is up, so an engine
restarted on another port is routed to without restarting the router.
"""

from __future__ import annotations

import subprocess
import sys
import time

from async_rl.backends.sglang.http_client import HttpClient
from async_rl.backends.sglang.server import stop_process_group, wait_until_answering
from async_rl.net import free_port


class SGLangRouter:
    def __init__(self, host: str, port: int | None = None, policy: str = "cache_aware", startup_timeout_s: float = 120.0):
        port = port or free_port(host)
        self.url = f"http://{host}:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sglang_router.launch_router", "--host", host, "--port", str(port),
             "--policy", policy, "--prometheus-port", str(free_port(host)), "--log-level", "warn"],
            start_new_session=True,
        )
        self.client = HttpClient(self.url, max_concurrency=1)
        wait_until_answering(self.process, self.url + "/workers", startup_timeout_s, stop=self.stop)

    def worker_urls(self) -> set[str]:
        return _worker_urls(self.client.get("/workers"))

    def stop(self) -> None:
        self.client.close()
        stop_process_group(self.process)


def register_with_router(router_url: str, worker_url: str, timeout_s: float = 60.0) -> None:
    """Called by an engine once its server is up; waits until the router lists it (registration is asynchronous)."""
    client = HttpClient(router_url, max_concurrency=1)
    try:
        client.post("/workers", {"url": worker_url})
        deadline = time.monotonic() + timeout_s
        while worker_url not in _worker_urls(client.get("/workers")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sglang-router {router_url} did not list {worker_url} within {timeout_s:.0f} s")
            time.sleep(0.5)
    finally:
        client.close()


def _worker_urls(answer: dict) -> set[str]:
    return {worker["url"] for worker in answer["workers"]}
