"""The flaky upstream of `resilio demo`: an ASGI service, its proxy, and their timeline.

Run as a child process (`python -m resilio.demo.upstream --seed N --error-rate R`):
it serves `FlakyUpstream` with uvicorn on a free port of 127.0.0.1, puts a
`resilio.testing.ChaosProxy` in front of it, prints one JSON line
``{"proxy_port": ..., "upstream_port": ...}`` and serves until its stdin closes.
Clients go through the proxy; the driver talks to the service directly at
``/__control/start`` (begin a run: the timeline's time zero and its length)
and ``/__control/stats`` (what reached the service during the run).

Each run follows `TIMELINE`, scaled to the run's length. Faults of the
service itself are drawn per request from (seed, call id, attempt number),
so two runs of the same workload meet the same faults on their first
attempts whatever the clients do; the proxy's faults (latency, refused
connections) follow the clock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc

from resilio.testing import ChaosProxy

__all__ = [
    "CALL_HEADER",
    "TIMELINE",
    "Faults",
    "FlakyUpstream",
    "Phase",
    "phase_at",
    "proxy_script",
]

#: Header carrying the client's call number (the same on every attempt of a call).
CALL_HEADER: Final = "x-demo-call"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Phase:
    """A stretch of a run, as fractions of its length, and what goes wrong in it."""

    name: str
    start: float
    end: float
    label: str


#: The scripted faults, in order; transient errors (`Faults.error_rate`) run throughout.
TIMELINE: Final[tuple[Phase, ...]] = (
    Phase("steady", 0.00, 0.08, "transient errors only"),
    Phase("hangs", 0.08, 0.20, "5 % of calls hang (never answered)"),
    Phase("latency", 0.20, 0.32, "latency spike: +0.1 s on every response, 15 % take 1.5 s"),
    Phase("steady", 0.32, 0.40, "transient errors only"),
    Phase("outage", 0.40, 0.56, "full outage: every call gets 503"),
    Phase("recovery", 0.56, 0.64, "transient errors only"),
    Phase("restart", 0.64, 0.72, "rolling restart: 2 instances in turn refuse connections"),
    Phase("overload", 0.72, 0.86, "overload: sheds 15 % of calls with 503 + Retry-After: 0.5"),
    Phase("steady", 0.86, 1.00, "transient errors only"),
)

HANG_RATE: Final = 0.05
HANG_MAX: Final = 60.0
SLOW_RATE: Final = 0.15
SLOW_SECONDS: Final = 1.5
NETWORK_LATENCY: Final = 0.1
SHED_RATE: Final = 0.15
SHED_RETRY_AFTER: Final = "0.5"
RESTART_INSTANCES: Final = 2
#: Share of each instance's turn in the restart phase during which it refuses connections.
RESTART_DOWN_SHARE: Final = 0.5


def phase_at(fraction: float) -> Phase | None:
    """The phase at `fraction` of the run (0 <= fraction < 1), or None outside the run."""
    for p in TIMELINE:
        if p.start <= fraction < p.end:
            return p
    return None


def proxy_script(duration: float) -> list[tuple[float, str, float]]:
    """The proxy's settings over a run of `duration` s: (at seconds, mode, latency)."""
    events: list[tuple[float, str, float]] = []
    for p in TIMELINE:
        start, end = p.start * duration, p.end * duration
        if p.name == "latency":
            events += [(start, "latency", NETWORK_LATENCY), (end, "pass", 0.0)]
        elif p.name == "restart":
            turn = (end - start) / RESTART_INSTANCES
            for i in range(RESTART_INSTANCES):
                at = start + i * turn
                events += [(at, "refuse", 0.0), (at + turn * RESTART_DOWN_SHARE, "pass", 0.0)]
    return events


@dataclass(frozen=True)
class Faults:
    """What the service draws its own faults from."""

    seed: int = 0
    error_rate: float = 0.1

    def draws(self, call: int, attempt: int) -> tuple[float, float, float, float]:
        """Four numbers in [0, 1) for this attempt of this call, the same in every run."""
        digest = hashlib.blake2b(f"{self.seed}:{call}:{attempt}".encode(), digest_size=32).digest()
        a, b, c, d = struct.unpack("<4Q", digest)
        return a / 2**64, b / 2**64, c / 2**64, d / 2**64


class _Run:
    """What the service counts during one run."""

    __slots__ = ("attempts", "calls", "duration", "per_second", "statuses", "t0")

    def __init__(self, t0: float, duration: float) -> None:
        self.t0 = t0
        self.duration = duration
        self.attempts: dict[int, int] = {}
        self.calls = 0
        self.per_second: list[int] = []
        self.statuses: dict[str, int] = {}


