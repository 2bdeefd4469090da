"""Expose a pipeline's counters to Prometheus, and its call durations with a Timing gate."""

from __future__ import annotations

import anyio
from prometheus_client import CollectorRegistry, generate_latest

from resilio import Backoff, CircuitBreaker, Pipeline, RateLimiter, Retry, Timeout
from resilio.integrations.prometheus import ResilioCollector, Timing

# A service would use prometheus_client's global REGISTRY (the default).
registry = CollectorRegistry()
collector = ResilioCollector(registry)

pipeline = Pipeline(
    Timing(),  # first: times what the caller sees, retries and rejections included
    RateLimiter(rate=100.0, burst=5),
    Retry(3, backoff=Backoff.constant(0.001), handle=ConnectionError),
    CircuitBreaker(failure_ratio=0.5, minimum_throughput=4, break_duration=5.0),
    Timeout(1.0),
    name="payments",
)
collector.add(pipeline)  # held weakly: drop the pipeline and its series go too

calls = 0


async def charge() -> str:
    global calls
    calls += 1
    if calls % 3 == 0:
        raise ConnectionError("connection reset")
    return "charged"


async def main() -> None:
    for _ in range(8):
        try:
            await pipeline.execute(charge)
        except Exception as exc:  # rate limited: the burst is 5
            print(f"refused: {type(exc).__name__}")
    # Prometheus scrapes this text; the counters are read now, not on each call.
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("resilio_") and not line.endswith(" 0.0") and "_bucket" not in line:
            print(line)


if __name__ == "__main__":
    anyio.run(main)
