"""A blocking front on an asyncio HTTP client: one event-loop thread, one pooled session per server.

Engine actors are threaded (a `generate` call blocks while `abort` arrives on another thread), so the
asyncio side runs in a thread of its own and callers wait on its futures. Generation requests share a
bounded number of slots; control requests (abort, weights, health) bypass them, so they are never stuck
behind a full batch.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Coroutine, Iterable, Sequence

import aiohttp

_CONTROL_CONNECTIONS = 8
# uvicorn (SGLang's HTTP server) closes a connection idle for 5 s. A client that keeps idle connections longer
# (aiohttp's default: 15 s) may send a request on one just as the server closes it, and the request fails with
# "Server disconnected" (seen on the first weight push after a training step): close idle connections first.
IDLE_CONNECTION_S = 3.0


class HttpError(RuntimeError):
    """The server answered with a status outside 2xx."""


class HttpClient:
    def __init__(self, base_url: str, max_concurrency: int, idle_connection_s: float = IDLE_CONNECTION_S):
        self.base_url = base_url
        self.idle_connection_s = idle_connection_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"http {base_url}", daemon=True)
        self._thread.start()
        self._slots, self._session = self._run(self._open(max_concurrency))

    async def _open(self, max_concurrency: int) -> tuple[asyncio.Semaphore, aiohttp.ClientSession]:
        connector = aiohttp.TCPConnector(limit=max_concurrency + _CONTROL_CONNECTIONS,
                                         keepalive_timeout=self.idle_connection_s)
        session = aiohttp.ClientSession(self.base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        return asyncio.Semaphore(max_concurrency), session

    def _run(self, coroutine: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _request(self, method: str, path: str, payload: Any = None, timeout_s: float | None = None,
                       as_json: bool = True) -> Any:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.request(method, path, json=payload, timeout=timeout) as response:
            body = await response.text()
            if not 200 <= response.status < 300:  # sglang-router queues a new worker: 202
                raise HttpError(f"{method} {self.base_url}{path}: HTTP {response.status}: {body[:1000]}")
            if not as_json:
                return body
            return json.loads(body) if body else None

    async def _generation_request(self, path: str, payload: Any) -> Any:
        async with self._slots:
            return await self._request("POST", path, payload)

    def post(self, path: str, payload: Any = None, timeout_s: float | None = None) -> Any:
        """One control request; the decoded JSON answer (None for an empty body)."""
        return self._run(self._request("POST", path, {} if payload is None else payload, timeout_s))

    def get(self, path: str, timeout_s: float | None = None) -> Any:
        return self._run(self._request("GET", path, timeout_s=timeout_s))

    def get_text(self, path: str, timeout_s: float | None = None) -> str:
        return self._run(self._request("GET", path, timeout_s=timeout_s, as_json=False))

    @staticmethod
    async def _gather(requests: Iterable[Coroutine]) -> list[Any]:
        return await asyncio.gather(*requests)

    def post_many(self, path: str, payloads: Sequence[Any]) -> list[Any]:
        """Send every payload at once, at most `max_concurrency` in flight; answers in payload order."""
        return self._run(self._gather(self._generation_request(path, p) for p in payloads))

    def post_all(self, path: str, payloads: Sequence[Any]) -> list[Any]:
        """Control requests sent at once, outside the generation slots (an abort of every sample of a batch: one
        round trip instead of one per sample, while the batch holds every slot)."""
        return self._run(self._gather(self._request("POST", path, p) for p in payloads))

    def close(self) -> None:
        self._run(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
