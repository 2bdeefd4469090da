"""One rate limit and one circuit breaker for all the worker processes of a host.

Each worker builds its strategies as usual, with `backend="shm:/dev/shm/..."` and a
name: the bucket and the circuit then live in that shared-memory file, and every
worker decides on the same ones (a pre-fork server's workers; here 4 processes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os

import anyio

from resilio import BrokenCircuitError, CircuitBreaker, Pipeline, RateLimitedError, RateLimiter
from resilio.backends.shm import shared_state

BACKEND = f"shm:/dev/shm/resilio-example-{os.getpid()}"


def limiter(backend: str) -> RateLimiter:
    # rate 0.01/s: nothing refills while the example runs, so the totals are exact.
    return RateLimiter(rate=0.01, burst=10, name="payments-api", backend=backend)


def breaker(backend: str) -> CircuitBreaker:
    return CircuitBreaker(
        failure_ratio=0.5, minimum_throughput=4, break_duration=30.0,
        name="payments-api", backend=backend,
    )  # fmt: skip


def spend(backend: str, calls: int) -> str:
    """A worker: `calls` calls through the shared limiter."""
    pipeline = Pipeline(limiter(backend))

    async def call() -> str:
        return "ok"

    async def main() -> str:
        ok = refused = 0
        for _ in range(calls):
            try:
                await pipeline.execute(call)
                ok += 1
            except RateLimitedError:
                refused += 1
        return f"worker {os.getpid()}: {ok} ok, {refused} rate limited"

    return anyio.run(main)


def fail(backend: str, calls: int) -> str:
    """A worker whose dependency is down: `calls` failing calls through the breaker."""
    cb = breaker(backend)
    pipeline = Pipeline(cb)

    async def call() -> str:
        raise ConnectionError("payments is down")

    async def main() -> str:
        for _ in range(calls):
            with contextlib.suppress(ConnectionError):
                await pipeline.execute(call)
        return f"worker {os.getpid()}: {calls} failures, breaker {cb.state.name}"

    return anyio.run(main)


def probe(backend: str) -> str:
    """A worker started afterwards: its first call meets the open circuit."""

    async def call() -> str:
        return "ok"

    async def main() -> str:
        try:
            return await Pipeline(breaker(backend)).execute(call)
        except BrokenCircuitError as exc:
            return f"worker {os.getpid()}: refused, retry after {exc.retry_after:.0f} s"

    return anyio.run(main)


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    try:
        # 4 workers x 5 calls against one burst of 10: 10 calls run and 10 are
        # refused, however the workers interleave.
        with ctx.Pool(4) as pool:
            for line in pool.starmap(spend, [(BACKEND, 5)] * 4):
                print(line)
        shared = limiter(BACKEND)
        print(f"all workers: {shared.admitted} admitted, {shared.rejected} refused")

        # One worker's failures open the breaker; every other process sees it open.
        with ctx.Pool(1) as pool:
            print(pool.apply(fail, (BACKEND, 4)))
        with ctx.Pool(1) as pool:
            print(pool.apply(probe, (BACKEND,)))
        print("breaker in the main process:", breaker(BACKEND).state.name)
    finally:
        shared_state(BACKEND.removeprefix("shm:")).unlink()


if __name__ == "__main__":
    main()
