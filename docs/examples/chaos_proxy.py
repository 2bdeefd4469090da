"""Put a ChaosProxy between an HTTP client and a server, and break the network on purpose.

A tiny HTTP server runs in this process; the proxy sits in front of it on a
free port of 127.0.0.1. The resilient client rides out a connection reset
(its retry switches the proxy back to "pass"); the bare one does not.
"""

from __future__ import annotations

import anyio
import anyio.abc
import httpx
from anyio.abc import SocketAttribute

from resilio import Pipeline, Retry
from resilio.integrations.httpx import TRANSIENT_ERRORS, ResilientTransport
from resilio.strategies.retry import Backoff
from resilio.testing import ChaosProxy


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


async def main() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        async with ChaosProxy("127.0.0.1", port) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/"

            # Latency: every response is held 50 ms.
            proxy.mode, proxy.latency = "latency", 0.05
            async with httpx.AsyncClient() as bare:
                r = await bare.get(url)
                print(f"latency: {r.status_code} in {r.elapsed.total_seconds() * 1000:.0f} ms")

                # Reset: the bare client gets the error.
                proxy.mode = "reset"
                try:
                    await bare.get(url)
                except httpx.TransportError as exc:
                    print(f"reset, bare client: {type(exc).__name__}")

            # The resilient client retries; the network heals before the second attempt.
            def heal(attempt: int, outcome: object, delay: float) -> None:
                print(f"reset, resilient client: attempt {attempt} failed, retrying")
                proxy.mode = "pass"

            retry = Retry(3, backoff=Backoff.constant(0.01), handle=TRANSIENT_ERRORS, on_retry=heal)
            transport = ResilientTransport(Pipeline(retry))
            async with httpx.AsyncClient(transport=transport) as resilient:
                r = await resilient.get(url)
                print(f"reset, resilient client: {r.status_code} {r.text}")
                assert r.status_code == 200

            # Refuse: nobody is listening on the port until the mode changes.
            proxy.mode = "refuse"
            async with httpx.AsyncClient() as bare:
                try:
                    await bare.get(url)
                except httpx.ConnectError:
                    print("refuse: connection refused")
                proxy.mode = "pass"
                print(f"pass again: {(await bare.get(url)).status_code}")
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
