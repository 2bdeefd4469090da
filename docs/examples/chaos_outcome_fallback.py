"""Substitute a bad result for some calls and check the fallback handles it."""

from __future__ import annotations

import anyio

from resilio import Fallback, Pipeline
from resilio.strategies.chaos import OutcomeInjection


async def price(item: str) -> dict[str, object]:
    return {"item": item, "price": 42, "status": 200}


def unavailable() -> dict[str, object]:
    # A new dict per injected call: callers may mutate what they get.
    return {"status": 503}


async def main() -> None:
    chaos = OutcomeInjection(0.25, factory=unavailable, seed=3)
    cached: dict[str, object] = {"item": "cached", "price": 40, "status": 200}
    pipeline = Pipeline(
        Fallback(value=cached, handle_result=lambda r: r["status"] != 200),
        chaos,
    )
    answers = [await pipeline.execute(price, f"item-{i}") for i in range(40)]
    from_cache = sum(a is cached for a in answers)
    print(f"40 calls, {chaos.injected} answered 503 by chaos, {from_cache} served from cache")
    assert from_cache == chaos.injected
    assert all(a["status"] == 200 for a in answers)


if __name__ == "__main__":
    anyio.run(main)
