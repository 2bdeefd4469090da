"""A limit, a limit per client and a circuit breaker that every host shares, in Redis.

Starts its own redis-server on a free port (and says so and stops if redis-server is
not installed). redis_rate_limiter.py and redis_circuit_breaker.py show the sharing
between processes and what happens when Redis goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time

from resilio import BrokenCircuitError, Pipeline, RateLimitedError
from resilio.backends.redis import RedisBackend, RedisCircuitBreaker, RedisRateLimiter


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


async def charge(client_id: str) -> str:
    return f"charged {client_id}"


async def payments_down(client_id: str) -> str:
    raise ConnectionError("payments-api is down")


async def main(url: str) -> None:
    redis = RedisBackend(url, timeout=0.05, on_redis_error="open")  # url: "redis://cache:6379/0"

    limiter = RedisRateLimiter(rate=100.0, burst=100, backend=redis, name="payments-api")
    per_client = RedisRateLimiter(
        rate=5.0,
        burst=10,
        backend=redis,
        name="per-client",
        key=lambda client_id, *a, **kw: client_id,
    )
    breaker = RedisCircuitBreaker(backend=redis, name="payments-api", failure_ratio=0.5)
    pipeline = Pipeline(limiter, breaker)

    print(await pipeline.execute(charge, "alice"))

    # Each client has a burst of 10, refilled at 5 per second.
    by_client = Pipeline(per_client)
    admitted = 0
    for _ in range(15):
        with contextlib.suppress(RateLimitedError):
            await by_client.execute(charge, "bob")
            admitted += 1
    print(f"bob: {admitted} of 15 admitted")
    assert 10 <= admitted < 15
    await by_client.execute(charge, "carol")  # another client, another bucket

    # With alice's first call, 20 calls (the minimum throughput), 95 % of them failed:
    # the circuit opens, for every host.
    for _ in range(19):
        with contextlib.suppress(ConnectionError):
            await pipeline.execute(payments_down, "alice")
    try:
        await pipeline.execute(charge, "alice")
        raise AssertionError("the circuit did not open")
    except BrokenCircuitError as exc:
        print(f"circuit open, retry after {exc.retry_after:.1f} s")

    await breaker.aclose()
    await redis.aclose()


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
