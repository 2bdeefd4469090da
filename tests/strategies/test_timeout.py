"""Timeout: cancels late calls, raises TimeoutRejectedError, nests, exposes the deadline."""

from __future__ import annotations

import time
from types import ModuleType

import anyio
import pytest

import resilio
from resilio import Pipeline, TimeoutRejectedError
from resilio.strategies.timeout import Timeout, _fired

pytestmark = pytest.mark.anyio


async def test_returns_result_in_time(core: ModuleType, anyio_backend: str) -> None:
    async def f(x: int) -> int:
        await anyio.sleep(0)
        return x * 2

    assert await Pipeline(Timeout(1.0)).execute(f, 21) == 42


async def test_late_call_is_cancelled_and_awaited(core: ModuleType, anyio_backend: str) -> None:
    events: list[str] = []

    async def slow() -> None:
        try:
            await anyio.sleep(5)
        except BaseException:
            events.append("cancelled")
            raise
        finally:
            events.append("unwound")

    t = Timeout(0.02)
    start = time.monotonic()
    with pytest.raises(TimeoutRejectedError) as info:
        await Pipeline(t).execute(slow)
    elapsed = time.monotonic() - start
    # The callee has unwound before the error reaches us.
    assert events == ["cancelled", "unwound"]
    assert 0.02 <= elapsed < 0.5
    assert isinstance(info.value, TimeoutError)
    assert info.value.strategy == "timeout"
    assert t.timeouts == 1
    assert not _fired


async def test_never_fires_early(core: ModuleType, anyio_backend: str) -> None:
    t = Timeout(0.03)

    async def sleepy() -> float:
        start = time.monotonic()
        try:
            await anyio.sleep(1)
        finally:
            fired_after = time.monotonic() - start
            assert fired_after >= 0.03 - 1e-3  # loop clocks may round to the ms
        return 0.0

    with pytest.raises(TimeoutRejectedError):
        await Pipeline(t).execute(sleepy)


async def test_deadline_is_visible_inside(core: ModuleType, anyio_backend: str) -> None:
    async def read() -> float | None:
        return resilio.deadline()

    assert resilio.deadline() is None
    left = await Pipeline(Timeout(2.0)).execute(read)
    assert left is not None and 1.5 < left <= 2.0
    assert resilio.deadline() is None


async def test_inner_never_outlives_outer(core: ModuleType, anyio_backend: str) -> None:
    outer, inner = Timeout(0.03, name="outer"), Timeout(10.0, name="inner")

    async def read_then_hang() -> None:
        left = resilio.deadline()
        assert left is not None and left <= 0.03
        await anyio.sleep(5)

    start = time.monotonic()
    with pytest.raises(TimeoutRejectedError) as info:
        await Pipeline(outer, inner).execute(read_then_hang)
    assert time.monotonic() - start < 1.0
    assert info.value.strategy == "outer"
    assert outer.timeouts == 1 and inner.timeouts == 0


async def test_inner_timeout_fires_first(core: ModuleType, anyio_backend: str) -> None:
    outer, inner = Timeout(5.0, name="outer"), Timeout(0.02, name="inner")

    async def hang() -> None:
        await anyio.sleep(5)

    with pytest.raises(TimeoutRejectedError) as info:
        await Pipeline(outer, inner).execute(hang)
    assert info.value.strategy == "inner"


async def test_outside_cancel_is_not_a_timeout(core: ModuleType, anyio_backend: str) -> None:
    t = Timeout(5.0)

    async def hang() -> None:
        await anyio.sleep(5)

    with anyio.move_on_after(0.02) as scope:
        await Pipeline(t).execute(hang)
    assert scope.cancelled_caught
    assert t.timeouts == 0
    assert not _fired


async def test_errors_pass_through_unchanged(core: ModuleType, anyio_backend: str) -> None:
    err = ValueError("boom")

    async def bad() -> None:
        raise err

    with pytest.raises(ValueError) as info:
        await Pipeline(Timeout(1.0)).execute(bad)
    assert info.value is err
    assert resilio.deadline() is None


async def test_many_concurrent_timeouts(core: ModuleType, anyio_backend: str) -> None:
    # 2 s: room for 200 tasks to start and finish a sleep(0) on a loaded machine.
    t = Timeout(2.0)
    results: list[str] = []

    async def one(i: int) -> None:
        async def work() -> None:
            await anyio.sleep(0 if i % 2 else 60.0)

        try:
            await Pipeline(t).execute(work)
            results.append("ok")
        except TimeoutRejectedError:
            results.append("timeout")

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    assert results.count("ok") == 100 and results.count("timeout") == 100
    assert t.timeouts == 100
    assert not _fired


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_rejects_bad_seconds(bad: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        Timeout(bad)


def test_rejects_non_number() -> None:
    with pytest.raises(TypeError, match="seconds"):
        Timeout("1")  # type: ignore[arg-type]


async def test_fires_at_an_advisory_deadline(core: ModuleType, anyio_backend: str) -> None:
    # A deadline entered with push_deadline (as from an incoming header) has nothing
    # enforcing it: a longer Timeout inside must fire at it, not at its own time.
    t = Timeout(10.0)

    async def hang() -> None:
        await anyio.sleep(5)

    _, token = resilio.context.push_deadline(time.monotonic() + 0.03)
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutRejectedError):
            await Pipeline(t).execute(hang)
    finally:
        resilio.context.pop_deadline(token)
    assert 0.03 <= time.monotonic() - start < 1.0
    assert t.timeouts == 1
    assert not _fired


async def test_outer_owns_an_expiry_shared_with_a_clamped_inner(
    core: ModuleType, anyio_backend: str
) -> None:
    # The loop is blocked past both deadlines, so the wheel finds the outer's slot and
    # the clamped inner's slot expired in one pass: the outer must own the timeout.
    outer, inner = Timeout(0.02, name="outer"), Timeout(10.0, name="inner")

    async def block_then_hang() -> None:
        time.sleep(0.06)
        await anyio.sleep(5)

    with pytest.raises(TimeoutRejectedError) as info:
        await Pipeline(outer, inner).execute(block_then_hang)
    assert info.value.strategy == "outer"
    assert (outer.timeouts, inner.timeouts) == (1, 0)
    assert not _fired
