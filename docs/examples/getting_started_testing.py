"""Test a circuit breaker's whole cycle in no real time: FakeClock and injected faults.

Under pytest, mark the test `@pytest.mark.anyio` instead of running it with `anyio.run`.
"""

import contextlib

import anyio

from resilio import CircuitBreaker, Pipeline
from resilio.strategies.chaos import FaultInjection, InjectedFaultError
from resilio.testing import FakeClock


async def fetch() -> str:
    return "ok"


async def test_breaker_recovers() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_ratio=0.5, minimum_throughput=4, break_duration=5.0)
    outage = FaultInjection(1.0)  # every call fails while it is enabled
    pipeline = Pipeline(breaker, outage, clock=clock)

    for _ in range(4):
        with contextlib.suppress(InjectedFaultError):
            await pipeline.execute(fetch)
    assert breaker.state.name == "OPEN"

    outage.enabled = False  # the dependency is back...
    # ...and the break is over, with no real wait. The core stores a break's end rounded
    # up to 65.536 us (never early), so step a little past 5 s.
    clock.advance(5.001)
    assert await pipeline.execute(fetch) == "ok"  # the probe call succeeds
    assert breaker.state.name == "CLOSED"


if __name__ == "__main__":
    anyio.run(test_breaker_recovers)
