"""`standard_pipeline`: the widely used defaults for an outbound HTTP dependency.

The layers and their defaults follow Microsoft.Extensions.Http.Resilience's
standard handler, which is what most .NET services run in production:

1. rate limiter: 1,000 calls/s, burst 1,000 (rejects at once)
2. total timeout: 30 s, across every attempt and backoff
3. retry: 3 retries (4 attempts), exponential backoff from 2 s with jitter,
   each delay capped at 30 s; with a retry budget (20 % of calls, floor 10/s)
4. circuit breaker: 10 % failures over 30 s, at least 100 calls, 5 s break
5. attempt timeout: 10 s per attempt

Pass a strategy to replace a layer, or None to remove it.
"""

from __future__ import annotations

from typing import Any

from resilio.clock import Clock
from resilio.pipeline import Pipeline
from resilio.strategies._base import Strategy
from resilio.strategies.circuit_breaker import CircuitBreaker
from resilio.strategies.rate_limiter import RateLimiter
from resilio.strategies.retry import Backoff, Retry, RetryBudget
from resilio.strategies.timeout import Timeout

__all__ = ["standard_pipeline"]

RATE = 1000.0
BURST = 1000
TOTAL_TIMEOUT = 30.0
RETRY_ATTEMPTS = 4
RETRY_DELAY = 2.0
RETRY_MAX_DELAY = 30.0
BREAKER_FAILURE_RATIO = 0.1
BREAKER_MIN_THROUGHPUT = 100
BREAKER_SAMPLING = 30.0
BREAKER_BREAK = 5.0
ATTEMPT_TIMEOUT = 10.0

_DEFAULT: Any = object()


def standard_pipeline(
    name: str | None = None,
    *,
    rate_limiter: Strategy | None = _DEFAULT,
    total_timeout: Strategy | None = _DEFAULT,
    retry: Strategy | None = _DEFAULT,
    circuit_breaker: Strategy | None = _DEFAULT,
    attempt_timeout: Strategy | None = _DEFAULT,
    clock: Clock | None = None,
) -> Pipeline:
    """Build the standard five-layer pipeline; override a layer or pass None to drop it."""
    layers: list[Strategy | None] = [
        RateLimiter(RATE, BURST) if rate_limiter is _DEFAULT else rate_limiter,
        Timeout(TOTAL_TIMEOUT, name="total_timeout")
        if total_timeout is _DEFAULT
        else total_timeout,
        Retry(
            RETRY_ATTEMPTS,
            backoff=Backoff.exponential(RETRY_DELAY, max_delay=RETRY_MAX_DELAY, jitter=True),
            budget=RetryBudget(),
        )
        if retry is _DEFAULT
        else retry,
        CircuitBreaker(
            failure_ratio=BREAKER_FAILURE_RATIO,
            minimum_throughput=BREAKER_MIN_THROUGHPUT,
            sampling_duration=BREAKER_SAMPLING,
            break_duration=BREAKER_BREAK,
        )
        if circuit_breaker is _DEFAULT
        else circuit_breaker,
        Timeout(ATTEMPT_TIMEOUT, name="attempt_timeout")
        if attempt_timeout is _DEFAULT
        else attempt_timeout,
    ]
    return Pipeline(*(s for s in layers if s is not None), name=name, clock=clock)
