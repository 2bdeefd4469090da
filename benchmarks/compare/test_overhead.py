"""Success-path overhead per call: resilio's strategies against bare `await f()` and peers.

Same process, same run, same event loop for every case (created once per module by
the `loop` fixture): a round is `loop.run_until_complete(batch())` where `batch`
awaits the wrapped function N times in a loop. The per-call figure is round / N (the
loop and the round's task are included, and are the same for every case, so they
cancel out of "added ns over bare"). `f` returns at once, so every figure is pure
wrapping cost: what a call that succeeds pays for its protection.

resilio strategies run through a one-strategy `Pipeline` used as a decorator; peers
run in each library's own idiom for an async function (decorator, or `async with`
where that is what the library offers). A peer that is not installed is skipped with
the reason. Install them all with: pip install -e '.[bench]'
(pybreaker's asyncio support goes through tornado: pip install tornado).

The limits are set so nothing is ever refused: resilio RateLimiter(rate=1e9,
burst=10**9) and the peers' equivalents (10**9 per second). Note for the `limits`
moving window: it keeps one entry per hit over the window (and inserts at the front
of a list), so its cost grows with the call rate times the window, as it does in
production at that rate.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

# The resilio cases, the bare call and the targets are the ones `resilio bench` runs.
from resilio._bench import (
    TARGETS,
    Batch,
    N,
    bare,
    f,
    r_breaker,
    r_bulkhead,
    r_fallback,
    r_hedging,
    r_limiter,
    r_pipeline,
    r_pipeline_execute,
    r_retry,
    r_timeout,
)
from resilio._bench import loop_over as _loop_over


def _need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} is not installed (pip install -e '.[bench]')")


# ---- retry peers -----------------------------------------------------------------------


def tenacity_decorator() -> Batch:
    _need("tenacity")
    import tenacity

    return _loop_over(tenacity.retry(stop=tenacity.stop_after_attempt(3))(f))


def tenacity_async_retrying() -> Batch:
    _need("tenacity")
    from tenacity import AsyncRetrying, stop_after_attempt

    async def batch() -> None:
        for _ in range(N):
            async for attempt in AsyncRetrying(stop=stop_after_attempt(3)):
                with attempt:
                    await f()

    return batch


def stamina_retry() -> Batch:
    _need("stamina")
    import stamina

    return _loop_over(stamina.retry(on=Exception, attempts=3)(f))


def backoff_on_exception() -> Batch:
    _need("backoff")
    import backoff

    return _loop_over(backoff.on_exception(backoff.expo, Exception, max_tries=3)(f))


def hyx_retry() -> Batch:
    _need("hyx")
    from hyx.retry import retry

    return _loop_over(retry(on=Exception, attempts=3)(f))


# ---- circuit breaker peers ---------------------------------------------------------------


def pybreaker_call_async() -> Batch:
    _need("pybreaker", "tornado")
    import pybreaker

    breaker = pybreaker.CircuitBreaker()
    call_async = breaker.call_async

    async def batch() -> None:
        for _ in range(N):
            await call_async(f)

    return batch


def pybreaker_calling() -> Batch:
    _need("pybreaker")
    import pybreaker

    breaker = pybreaker.CircuitBreaker()

    async def batch() -> None:
        for _ in range(N):
            with breaker.calling():
                await f()

    return batch


def aiobreaker_decorator() -> Batch:
    _need("aiobreaker")
    import aiobreaker

    return _loop_over(aiobreaker.CircuitBreaker()(f))


def purgatory_decorator() -> Batch:
    _need("purgatory")
    from purgatory import AsyncCircuitBreakerFactory

    return _loop_over(AsyncCircuitBreakerFactory()("bench")(f))


def circuitbreaker_decorator() -> Batch:
    _need("circuitbreaker")
    from circuitbreaker import CircuitBreaker

    # A fresh breaker object (not the global @circuit default) so runs are independent.
    return _loop_over(CircuitBreaker(name="bench")(f))


def hyx_breaker() -> Batch:
    _need("hyx")
    from hyx.circuitbreaker import consecutive_breaker

    return _loop_over(consecutive_breaker()(f))


# ---- rate limiter peers ------------------------------------------------------------------


def aiolimiter_ctx() -> Batch:
    _need("aiolimiter")
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(10**9, 1)

    async def batch() -> None:
        for _ in range(N):
            async with limiter:
                await f()

    return batch


def _limits(strategy: str) -> Batch:
    _need("limits")
    import limits

    item = limits.RateLimitItemPerSecond(10**9, 1)
    try:
        from limits.aio import storage, strategies
    except ImportError:  # no asyncio support in this version: the sync API
        from limits import storage, strategies  # type: ignore[no-redef]

        limiter = getattr(strategies, strategy)(storage.MemoryStorage())
        hit = limiter.hit

        async def batch_sync() -> None:
            for _ in range(N):
                if not hit(item, "bench"):
                    raise AssertionError("limits refused a call")
                await f()

        return batch_sync
    limiter = getattr(strategies, strategy)(storage.MemoryStorage())
    ahit = limiter.hit

    async def batch() -> None:
        for _ in range(N):
            if not await ahit(item, "bench"):
                raise AssertionError("limits refused a call")
            await f()

    return batch


def limits_moving_window() -> Batch:
    return _limits("MovingWindowRateLimiter")


def limits_fixed_window() -> Batch:
    return _limits("FixedWindowRateLimiter")


def _pyrate(limiter: Any) -> Batch:
    acquire = limiter.try_acquire_async

    async def batch() -> None:
        for _ in range(N):
            if not await acquire("bench"):
                raise AssertionError("pyrate-limiter refused a call")
            await f()

    return batch


def pyrate_in_memory() -> Batch:
    _need("pyrate_limiter")
    from pyrate_limiter import Duration, Limiter, Rate

    return _pyrate(Limiter(Rate(10**9, Duration.SECOND)))


def pyrate_token_bucket() -> Batch:
    _need("pyrate_limiter")
    from pyrate_limiter import limiter_factory

    if not hasattr(limiter_factory, "create_token_bucket_limiter"):
        pytest.skip("this pyrate-limiter has no token-bucket limiter (needs >= 4)")
    from pyrate_limiter import Duration

    return _pyrate(limiter_factory.create_token_bucket_limiter(10**9, Duration.SECOND))


async def hyx_tokenbucket() -> Batch:
    # hyx's limiter captures the running loop when it is built.
    _need("hyx")
    from hyx.ratelimit import tokenbucket

    return _loop_over(tokenbucket(max_executions=1e9, per_time_secs=1)(f))


# ---- timeout peers -------------------------------------------------------------------------


def asyncio_timeout() -> Batch:
    if not hasattr(asyncio, "timeout"):
        pytest.skip("asyncio.timeout needs Python >= 3.11")

    async def batch() -> None:
        for _ in range(N):
            async with asyncio.timeout(30.0):
                await f()

    return batch


def asyncio_wait_for() -> Batch:
    wait_for = asyncio.wait_for

    async def batch() -> None:
        for _ in range(N):
            await wait_for(f(), 30.0)

    return batch


async def hyx_timeout() -> Batch:
    # hyx's timeout captures the running loop when it decorates.
    _need("hyx")
    from hyx.timeout import timeout

    return _loop_over(timeout(30.0)(f))


# ---- bulkhead peers ------------------------------------------------------------------------


def asyncio_semaphore() -> Batch:
    sem = asyncio.Semaphore(1000)

    async def batch() -> None:
        for _ in range(N):
            async with sem:
                await f()

    return batch


def hyx_bulkhead() -> Batch:
    _need("hyx")
    from hyx.bulkhead import bulkhead

    return _loop_over(bulkhead(max_concurrency=1000, max_capacity=2000)(f))


# ---- fallback peers ------------------------------------------------------------------------


def hyx_fallback() -> Batch:
    _need("hyx")
    from hyx.fallback import fallback

    async def handler(*args: Any, **kwargs: Any) -> None:
        return None

    return _loop_over(fallback(handler)(f))


# ---- the standard pipeline's job done with peers -----------------------------------------


def peer_stack() -> Batch:
    """limiter, total timeout, retry, breaker, attempt timeout: each from a peer
    (aiolimiter, asyncio.timeout, tenacity, aiobreaker), nested as users would."""
    _need("aiolimiter", "tenacity", "aiobreaker")
    if not hasattr(asyncio, "timeout"):
        pytest.skip("asyncio.timeout needs Python >= 3.11")
    import aiobreaker
    import tenacity
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(10**9, 1)
    breaker = aiobreaker.CircuitBreaker()

    @tenacity.retry(stop=tenacity.stop_after_attempt(3))
    @breaker
    async def attempt() -> int:
        async with asyncio.timeout(10.0):
            return await f()

    async def call() -> int:
        async with limiter, asyncio.timeout(30.0):
            return await attempt()

    return _loop_over(call)


# ---- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    job: str
    library: str
    build: Callable[[], Batch | Awaitable[Batch]]
    how: str


CASES = [
    Case("bare", "baseline", "-", bare, "await f()"),
    Case("resilio-retry", "retry", "resilio", r_retry, "Pipeline(Retry(attempts=3))"),
    Case(
        "resilio-circuit_breaker",
        "circuit_breaker",
        "resilio",
        r_breaker,
        "Pipeline(CircuitBreaker())",
    ),
    Case(
        "resilio-rate_limiter",
        "rate_limiter",
        "resilio",
        r_limiter,
        "Pipeline(RateLimiter(rate=1e9, burst=10**9))",
    ),
    Case("resilio-timeout", "timeout", "resilio", r_timeout, "Pipeline(Timeout(30.0))"),
    Case("resilio-bulkhead", "bulkhead", "resilio", r_bulkhead, "Pipeline(Bulkhead(1000))"),
    Case(
        "resilio-hedging",
        "hedging",
        "resilio",
        r_hedging,
        "Pipeline(Hedging(delay=1.0)), primary wins",
    ),
    Case("resilio-fallback", "fallback", "resilio", r_fallback, "Pipeline(Fallback(value=None))"),
    Case(
        "resilio-pipeline",
        "pipeline",
        "resilio",
        r_pipeline,
        "Pipeline(RateLimiter(1e9, 10**9), Timeout(30.0), Retry(3), CircuitBreaker(), "
        "Timeout(10.0)) as decorator",
    ),
    Case(
        "resilio-pipeline-execute",
        "pipeline",
        "resilio (execute)",
        r_pipeline_execute,
        "same pipeline, await pipeline.execute(f)",
    ),
    Case(
        "tenacity-retry",
        "retry",
        "tenacity",
        tenacity_decorator,
        "@retry(stop=stop_after_attempt(3))",
    ),
    Case(
        "tenacity-AsyncRetrying",
        "retry",
        "tenacity",
        tenacity_async_retrying,
        "async for attempt in AsyncRetrying(stop=stop_after_attempt(3))",
    ),
    Case(
        "stamina-retry",
        "retry",
        "stamina",
        stamina_retry,
        "@stamina.retry(on=Exception, attempts=3)",
    ),
    Case(
        "backoff-on_exception",
        "retry",
        "backoff",
        backoff_on_exception,
        "@backoff.on_exception(backoff.expo, Exception, max_tries=3)",
    ),
    Case("hyx-retry", "retry", "hyx", hyx_retry, "@hyx.retry.retry(on=Exception, attempts=3)"),
    Case(
        "pybreaker-call_async",
        "circuit_breaker",
        "pybreaker",
        pybreaker_call_async,
        "await breaker.call_async(f) (tornado coroutine)",
    ),
    Case(
        "pybreaker-calling",
        "circuit_breaker",
        "pybreaker",
        pybreaker_calling,
        "with breaker.calling(): await f() (sync context manager)",
    ),
    Case(
        "aiobreaker",
        "circuit_breaker",
        "aiobreaker",
        aiobreaker_decorator,
        "@aiobreaker.CircuitBreaker()",
    ),
    Case(
        "purgatory",
        "circuit_breaker",
        "purgatory",
        purgatory_decorator,
        "@AsyncCircuitBreakerFactory()('bench') (in-memory)",
    ),
    Case(
        "circuitbreaker",
        "circuit_breaker",
        "circuitbreaker",
        circuitbreaker_decorator,
        "@CircuitBreaker() (the class behind @circuit)",
    ),
    Case("hyx-breaker", "circuit_breaker", "hyx", hyx_breaker, "@consecutive_breaker()"),
    Case(
        "aiolimiter",
        "rate_limiter",
        "aiolimiter",
        aiolimiter_ctx,
        "async with AsyncLimiter(10**9, 1)",
    ),
    Case(
        "limits-moving_window",
        "rate_limiter",
        "limits",
        limits_moving_window,
        "limits.aio MovingWindowRateLimiter(MemoryStorage()).hit, 10**9/s",
    ),
    Case(
        "limits-fixed_window",
        "rate_limiter",
        "limits",
        limits_fixed_window,
        "limits.aio FixedWindowRateLimiter(MemoryStorage()).hit, 10**9/s",
    ),
    Case(
        "pyrate-in_memory",
        "rate_limiter",
        "pyrate-limiter",
        pyrate_in_memory,
        "Limiter(Rate(10**9, SECOND)).try_acquire_async (in-memory log)",
    ),
    Case(
        "pyrate-token_bucket",
        "rate_limiter",
        "pyrate-limiter",
        pyrate_token_bucket,
        "create_token_bucket_limiter(10**9, SECOND).try_acquire_async",
    ),
    Case(
        "hyx-tokenbucket",
        "rate_limiter",
        "hyx",
        hyx_tokenbucket,
        "@tokenbucket(max_executions=1e9, per_time_secs=1)",
    ),
    Case(
        "asyncio-timeout", "timeout", "asyncio", asyncio_timeout, "async with asyncio.timeout(30.0)"
    ),
    Case(
        "asyncio-wait_for",
        "timeout",
        "asyncio",
        asyncio_wait_for,
        "await asyncio.wait_for(f(), 30.0)",
    ),
    Case("hyx-timeout", "timeout", "hyx", hyx_timeout, "@hyx.timeout.timeout(30.0)"),
    Case(
        "asyncio-Semaphore",
        "bulkhead",
        "asyncio",
        asyncio_semaphore,
        "async with asyncio.Semaphore(1000)",
    ),
    Case(
        "hyx-bulkhead",
        "bulkhead",
        "hyx",
        hyx_bulkhead,
        "@bulkhead(max_concurrency=1000, max_capacity=2000)",
    ),
    Case("hyx-fallback", "fallback", "hyx", hyx_fallback, "@fallback(handler)"),
    Case(
        "peer-stack",
        "pipeline",
        "aiolimiter+asyncio+tenacity+aiobreaker",
        peer_stack,
        "AsyncLimiter, asyncio.timeout(30), tenacity retry(3), aiobreaker, "
        "asyncio.timeout(10), nested",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_overhead(benchmark: Any, loop: asyncio.AbstractEventLoop, per_op: Any, case: Case) -> None:
    built = case.build()
    batch: Batch = loop.run_until_complete(built) if asyncio.iscoroutine(built) else built
    run_until_complete = loop.run_until_complete
    # One unmeasured round: a broken case fails here, not inside the timing.
    run_until_complete(batch())

    benchmark.group = f"overhead: {case.job}"
    benchmark(lambda: run_until_complete(batch()))
    extra: dict[str, Any] = {"job": case.job, "library": case.library, "how": case.how}
    if case.library == "resilio" and case.job in TARGETS:
        extra["target_added_ns"] = TARGETS[case.job]
    per_op(benchmark, N, **extra)
