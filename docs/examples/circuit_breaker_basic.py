"""A circuit breaker trips on failures, rejects at once, then probes and closes.

Runs on a FakeClock so the 5 s break takes no real time.
"""

from __future__ import annotations

import contextlib

import anyio

from resilio import BrokenCircuitError, CircuitBreaker, Pipeline
from resilio.testing import FakeClock

clock = FakeClock()
breaker = CircuitBreaker(
    failure_ratio=0.5,  # open when half the calls fail...
    minimum_throughput=4,  # ...out of at least 4 calls...
    sampling_duration=30.0,  # ...in the last 30 s
    break_duration=5.0,  # then reject everything for 5 s
    handle=(ConnectionError, TimeoutError),  # only these count as failures
)
pipeline = Pipeline(breaker, clock=clock)
healthy = False


@pipeline
async def fetch(key: str) -> str:
    if not healthy:
        raise ConnectionError("backend down")
    return f"value of {key}"


async def main() -> None:
    global healthy
    for _ in range(4):
        with contextlib.suppress(ConnectionError):
            await fetch("a")
    print("state:", breaker.state.name)  # OPEN

    try:
        await fetch("a")  # not even attempted
    except BrokenCircuitError as e:
        print(f"rejected by {e.strategy}; retry after {e.retry_after:.3f} s")

    healthy = True
    await clock.sleep(breaker.retry_after or 0.0)  # the break ends
    print(await fetch("a"))  # this call is the half-open probe; it succeeds
    print("state:", breaker.state.name)  # CLOSED


if __name__ == "__main__":
    anyio.run(main)
