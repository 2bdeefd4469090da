"""One switch, `backend="shm:..."`: a limiter, a breaker and a middleware whose state
every worker process of the host shares.

Objects built alike a second time stand in for another worker here (the processes
are real in shm_rate_limiter.py): each sees what the other did.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import anyio
import httpx

from resilio import CircuitBreaker, CircuitState, Pipeline, RateLimiter
from resilio.integrations.asgi import RateLimitMiddleware

SHARED = f"shm:/dev/shm/resilio-myapp-{os.getpid()}"  # one per run here; a service fixes it


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


limiter = RateLimiter(rate=100.0, burst=100, name="payments-api", backend=SHARED)
breaker = CircuitBreaker(failure_ratio=0.5, name="payments-api", backend=SHARED)
service = RateLimitMiddleware(app, rate=1.0, burst=5, name="public", backend=SHARED)


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise ConnectionError("payments-api is down")


async def main() -> None:
    # What another worker builds from the same code: the same state, attached by name.
    other_limiter = RateLimiter(rate=100.0, burst=100, name="payments-api", backend=SHARED)
    other_breaker = CircuitBreaker(failure_ratio=0.5, name="payments-api", backend=SHARED)
    other_service = RateLimitMiddleware(app, rate=1.0, burst=5, name="public", backend=SHARED)

    for _ in range(30):
        await Pipeline(limiter).execute(ok)
    print("admitted, as the other worker counts them:", other_limiter.admitted)
    assert other_limiter.admitted == 30

    for _ in range(20):  # the breaker's minimum throughput, all failures
        with contextlib.suppress(ConnectionError):
            await Pipeline(breaker).execute(down)
    print("breaker, as the other worker sees it:", other_breaker.state.name)
    assert other_breaker.state == CircuitState.OPEN

    # One client, requests alternating between the two workers: one burst of 5 in all.
    statuses = []
    for worker in (service, other_service) * 3:
        transport = httpx.ASGITransport(app=worker)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as c:
            statuses.append((await c.get("/")).status_code)
    print("middleware:", statuses)
    assert statuses == [200] * 5 + [429]


if __name__ == "__main__":
    try:
        anyio.run(main)
    finally:
        os.unlink(SHARED.removeprefix("shm:"))
