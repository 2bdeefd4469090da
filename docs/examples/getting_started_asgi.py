"""FastAPI with resilio's ASGI middleware: a rate limit per API key, a deadline, load shedding."""

import anyio
import httpx
from fastapi import FastAPI

import resilio
from resilio.integrations.asgi import (
    DeadlineMiddleware,
    LoadSheddingMiddleware,
    RateLimitMiddleware,
)

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, float | int | None]:
    return {"id": item_id, "seconds_left": resilio.deadline()}


# The middleware added last runs first: refuse over-limit clients before anything else.
app.add_middleware(LoadSheddingMiddleware, max_concurrency=100, max_queue=50)
app.add_middleware(DeadlineMiddleware, timeout=10.0)
app.add_middleware(RateLimitMiddleware, rate=1.0, burst=3, key="header:x-api-key")


async def main() -> None:
    # httpx drives the app in-process here; under uvicorn it is the same app.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        statuses = []
        for _ in range(4):
            r = await client.get("/items/42", headers={"x-api-key": "alice"})
            statuses.append(r.status_code)
        print("alice:", statuses, "| retry after", r.headers["retry-after"], "s")
        assert statuses == [200, 200, 200, 429]

        r = await client.get("/items/42", headers={"x-api-key": "bob"})
        print("bob:", r.status_code, r.json(), "|", r.headers["ratelimit"])
        assert r.status_code == 200 and 0 < r.json()["seconds_left"] <= 10


if __name__ == "__main__":
    anyio.run(main)
