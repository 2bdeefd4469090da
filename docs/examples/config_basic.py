"""Load a config file, build a pipeline from it, and see what a bad file reports."""

from __future__ import annotations

from pathlib import Path

import anyio

import resilio.config
from resilio.config import ConfigError

HERE = Path(__file__).parent

cfg = resilio.config.load(HERE / "config_example.toml")  # .json, .yaml and .yml work too
payments = resilio.config.build_pipeline(
    cfg,
    "payments",
    # Callables are code, not config: keyed by the strategy's name (or its kind).
    extra={"retry": {"handle": (ConnectionError, TimeoutError)}},
)

failures_left = 1


async def charge(amount: int) -> str:
    global failures_left
    if failures_left:
        failures_left -= 1
        raise ConnectionError("connection reset")
    return f"charged {amount}"


async def main() -> None:
    print([s.label for s in payments.strategies])
    print(await payments.execute(charge, 42))  # the retry absorbs the first failure

    bad = """
    [[pipelines.payments.strategies]]
    retry = { attempts = 3, backoff = { delay = "soon" } }
    """
    try:
        resilio.config.loads(bad, "toml", source="payments.toml")
    except ConfigError as exc:
        print(exc)  # names the field's path and the bad value


if __name__ == "__main__":
    anyio.run(main)
