"""Fallback: substitutes a value or a handler's answer for handled failures only."""

from __future__ import annotations

import asyncio
from types import ModuleType

import anyio
import pytest

from resilio import Pipeline
from resilio.strategies.fallback import Fallback

pytestmark = pytest.mark.anyio


async def boom() -> int:
    raise ConnectionError("down")


async def test_value_on_handled_error(core: ModuleType, anyio_backend: str) -> None:
    fb = Fallback(value=7, handle=ConnectionError)
    assert await Pipeline(fb).execute(boom) == 7
    assert fb.fallbacks == 1


async def test_none_is_a_value(core: ModuleType, anyio_backend: str) -> None:
    assert await Pipeline(Fallback(value=None)).execute(boom) is None


async def test_handler_receives_exception(core: ModuleType, anyio_backend: str) -> None:
    seen: list[BaseException] = []

    async def handler(outcome: BaseException) -> str:
        seen.append(outcome)
        return "cached"

    assert await Pipeline(Fallback(handler=handler)).execute(boom) == "cached"
    assert isinstance(seen[0], ConnectionError)


async def test_unhandled_error_propagates_unchanged(core: ModuleType, anyio_backend: str) -> None:
    err = KeyError("x")

    async def bad() -> None:
        raise err

    with pytest.raises(KeyError) as info:
        await Pipeline(Fallback(value=1, handle=ConnectionError)).execute(bad)
    assert info.value is err


async def test_predicate_handle(core: ModuleType, anyio_backend: str) -> None:
    fb = Fallback(value=0, handle=lambda e: "down" in str(e))
    assert await Pipeline(fb).execute(boom) == 0


async def test_handle_result(core: ModuleType, anyio_backend: str) -> None:
    async def status() -> int:
        return 503

    fb = Fallback(value=200, handle_result=lambda r: r >= 500)
    assert await Pipeline(fb).execute(status) == 200

    async def fine() -> int:
        return 201

    assert await Pipeline(fb).execute(fine) == 201
    assert fb.fallbacks == 1


async def test_success_passes_through(core: ModuleType, anyio_backend: str) -> None:
    async def ok(x: int) -> int:
        return x + 1

    fb = Fallback(value=-1)
    assert await Pipeline(fb).execute(ok, 1) == 2
    assert fb.fallbacks == 0


async def test_cancellation_is_not_a_failure(core: ModuleType, anyio_backend: str) -> None:
    fb = Fallback(value=1, handle=BaseException)

    async def hang() -> int:
        await anyio.sleep(5)
        return 0

    with anyio.move_on_after(0.01) as scope:
        await Pipeline(fb).execute(hang)
    assert scope.cancelled_caught
    assert fb.fallbacks == 0


async def test_cancelled_error_raised_by_callee_propagates(core: ModuleType) -> None:
    async def cancelled() -> int:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Pipeline(Fallback(value=1)).execute(cancelled)


def test_needs_exactly_one_of_value_or_handler() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Fallback()

    async def h(_: object) -> int:
        return 1

    with pytest.raises(ValueError, match="exactly one"):
        Fallback(value=1, handler=h)


def test_bad_handle() -> None:
    with pytest.raises(TypeError, match="handle"):
        Fallback(value=1, handle=(ValueError, 3))  # type: ignore[arg-type]
