"""With max_wait, calls wait their turn for tokens instead of failing: smoothing.

Five calls arrive at once at a limiter of 20/s with no burst to spare; each
waits its turn (first come, first served), 50 ms apart, in real time.
"""

from __future__ import annotations

import time

import anyio

from resilio import Pipeline, RateLimitedError, RateLimiter


async def main() -> None:
    start = time.monotonic()
    smooth = Pipeline(RateLimiter(rate=20.0, burst=1, max_wait=0.5))

    async def call(i: int) -> None:
        print(f"call {i} ran at {time.monotonic() - start:.2f} s")

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(smooth.execute, call, i)  # about 0.00, 0.05, 0.10, 0.15, 0.20 s

    # A call whose tokens are not due within max_wait is refused at once.
    strict = Pipeline(RateLimiter(rate=20.0, burst=1, max_wait=0.1))
    outcomes: list[str] = []

    async def try_call(i: int) -> None:
        try:
            await strict.execute(call, i)
            outcomes.append("ran")
        except RateLimitedError as e:
            outcomes.append(f"refused (retry after {e.retry_after:.2f} s)")

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(try_call, i)  # waits 0, 0.05, 0.10 s; the 4th would wait 0.15 s
    print(sorted(outcomes))  # ['ran', 'ran', 'ran', 'refused (retry after 0.15 s)']


if __name__ == "__main__":
    anyio.run(main)
