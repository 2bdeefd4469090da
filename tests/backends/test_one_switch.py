"""One switch: the same `RateLimiter`, `CircuitBreaker`, `RateLimitMiddleware` and
config pick their backend by `backend=` alone, Redis included (tested against a real
redis-server from tests/backends/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from resilio import CircuitBreaker, CircuitState, Pipeline, RateLimitedError, RateLimiter
from resilio.backends import is_awaited
from resilio.backends.redis import (
    KeyedRedisRateLimiter,
    RedisBackend,
    RedisCircuitBreaker,
    RedisRateLimiter,
)
from resilio.config import ConfigError, build_pipeline, loads, wrap_asgi
from resilio.integrations.asgi import RateLimitMiddleware

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise ConnectionError("down")


def test_is_awaited() -> None:
    assert is_awaited("redis://127.0.0.1:6379/0") and is_awaited("rediss://h/0")
    assert is_awaited(RedisBackend("redis://h"))
    assert not is_awaited(None) and not is_awaited("memory") and not is_awaited("shm:/x")


async def test_rate_limiter_backend_string_builds_the_redis_limiter(redis_url: str) -> None:
    lim = RateLimiter(1.0, 3, backend=redis_url, name="one-switch", max_keys=5)
    assert isinstance(lim, RedisRateLimiter) and isinstance(lim, RateLimiter)
    other = RateLimiter(1.0, 3, backend=redis_url, name="one-switch")  # another "host"
    a, b = Pipeline(lim), Pipeline(other)
    admitted = 0
    for p in (a, b, a, b, a):
        try:
            await p.execute(ok)
            admitted += 1
        except RateLimitedError as exc:
            assert exc.retry_after is not None and 0 < exc.retry_after <= 1.0
    assert admitted == 3  # one bucket in Redis, not one per instance
    keyed = RateLimiter(1.0, 1, backend=redis_url, name="keyed", key=lambda who: who)
    assert isinstance(keyed, KeyedRedisRateLimiter)
    kp = Pipeline(keyed)
    assert await kp.execute(lambda who: ok(), "alice") == "ok"
    assert await kp.execute(lambda who: ok(), "bob") == "ok"
    with pytest.raises(RateLimitedError):
        await kp.execute(lambda who: ok(), "alice")
    await lim.backend.aclose()


async def test_circuit_breaker_backend_string_builds_the_redis_breaker(redis_url: str) -> None:
    opts: dict[str, Any] = {
        "minimum_throughput": 2,
        "break_duration": 5.0,
        "name": "one-switch",
        "backend": redis_url,
    }
    a, b = CircuitBreaker(**opts), CircuitBreaker(**opts)
    assert type(a) is RedisCircuitBreaker and type(b) is RedisCircuitBreaker
    assert type(CircuitBreaker(name="local")) is CircuitBreaker
    async with a, b:
        pa, pb = Pipeline(a), Pipeline(b)
        assert await pb.execute(ok) == "ok"
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await pa.execute(boom)
        assert a.state == CircuitState.OPEN
        t0 = time.monotonic()
        while b.state != CircuitState.OPEN:
            assert time.monotonic() - t0 < 1.0, "the break did not reach the other instance"
            await asyncio.sleep(0.005)


def _app_counting(calls: list[int]) -> Callable[..., Awaitable[None]]:
    async def app(scope: Message, receive: Any, send: Any) -> None:
        calls.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _request(app: Any, client: str = "10.0.0.1") -> tuple[int, dict[bytes, bytes]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/x", "headers": [], "client": (client, 5000)}
    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"])


async def test_middleware_shares_one_limit_through_redis(redis_url: str) -> None:
    calls: list[int] = []
    # Two middleware on separate connections: two hosts in front of one Redis.
    one = RateLimitMiddleware(
        _app_counting(calls), rate=1.0, burst=4, backend=RedisBackend(redis_url), name="edge"
    )
    two = RateLimitMiddleware(
        _app_counting(calls), rate=1.0, burst=4, backend=RedisBackend(redis_url), name="edge"
    )
    results = [await _request(m) for m in (one, two) * 4]
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 4 and statuses.count(429) == 4 and len(calls) == 4
    # Headers come from the same round trip as the decision.
    remaining = [h[b"ratelimit"] for s, h in results if s == 200]
    assert remaining == [
        b'"default";r=3;t=1',
        b'"default";r=2;t=2',
        b'"default";r=1;t=3',
        b'"default";r=0;t=4',
    ]
    refused = next(h for s, h in results if s == 429)
    assert refused[b"retry-after"] == b"1" and refused[b"ratelimit-policy"] == b'"default";q=4;w=4'
    # Another client has its own bucket.
    assert (await _request(one, "10.0.0.2"))[0] == 200


async def test_middleware_follows_on_redis_error_when_redis_is_down(redis_server: Any) -> None:
    calls: list[int] = []
    closed = RateLimitMiddleware(
        _app_counting(calls),
        rate=100.0,
        backend=RedisBackend(redis_server.url, timeout=0.05, on_redis_error="closed"),
        name="edge",
    )
    opened = RateLimitMiddleware(
        _app_counting(calls),
        rate=100.0,
        backend=RedisBackend(redis_server.url, timeout=0.05, on_redis_error="open"),
        name="edge",
    )
    assert (await _request(closed))[0] == 200
    redis_server.kill()
    for mw, want in ((closed, 429), (opened, 200)):
        t0 = time.monotonic()
        status, _ = await _request(mw)
        assert status == want
        assert time.monotonic() - t0 < 0.05 + 0.1
    redis_server.start()
    t0 = time.monotonic()
    while (await _request(closed))[0] != 200:  # recovers without a restart
        assert time.monotonic() - t0 < 5.0
        await asyncio.sleep(0.05)


def test_middleware_redis_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        RateLimitMiddleware(_app_counting([]), rate=1.0, backend="redis://127.0.0.1:1/0")


async def test_config_picks_the_backend(redis_url: str, tmp_path: Path) -> None:
    doc = f"""