class FlakyUpstream:
    """The ASGI service: answers `GET /work` with 200, unless the timeline says otherwise."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.run: _Run | None = None
        #: Called with (t0, duration) when a run starts (drives the proxy).
        self.on_start: Callable[[float, float], None] | None = None
        self._anonymous = 0

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
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        if path.startswith("/__control/"):
            await self._control(path, body, send)
            return
        await self._work(scope, receive, send)

    async def _control(self, path: str, body: bytes, send: Send) -> None:
        if path == "/__control/start":
            spec = json.loads(body)
            self.run = _Run(float(spec["t0"]), float(spec["duration"]))
            if self.on_start is not None:
                self.on_start(self.run.t0, self.run.duration)
            await _respond(send, 200, b'{"ok": true}')
        elif path == "/__control/stats":
            run = self.run
            stats: dict[str, Any] = (
                {"calls": 0, "per_second": [], "statuses": {}}
                if run is None
                else {"calls": run.calls, "per_second": run.per_second, "statuses": run.statuses}
            )
            await _respond(send, 200, json.dumps(stats).encode())
        else:
            await _respond(send, 404, b"no such control")

    async def _work(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.run
        now = time.monotonic()
        call = -1
        for k, v in scope["headers"]:
            if k == CALL_HEADER.encode():
                call = int(v)
        if call < 0:
            self._anonymous -= 1
            call = self._anonymous
        phase: Phase | None = None
        attempt = 1
        if run is not None:
            attempt = run.attempts.get(call, 0) + 1
            run.attempts[call] = attempt
            run.calls += 1
            second = int(now - run.t0)
            if second >= 0:
                while len(run.per_second) <= second:
                    run.per_second.append(0)
                run.per_second[second] += 1
            phase = phase_at((now - run.t0) / run.duration)
        status, headers = await self._decide(phase, call, attempt, receive)
        if status == 0:
            return  # hung up on, or the client left first
        if run is not None:
            run.statuses[str(status)] = run.statuses.get(str(status), 0) + 1
        text = b'{"ok": true}' if status == 200 else b'{"error": "unavailable"}'
        await _respond(send, status, text, headers)

    async def _decide(
        self, phase: Phase | None, call: int, attempt: int, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """(status, extra headers); status 0 means no answer is sent."""
        transient, hang, slow, shed = self.faults.draws(call, attempt)
        name = phase.name if phase is not None else "steady"
        if name == "outage":
            return 503, []
        if name == "hangs" and hang < HANG_RATE:
            await _until_disconnect(receive, HANG_MAX)
            return 0, []
        if (
            name == "latency"
            and slow < SLOW_RATE
            and await _until_disconnect(receive, SLOW_SECONDS)
        ):
            return 0, []
        if name == "overload" and shed < SHED_RATE:
            return 503, [(b"retry-after", SHED_RETRY_AFTER.encode())]
        if transient < self.faults.error_rate:
            return 503, []
        return 200, []


async def _until_disconnect(receive: Receive, seconds: float) -> bool:
    """Wait `seconds`, or less if the client leaves; say whether it left."""
    with anyio.move_on_after(seconds):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return True
    return False


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drive_proxy(proxy: ChaosProxy, t0: float, duration: float) -> None:
    try:
        for at, mode, latency in proxy_script(duration):
            await anyio.sleep(max(0.0, t0 + at - time.monotonic()))
            proxy.latency = latency
            proxy.mode = mode  # type: ignore[assignment]
    finally:
        proxy.mode = "pass"


async def serve(faults: Faults) -> None:
    """Serve until stdin closes; print the ports as one JSON line once ready."""
    import uvicorn  # the demo's own dependency, not resilio's

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    upstream_port: int = sock.getsockname()[1]
    app = FlakyUpstream(faults)
    config = uvicorn.Config(
        app,
        log_level="error",
        lifespan="off",
        access_log=False,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    async with ChaosProxy("127.0.0.1", upstream_port) as proxy, anyio.create_task_group() as tg:
        script: list[anyio.CancelScope] = []

        async def script_task(t0: float, duration: float) -> None:
            with anyio.CancelScope() as scope:
                script.append(scope)
                await _drive_proxy(proxy, t0, duration)

        def on_start(t0: float, duration: float) -> None:
            while script:
                script.pop().cancel()
            tg.start_soon(script_task, t0, duration)

        done = anyio.Event()

        async def run_server() -> None:
            try:
                await server.serve([sock])
            finally:
                done.set()

        app.on_start = on_start
        tg.start_soon(run_server)
        while not server.started and not done.is_set():
            await anyio.sleep(0.01)
        if done.is_set():
            raise RuntimeError("the demo upstream did not start")
        print(json.dumps({"proxy_port": proxy.port, "upstream_port": upstream_port}), flush=True)
        # The driver closes our stdin when it is done (or dies): time to go.
        await anyio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        server.should_exit = True
        with anyio.move_on_after(3):
            await done.wait()
        tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resilio.demo.upstream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--error-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    if not 0.0 <= args.error_rate <= 1.0 or math.isnan(args.error_rate):
        parser.error(f"--error-rate must be in [0, 1], got {args.error_rate!r}")
    anyio.run(serve, Faults(args.seed, args.error_rate), backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
