"""ChaosProxy against a real HTTP server on 127.0.0.1: each mode, switched while it runs."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

import anyio
import anyio.abc
import httpx
import pytest
from anyio.abc import SocketAttribute

from resilio import Pipeline, Retry
from resilio.integrations.httpx import TRANSIENT_ERRORS, ResilientTransport
from resilio.strategies.retry import Backoff
from resilio.testing import PROXY_MODES, ChaosProxy

pytestmark = pytest.mark.anyio

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
# Sent in two writes, a moment apart: the proxy sees two chunks.
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
BODY = b"ok"


class Server:
    """A keep-alive HTTP/1.1 server in the test's event loop that answers every request."""

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.port = 0

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        buf = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        buf += await stream.receive()
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    self.requests += 1
                    await stream.send(HEAD)
                    await anyio.sleep(0.005)
                    await stream.send(BODY)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass


@asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def roundtrip(stream: anyio.abc.SocketStream) -> bytes:
    """Send one request on `stream` and read the whole response."""
    await stream.send(REQUEST)
    data = b""
    while not data.endswith(BODY):
        data += await stream.receive()
    return data


async def connect(proxy: ChaosProxy) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp(proxy.host, proxy.port)


async def test_pass_forwards_both_ways(core: ModuleType, anyio_backend: str) -> None:
    async with serving() as server, ChaosProxy("127.0.0.1", server.port) as proxy:
        assert proxy.port != 0 and proxy.address == ("127.0.0.1", proxy.port)
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.get(f"http://127.0.0.1:{proxy.port}/")
                assert (r.status_code, r.text) == (200, "ok")
        assert server.requests == 3
        # Keep-alive: one client connection, one upstream connection.
        assert proxy.connections == 1 and server.connections == 1


async def test_latency_is_added_once_per_response(core: ModuleType, anyio_backend: str) -> None:
    async with serving() as server, ChaosProxy("127.0.0.1", server.port) as proxy:
        stream = await connect(proxy)
        async with stream:
            await roundtrip(stream)  # connected and warm
            proxy.mode = "latency"
            proxy.latency = 0.05
            start = time.monotonic()
            await stream.send(REQUEST)
            first = await stream.receive()
            t_first = time.monotonic() - start
            rest = first
            while not rest.endswith(BODY):
                rest += await stream.receive()
            t_last = time.monotonic() - start
            proxy.mode = "pass"
            start = time.monotonic()
            await roundtrip(stream)
            t_pass = time.monotonic() - start
    assert t_first >= 0.05
    # Each chunk is held from its own arrival: the body is not held a second time.
    assert t_last - t_first < 0.045
    assert t_pass < 0.05


async def test_reset_new_and_open_connections(core: ModuleType, anyio_backend: str) -> None:
    async with serving() as server, ChaosProxy("127.0.0.1", server.port) as proxy:
        open_stream = await connect(proxy)
        await roundtrip(open_stream)
        proxy.mode = "reset"
        with pytest.raises(anyio.BrokenResourceError):
            await open_stream.receive()
        await open_stream.aclose()
        # The RST may already be there when the connect completes (trio checks), or not.
        with pytest.raises((anyio.BrokenResourceError, OSError)):
            async with await connect(proxy) as fresh:
                await roundtrip(fresh)
        assert proxy.resets == 2
        proxy.mode = "pass"
        async with await connect(proxy) as again:
            assert (await roundtrip(again)).endswith(BODY)


async def test_blackhole_swallows_and_never_answers(core: ModuleType, anyio_backend: str) -> None:
    async with serving() as server, ChaosProxy("127.0.0.1", server.port) as proxy:
        open_stream = await connect(proxy)
        await roundtrip(open_stream)
        proxy.mode = "blackhole"
        fresh = await connect(proxy)
        for stream in (open_stream, fresh):
            await stream.send(REQUEST)
            with anyio.move_on_after(0.05) as scope:
                await stream.receive()
            assert scope.cancelled_caught
        assert server.requests == 1  # neither request reached the server
        proxy.mode = "pass"
        # An open connection stays black-holed (bytes were lost); new ones pass.
        await open_stream.send(REQUEST)
        with anyio.move_on_after(0.05) as scope:
            await open_stream.receive()
        assert scope.cancelled_caught
        async with await connect(proxy) as again:
            assert (await roundtrip(again)).endswith(BODY)
        for stream in (open_stream, fresh):
            await stream.aclose()


