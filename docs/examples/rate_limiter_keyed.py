"""A limit per client: `key` picks each call's bucket from the call's arguments.

Runs on a FakeClock so the refill takes no real time.
"""

from __future__ import annotations

import anyio

from resilio import Pipeline, RateLimitedError, RateLimiter
from resilio.testing import FakeClock

clock = FakeClock()
per_user = RateLimiter(
    rate=1.0,  # one request per second per user...
    burst=2,  # ...with bursts of 2
    key=lambda user_id, path: user_id,  # receives the call's (*args, **kwargs)
    max_keys=100_000,  # users tracked at most (memory is fixed at construction)
)
pipeline = Pipeline(per_user, clock=clock)


@pipeline
async def handle(user_id: str, path: str) -> str:
    return f"200 {path} for {user_id}"


async def main() -> None:
    print(await handle("alice", "/a"))
    print(await handle("alice", "/b"))
    try:
        await handle("alice", "/c")  # alice has used her burst...
    except RateLimitedError as e:
        print(f"alice: 429, retry after {e.retry_after:.1f} s")  # 1.0 s
    print(await handle("bob", "/a"))  # ...which does not touch bob's
    print("tokens: alice", per_user.available("alice"), "bob", per_user.available("bob"))


if __name__ == "__main__":
    anyio.run(main)
