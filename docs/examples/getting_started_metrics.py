"""Prometheus metrics for a pipeline: counters read at scrape time, durations by Timing."""

import anyio
from prometheus_client import generate_latest

from resilio import Backoff, Pipeline, Retry, Timeout
from resilio.integrations.prometheus import ResilioCollector, Timing

pipeline = Pipeline(
    Timing(),  # opt-in: call durations, the one metric that costs per call
    Retry(3, backoff=Backoff.constant(0.001), handle=ConnectionError),
    Timeout(1.0),
    name="inventory",
)
collector = ResilioCollector()  # registers on prometheus_client's default REGISTRY
collector.add(pipeline)  # its series are labelled pipeline="inventory"

resets = 1


async def stock(item: str) -> int:
    global resets
    if resets:
        resets -= 1
        raise ConnectionResetError("connection reset by peer")
    return 7


async def main() -> None:
    for item in ("bolts", "nuts", "screws"):
        await pipeline.execute(stock, item)
    scrape = generate_latest().decode()  # what GET /metrics returns
    for line in scrape.splitlines():
        if line.startswith(("resilio_retries_total", "resilio_call_duration_seconds_count")):
            print(line)
    assert 'resilio_retries_total{pipeline="inventory",strategy="retry"} 1.0' in scrape
    assert (
        'resilio_call_duration_seconds_count{pipeline="inventory",strategy="timing"} 3.0' in scrape
    )


if __name__ == "__main__":
    anyio.run(main)
