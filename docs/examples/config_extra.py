"""Code-only options: a predicate, a hook and a key function, passed in `extra`."""

from __future__ import annotations

from typing import Any

import anyio

import resilio.config
from resilio import RateLimitedError
from resilio.testing import FakeClock

cfg = resilio.config.loads(
    """
    [[pipelines.payments.strategies]]
    rate_limiter = { rate = 1, burst = 2, name = "per_user" }

    [[pipelines.payments.strategies]]
    retry = { attempts = 3, backoff = { kind = "constant", delay = "1s", jitter = false } }
    """,
    "toml",
    source="payments.toml",
)
retried: list[int] = []


def log_retry(attempt: int, outcome: Any, delay: float) -> None:
    retried.append(attempt)
    print(f"attempt {attempt} failed ({outcome!r}); retrying in {delay:g} s")


clock = FakeClock()
payments = resilio.config.build_pipeline(
    cfg,
    "payments",
    extra={
        "retry": {"handle": (ConnectionError, TimeoutError), "on_retry": log_retry},
        "per_user": {"key": lambda user_id, *a, **kw: user_id},  # a rate_limiter named per_user
    },
    clock=clock,  # virtual time here; leave it out (None) to run on the system clock
)

resets = 1


async def charge(user_id: str, amount: int) -> str:
    global resets
    if resets:
        resets -= 1
        raise ConnectionResetError("connection reset")
    return f"charged {user_id} {amount}"


async def main() -> None:
    # The retry handles the reset (a ConnectionError) and calls the hook first.
    assert await payments.execute(charge, "alice", 10) == "charged alice 10"
    assert retried == [1] and clock.sleeps == [1.0]

    # The key function gives every user a bucket of their own: bob has 2 calls now.
    await payments.execute(charge, "bob", 1)
    await payments.execute(charge, "bob", 2)
    try:
        await payments.execute(charge, "bob", 3)
        raise AssertionError("bob was not limited")
    except RateLimitedError as exc:
        print(f"bob: rate limited, retry after {exc.retry_after:g} s")
    assert await payments.execute(charge, "carol", 4) == "charged carol 4"


if __name__ == "__main__":
    anyio.run(main)
