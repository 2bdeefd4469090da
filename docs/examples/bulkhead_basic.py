"""A bulkhead runs 2 calls at once, queues 2 more, and refuses the rest at once."""

from __future__ import annotations

import anyio

from resilio import Bulkhead, BulkheadFullError, Pipeline

bulkhead = Bulkhead(2, max_queue=2, queue_timeout=1.0)
pipeline = Pipeline(bulkhead)
order: list[str] = []


@pipeline
async def query(i: int) -> None:
    order.append(f"start {i}")
    await anyio.sleep(0.02)


async def call(i: int) -> None:
    try:
        await query(i)
    except BulkheadFullError as e:
        order.append(f"refused {i} ({e.strategy})")


async def main() -> None:
    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(call, i)
            await anyio.sleep(0)  # let each call arrive in turn
        await anyio.sleep(0.005)
        print("in flight:", bulkhead.in_flight, "queued:", bulkhead.queued)  # 2, 2
    print(*order, sep="\n")  # 0 and 1 start, 4 and 5 refused, then 2 and 3 in order
    print("admitted:", bulkhead.admitted, "rejected:", bulkhead.rejected)  # 4, 2


if __name__ == "__main__":
    anyio.run(main)
