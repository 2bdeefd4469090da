"""The shortest use: an httpx client with the transport's defaults.

A tiny HTTP server runs in this process so that the example needs no network.
"""

from __future__ import annotations

import anyio
import anyio.abc
import httpx
from anyio.abc import SocketAttribute

from resilio.integrations.httpx import client


async def fetch_item(base_url: str) -> httpx.Response:
    async with client(base_url=base_url) as http:
        return await http.get("/items/42")  # retried, breaker-guarded, time-bounded


async def serve(stream: anyio.abc.SocketStream) -> None:
    """Answer every request on a keep-alive connection with 200 and a JSON body."""
    body = b'{"id": 42}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    buf = b""
    async with stream:
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    buf += await stream.receive()
                _, _, buf = buf.partition(b"\r\n\r\n")
                await stream.send(head % len(body) + body)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def main() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        response = await fetch_item(f"http://127.0.0.1:{port}")
        print(response.status_code, response.json())
        assert response.json() == {"id": 42}
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
