"""Hedging: the first accepted outcome wins; losers are cancelled and awaited."""

from __future__ import annotations

from types import ModuleType

import anyio
import pytest

from resilio import Pipeline
from resilio.strategies.hedging import Hedging

pytestmark = pytest.mark.anyio


async def test_fast_primary_wins_without_hedge(core: ModuleType, anyio_backend: str) -> None:
    calls = 0

    async def f() -> str:
        nonlocal calls
        calls += 1
        return "primary"

    h = Hedging(delay=1.0, max_attempts=3)
    assert await Pipeline(h).execute(f) == "primary"
    assert calls == 1 and h.hedges == 0


async def test_slow_primary_is_hedged_and_cancelled(core: ModuleType, anyio_backend: str) -> None:
    log: list[str] = []
    n = 0

    async def f() -> str:
        nonlocal n
        n += 1
        me = n
        try:
            await anyio.sleep(5 if me == 1 else 0.001)
        except BaseException:
            log.append(f"cancelled {me}")
            raise
        log.append(f"done {me}")
        return f"attempt {me}"

    h = Hedging(delay=0.01, max_attempts=2)
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == "attempt 2"
    # The loser was cancelled and had unwound before the call returned.
    assert log == ["done 2", "cancelled 1"]
    assert h.hedges == 1


async def test_failure_starts_next_attempt_at_once(core: ModuleType, anyio_backend: str) -> None:
    n = 0

    async def f() -> int:
        nonlocal n
        n += 1
        if n == 1:
            raise ConnectionError("first fails")
        return n

    with anyio.fail_after(1):
        # A 10 s delay would time out the test if the failure did not kick the hedge.
        assert await Pipeline(Hedging(delay=10.0, max_attempts=2)).execute(f) == 2


async def test_all_fail_last_failure_propagates(core: ModuleType, anyio_backend: str) -> None:
    errors = [ConnectionError(str(i)) for i in range(3)]
    n = 0

    async def f() -> None:
        nonlocal n
        n += 1
        raise errors[n - 1]

    with pytest.raises(ConnectionError) as info:
        await Pipeline(Hedging(delay=0.001, max_attempts=3)).execute(f)
    assert info.value is errors[2]
    assert n == 3


async def test_unhandled_error_ends_race(core: ModuleType, anyio_backend: str) -> None:
    err = KeyError("bad")

    async def f() -> None:
        raise err

    with pytest.raises(KeyError) as info:
        await Pipeline(Hedging(delay=0.001, max_attempts=3, handle=OSError)).execute(f)
    assert info.value is err


async def test_handle_result_rejects_answer(core: ModuleType, anyio_backend: str) -> None:
    n = 0

    async def f() -> int:
        nonlocal n
        n += 1
        return 503 if n == 1 else 200

    h = Hedging(delay=5.0, max_attempts=2, handle_result=lambda r: r >= 500)
    with anyio.fail_after(1):
        assert await Pipeline(h).execute(f) == 200


async def test_caller_cancel_cancels_every_attempt(core: ModuleType, anyio_backend: str) -> None:
    running = 0
    finished = 0

    async def f() -> None:
        nonlocal running, finished
        running += 1
        try:
            await anyio.sleep(5)
        finally:
            finished += 1

    with anyio.move_on_after(0.05) as scope:
        await Pipeline(Hedging(delay=0.005, max_attempts=3)).execute(f)
    assert scope.cancelled_caught
    assert running == 3 and finished == 3


@pytest.mark.parametrize(("delay", "attempts"), [(-1, 2), (float("nan"), 2), (0.1, 0), (0.1, 17)])
def test_bad_options(delay: float, attempts: int) -> None:
    with pytest.raises(ValueError):
        Hedging(delay=delay, max_attempts=attempts)
