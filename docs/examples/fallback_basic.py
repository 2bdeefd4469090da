import anyio

from resilio import BrokenCircuitError, Fallback, Pipeline


async def cached(outcome: BaseException | object) -> str:
    return f"cached ({type(outcome).__name__})"


pipeline = Pipeline(Fallback(handler=cached, handle=(ConnectionError, BrokenCircuitError)))


async def down() -> str:
    raise ConnectionError("upstream down")


async def main() -> None:
    print(await pipeline.execute(down))


if __name__ == "__main__":
    anyio.run(main)
