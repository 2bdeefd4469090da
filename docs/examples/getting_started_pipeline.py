"""A first pipeline: retries around a per-attempt timeout, as a decorator and with execute()."""

import anyio

from resilio import Backoff, Pipeline, Retry, Timeout, TimeoutRejectedError

pipeline = Pipeline(
    Retry(attempts=3, backoff=Backoff.exponential(0.01), handle=(ConnectionError, TimeoutError)),
    Timeout(0.1),  # each attempt; a TimeoutRejectedError is a TimeoutError, so it is retried
    name="inventory",
)

resets = 2


@pipeline
async def stock(item: str) -> int:
    global resets
    if resets:
        resets -= 1
        raise ConnectionResetError("connection reset by peer")
    return 42


async def hangs(item: str) -> int:
    await anyio.sleep(3600)
    return 0


async def main() -> None:
    answer = await stock("apples")  # two resets, then an answer
    print("apples:", answer)
    assert answer == 42 and resets == 0

    try:
        await pipeline.execute(hangs, "pears")  # any async function, the same pipeline
        raise AssertionError("pears answered")
    except TimeoutRejectedError as exc:
        print("pears: gave up after 3 attempts:", exc)


if __name__ == "__main__":
    anyio.run(main)
