"""From one config file: a pipeline, the ASGI middleware and an httpx client.

The service is served by uvicorn on a free port of 127.0.0.1, and the client built
from the same file calls it.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import uvicorn

import resilio.config
import resilio.integrations.httpx

HERE = Path(__file__).parent


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


cfg = resilio.config.load(HERE / "config_example.toml")  # or .json, .yaml, .yml
payments = resilio.config.build_pipeline(cfg, "payments")  # a resilio.Pipeline
service = resilio.config.wrap_asgi(app, cfg)  # the app inside the [asgi] middleware
client = resilio.integrations.httpx.client(**resilio.config.transport_options(cfg))


async def charge(amount: int) -> str:
    return f"charged {amount}"


async def main() -> None:
    assert await payments.execute(charge, 42) == "charged 42"
    print("payments:", [s.label for s in payments.strategies])

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(service, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        async with client:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
            r = await client.get(url, headers={"x-api-key": "alice"})
            print("service:", r.status_code, r.text, "|", r.headers["ratelimit-policy"])
            assert r.status_code == 200 and r.text == "hello"
    finally:
        server.should_exit = True
        await serving
        sock.close()


if __name__ == "__main__":
    asyncio.run(main())
