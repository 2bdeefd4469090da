"""Test the transport against real network faults: a ChaosProxy between client and server.

A tiny HTTP server runs in this process, with a ChaosProxy in front of it; the
clients talk to the proxy, whose fault is switched as the example runs:

- black-holed connections: each attempt is cut by the attempt timeout and retried,
  until the next attempt could not start before the total timeout;
- refused connections: the origin's circuit breaker opens, fails fast while open,
  and closes again with the first request after the network heals and the break ends.
"""

from __future__ import annotations

import time

import anyio
import anyio.abc
import httpx
from anyio.abc import SocketAttribute

from resilio import Backoff, BrokenCircuitError, CircuitBreaker, Retry, TimeoutRejectedError
from resilio.integrations.httpx import TRANSIENT_ERRORS, ResilientTransport
from resilio.testing import ChaosProxy, FakeClock


async def serve(stream: anyio.abc.SocketStream) -> None:
    """Answer every request on a keep-alive connection with 200 "ok"."""
    buf = b""
    async with stream:
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    buf += await stream.receive()
                _, _, buf = buf.partition(b"\r\n\r\n")
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def blackhole(proxy: ChaosProxy, url: str) -> None:
    transport = ResilientTransport(
        retry=Retry(100, backoff=Backoff.constant(0.1), handle=TRANSIENT_ERRORS),
        attempt_timeout=0.1,
        total_timeout=0.35,  # attempts at 0-0.1 s and 0.2-0.3 s; no room for a third
    )
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(url)).status_code == 200
        proxy.mode = "blackhole"  # connections open, bytes vanish: nothing ever answers
        start = time.monotonic()
        try:
            await http.get(url)
        except TimeoutRejectedError as exc:
            elapsed = time.monotonic() - start
            print(f"blackhole: {exc} ({exc.strategy}) after {elapsed:.2f} s")
            assert elapsed < 0.35 + 0.25
        proxy.mode = "pass"


async def refuse(proxy: ChaosProxy, url: str) -> None:
    clock = FakeClock()  # the breaker's time: its break ends when the example says so
    transport = ResilientTransport(
        retry=None,
        breaker=lambda: CircuitBreaker(
            failure_ratio=0.5,
            minimum_throughput=2,
            break_duration=5.0,
            handle=TRANSIENT_ERRORS,
            clock=clock,
        ),
    )
    async with httpx.AsyncClient(transport=transport) as http:
        proxy.mode = "refuse"  # nobody listens: a restarting server
        for _ in range(2):
            try:
                await http.get(url)
            except httpx.ConnectError as exc:
                print("refuse:", type(exc).__name__)
        breaker = transport.circuit_breaker(url)
        assert breaker is not None
        print("breaker:", breaker.state.name)
        try:
            await http.get(url)
        except BrokenCircuitError as exc:
            print(f"open circuit: fails fast, retry after {exc.retry_after:.0f} s")

        proxy.mode = "pass"
        clock.advance(5.1)  # the break is over: the next request probes the origin
        response = await http.get(url)
        print("healed:", response.status_code, "breaker:", breaker.state.name)
        assert breaker.state.name == "CLOSED"


async def main() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        async with ChaosProxy("127.0.0.1", port) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/"
            await blackhole(proxy, url)
            await refuse(proxy, url)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
