"""Scriptable servers for the httpx transport tests.

`FlakyApp` is a plain ASGI app (run it under uvicorn with the `serve` fixture)
whose next responses a test scripts: fail N times with a status (and maybe a
`Retry-After`), or stall. Unscripted requests get 200 with a JSON echo of what
the server saw, including the `Request-Timeout` header. The server runs in
another thread, so the script and the log are guarded by a lock.

`Switchboard` forwards to whichever FlakyApp a test plugs in, so one uvicorn
server can serve a whole module (starting and stopping uvicorn costs ~0.3 s).

`RawServer` is a TCP server on 127.0.0.1 in the test's own event loop (anyio,
so asyncio and trio) for faults below HTTP: a connection dropped without a
reply, reset (RST), or answered with garbage.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class _Step:
    times: int
    status: int = 200
    stall: float = 0.0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    path: str | None = None


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


class FlakyApp:
    """An ASGI app that follows a script, then answers 200 with a JSON echo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: list[_Step] = []
        self.requests: list[Seen] = []

    def fail(
        self,
        times: int = 1,
        status: int = 503,
        *,
        retry_after: str | None = None,
        path: str | None = None,
    ) -> FlakyApp:
        """Answer the next `times` requests (to `path`, or any) with `status`."""
        headers = [] if retry_after is None else [(b"retry-after", retry_after.encode())]
        with self._lock:
            self._steps.append(_Step(times, status=status, headers=headers, path=path))
        return self

    def stall(self, seconds: float, times: int = 1, *, path: str | None = None) -> FlakyApp:
        """Hold the next `times` requests for `seconds` (or until the client leaves)."""
        with self._lock:
            self._steps.append(_Step(times, stall=seconds, path=path))
        return self

    def count(self, path: str | None = None) -> int:
        """How many requests arrived (to `path`, or in all)."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def _take(self, path: str) -> _Step | None:
        for step in self._steps:
            if step.times > 0 and (step.path is None or step.path == path):
                step.times -= 1
                return step
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        seen = Seen(scope["method"], scope["path"], headers, body)
        with self._lock:
            self.requests.append(seen)
            n = len(self.requests)
            step = self._take(scope["path"])
        if step is not None and step.stall:
            try:
                # The next message is http.disconnect: stop stalling once the client leaves.
                message = await asyncio.wait_for(receive(), step.stall)
                if message["type"] == "http.disconnect":
                    return
            except TimeoutError:
                pass
        # Status is logged before the reply: the test may look as soon as it has one.
        if step is not None and step.status != 200:
            seen.status = step.status
            await _respond(send, step.status, f"failure {n}".encode(), step.headers)
            return
        echo = {
            "n": n,
            "method": seen.method,
            "path": seen.path,
            "body": body.decode("latin-1"),
            "request_timeout": headers.get("request-timeout"),
        }
        seen.status = 200
        await _respond(send, 200, json.dumps(echo).encode(), [])


class Switchboard:
    """An ASGI app that forwards to `self.app`, so one server can serve test after test."""

    def __init__(self) -> None:
        self.app: FlakyApp = FlakyApp()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class RawServer:
    """A TCP server whose Nth connection gets the Nth mode, then "ok".

    Modes: "drop" (read the request, close without a reply), "reset" (close
    with RST), "garbage" (answer bytes that are not HTTP), "ok" (200 "ok").
    """

    def __init__(self, *modes: str) -> None:
        for m in modes:
            if m not in ("drop", "reset", "garbage", "ok"):
                raise ValueError(f"unknown mode {m!r}")
        self._modes = deque(modes)
        self.connections = 0
        self.port = 0
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawServer:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self._listener = listener
        self.port = listener.extra(SocketAttribute.local_port)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None and self._listener is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)
        await self._listener.aclose()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            self.connections += 1
            mode = self._modes.popleft() if self._modes else "ok"
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    head += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            if mode == "reset":
                sock = stream.extra(SocketAttribute.raw_socket)
                # Linger 0: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "garbage":
                await stream.send(b"NOT HTTP AT ALL\r\n\r\n")
            elif mode == "ok":
                await stream.send(OK_RESPONSE)
