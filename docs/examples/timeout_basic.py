"""A total timeout outside, an attempt timeout inside, and the deadline the callee sees."""

import anyio

import resilio
from resilio import Pipeline, Timeout, TimeoutRejectedError

pipeline = Pipeline(Timeout(1.0, name="total"), Timeout(0.05, name="attempt"))


async def slow() -> None:
    await anyio.sleep(10)


async def quick() -> float | None:
    return resilio.deadline()


async def main() -> None:
    left = await pipeline.execute(quick)  # the nearer of the two deadlines
    assert left is not None and left <= 0.05
    try:
        await pipeline.execute(slow)
        raise AssertionError("slow() ran to the end")
    except TimeoutRejectedError as exc:
        print("gave up:", exc, "| strategy:", exc.strategy)
        assert exc.strategy == "attempt" and isinstance(exc, TimeoutError)


if __name__ == "__main__":
    anyio.run(main)
