"""One config drives the inbound ASGI middleware and the outbound httpx transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx

import resilio.config
from resilio.integrations.httpx import client as resilient_client

cfg = resilio.config.load(Path(__file__).parent / "config_example.toml")


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


# Inbound: rate limit -> deadline -> load shedding -> app, as the [asgi] section says.
service = resilio.config.wrap_asgi(app, cfg)

# Outbound: the [httpx] section gives the transport's options. The upstream here is
# a stand-in that fails twice with 503 before answering.
answers = iter([503, 503, 200])
upstream = httpx.MockTransport(lambda request: httpx.Response(next(answers)))


async def main() -> None:
    inbound = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service), base_url="http://service"
    )
    async with inbound:
        r = await inbound.get("/", headers={"x-api-key": "alice"})
        print("inbound:", r.status_code, r.headers["ratelimit-policy"])

    options = resilio.config.transport_options(cfg)
    print("transport options:", sorted(options))
    async with resilient_client(transport=upstream, **options) as outbound:
        r = await outbound.get("http://payments.internal/health")
        print("outbound:", r.status_code, "after the configured retries")


if __name__ == "__main__":
    anyio.run(main)
