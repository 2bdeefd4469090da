"""Serve /metrics next to an ASGI app: prometheus_client's app, or resilio's faster one."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import prometheus_client
from prometheus_client import CollectorRegistry

import resilio
from resilio.integrations.prometheus import ResilioCollector, metrics_app

pipelines = [resilio.standard_pipeline(f"upstream_{i}") for i in range(3)]


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def with_metrics(app: Any, metrics: Any) -> Any:
    """Route /metrics to `metrics`, everything else to `app` (any framework can mount it)."""

    async def router(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await app(scope, receive, send)

    return router


async def fetch_metrics(app: Any) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        return (await client.get("/metrics")).text


async def main() -> None:
    # 1. The usual way: register the collector, serve the registry with prometheus_client.
    registry = CollectorRegistry()
    collector = ResilioCollector(registry)
    for p in pipelines:
        collector.add(p)
    text = await fetch_metrics(with_metrics(hello, prometheus_client.make_asgi_app(registry)))
    print(sum(line.startswith("resilio_") for line in text.splitlines()), "resilio series")

    # 2. Thousands of pipelines: an unregistered collector renders its own text (label
    #    sets formatted once, at add()), served after the registry's other metrics.
    fast = ResilioCollector(register=False)
    for p in pipelines:
        fast.add(p)
    text = await fetch_metrics(with_metrics(hello, metrics_app(fast, CollectorRegistry())))
    print(sum(line.startswith("resilio_") for line in text.splitlines()), "resilio series")


if __name__ == "__main__":
    anyio.run(main)
