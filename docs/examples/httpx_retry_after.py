"""Retry-After: honoured when it fits, and the response itself when it does not."""

import time

import anyio
import httpx

from resilio import Backoff, Retry
from resilio.integrations.httpx import TRANSIENT_ERRORS, client

hint = "1"
calls = 0


def throttled(request: httpx.Request) -> httpx.Response:
    """Throttles the first request of each round with `Retry-After: <hint>`."""
    global calls
    calls += 1
    if calls == 1:
        return httpx.Response(429, headers={"Retry-After": hint})
    return httpx.Response(200, text="ok")


async def main() -> None:
    global calls, hint
    retry = Retry(3, backoff=Backoff.constant(0.01, max_delay=5.0), handle=TRANSIENT_ERRORS)
    async with client(transport=httpx.MockTransport(throttled), retry=retry) as http:
        start = time.monotonic()
        response = await http.get("http://api.example/report")
        waited = time.monotonic() - start
        print(response.status_code, f"after waiting {waited:.2f} s")  # 200 after ~1 s
        assert response.status_code == 200 and waited >= 1.0

        # A hint longer than max_delay (5 s): no retry, the caller gets the 429 at once.
        calls, hint = 0, "120"
        response = await http.get("http://api.example/report")
        print(response.status_code, "Retry-After:", response.headers["Retry-After"])
        assert response.status_code == 429 and calls == 1


if __name__ == "__main__":
    anyio.run(main)
