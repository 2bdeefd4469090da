"""Add latency to some calls and watch the timeout outside cut them short."""

from __future__ import annotations

import time

import anyio

from resilio import Pipeline, Timeout, TimeoutRejectedError
from resilio.strategies.chaos import LatencyInjection


async def query() -> str:
    return "rows"


async def main() -> None:
    slow = LatencyInjection(0.5, latency=10.0, seed=1)  # half the calls take 10 s more
    pipeline = Pipeline(Timeout(0.05), slow)

    ok = timed_out = 0
    start = time.monotonic()
    for _ in range(20):
        try:
            await pipeline.execute(query)
            ok += 1
        except TimeoutRejectedError:
            timed_out += 1
    elapsed = time.monotonic() - start
    print(f"{ok} answered, {timed_out} cut at 50 ms, in {elapsed:.2f} s rather than minutes")
    assert timed_out == slow.injected > 0
    assert elapsed < 5

    # Turn it down while the pipeline runs.
    slow.latency = 0.001
    await pipeline.execute(query)


if __name__ == "__main__":
    anyio.run(main)
