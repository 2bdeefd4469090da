"""The retry of the page's first example: which errors it retries, and how long it waits."""

import time

import anyio

from resilio import Pipeline
from resilio.strategies.retry import Backoff, Retry, RetryBudget

retry = Retry(
    attempts=3,
    backoff=Backoff.exponential(0.2, max_delay=10.0, jitter=True),
    handle=(ConnectionError, TimeoutError),
    budget=RetryBudget(ratio=0.2),
)
pipeline = Pipeline(retry)

outcomes = [ConnectionResetError("reset by peer"), TimeoutError("read timed out")]


async def fetch() -> str:
    if outcomes:
        raise outcomes.pop(0)
    return "200 OK"


async def bad_request() -> str:
    raise ValueError("400: not retried, it would fail the same way again")


async def main() -> None:
    start = time.monotonic()
    assert await pipeline.execute(fetch) == "200 OK"  # third attempt
    # With jitter the two delays vary from run to run; they stay under 0.3 s and 0.6 s.
    print(f"recovered after 2 retries, {time.monotonic() - start:.2f} s of backoff")
    assert retry.stats()["retries"] == 2

    try:
        await pipeline.execute(bad_request)
    except ValueError as exc:  # not in `handle`: raised on the first attempt
        print("not retried:", exc)
    assert retry.stats()["retries"] == 2


if __name__ == "__main__":
    anyio.run(main)
