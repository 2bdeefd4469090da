"""Inject faults into 30 % of calls and check that the retry outside absorbs them.

FakeClock makes the backoff sleeps virtual, so the run is exact and instant;
the seed makes it the same run every time.
"""

from __future__ import annotations

import anyio

from resilio import Pipeline
from resilio.strategies.chaos import FaultInjection
from resilio.strategies.retry import Backoff, Retry
from resilio.testing import FakeClock


async def fetch(key: str) -> str:
    return f"value of {key}"


async def main() -> None:
    clock = FakeClock()
    chaos = FaultInjection(0.3, exception=ConnectionResetError, seed=7)
    retry = Retry(5, backoff=Backoff.exponential(0.1, max_delay=2.0), handle=ConnectionError)
    # Chaos innermost: the retry sees an injected fault as it would a real one.
    pipeline = Pipeline(retry, chaos, clock=clock)

    for i in range(100):
        assert await pipeline.execute(fetch, f"k{i}") == f"value of k{i}"

    stats = retry.stats()
    print(f"100 calls, {chaos.injected} faults injected, {stats['retries']} retries")
    print(f"virtual time spent in backoff: {clock.now():.1f} s (real: none)")
    assert stats["retries"] == chaos.injected and stats["exhausted"] == 0

    # Chaos off at run time: nothing is injected, and no draw is taken.
    chaos.enabled = False
    before = chaos.injected
    for i in range(100):
        await pipeline.execute(fetch, f"k{i}")
    assert chaos.injected == before
    print("disabled: no fault in 100 more calls")


if __name__ == "__main__":
    anyio.run(main)
