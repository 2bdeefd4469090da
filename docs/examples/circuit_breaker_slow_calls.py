"""Slow calls open the breaker too; failed probes lengthen the break, up to a cap.

Runs on a FakeClock: `clock.sleep()` inside the call advances virtual time.
"""

from __future__ import annotations

import anyio

from resilio import BrokenCircuitError, CircuitBreaker, CircuitState, Pipeline
from resilio.testing import FakeClock

clock = FakeClock()
breaker = CircuitBreaker(
    minimum_throughput=3,
    slow_call_duration=1.0,  # a call taking more than 1 s is slow...
    slow_call_ratio=0.6,  # ...and 60 % slow calls open the circuit
    break_duration=2.0,
    max_break_duration=8.0,  # each failed probe doubles the break: 2, 4, 8, 8 s
    on_opened=lambda b: print(f"  opened, next probe in {b.retry_after:.1f} s"),
    on_half_opened=lambda b: print("  half-open: probing"),
    on_closed=lambda b: print("  closed"),
)
pipeline = Pipeline(breaker, clock=clock)
latency = 3.0


@pipeline
async def query() -> str:
    await clock.sleep(latency)  # virtual time: instant in real time
    return "rows"


async def main() -> None:
    global latency
    for _ in range(3):
        await query()  # they succeed, but each takes 3 s

    for _ in range(2):  # the dependency is still slow: each probe re-opens it
        await clock.sleep(breaker.retry_after or 0.0)
        await query()

    try:
        await query()
    except BrokenCircuitError as e:
        print(f"rejected; retry after {e.retry_after:.1f} s")

    latency = 0.1
    await clock.sleep(breaker.retry_after or 0.0)
    await query()  # a fast probe closes it
    assert breaker.state is CircuitState.CLOSED, breaker.state
    print(f"opened {breaker.opened}x, slow calls {breaker.slow}, rejected {breaker.rejected}")


if __name__ == "__main__":
    anyio.run(main)
