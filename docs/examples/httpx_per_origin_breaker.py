"""One circuit breaker per origin: a failing host does not block a healthy one."""

import anyio
import httpx

from resilio import BrokenCircuitError, CircuitBreaker, CircuitState
from resilio.integrations.httpx import TRANSIENT_ERRORS, ResilientTransport


def two_hosts(request: httpx.Request) -> httpx.Response:
    if request.url.host == "down.example":
        return httpx.Response(503)
    return httpx.Response(200, text="ok")


async def main() -> None:
    transport = ResilientTransport(
        transport=httpx.MockTransport(two_hosts),
        retry=None,  # keep the example short: one attempt per request
        breaker=lambda: CircuitBreaker(
            failure_ratio=0.5,
            minimum_throughput=4,
            break_duration=30.0,
            handle=TRANSIENT_ERRORS,
        ),
    )
    async with httpx.AsyncClient(transport=transport) as http:
        for _ in range(4):
            await http.get("http://down.example/")  # four 503s open its breaker
        try:
            await http.get("http://down.example/")
        except BrokenCircuitError as exc:
            print("down.example:", exc, f"(retry after {exc.retry_after:.0f} s)")

        response = await http.get("http://up.example/")
        print("up.example:", response.status_code)

        down = transport.circuit_breaker("http://down.example/")
        up = transport.circuit_breaker("http://up.example/")
        assert down is not None and down.state is CircuitState.OPEN
        assert up is not None and up.state is CircuitState.CLOSED


if __name__ == "__main__":
    anyio.run(main)
