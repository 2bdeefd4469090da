"""A test of a retry's backoff that takes no real time: a FakeClock and seeded faults.

Under pytest, mark the test `@pytest.mark.anyio` (anyio's plugin) instead of
running it with `anyio.run`.
"""

import anyio

from resilio import Backoff, Pipeline, Retry
from resilio.strategies.chaos import FaultInjection
from resilio.testing import FakeClock


async def fetch() -> str:
    return "ok"


async def test_backoff_delays() -> None:
    chaos = FaultInjection(0.5, seed=7)  # this seed draws: fault, fault, no fault
    clock = FakeClock()
    pipeline = Pipeline(Retry(5, backoff=Backoff.exponential(0.1)), chaos, clock=clock)

    assert await pipeline.execute(fetch) == "ok"
    assert chaos.injected == 2
    assert clock.sleeps == [0.1, 0.2]  # the backoff delays, exactly
    assert clock.now() == 0.3  # virtual seconds; no real time went by


if __name__ == "__main__":
    anyio.run(test_backoff_delays)
