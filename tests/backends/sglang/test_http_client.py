"""The engines' HTTP client against a real local HTTP server: bounded generation concurrency, control requests
that get through while every generation slot is taken, answers in request order, server errors raised."""

import asyncio
import threading

import pytest
from aiohttp import web

from async_rl.backends.sglang.http_client import HttpClient, HttpError


class Server:
    """/generate holds each request until /release; counts how many are held at once."""

    def __init__(self):
        self.in_flight = self.most_in_flight = 0
        self.release = None
        self.ready = threading.Event()
        self.arrived = 0  # /together requests so far

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        return web.json_response({"echo": body["i"]})

    async def control(self, request: web.Request) -> web.Response:
        self.release.set()
        return web.json_response({"held": self.in_flight})

    async def together(self, request: web.Request) -> web.Response:
        """Answers once `expected` of these requests are in at the same time: one sent after another never is."""
        expected = (await request.json())["expected"]
        self.arrived += 1
        for _ in range(500):
            if self.arrived >= expected:
                return web.json_response({"arrived": self.arrived})
            await asyncio.sleep(0.01)
        return web.Response(status=408, text=f"only {self.arrived} of {expected} arrived together")

    async def fail(self, request: web.Request) -> web.Response:
        return web.Response(status=400, text="bad sampling params")

    def serve(self) -> None:
        async def main():
            self.release = asyncio.Event()
            app = web.Application()
            app.add_routes([web.post("/generate", self.generate), web.post("/abort_request", self.control),
                            web.post("/together", self.together), web.post("/fail", self.fail)])
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self.stop = asyncio.Event()
            self.ready.set()
            await self.stop.wait()
            await runner.cleanup()

        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(main())


@pytest.fixture
def server():
    s = Server()
    thread = threading.Thread(target=s.serve, daemon=True)
    thread.start()
    assert s.ready.wait(10)
    yield s
    s.loop.call_soon_threadsafe(s.stop.set)
    thread.join(10)


def test_generation_is_bounded_and_control_requests_pass_a_full_batch(server):
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_concurrency=3)
    try:
        results = []
        batch = threading.Thread(target=lambda: results.extend(client.post_many("/generate", [{"i": i} for i in range(10)])))
        batch.start()
        while server.in_flight < 3:  # every slot taken, seven requests waiting in the client
            threading.Event().wait(0.01)
        assert client.post("/abort_request", {"rid": "x"}, timeout_s=5) == {"held": 3}  # not stuck behind the slots
        batch.join(10)
        assert results == [{"echo": i} for i in range(10)]
        assert server.most_in_flight == 3
        with pytest.raises(HttpError, match="HTTP 400: bad sampling params"):
            client.post("/fail")
    finally:
        client.close()


def test_control_requests_go_out_together_while_generation_holds_every_slot(server):
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_concurrency=2)
    try:
        batch = threading.Thread(target=lambda: client.post_many("/generate", [{"i": i} for i in range(2)]))
        batch.start()
        while server.in_flight < 2:
            threading.Event().wait(0.01)
        assert client.post_all("/together", [{"expected": 6}] * 6) == [{"arrived": 6}] * 6
        client.post("/abort_request", {"rid": "x"})
        batch.join(10)
    finally:
        client.close()


class OneRequestPerConnection:
    """Answers the first request of a connection, then drops the connection when a second one arrives on it: what a
    client sees when it reuses an idle connection just as the server's keep-alive timeout closes it."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read(1)  # the next request on this connection, or the client closing it
        writer.close()

    def serve(self, ready: threading.Event) -> None:
        async def main():
            server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.stop = asyncio.Event()
            ready.set()
            await self.stop.wait()
            server.close()

        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(main())


@pytest.mark.parametrize("idle_connection_s, fails", [(0.2, False), (30.0, True)])
def test_an_idle_connection_is_closed_before_the_server_closes_it(idle_connection_s, fails):
    from aiohttp import ServerDisconnectedError

    server, ready = OneRequestPerConnection(), threading.Event()
    thread = threading.Thread(target=server.serve, args=(ready,), daemon=True)
    thread.start()
    assert ready.wait(10)
    client = HttpClient(f"http://127.0.0.1:{server.port}", max_concurrency=1, idle_connection_s=idle_connection_s)
    try:
        assert client.post("/update_weights_from_tensor") == {}
        threading.Event().wait(0.6)  # a training step
        if fails:  # the connection kept for 30 s is reused and dropped: the failure the short idle time prevents
            with pytest.raises(ServerDisconnectedError):
                client.post("/update_weights_from_tensor")
        else:
            assert client.post("/update_weights_from_tensor") == {}
    finally:
        client.close()
        server.loop.call_soon_threadsafe(server.stop.set)
        thread.join(10)
