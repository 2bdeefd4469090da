"""standard_pipeline: the documented layers and defaults, each overridable or removable."""

from __future__ import annotations

from types import ModuleType

import pytest

import resilio
from resilio import (
    CircuitBreaker,
    RateLimiter,
    Retry,
    Timeout,
    standard_pipeline,
)
from resilio.testing import FakeClock

pytestmark = pytest.mark.anyio


def test_layers_in_order(core: ModuleType) -> None:
    p = standard_pipeline("payments")
    kinds = [type(s) for s in p.strategies]
    assert kinds[0].__name__.endswith("RateLimiter")
    assert kinds[1:] == [Timeout, Retry, CircuitBreaker, Timeout]
    total, retry, breaker, attempt = p.strategies[1:]
    assert isinstance(total, Timeout) and total.seconds == 30.0
    assert isinstance(attempt, Timeout) and attempt.seconds == 10.0
    assert isinstance(retry, Retry) and retry.attempts == 4
    assert isinstance(breaker, CircuitBreaker)
    assert p.name == "payments"


def test_override_and_remove(core: ModuleType) -> None:
    mine = Retry(2)
    p = standard_pipeline(retry=mine, rate_limiter=None, attempt_timeout=None)
    assert [type(s) for s in p.strategies] == [Timeout, Retry, CircuitBreaker]
    assert p.strategies[1] is mine


def test_clock_reaches_every_layer(core: ModuleType) -> None:
    clock = FakeClock()
    p = standard_pipeline(clock=clock)
    assert all(s.clock is clock for s in p.strategies)


async def test_runs_and_retries(core: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    p = standard_pipeline(clock=clock)
    n = 0

    async def flaky() -> str:
        nonlocal n
        n += 1
        if n < 3:
            raise ConnectionError("transient")
        return "ok"

    assert await p.execute(flaky) == "ok"
    assert n == 3
    # Two backoff sleeps happened in virtual time.
    assert len([s for s in clock.sleeps if s > 0]) == 2


async def test_rate_limit_rejects(core: ModuleType, anyio_backend: str) -> None:
    p = standard_pipeline(rate_limiter=RateLimiter(1.0, 1), clock=FakeClock())

    async def f() -> int:
        return 1

    assert await p.execute(f) == 1
    with pytest.raises(resilio.RateLimitedError) as info:
        await p.execute(f)
    assert info.value.retry_after == pytest.approx(1.0)
