"""`standard_pipeline`: the usual five layers for an HTTP dependency, each replaceable."""

import anyio

import resilio
from resilio import Backoff, Retry

payments = resilio.standard_pipeline("payments")
search = resilio.standard_pipeline(
    "search",
    retry=Retry(2, backoff=Backoff.constant(0.05)),  # replace a layer...
    rate_limiter=None,  # ...or drop it
)


async def query(text: str) -> list[str]:
    return [f"{text} result"]


async def main() -> None:
    print("payments:", [s.label for s in payments.strategies])
    print("search:  ", [s.label for s in search.strategies])
    assert [s.label for s in payments.strategies] == [
        "rate_limiter",
        "total_timeout",
        "retry",
        "circuit_breaker",
        "attempt_timeout",
    ]
    assert await search.execute(query, "bolts") == ["bolts result"]


if __name__ == "__main__":
    anyio.run(main)