[pipelines.api]
strategies = [
  {{ rate_limiter = {{ rate = 1, burst = 2, name = "cfg", backend = "{redis_url}" }} }},
  {{ circuit_breaker = {{ name = "cfg", backend = "{redis_url}" }} }},
]

[asgi.rate_limit]
rate = 1
burst = 1
name = "cfg-edge"
backend = "{redis_url}"
"""
    cfg = loads(doc, "toml")
    one, two = build_pipeline(cfg, "api"), build_pipeline(cfg, "api")
    lim, br = one.strategies
    assert isinstance(lim, RedisRateLimiter) and isinstance(br, RedisCircuitBreaker)
    outcomes = []
    for p in (one, two, one):
        try:
            outcomes.append(await p.execute(ok))
        except RateLimitedError:
            outcomes.append("limited")
    assert outcomes == ["ok", "ok", "limited"]
    for p in (one, two):
        await p.strategies[1].aclose()  # type: ignore[attr-defined]
    app = wrap_asgi(_app_counting([]), cfg)
    assert [(await _request(app))[0] for _ in range(2)] == [200, 429]
    shm = tmp_path / "state"
    local = loads(
        f'[pipelines.p]\nstrategies = [{{ rate_limiter = {{ rate = 1, name = "x", '
        f'backend = "shm:{shm}" }} }}]\n',
        "toml",
    )
    built = build_pipeline(local, "p").strategies[0]
    assert isinstance(built, RateLimiter) and not isinstance(built, RedisRateLimiter)


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        (
            '[pipelines.p]\nstrategies = [{ rate_limiter = { rate = 1, backend = "ftp://x" } }]',
            "pipelines.p.strategies[0].rate_limiter",
            "unknown backend scheme 'ftp'",
        ),
        (
            '[pipelines.p]\nstrategies = [{ circuit_breaker = { backend = "redis://h/0" } }]',
            "pipelines.p.strategies[0].circuit_breaker",
            "needs a name",
        ),
        (
            '[asgi.rate_limit]\nrate = 1\nbackend = "Redis://h"',
            "asgi.rate_limit.backend",
            "",
        ),
    ],
)
def test_config_backend_errors_name_the_field(doc: str, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(doc, "toml")
    assert e.value.path == path and reason in e.value.reason


def test_config_refuses_a_shared_backend_for_per_origin_breakers() -> None:
    with pytest.raises(ConfigError) as e:
        loads('[httpx.breaker]\nname = "b"\nbackend = "redis://h/0"\n', "toml")
    assert e.value.path.startswith("httpx") and "per-origin" in e.value.reason
