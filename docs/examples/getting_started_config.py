"""Pipelines and middleware from a config file; what to retry stays in code."""

from pathlib import Path
from typing import Any

import anyio
import httpx

import resilio.config


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


cfg = resilio.config.load(Path(__file__).parent / "getting_started.toml")
inventory = resilio.config.build_pipeline(
    cfg, "inventory", extra={"retry": {"handle": (ConnectionError, TimeoutError)}}
)
service = resilio.config.wrap_asgi(app, cfg)  # app inside the [asgi] middleware

resets = 1


async def stock(item: str) -> int:
    global resets
    if resets:
        resets -= 1
        raise ConnectionResetError("connection reset by peer")
    return 7


async def main() -> None:
    resilio.config.check(cfg)  # what `resilio check FILE` runs: builds everything
    print([s.label for s in inventory.strategies])
    assert await inventory.execute(stock, "bolts") == 7  # the retry absorbed a reset

    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        r = await client.get("/", headers={"x-api-key": "alice"})
        print(r.status_code, r.text, "|", r.headers["ratelimit-policy"])
        assert r.headers["ratelimit-policy"] == '"default";q=100;w=2'  # burst 100, 2 s to refill


if __name__ == "__main__":
    anyio.run(main)
