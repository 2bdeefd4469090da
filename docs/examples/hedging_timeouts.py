"""Hedging with a total timeout outside it and a timeout per attempt inside it."""

from dataclasses import dataclass

import anyio

from resilio import Hedging, Pipeline, Timeout

hedging = Hedging(
    delay=0.05,
    max_attempts=3,
    handle=(ConnectionError, TimeoutError),  # a TimeoutRejectedError is a TimeoutError
    handle_result=lambda r: r.status >= 500,  # a 5xx answer does not win the race
)
pipeline = Pipeline(
    Timeout(2.0, name="total"),  # bounds the whole race
    hedging,
    Timeout(0.2, name="attempt"),  # each attempt has its own 200 ms
)


@dataclass
class Response:
    status: int
    body: str


attempts: list[str] = []


async def get(path: str) -> Response:
    n = len(attempts) + 1
    if n == 1:
        attempts.append("503 at once")  # rejected: the next attempt starts at once
        return Response(503, "busy")
    if n == 2:
        attempts.append("hangs")  # the attempt timeout will stop it; a hedge starts first
        await anyio.sleep(10)
    attempts.append("200")
    return Response(200, f"{path}: ok")


async def main() -> None:
    response = await pipeline.execute(get, "/orders")
    print(response, attempts, "| hedges started:", hedging.hedges)
    assert response == Response(200, "/orders: ok")
    assert attempts == ["503 at once", "hangs", "200"] and hedging.hedges == 2


if __name__ == "__main__":
    anyio.run(main)
