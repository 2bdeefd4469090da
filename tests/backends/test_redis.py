"""The Redis backend against a real redis-server (tests/backends/conftest.py).

What is checked: GCRA decisions and their return contract, keys that expire once
full, several limits decided all-or-nothing, recovery from NOSCRIPT, two processes
sharing one limit exactly, a killed / paused / restarted server (every decision
within the timeout, with the configured fail-open or fail-closed answer, and back to
Redis by itself), circuit breaks propagated between instances within the bound, and
the generation compare-and-set under concurrent writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from resilio import (
    BrokenCircuitError,
    CircuitState,
    IsolatedCircuitError,
    Pipeline,
    RateLimitedError,
    RateLimiter,
)
from resilio.backends import redis as rb
from resilio.backends import resolve
from resilio.backends.redis import (
    KeyedRedisRateLimiter,
    RedisBackend,
    RedisBackendError,
    RedisCircuitBreaker,
    RedisFactory,
    RedisRateLimiter,
    RedisRateLimits,
    RedisUnavailableError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend runs on asyncio (its client is an asyncio protocol)."""
    return "asyncio"


#: Slack over the configured timeout for "answered within the timeout" on a busy CI box.
MARGIN = 0.05


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise ConnectionError("dependency down")


def info_calls(client: Any, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def eventually(pred: Callable[[], bool], timeout: float, step: float = 0.005) -> float:
    """Seconds until pred() held; fails after `timeout`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - t0


# ---- backend basics --------------------------------------------------------------------------


async def test_url_options_and_errors() -> None:
    b = RedisBackend("redis://:secret@cache.example:6380/3?timeout=0.02&on_redis_error=closed")
    assert (b._host, b._port, b._db, b._password) == ("cache.example", 6380, 3, "secret")
    assert b.timeout == 0.02 and not b.fail_open and b.on_redis_error == "closed"
    assert RedisBackend("redis://h", prefix="p", timeout=0.1).prefix == "p"
    with pytest.raises(ValueError, match="unknown option"):
        RedisBackend("redis://h/0?tiemout=1")
    with pytest.raises(ValueError, match="redis://"):
        RedisBackend("http://h")
    with pytest.raises(ValueError, match="on_redis_error"):
        RedisBackend("redis://h", on_redis_error="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        RedisBackend("redis://h", timeout=0)
    with pytest.raises(ValueError, match="2\\*\\*53"):
        b.buckets(rate=1e-6, burst=10, name="x")  # 1e16 ns to refill: beyond exact doubles


async def test_resolve_redis_scheme(redis_url: str) -> None:
    f = resolve(redis_url, "api")
    assert isinstance(f, RedisFactory) and f.backend is rb.shared_backend(redis_url)
    # The core's synchronous primitives cannot be Redis round trips: a loud error, not
    # a silently local bucket (the strategies dispatch to the Redis classes instead).
    with pytest.raises(TypeError, match="RedisRateLimiter"):
        f.token_bucket(10.0, 2)
    bucket = f.bucket(10.0, 2)
    assert await bucket.try_acquire() == 0
    backend = RedisBackend(redis_url)
    assert resolve(backend, "x").backend is backend  # a backend object is a HasFactory
    await backend.aclose()
    await rb.shared_backend(redis_url).aclose()


async def test_select_db_and_ping(redis_server: Any) -> None:
    async with RedisBackend(redis_server.url.replace("/0", "/3"), prefix="db3") as b:
        assert await b.ping()
        assert await b.bucket(1.0, 1, name="k").try_acquire() == 0
    client = redis_server.client()
    assert client.exists("db3:k") == 0
    client.select(3)
    assert client.exists("db3:k") == 1


def test_not_on_asyncio_is_a_clear_error() -> None:
    b = RedisBackend("redis://127.0.0.1:1")
    coro = b.execute("PING")
    with pytest.raises(RuntimeError, match="asyncio"):
        coro.send(None)  # no running loop
    coro.close()


# ---- GCRA -------------------------------------------------------------------------------------


async def test_gcra_burst_then_wait(redis_url: str) -> None:
    async with RedisBackend(redis_url) as b:
        bk = b.buckets(rate=1.0, burst=3, name="gcra")
        assert [await bk.try_acquire("a") for _ in range(3)] == [0, 0, 0]
        w1 = await bk.try_acquire("a")
        w2 = await bk.try_acquire("a")
        # Refused: about one interval (1 s) to wait, and a refusal takes nothing.
        assert 0.9e9 < w2 <= w1 <= 1e9
        assert await bk.available("a") == 0
        assert await bk.try_acquire("b") == 0  # another key, another bucket
        assert await bk.available("b") == 2
        # reserve: the core's contract (wait >= 0 when reserved, -(wait) when refused).
        assert await bk.reserve("c", None, 3, 0) == 0
        r = await bk.reserve("c", None, 1, int(2e9))
        assert 0.9e9 < r <= 1e9
        r2 = await bk.reserve("c", None, 1, int(0.5e9))
        assert -2e9 <= r2 < -1.5e9  # would need ~2 s > max_wait: refused, nothing taken
        await bk.refund("c", None, 1)
        assert 0 < await bk.reserve("c", None, 1, int(2e9)) <= 1e9
        assert bk.admitted == 7 and bk.rejected == 3 and bk.fallbacks == 0
        wait, left = await bk.acquire("d", 2)
        assert (wait, left) == (0, 1)


async def test_keys_named_by_prefix_and_expire_when_full(redis_server: Any) -> None:
    client = redis_server.client()
    async with RedisBackend(redis_server.url, prefix="svc") as b:
        bk = b.buckets(rate=20.0, burst=4, name="api")  # 50 ms per token: full in 200 ms
        for _ in range(4):
            assert await bk.try_acquire("alice") == 0
        assert client.exists("svc:api:alice") == 1
        pttl = client.pttl("svc:api:alice")
        assert 100 < pttl <= 200  # expires when the bucket would be full again
        one = b.bucket(rate=20.0, burst=4, name="global")
        assert await one.try_acquire() == 0
        assert 0 < client.pttl("svc:global") <= 50
        await asyncio.sleep(0.25)
        assert client.exists("svc:api:alice", "svc:global") == 0
        assert await bk.available("alice") == 4  # no key = a full bucket
        # Many distinct keys leave nothing behind once they are full again.
        await asyncio.gather(*(bk.try_acquire(f"user{i}") for i in range(200)))
        assert len(client.keys("svc:api:*")) == 200
        await asyncio.sleep(0.1)
        assert client.keys("svc:api:*") == []


async def test_retry_after_uses_redis_clock_not_local(redis_url: str) -> None:
    # The decision does not read the local clock at all: a limiter on a FakeClock that
    # never advances still refills on Redis's time.
    from resilio.testing import FakeClock

    async with RedisBackend(redis_url) as b:
        lim = RedisRateLimiter(50.0, 1, backend=b, name="clk", clock=FakeClock())
        p = Pipeline(lim)
        assert await p.execute(ok) == "ok"
        with pytest.raises(RateLimitedError) as e:
            await p.execute(ok)
        assert e.value.retry_after is not None and 0 < e.value.retry_after <= 0.02
        await asyncio.sleep(0.03)
        assert await p.execute(ok) == "ok"


# ---- multi-limit --------------------------------------------------------------------------------


async def test_multi_limit_all_or_nothing(redis_url: str) -> None:
    async with RedisBackend(redis_url) as b:
        per_user = b.buckets(rate=0.001, burst=3, name="user")
        per_tenant = b.buckets(rate=0.001, burst=5, name="tenant")
        for _ in range(3):
            assert await b.try_acquire_all([(per_user, "u1", 1), (per_tenant, "t1", 1)]) == [0, 0]
        waits = await b.try_acquire_all([(per_user, "u1", 1), (per_tenant, "t1", 1)])
        assert waits[0] > 0 and waits[1] == 0  # the user limit refused; the tenant had tokens
        assert await per_tenant.available("t1") == 2  # ...and was not charged
        # A key named twice in one call sees its own first charge.
        assert await b.try_acquire_all([(per_tenant, "t2", 3), (per_tenant, "t2", 3)]) != [0, 0]
        assert await per_tenant.available("t2") == 5
        assert await b.try_acquire_all([(per_tenant, "t2", 2), (per_tenant, "t2", 3)]) == [0, 0]
        assert await per_tenant.available("t2") == 0


async def test_multi_limit_atomic_under_concurrency(redis_url: str) -> None:
    # X is shared by two combinations: (X, Y) and (X, Z). Y runs out first, Z never.
    # Atomicity: Y's charge equals (X, Y)'s admissions exactly, and X's equals the total.
    backends = [RedisBackend(redis_url, timeout=2.0) for _ in range(3)]  # counts, not speed
    try:
        mk = [
            (b.buckets(0.001, 10, name="X"), b.buckets(0.001, 4, name="Y"),
             b.buckets(0.001, 100, name="Z"))
            for b in backends
        ]  # fmt: skip
        counts = {"xy": 0, "xz": 0}

        async def one(i: int) -> None:
            b = backends[i % 3]
            x, y, z = mk[i % 3]
            combo = "xy" if i % 2 else "xz"
            waits = await b.try_acquire_all([(x, "k", 1), (y if combo == "xy" else z, "k", 1)])
            if waits == [0, 0]:
                counts[combo] += 1

        await asyncio.gather(*(one(i) for i in range(300)))
        x, y, z = mk[0]
        assert counts["xy"] + counts["xz"] == 10
        assert counts["xy"] <= 4
        assert await y.available("k") == 4 - counts["xy"]
        assert await z.available("k") == 100 - counts["xz"]
        assert await x.available("k") == 0
        assert all(b.failures == 0 for b in backends)
    finally:
        for b in backends:
            await b.aclose()


async def test_rate_limits_gate_one_round_trip(redis_server: Any) -> None:
    client = redis_server.client()
    async with RedisBackend(redis_server.url) as b:
        per_second = RedisRateLimiter(0.5, 5, backend=b, name="per_second")
        per_hour = RedisRateLimiter(2 / 3600, 2, backend=b, name="per_hour")
        p = Pipeline(RedisRateLimits(per_second, per_hour, name="quota"))
        await b.bucket(1.0, 1, name="warm").try_acquire()  # loads the script (NOSCRIPT once)
        before = info_calls(client, "evalsha")
        assert [await p.execute(ok) for _ in range(2)] == ["ok", "ok"]
        with pytest.raises(RateLimitedError) as e:
            await p.execute(ok)
        assert e.value.strategy == "per_hour" and e.value.retry_after > 1000
        assert info_calls(client, "evalsha") - before == 3  # one round trip per call
        assert await per_second.available() == 3  # the refused call charged nothing


# ---- strategies ----------------------------------------------------------------------------------


async def test_rate_limiter_gate_in_pipeline(redis_url: str) -> None:
    async with RedisBackend(redis_url) as b:
        lim = RedisRateLimiter(rate=0.001, burst=3, backend=b, name="gate")
        assert isinstance(lim, RateLimiter)
        from resilio import Bulkhead, CircuitBreaker

        # Fused with compiled gates on either side.
        p = Pipeline(Bulkhead(10), lim, CircuitBreaker(minimum_throughput=100))
        assert [await p.execute(ok) for _ in range(3)] == ["ok"] * 3
        with pytest.raises(RateLimitedError) as e:
            await p.execute(ok)
        assert e.value.strategy == "gate" and e.value.retry_after > 900
        assert (lim.admitted, lim.rejected, lim.fallbacks) == (3, 1, 0)
        assert await lim.available() == 0


async def test_rate_limiter_waits_and_refunds_when_cancelled(redis_url: str) -> None:
    async with RedisBackend(redis_url) as b:
        lim = RedisRateLimiter(rate=10.0, burst=1, max_wait=1.0, backend=b, name="wait")
        p = Pipeline(lim)
        assert await p.execute(ok) == "ok"
        t0 = time.monotonic()
        assert await p.execute(ok) == "ok"  # waited ~100 ms for its token
        assert 0.05 < time.monotonic() - t0 < 0.5
        task = asyncio.ensure_future(p.execute(ok))  # waits ~100 ms...
        await asyncio.sleep(0.02)
        task.cancel()  # ...cancelled: its token goes back
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)  # the refund is sent without waiting; let it land
        t0 = time.monotonic()
        assert await p.execute(ok) == "ok"
        assert time.monotonic() - t0 < 0.15  # not ~200 ms: the cancelled token was returned


async def test_keyed_rate_limiter(redis_url: str) -> None:
    async with RedisBackend(redis_url) as b:
        lim = RedisRateLimiter(
            rate=0.001, burst=2, backend=b, name="keyed", key=lambda user, path: user
        )
        assert isinstance(lim, KeyedRedisRateLimiter)

        @Pipeline(lim)
        async def handle(user: str, path: str) -> str:
            return f"{user}{path}"

        assert await handle("alice", "/a") == "alice/a"
        assert await handle("alice", "/b") == "alice/b"
        with pytest.raises(RateLimitedError):
            await handle("alice", "/c")
        assert await handle("bob", "/a") == "bob/a"
        assert await lim.available("alice") == 0 and await lim.available("bob") == 1
        with pytest.raises(ValueError, match="64 bytes"):
            await handle("x" * 65, "/")


# ---- two processes, one limit ----------------------------------------------------------------


def _share_limit_worker(url: str, name: str, attempts: int, barrier: Any, out: Any) -> None:
    from resilio.backends.redis import RedisBackend

    async def run() -> tuple[int, int]:
        async with RedisBackend(url, timeout=2.0) as b:  # the count, not speed, is tested
            bucket = b.bucket(rate=0.001, burst=100, name=name)  # no refill within the test
            assert await b.ping()
            admitted = 0
            for start in range(0, attempts, 25):
                # Both processes fire each batch together, so their EVALSHAs interleave.
                barrier.wait(30)
                waits = await asyncio.gather(
                    *(bucket.try_acquire() for _ in range(min(25, attempts - start)))
                )
                admitted += sum(1 for w in waits if w == 0)
            return admitted, bucket.fallbacks

    out.put(asyncio.run(run()))


def test_two_processes_share_one_limit_exactly(redis_server: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_share_limit_worker, args=(redis_server.url, "shared", 500, barrier, out)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(a for a, _ in results) == 100, results  # exactly the burst, never more
    assert all(f == 0 for _, f in results), results  # every decision was Redis's
    assert all(a > 0 for a, _ in results), results  # both really competed


# ---- NOSCRIPT ----------------------------------------------------------------------------------


async def test_noscript_reload_mid_run(redis_server: Any) -> None:
    client = redis_server.client()
    async with RedisBackend(redis_server.url, timeout=1.0) as b:
        bucket = b.bucket(rate=0.001, burst=300, name="noscript")
        loads_before = info_calls(client, "script|load")
        admitted = 0
        for round_ in range(8):
            if round_ in (2, 5):
                client.script_flush()  # Redis forgets every script mid-run
            waits = await asyncio.gather(*(bucket.try_acquire() for _ in range(50)))
            admitted += waits.count(0)
        assert admitted == 300  # exact: no decision lost or doubled by the reload
        assert bucket.fallbacks == 0 and b.failures == 0
        assert info_calls(client, "script|load") - loads_before >= 2


# ---- Redis down, slow, back --------------------------------------------------------------------


async def _timed(coro: Awaitable[Any]) -> tuple[float, Any]:
    t0 = time.monotonic()
    try:
        result = await coro
    except Exception as exc:  # the error is the answer under test
        result = exc
    return time.monotonic() - t0, result


async def test_kill_redis_fail_open_then_recover(redis_server: Any) -> None:
    timeout = 0.05
    async with RedisBackend(redis_server.url, timeout=timeout, max_backoff=0.2) as b:
        lim = RedisRateLimiter(rate=0.001, burst=5, backend=b, name="down", on_redis_error="open")
        p = Pipeline(lim)
        for _ in range(5):
            assert await p.execute(ok) == "ok"
        with pytest.raises(RateLimitedError):
            await p.execute(ok)

        # Kill the server while decisions are in flight.
        inflight = [asyncio.ensure_future(_timed(p.execute(ok))) for _ in range(20)]
        await asyncio.sleep(0)
        redis_server.kill()
        timings = [await t for t in inflight]
        timings += [await _timed(p.execute(ok)) for _ in range(50)]
        timings += await asyncio.gather(*(_timed(p.execute(ok)) for _ in range(50)))
        for elapsed, result in timings:
            assert elapsed < timeout + MARGIN
            assert result == "ok" or isinstance(result, RateLimitedError)  # in flight
        # After the kill, every decision failed open.
        assert sum(r == "ok" for _, r in timings[20:]) == 100
        assert lim.fallbacks >= 100 and not b.healthy
        assert b.outages == 1

        # Restart on the same port: decisions go back to Redis by themselves.
        redis_server.start()
        fallbacks = lim.fallbacks

        async def redis_decides() -> bool:
            before = lim.fallbacks
            await _timed(p.execute(ok))
            return lim.fallbacks == before

        t0 = time.monotonic()
        while not await redis_decides():
            assert time.monotonic() - t0 < 2.0, "did not go back to Redis"
            await asyncio.sleep(0.01)
        assert b.healthy
        # The new server has no state: a full bucket again, enforced by Redis.
        results = [await _timed(p.execute(ok)) for _ in range(10)]
        assert sum(r == "ok" for _, r in results) == 4  # 5 minus the one that probed
        assert lim.fallbacks - fallbacks < 50  # backoff: a dead Redis was not hammered


async def test_kill_redis_fail_closed(redis_server: Any) -> None:
    timeout = 0.05
    async with RedisBackend(
        redis_server.url, timeout=timeout, on_redis_error="closed", max_backoff=0.5
    ) as b:
        lim = RedisRateLimiter(rate=100.0, burst=100, backend=b, name="closed")
        p = Pipeline(lim)
        assert await p.execute(ok) == "ok"
        redis_server.kill()
        timings = [await _timed(p.execute(ok)) for _ in range(30)]
        timings += await asyncio.gather(*(_timed(p.execute(ok)) for _ in range(30)))
        for elapsed, result in timings:
            assert elapsed < timeout + MARGIN
            assert isinstance(result, RateLimitedError)
            assert result.retry_after is not None and 0 < result.retry_after <= 0.5 * 1.25
        redis_server.start()
        t0 = time.monotonic()
        while True:
            _, r = await _timed(p.execute(ok))
            if r == "ok":
                break
            assert time.monotonic() - t0 < 2.0
            await asyncio.sleep(0.01)


async def test_paused_redis_answers_within_timeout(redis_server: Any) -> None:
    timeout = 0.05
    async with RedisBackend(redis_server.url, timeout=timeout, max_backoff=0.1) as b:
        bucket = b.bucket(rate=1000.0, burst=1000, name="paused")
        assert await bucket.try_acquire() == 0
        redis_server.pause()  # connections stay up, nothing is answered
        try:
            t0 = time.monotonic()
            waits = await asyncio.gather(*(bucket.try_acquire() for _ in range(20)))
            assert time.monotonic() - t0 < timeout + MARGIN
            assert waits == [0] * 20  # failed open
            for _ in range(20):
                elapsed, w = await _timed(bucket.try_acquire())
                assert elapsed < timeout + MARGIN and w == 0
            assert not b.healthy and bucket.fallbacks == 40
        finally:
            redis_server.resume()
        # Resumed: within a backoff period (<= 0.1 s here) decisions are Redis's again.
        t0 = time.monotonic()
        while True:
            before = bucket.fallbacks
            assert await bucket.try_acquire() == 0
            if bucket.fallbacks == before:
                break
            assert time.monotonic() - t0 < 2.0, "did not go back to Redis"
            await asyncio.sleep(0.01)
        assert b.healthy


async def test_unreachable_at_start_fails_fast(free_port: int) -> None:
    async with RedisBackend(f"redis://127.0.0.1:{free_port}/0", timeout=0.05) as b:
        bucket = b.bucket(rate=1.0, burst=1, name="nobody")
        elapsed, w = await _timed(bucket.try_acquire())
        assert elapsed < 0.05 + MARGIN and w == 0 and bucket.fallbacks == 1
        with pytest.raises(RedisUnavailableError) as e:
            await b.execute("PING")  # in its backoff period: no I/O at all
        assert isinstance(e.value, RedisBackendError) and "down" in str(e.value)
        assert b.connects == 0 and b.outages == 1


# ---- circuit breaker --------------------------------------------------------------------------


def _breaker(url: str, **kw: Any) -> RedisCircuitBreaker:
    opts: dict[str, Any] = {
        "failure_ratio": 0.5,
        "minimum_throughput": 4,
        "sampling_duration": 10.0,
        "break_duration": 0.6,
        "poll_interval": 0.2,
        "name": "payments",
    }
    opts.update(kw)
    return RedisCircuitBreaker(backend=RedisBackend(url), **opts)


async def _trip(p: Pipeline, n: int = 4) -> None:
    for _ in range(n):
        with pytest.raises((ConnectionError, BrokenCircuitError)):
            await p.execute(boom)


async def test_breaker_open_propagates_by_pubsub(redis_url: str) -> None:
    opened: list[str] = []
    a = _breaker(redis_url)
    b = _breaker(redis_url, on_opened=lambda br: opened.append("b"))
    async with a, b:
        pa, pb = Pipeline(a), Pipeline(b)
        assert await pb.execute(ok) == "ok"
        await _trip(pa)
        assert a.state == CircuitState.OPEN
        delay = await eventually(lambda: b.state == CircuitState.OPEN, 1.0)
        assert delay < 0.25  # pub/sub: far inside the poll bound
        assert opened == ["b"]
        with pytest.raises(BrokenCircuitError) as e:
            await pb.execute(ok)
        assert e.value.retry_after is not None and 0 < e.value.retry_after <= 0.6
        assert b.generation == a.generation == 1
        # The break ends on Redis's clock for both; then b runs on its own state.
        await asyncio.sleep(e.value.retry_after + 0.02)
        assert await pb.execute(ok) == "ok"


async def test_breaker_propagates_by_polling_when_pubsub_is_lost(redis_url: str) -> None:
    a = _breaker(redis_url)
    b = _breaker(redis_url, pubsub=False)
    async with a, b:
        pa, pb = Pipeline(a), Pipeline(b)
        await _trip(pa)
        delay = await eventually(lambda: b.state == CircuitState.OPEN, 2.0)
        assert delay <= b.propagation_bound + MARGIN
        with pytest.raises(BrokenCircuitError):
            await pb.execute(ok)


async def test_breaker_resubscribes_after_its_connection_is_killed(redis_server: Any) -> None:
    a = _breaker(redis_server.url)
    b = _breaker(redis_server.url, poll_interval=5.0)  # polling would be too slow here
    async with a, b:
        assert b._sub is not None
        redis_server.client().client_kill_filter(_type="pubsub")
        await eventually(lambda: b._sub is not None and not b._sub.closed, 1.0)
        await asyncio.sleep(0.1)
        await _trip(Pipeline(a))
        assert await eventually(lambda: b.state == CircuitState.OPEN, 1.0) < 0.5


async def test_isolate_and_reset_propagate(redis_url: str) -> None:
    a = _breaker(redis_url)
    b = _breaker(redis_url)
    async with a, b:
        a.isolate()
        await eventually(lambda: b.state == CircuitState.ISOLATED, 1.0)
        with pytest.raises(IsolatedCircuitError):
            await Pipeline(b).execute(ok)
        b.reset()  # any instance may end it
        await eventually(lambda: a.state == CircuitState.CLOSED, 1.0)
        assert await Pipeline(a).execute(ok) == "ok"
        assert a.generation == b.generation == 2


async def test_breaker_works_locally_when_redis_is_down_and_publishes_later(
    redis_server: Any,
) -> None:
    a = _breaker(redis_server.url, break_duration=5.0)
    b = _breaker(redis_server.url, break_duration=5.0)
    async with a, b:
        redis_server.kill()
        pa = Pipeline(a)
        await _trip(pa)  # counted and decided locally, Redis or not
        assert a.state == CircuitState.OPEN
        with pytest.raises(BrokenCircuitError):
            await pa.execute(ok)
        assert b.state == CircuitState.CLOSED  # nobody could tell b
        redis_server.start()
        # Redis is back (empty): a's pending open is published, b hears of it.
        await eventually(lambda: b.state == CircuitState.OPEN, 4.0)


async def test_redis_data_loss_is_repaired_by_the_owner(redis_server: Any) -> None:
    a = _breaker(redis_server.url, break_duration=5.0)
    b = _breaker(redis_server.url, break_duration=5.0)
    async with a, b:
        a.isolate()
        await eventually(lambda: b.state == CircuitState.ISOLATED, 1.0)
        redis_server.client().flushall()  # Redis forgets; the generation restarts at 0
        client = redis_server.client()
        await eventually(lambda: client.get("resilio:circuit:payments") is not None, 3.0)
        gen, state, *_ = client.get("resilio:circuit:payments").split()
        assert (int(gen), state) == (a.generation, b"isolated")
        b.reset()  # and the next write lands above it
        await eventually(lambda: a.state == CircuitState.CLOSED, 1.0)


# ---- the generation compare-and-set ---------------------------------------------------------


async def test_cas_never_overwrites_a_newer_generation(redis_server: Any) -> None:
    """Writers with stale views race; Redis's generation only ever increases, every
    published state is newer than the one before, and a stale write changes nothing."""
    client = redis_server.client()
    key = b"resilio:circuit:race"
    published: list[int] = []
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            m = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if m is not None:
                published.append(int(m["data"].split()[0]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    samples: list[int] = []
    sampling = True

    async def sample() -> None:
        async with RedisBackend(redis_server.url) as s:
            while sampling:
                v = await s.execute("GET", key)
                samples.append(int(v.split()[0]) if v else 0)
                await asyncio.sleep(0)

    backends = [RedisBackend(redis_server.url, timeout=1.0) for _ in range(4)]
    wins = 0
    refused = 0

    async def writer(b: RedisBackend, seed: int) -> None:
        nonlocal wins, refused
        rnd = random.Random(seed)
        seen = 0
        for _ in range(150):
            gen = seen + 1 - (1 if rnd.random() < 0.2 else 0)  # sometimes deliberately stale
            state = rnd.choice([b"open", b"closed", b"isolated"])
            brk = 500_000 if state == b"open" else 0
            ok, value, _ = await b.eval(rb._CIRCUIT_CAS, [key], [gen, state, brk, b"w", key])
            stored = int(value.split()[0])
            if ok:
                wins += 1
                assert stored == gen
            else:
                refused += 1
                assert stored >= gen  # refused only by an equal or newer generation
            seen = max(seen, stored)
            if rnd.random() < 0.3:
                await asyncio.sleep(0)

    sampler = asyncio.ensure_future(sample())
    try:
        await asyncio.gather(*(writer(b, i) for i, b in enumerate(backends)))
    finally:
        sampling = False
        await sampler
        for b in backends:
            await b.aclose()
    await asyncio.sleep(0.2)
    stop.set()
    listener.join(2)
    final = int(client.get(key).split()[0])
    assert wins > 50 and refused > 50  # a real race
    assert published == sorted(published) and len(set(published)) == len(published) == wins
    assert published[-1] == final
    assert samples == sorted(samples)


async def test_breakers_racing_converge_without_regressing(redis_server: Any) -> None:
    """Two instances isolate, reset and trip concurrently: each only ever moves to newer
    generations, and both end on the state with the newest one, which Redis holds."""
    a = _breaker(redis_server.url, break_duration=0.3)
    b = _breaker(redis_server.url, break_duration=0.3)
    async with a, b:
        pa, pb = Pipeline(a), Pipeline(b)

        async def churn(br: RedisCircuitBreaker, p: Pipeline, seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(40):
                action = rnd.choice(["isolate", "reset", "trip", "call"])
                if action == "isolate":
                    br.isolate()
                elif action == "reset":
                    br.reset()
                elif action == "trip":
                    for _ in range(4):
                        with pytest.raises((ConnectionError, BrokenCircuitError)):
                            await p.execute(boom)
                else:
                    with contextlib.suppress(BrokenCircuitError):
                        await p.execute(ok)
                await asyncio.sleep(rnd.random() * 0.01)

        await asyncio.gather(churn(a, pa, 1), churn(b, pb, 2))
        a.reset()  # a last, deliberate word
        await eventually(lambda: a._pending is None and b.generation == a.generation, 3.0)
        await a.sync_now()
        await b.sync_now()
        gen = int(redis_server.client().get("resilio:circuit:payments").split()[0])
        assert a.generation == b.generation == gen
        assert a.state == b.state == CircuitState.CLOSED
        for br in (a, b):
            gens = [g for g, _ in br.history]
            assert gens == sorted(gens) and len(set(gens)) == len(gens), gens


def test_propagation_bound_is_documented() -> None:
    b = RedisCircuitBreaker(backend=RedisBackend("redis://h", timeout=0.05), name="x")
    assert math.isclose(b.propagation_bound, 1.05)


def test_breaker_on_trio_stays_local(redis_url: str) -> None:
    import trio

    br = RedisCircuitBreaker(backend=RedisBackend(redis_url), name="trio", minimum_throughput=2)
    lim = RedisRateLimiter(10.0, backend=RedisBackend(redis_url), name="trio")

    async def main() -> None:
        p = Pipeline(br)
        assert await p.execute(ok) == "ok"
        await _trip(p, 2)
        assert br.state == CircuitState.OPEN  # decided locally, as a plain breaker
        with pytest.raises(RuntimeError, match="asyncio"):
            await Pipeline(lim).execute(ok)  # a Redis decision needs asyncio: said loudly

    trio.run(main)


def test_breaker_follows_a_new_event_loop(redis_url: str) -> None:
    """A breaker used from one asyncio.run and then another keeps syncing."""
    a = RedisCircuitBreaker(backend=RedisBackend(redis_url), name="loops", minimum_throughput=2)
    b = RedisCircuitBreaker(backend=RedisBackend(redis_url), name="loops", minimum_throughput=2)

    async def first() -> None:
        await b.start()
        assert await Pipeline(a).execute(ok) == "ok"

    async def second() -> None:
        await b.start()
        await _trip(Pipeline(a), 2)
        await eventually(lambda: b.state == CircuitState.OPEN, 1.0)

    asyncio.run(first())
    asyncio.run(second())


def test_limiter_name_is_required_and_circuit_is_reserved() -> None:
    b = RedisBackend("redis://h")
    with pytest.raises(ValueError, match="name"):
        RedisRateLimiter(1.0, backend=b, name="")
    with pytest.raises(ValueError, match="reserved"):
        RedisRateLimiter(1.0, backend=b, name="circuit")
    with pytest.raises(ValueError, match="name"):
        RedisCircuitBreaker(backend=b, name="")
