"""A circuit break shared by every instance: one opens, all stop calling.

Starts its own redis-server on a free port (and says so and stops if redis-server is
not installed). Two breakers with the same name stand in for two hosts: each counts
its own calls, but when one opens, the other hears it on pub/sub at once (or by its
poll, every `poll_interval` seconds, if the message is lost) and rejects calls until
the break ends, on Redis's clock. Isolation and reset travel the same way. Every
shared state has a generation; a write based on an older one never wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time

from resilio import BrokenCircuitError, CircuitState, IsolatedCircuitError, Pipeline
from resilio.backends.redis import RedisBackend, RedisCircuitBreaker


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    assert server is not None
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([server, *args, "--dir", workdir], stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(7) == b"+PONG\r\n":
                    return proc
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


async def flaky() -> None:
    raise ConnectionError("payments API is down")


async def fine() -> str:
    return "paid"


def instance(url: str, host: str) -> RedisCircuitBreaker:
    return RedisCircuitBreaker(
        backend=RedisBackend(url),  # each host its own connection
        name="payments",  # the shared state: resilio:circuit:payments
        failure_ratio=0.5,
        minimum_throughput=4,
        break_duration=1.0,
        poll_interval=1.0,  # the bound if a pub/sub message is lost: 1 s + timeout
        on_opened=lambda br: print(f"  [{host}] opened"),
        on_closed=lambda br: print(f"  [{host}] closed"),
    )


async def main(url: str) -> None:
    a, b = instance(url, "host-a"), instance(url, "host-b")
    async with a, b:  # start listening (pub/sub) and polling
        on_a, on_b = Pipeline(a), Pipeline(b)
        print("host-b:", await on_b.execute(fine))

        # host-a sees the payments API fail and opens its circuit...
        for _ in range(4):
            with contextlib.suppress(ConnectionError):
                await on_a.execute(flaky)
        t0 = time.monotonic()
        while b.state != CircuitState.OPEN:
            await asyncio.sleep(0.001)
        print(f"host-b heard it in {1000 * (time.monotonic() - t0):.1f} ms")
        try:
            await on_b.execute(fine)  # ...so host-b does not even try
        except BrokenCircuitError as e:
            print(f"host-b: rejected, retry after {e.retry_after:.2f} s")

        # Isolate by hand on one host: every host holds the circuit open until a reset.
        b.isolate()
        await asyncio.sleep(0.1)
        try:
            await on_a.execute(fine)
        except IsolatedCircuitError:
            print("host-a: isolated (by host-b)")
        a.reset()
        await asyncio.sleep(0.1)
        print("host-b after host-a's reset:", await on_b.execute(fine))
        print("generations:", a.generation, b.generation)  # open, isolate, reset: 3


def run() -> None:
    if shutil.which("redis-server") is None:
        print("skipped: redis-server is not installed (CI installs it)")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_redis(port, workdir)
        try:
            asyncio.run(main(f"redis://127.0.0.1:{port}/0"))
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    run()
