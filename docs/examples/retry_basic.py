"""Retry a flaky call: exponential backoff with jitter, a hook, and the error that wins."""

from __future__ import annotations

from typing import Any

import anyio

from resilio import Pipeline
from resilio.strategies.retry import Backoff, Retry

failures_left = 2


async def fetch(url: str) -> str:
    global failures_left
    if failures_left:
        failures_left -= 1
        raise ConnectionError(f"{url}: connection reset")
    return f"200 OK from {url}"


def log_retry(attempt: int, outcome: Any, delay: float) -> None:
    print(f"attempt {attempt} failed ({outcome!r}); retrying in {delay * 1000:.1f} ms")


pipeline = Pipeline(
    Retry(
        attempts=3,
        backoff=Backoff.exponential(0.01, max_delay=0.1, jitter=True),
        handle=(ConnectionError, TimeoutError),
        on_retry=log_retry,
    ),
    name="example",
)


async def main() -> None:
    print(await pipeline.execute(fetch, "https://example.invalid/"))

    async def always_down() -> str:
        raise ConnectionError("still down")

    try:
        await pipeline.execute(always_down)
    except ConnectionError as e:  # the callee's own error object, after 3 attempts
        print(f"gave up: {e!r}")


if __name__ == "__main__":
    anyio.run(main)
