"""An httpx client whose GETs survive a flaky dependency: 503, 503, then 200."""

import anyio
import httpx

from resilio import Backoff, Retry
from resilio.integrations.httpx import TRANSIENT_ERRORS, client

calls = 0


def flaky(request: httpx.Request) -> httpx.Response:
    """Stands in for a real server: fails twice, then answers."""
    global calls
    calls += 1
    if calls <= 2:
        return httpx.Response(503, text="busy")
    return httpx.Response(200, json={"id": 42})


async def main() -> None:
    global calls
    async with client(
        base_url="http://inventory.internal",
        transport=httpx.MockTransport(flaky),  # omit it to use httpx.AsyncHTTPTransport()
        retry=Retry(3, backoff=Backoff.exponential(0.05, max_delay=2.0), handle=TRANSIENT_ERRORS),
        attempt_timeout=2.0,
        total_timeout=10.0,
    ) as http:
        response = await http.get("/items/42")
        print(response.status_code, response.json(), f"after {calls} attempts")
        assert response.status_code == 200 and calls == 3

        # POST is not idempotent: it is sent once, and the caller sees the 503.
        calls = 0
        response = await http.post("/items", json={"name": "bolt"})
        print(response.status_code, response.text)
        assert response.status_code == 503 and calls == 1


if __name__ == "__main__":
    anyio.run(main)
