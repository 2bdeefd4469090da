import anyio

import resilio
from resilio import RateLimiter, Retry
from resilio.testing import FakeClock

clock = FakeClock()
pipeline = resilio.standard_pipeline(
    "inventory", rate_limiter=RateLimiter(50.0, 10), retry=Retry(3), clock=clock
)
calls = 0


async def flaky() -> str:
    global calls
    calls += 1
    if calls < 3:
        raise ConnectionError("reset by peer")
    return "in stock"


async def main() -> None:
    print(await pipeline.execute(flaky), "after", calls, "attempts;", clock.sleeps)


if __name__ == "__main__":
    anyio.run(main)
