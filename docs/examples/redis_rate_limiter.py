"""One rate limit for every host: the bucket lives in Redis (GCRA in one Lua script).

Starts its own redis-server on a free port (and says so and stops if redis-server is
not installed). Two processes stand in for two hosts: together they get the burst of
5, not 5 each. Then: a limit per client, two limits checked in one round trip, and
what happens when Redis dies (every decision still answers within the 50 ms timeout,
here failing closed) and comes back (decisions return to Redis by themselves).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from resilio import Pipeline, RateLimitedError
from resilio.backends.redis import RedisBackend, RedisRateLimiter


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


async def ok() -> str:
    return "ok"


def host(url: str, attempts: int) -> int:
    """One "host": its own process, its own connection; the same limit."""

    async def run() -> int:
        async with RedisBackend(url) as backend:
            api = RedisRateLimiter(rate=0.01, burst=5, backend=backend, name="api")
            pipeline = Pipeline(api)
            admitted = 0
            for _ in range(attempts):
                try:
                    await pipeline.execute(ok)
                    admitted += 1
                except RateLimitedError:
                    pass
            return admitted

    return asyncio.run(run())


async def single_host(url: str, proc: subprocess.Popen[bytes], port: int, workdir: str) -> None:
    backend = RedisBackend(url, timeout=0.05, on_redis_error="closed", max_backoff=0.2)

    # A limit per client: key= picks the bucket from the call's arguments.
    per_user = RedisRateLimiter(
        rate=1.0, burst=2, backend=backend, name="per-user", key=lambda user: user
    )

    @Pipeline(per_user)
    async def handle(user: str) -> str:
        return f"200 for {user}"

    print(await handle("alice"), "|", await handle("alice"), "|", await handle("bob"))
    try:
        await handle("alice")
    except RateLimitedError as e:
        print(f"alice: 429, retry after {e.retry_after:.2f} s (on Redis's clock)")

    # Two limits, one round trip: admitted only if both have a token; else neither pays.
    per_user_b = backend.buckets(rate=1.0, burst=3, name="user")
    per_tenant = backend.buckets(rate=1.0, burst=1, name="tenant")
    both = [(per_user_b, "carol", 1), (per_tenant, "acme", 1)]
    print("both limits:", await backend.try_acquire_all(both))  # [0, 0]: admitted
    waits = await backend.try_acquire_all(both)  # the tenant has no token left
    print(
        "refused by the tenant:", waits[1] > 0, "| carol keeps", await per_user_b.available("carol")
    )

    # Redis dies: each decision still answers within the timeout, failing closed.
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    try:
        await handle("dave")
    except RateLimitedError as e:
        ms = 1000 * (time.monotonic() - t0)
        print(f"Redis down: refused in {ms:.0f} ms (<= 50), retry after {e.retry_after:.2f} s")

    # Redis comes back on the same port: decisions go back to it, no restart needed.
    proc = start_redis(port, workdir)
    while True:
        try:
            print("Redis back:", await handle("erin"))
            break
        except RateLimitedError:
            await asyncio.sleep(0.05)  # still in the backoff period (<= 0.2 s here)
    await backend.aclose()
    proc.kill()
    proc.wait()


def main() -> None:
    if shutil.which("redis-server") is None:
        print("skipped: redis-server is not installed (CI installs it)")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_redis(port, workdir)
        try:
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                admitted = pool.starmap(host, [(url, 5), (url, 5)])
            print(f"2 hosts x 5 attempts on one limit of burst 5: {sum(admitted)} admitted")
            asyncio.run(single_host(url, proc, port, workdir))
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
    sys.exit(0)
