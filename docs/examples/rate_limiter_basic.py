"""A rate limiter admits a burst, then refuses with the time until the next token.

Runs on a FakeClock so the refill takes no real time.
"""

from __future__ import annotations

import anyio

from resilio import Pipeline, RateLimitedError, RateLimiter
from resilio.testing import FakeClock

clock = FakeClock()
limiter = RateLimiter(rate=10.0, burst=3)  # 10 calls/s on average, at most 3 at once
pipeline = Pipeline(limiter, clock=clock)


@pipeline
async def send(message: str) -> str:
    return f"sent {message}"


async def main() -> None:
    for i in range(3):
        print(await send(f"#{i}"))  # the bucket starts full: 3 calls pass at once

    try:
        await send("#3")
    except RateLimitedError as e:
        print(f"refused by {e.strategy}; retry after {e.retry_after:.3f} s")  # 0.100 s
        await clock.sleep(e.retry_after or 0.0)

    print(await send("#3"))  # one token has come back
    print("tokens left:", limiter.available())  # 0
    print("admitted:", limiter.admitted, "rejected:", limiter.rejected)  # 4, 1


if __name__ == "__main__":
    anyio.run(main)
