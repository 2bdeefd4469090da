"""The success-path overhead cases, shared by `resilio bench` and benchmarks/compare/.

Each builder returns a *batch*: a coroutine function that awaits the wrapped
function `N` times. `f` returns at once, so the time of a batch divided by `N`,
minus the same for the bare `await f()`, is what a call that succeeds pays for
its protection. Builders import what they build when called, so a caller that
switches `resilio._core` first measures the implementation it switched to.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CASES",
    "TARGETS",
    "Batch",
    "Case",
    "N",
    "bare",
    "f",
    "loop_over",
    "measure",
    "r_breaker",
    "r_bulkhead",
    "r_chaos",
    "r_fallback",
    "r_hedging",
    "r_limiter",
    "r_pipeline",
    "r_pipeline_execute",
    "r_retry",
    "r_standard",
    "r_timeout",
]

#: Calls per batch.
N: Final = 1000

#: Targets: added ns over bare await, per call, for the resilio cases.
TARGETS: Final = {
    "retry": 150,
    "circuit_breaker": 250,
    "rate_limiter": 200,
    "timeout": 1000,
    "bulkhead": 250,
    "hedging": 1500,
    "pipeline": 2000,
}


async def f() -> int:
    """The protected call: succeeds at once."""
    return 1


Batch = Callable[[], Awaitable[None]]


def loop_over(call: Callable[[], Awaitable[Any]]) -> Batch:
    """The common shape: N awaits of a wrapped function."""

    async def batch() -> None:
        for _ in range(N):
            await call()

    return batch


def bare() -> Batch:
    async def batch() -> None:
        for _ in range(N):
            await f()

    return batch


def _resilio(*strategies: Any) -> Batch:
    from resilio import Pipeline

    return loop_over(Pipeline(*strategies)(f))


def r_retry() -> Batch:
    from resilio import Retry

    return _resilio(Retry(attempts=3))


def r_breaker() -> Batch:
    from resilio import CircuitBreaker

    return _resilio(CircuitBreaker())


def r_limiter() -> Batch:
    from resilio import RateLimiter

    return _resilio(RateLimiter(rate=1e9, burst=10**9))


def r_timeout() -> Batch:
    from resilio import Timeout

    return _resilio(Timeout(30.0))


def r_bulkhead() -> Batch:
    from resilio import Bulkhead

    return _resilio(Bulkhead(1000))


def r_hedging() -> Batch:
    from resilio import Hedging

    return _resilio(Hedging(delay=1.0))


def r_fallback() -> Batch:
    from resilio import Fallback

    return _resilio(Fallback(value=None))


def r_chaos() -> Batch:
    from resilio.strategies.chaos import FaultInjection

    # Enabled with rate 0: every call pays the draw, none is faulted.
    return _resilio(FaultInjection(0.0, seed=0))


def r_pipeline() -> Batch:
    from resilio import CircuitBreaker, RateLimiter, Retry, Timeout

    return _resilio(
        RateLimiter(1e9, 10**9), Timeout(30.0), Retry(3), CircuitBreaker(), Timeout(10.0)
    )


def r_pipeline_execute() -> Batch:
    """The same pipeline through `await pipeline.execute(f)` instead of a decorator."""
    from resilio import CircuitBreaker, Pipeline, RateLimiter, Retry, Timeout

    p = Pipeline(RateLimiter(1e9, 10**9), Timeout(30.0), Retry(3), CircuitBreaker(), Timeout(10.0))
    execute = p.execute

    async def batch() -> None:
        for _ in range(N):
            await execute(f)

    return batch


def r_standard() -> Batch:
    """`resilio.standard_pipeline()` as a decorator (its limiter never refuses at this pace)."""
    from resilio import RateLimiter, standard_pipeline

    return loop_over(standard_pipeline(rate_limiter=RateLimiter(1e9, 10**9))(f))


@dataclass(frozen=True)
class Case:
    """One measured case: an id, the job it does (a TARGETS key), its builder, how."""

    id: str
    job: str
    build: Callable[[], Batch]
    how: str


#: The resilio cases, after the baseline.
CASES: Final[tuple[Case, ...]] = (
    Case("bare", "baseline", bare, "await f()"),
    Case("retry", "retry", r_retry, "Pipeline(Retry(attempts=3))"),
    Case("circuit_breaker", "circuit_breaker", r_breaker, "Pipeline(CircuitBreaker())"),
    Case(
        "rate_limiter",
        "rate_limiter",
        r_limiter,
        "Pipeline(RateLimiter(rate=1e9, burst=10**9))",
    ),
    Case("timeout", "timeout", r_timeout, "Pipeline(Timeout(30.0))"),
    Case("bulkhead", "bulkhead", r_bulkhead, "Pipeline(Bulkhead(1000))"),
    Case("hedging", "hedging", r_hedging, "Pipeline(Hedging(delay=1.0)), primary wins"),
    Case("fallback", "fallback", r_fallback, "Pipeline(Fallback(value=None))"),
    Case("chaos", "chaos", r_chaos, "Pipeline(FaultInjection(0.0)), enabled, never faults"),
    Case(
        "pipeline",
        "pipeline",
        r_pipeline,
        "RateLimiter, Timeout(30), Retry(3), CircuitBreaker(), Timeout(10) as decorator",
    ),
    Case("pipeline-execute", "pipeline", r_pipeline_execute, "same, await pipeline.execute(f)"),
    Case(
        "standard_pipeline",
        "pipeline",
        r_standard,
        "standard_pipeline() as decorator (limiter at 1e9/s)",
    ),
)


def measure(batch: Batch, loop: asyncio.AbstractEventLoop, rounds: int) -> list[float]:
    """ns per call for each of `rounds` batches, after one unmeasured batch."""
    run = loop.run_until_complete
    run(batch())  # a broken case fails here, not inside the timing
    gc.collect()
    out = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        run(batch())
        out.append((clock() - start) / N)
    return out
