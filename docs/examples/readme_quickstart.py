import anyio

import resilio
from resilio import Backoff, CircuitBreaker, Pipeline, RateLimiter, Retry, Timeout

pipeline = Pipeline(
    RateLimiter(rate=100.0, burst=100),  # token bucket, per second
    Timeout(30.0),  # total
    Retry(
        attempts=3,
        backoff=Backoff.exponential(0.2, max_delay=10.0, jitter=True),
        handle=(ConnectionError, TimeoutError),
    ),
    CircuitBreaker(failure_ratio=0.5, minimum_throughput=20, break_duration=5.0),
    Timeout(2.0),  # per attempt
    name="payments",
)


@pipeline
async def charge(amount: int) -> str:
    left = resilio.deadline()  # time left: the 2 s timeout
    return f"charged {amount}, {left:.1f} s to spare"  # your outbound call here


async def main() -> None:
    print(await charge(42))


if __name__ == "__main__":
    anyio.run(main)
