"""Retry on bad results too, under a retry budget shared by two retries (virtual time)."""

from __future__ import annotations

import anyio

from resilio import Pipeline
from resilio.strategies.retry import Backoff, Retry, RetryBudget
from resilio.testing import FakeClock

clock = FakeClock()  # virtual time: the backoff sleeps are exact and instant
budget = RetryBudget(ratio=0.2, min_per_second=0.1, window=10.0)  # floor: 1 retry per 10 s


def is_server_error(status: int) -> bool:
    return status >= 500


users = Pipeline(
    Retry(
        attempts=4,
        backoff=Backoff.linear(0.5),
        handle_result=is_server_error,
        budget=budget,
    ),
    clock=clock,
)
orders = Pipeline(Retry(attempts=4, backoff=Backoff.constant(1.0), budget=budget), clock=clock)


async def main() -> None:
    statuses = iter([503, 502, 200])

    async def get_user() -> int:
        return next(statuses)

    # Only one retry fits the budget so far (1 call: 0.2 * 1 + 1 floor = 1.2): the
    # retry gets 502, the budget refuses a second one, and the last result is returned.
    print("user status:", await users.execute(get_user))
    print("slept:", clock.sleeps)

    async def place_order() -> str:
        raise ConnectionError("orders down")

    try:
        await orders.execute(place_order)  # the shared budget is spent: no retry at all
    except ConnectionError as e:
        print("order failed at once:", e)
    print("calls, retries in the window:", budget.calls_and_retries(clock.now_ns()))


if __name__ == "__main__":
    anyio.run(main)