async def test_refuse_stops_listening_and_listens_again(
    core: ModuleType, anyio_backend: str
) -> None:
    async with serving() as server, ChaosProxy("127.0.0.1", server.port) as proxy:
        port = proxy.port
        open_stream = await connect(proxy)
        await roundtrip(open_stream)
        proxy.mode = "refuse"
        # At once, before the proxy's own tasks have run.
        with pytest.raises(OSError):
            await connect(proxy)
        with anyio.fail_after(1):
            # The open connection is closed once quiet (a restarting server).
            with pytest.raises(anyio.EndOfStream):
                await open_stream.receive()
        await open_stream.aclose()
        proxy.mode = "pass"
        assert proxy.port == port
        async with await connect(proxy) as again:
            assert (await roundtrip(again)).endswith(BODY)


async def test_refuse_lets_a_response_in_flight_finish(
    core: ModuleType, anyio_backend: str
) -> None:
    async with (
        serving() as server,
        ChaosProxy("127.0.0.1", server.port) as proxy,
        await connect(proxy) as stream,
    ):
        await stream.send(REQUEST)
        first = await stream.receive()  # the head; the body is 5 ms behind
        proxy.mode = "refuse"
        rest = first
        while not rest.endswith(BODY):
            rest += await stream.receive()
        assert rest == HEAD + BODY


async def test_start_refusing(core: ModuleType, anyio_backend: str) -> None:
    async with (
        serving() as server,
        ChaosProxy("127.0.0.1", server.port, mode="refuse") as proxy,
    ):
        assert proxy.port != 0
        with pytest.raises(OSError):
            await connect(proxy)
        proxy.mode = "pass"
        async with await connect(proxy) as stream:
            assert (await roundtrip(stream)).endswith(BODY)


async def test_unreachable_upstream_resets_the_client(core: ModuleType, anyio_backend: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening: connecting is refused
        async with ChaosProxy("127.0.0.1", dead_port) as proxy:
            stream = await connect(proxy)
            with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                await roundtrip(stream)
            await stream.aclose()
            assert proxy.resets == 1


async def test_exit_closes_everything(core: ModuleType, anyio_backend: str) -> None:
    async with serving() as server:
        async with ChaosProxy("127.0.0.1", server.port) as proxy:
            stream = await connect(proxy)
            await roundtrip(stream)
            assert proxy.active == 1
        assert proxy.active == 0
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await stream.receive()
        await stream.aclose()
        with pytest.raises(OSError):
            await connect(proxy)


async def test_resilient_transport_rides_out_a_reset(core: ModuleType, anyio_backend: str) -> None:
    async with serving() as server, ChaosProxy("127.0.0.1", server.port, mode="reset") as proxy:

        def heal(attempt: int, outcome: object, delay: float) -> None:
            proxy.mode = "pass"

        retry = Retry(3, backoff=Backoff.constant(0.0), handle=TRANSIENT_ERRORS, on_retry=heal)
        transport = ResilientTransport(Pipeline(retry))
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"http://127.0.0.1:{proxy.port}/")
        assert (r.status_code, r.text) == (200, "ok")
        assert retry.stats()["retries"] == 1 and proxy.resets == 1


def test_validation() -> None:
    with pytest.raises(TypeError, match="upstream_host"):
        ChaosProxy("", 80)
    with pytest.raises(TypeError, match="upstream_port"):
        ChaosProxy("127.0.0.1", "80")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        ChaosProxy("127.0.0.1", 80, port=70000)
    with pytest.raises(ValueError, match="mode must be one of"):
        ChaosProxy("127.0.0.1", 80, mode="drop")  # type: ignore[arg-type]
    proxy = ChaosProxy("127.0.0.1", 80)
    with pytest.raises(ValueError, match="mode"):
        proxy.mode = "slow"  # type: ignore[assignment]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="latency"):
            proxy.latency = bad
    with pytest.raises(TypeError, match="latency"):
        proxy.latency = "1"  # type: ignore[assignment]
    assert proxy.mode == "pass" and proxy.latency == 0.0
    assert PROXY_MODES == ("pass", "latency", "reset", "blackhole", "refuse")
    assert "ChaosProxy('127.0.0.1', 80" in repr(proxy)
