"""An httpx client on resilio's transport: retries, a breaker per host, timeouts."""

import anyio
import httpx

import resilio.integrations.httpx
from resilio import Backoff, Retry
from resilio.integrations.httpx import TRANSIENT_ERRORS

answers = iter([503, 503, 200])


def inventory(request: httpx.Request) -> httpx.Response:
    """Stands in for the inventory service: busy twice, then it answers."""
    return httpx.Response(next(answers), json={"id": 42, "stock": 7})


async def main() -> None:
    async with resilio.integrations.httpx.client(
        base_url="http://inventory.internal",
        transport=httpx.MockTransport(inventory),  # leave it out to send over the network
        retry=Retry(4, backoff=Backoff.exponential(0.05), handle=TRANSIENT_ERRORS),
    ) as http:
        response = await http.get("/items/42")  # retried, breaker-guarded, time-bounded
        print(response.status_code, response.json())
        assert response.status_code == 200


if __name__ == "__main__":
    anyio.run(main)
