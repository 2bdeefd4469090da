"""Serve /metrics next to an ASGI app, with the inbound middleware's counters in it."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import prometheus_client
from prometheus_client import CollectorRegistry

import resilio
from resilio.integrations.asgi import LoadSheddingMiddleware, RateLimitMiddleware
from resilio.integrations.prometheus import ResilioCollector, metrics_app

pipelines = [resilio.standard_pipeline(f"upstream_{i}") for i in range(3)]


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


# Inbound protection: 3 requests per client at once, then 429; 100 in flight, then 503.
service = RateLimitMiddleware(
    LoadSheddingMiddleware(hello, max_concurrency=100, max_queue=50), rate=1.0, burst=3
)


def with_metrics(app: Any, metrics: Any) -> Any:
    """Route /metrics to `metrics`, everything else to `app` (any framework can mount it)."""

    async def router(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await app(scope, receive, send)

    return router


async def get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        return await client.get(path)


async def main() -> None:
    # 1. The usual way: register the collector, serve the registry with prometheus_client.
    registry = CollectorRegistry()
    collector = ResilioCollector(registry)
    for p in pipelines:
        collector.add(p)
    collector.add(service, name="inbound")  # both middleware, as strategies of "inbound"
    app = with_metrics(service, prometheus_client.make_asgi_app(registry))
    print([(await get(app, "/")).status_code for _ in range(4)])  # the 4th is refused
    text = (await get(app, "/metrics")).text
    print(sum(line.startswith("resilio_") for line in text.splitlines()), "resilio series")
    for line in text.splitlines():
        if 'pipeline="inbound"' in line and "_total" in line:
            print(line)

    # 2. The fast path for many pipelines: an unregistered collector renders its own
    #    text (every line laid out once), served after the registry's other metrics.
    fast = ResilioCollector(register=False)
    for p in pipelines:
        fast.add(p)
    fast.add(service, name="inbound")
    text = (
        await get(with_metrics(service, metrics_app(fast, CollectorRegistry())), "/metrics")
    ).text
    print(sum(line.startswith("resilio_") for line in text.splitlines()), "resilio series")


if __name__ == "__main__":
    anyio.run(main)
