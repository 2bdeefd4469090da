"""Cancel the caller at every await point of a full pipeline; nothing may leak.

The pipeline holds every kind of permit at some point: a rate-limiter
reservation (a waiter), a bulkhead queue slot and then a slot, a half-open
probe, a retry backoff sleep, hedged attempts and two timeouts. For each k,
the caller is cancelled after k scheduler steps; afterwards every permit,
queue slot, probe and attempt must be back to zero, and the cancellation must
never have been retried or counted as a failure.
"""

from __future__ import annotations

from types import ModuleType

import anyio
import pytest

from resilio import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    Hedging,
    Pipeline,
    RateLimiter,
    Retry,
    Timeout,
)
from resilio.testing import FakeClock

pytestmark = pytest.mark.anyio

STEPS = 20


class Upstream:
    """The called function: first attempt fails fast, later ones take a few steps."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.cancelled = 0

    async def __call__(self) -> str:
        self.started += 1
        self.running += 1
        try:
            if self.started == 1:
                raise ConnectionError("transient")
            for _ in range(4):
                await anyio.sleep(0)
            return "ok"
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.cancelled += 1
            raise
        finally:
            self.running -= 1


async def build(hedges: int) -> tuple[Pipeline, dict[str, object], FakeClock]:
    clock = FakeClock(start=10.0)
    limiter = RateLimiter(1.0, 1, max_wait=5.0)
    breaker = CircuitBreaker(
        failure_ratio=0.5, minimum_throughput=1, break_duration=1.0, handle=ValueError
    )
    bulkhead = Bulkhead(1, max_queue=1)
    retry = Retry(3, backoff=Backoff.constant(0.5), handle=ConnectionError)
    pipeline = Pipeline(
        limiter,
        Timeout(30.0),
        retry,
        bulkhead,
        breaker,
        Hedging(delay=0.0, max_attempts=hedges),
        Timeout(20.0),
        clock=clock,
    )
    # Drain the limiter so the call must wait for a token (a reservation).
    limiter_only = Pipeline(limiter, clock=clock)

    async def noop() -> None:
        return None

    await limiter_only.execute(noop)

    # Open the breaker, then let its break pass: the next call is a probe.
    async def bad() -> None:
        raise ValueError("down")

    with pytest.raises(ValueError):
        await Pipeline(breaker, clock=clock).execute(bad)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1.001)  # the core rounds break ends up to 65.536 us
    parts: dict[str, object] = {
        "limiter": limiter,
        "breaker": breaker,
        "bulkhead": bulkhead,
        "retry": retry,
    }
    return pipeline, parts, clock


@pytest.mark.parametrize("k", range(STEPS))
# With one attempt the first failure reaches Retry (a backoff sleep); with two,
# Hedging absorbs it (a hedged attempt runs in its own task).
@pytest.mark.parametrize("hedges", [1, 2])
async def test_cancel_at_every_step_leaks_nothing(
    core: ModuleType, anyio_backend: str, k: int, hedges: int
) -> None:
    pipeline, parts, clock = await build(hedges)
    breaker = parts["breaker"]
    bulkhead = parts["bulkhead"]
    assert isinstance(breaker, CircuitBreaker) and isinstance(bulkhead, Bulkhead)
    failures_before, opened_before = breaker.failures, breaker.opened
    upstream = Upstream()
    outcome: list[str] = []

    async def blocker() -> None:
        # Holds the only bulkhead slot for a few steps, so the call queues.
        async def hold() -> None:
            for _ in range(3):
                await anyio.sleep(0)

        await Pipeline(bulkhead).execute(hold)

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            try:
                outcome.append(await pipeline.execute(upstream))
            except Exception as exc:
                outcome.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocker)
        scope = anyio.CancelScope()
        tg.start_soon(caller, scope)
        for _ in range(k):
            await anyio.sleep(0)
        scope.cancel()

    # Everything the call held is back.
    assert upstream.running == 0, "an attempt outlived the call"
    assert bulkhead.in_flight == 0
    assert bulkhead.queued == 0
    assert breaker._circuit.in_flight_probes == 0
    # The cancellation was neither retried nor counted as a failure.
    assert breaker.failures == failures_before
    assert breaker.opened == opened_before
    started = upstream.started
    for _ in range(10):
        await anyio.sleep(0)
    assert upstream.started == started, "an attempt started after the cancel"
    if not outcome:
        # Cancelled mid-way: a new call still gets through (no wedged state).
        clock.advance(5.0)
        fresh = Upstream()
        fresh.started = 1  # skip the scripted first failure
        assert await pipeline.execute(fresh) == "ok"
    else:
        assert outcome == ["ok"]
