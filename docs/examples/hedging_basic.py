"""Hedging: when a replica is slow, ask another; the first answer wins."""

import anyio

from resilio import Hedging, Pipeline

hedging = Hedging(delay=0.02, max_attempts=3)
pipeline = Pipeline(hedging)

asked: list[int] = []


async def fetch(key: str) -> str:
    replica = len(asked) + 1
    asked.append(replica)
    # Replica 1 hangs; replica 2, asked 20 ms later, answers at once.
    await anyio.sleep(10 if replica == 1 else 0.001)
    return f"{key} from replica {replica}"


async def main() -> None:
    with anyio.fail_after(5):
        answer = await pipeline.execute(fetch, "user:42")
    # Replica 1 was cancelled (and had unwound) before the answer came back.
    print(answer, "| hedges started:", hedging.hedges)
    assert answer == "user:42 from replica 2" and hedging.hedges == 1

    # A fast answer starts no hedge at all (on asyncio: not even a task).
    asked[:] = [0]
    assert await pipeline.execute(fetch, "user:7") == "user:7 from replica 2"
    assert hedging.hedges == 1


if __name__ == "__main__":
    anyio.run(main)
