"""Isolate a circuit by hand (e.g. during maintenance) and reset it afterwards."""

from __future__ import annotations

import anyio

from resilio import CircuitBreaker, IsolatedCircuitError, Pipeline

breaker = CircuitBreaker(
    name="payments",
    on_opened=lambda b: print(f"{b.label}: {b.state.name}"),
    on_closed=lambda b: print(f"{b.label}: {b.state.name}"),
)


@Pipeline(breaker)
async def charge(cents: int) -> str:
    return f"charged {cents}"


async def main() -> None:
    breaker.isolate()  # prints "payments: ISOLATED"
    try:
        await charge(100)
    except IsolatedCircuitError as e:
        print(f"{e.strategy} refused: {e} (retry_after={e.retry_after})")
    breaker.reset()  # prints "payments: CLOSED"
    print(await charge(100))


if __name__ == "__main__":
    anyio.run(main)
