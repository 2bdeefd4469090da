"""The caller's remaining time travels with every attempt as `Request-Timeout`."""

import anyio
import httpx

from resilio import Pipeline, Timeout
from resilio.integrations.httpx import client


def echo_deadline(request: httpx.Request) -> httpx.Response:
    """A server that reports the deadline it was given."""
    return httpx.Response(200, json={"request-timeout": request.headers.get("Request-Timeout")})


async def main() -> None:
    async with client(transport=httpx.MockTransport(echo_deadline), attempt_timeout=5.0) as http:
        # Each attempt has 5 s: the server is told so.
        r = await http.get("http://search.internal/")
        print("attempt timeout only:", r.json())

        # Inside a shorter deadline (here a Timeout; in a server, DeadlineMiddleware),
        # the smaller remaining time is what the next hop sees.
        handler_budget = Pipeline(Timeout(0.8))
        r = await handler_budget.execute(http.get, "http://search.internal/")
        print("inside a 0.8 s deadline:", r.json())
        assert float(r.json()["request-timeout"]) <= 0.8


if __name__ == "__main__":
    anyio.run(main)
