"""Fallback outermost: it answers what the retries and the circuit breaker could not."""

import anyio

from resilio import Backoff, CircuitBreaker, CircuitState, Fallback, Pipeline, Retry

fallback = Fallback(value="cached")
breaker = CircuitBreaker()  # opens at 50 % failures over at least 20 attempts
pipeline = Pipeline(fallback, Retry(3, backoff=Backoff.constant(0.001, max_delay=1.0)), breaker)

attempts = 0


async def price() -> str:
    global attempts
    attempts += 1
    raise ConnectionError("pricing service is down")


async def main() -> None:
    # Each call fails 3 times, then the fallback answers it; the 20th failure opens
    # the breaker, which refuses the 21st attempt without calling the service.
    answers = [await pipeline.execute(price) for _ in range(7)]
    assert answers == ["cached"] * 7
    assert attempts == 20 and breaker.state == CircuitState.OPEN
    # Open circuit: refused at once; the retry does not wait out a 5 s break that is
    # longer than its max_delay, so the fallback answers straight away.
    assert await pipeline.execute(price) == "cached" and attempts == 20
    print(f"{fallback.fallbacks} calls answered from the cache, {attempts} attempts made")


if __name__ == "__main__":
    anyio.run(main)
