"""Pipeline: ordering, gate fusion, decorator signature, clock propagation."""

from __future__ import annotations

import asyncio
import inspect
from types import ModuleType
from typing import Any

import pytest

import resilio
from resilio import Pipeline
from resilio.strategies._base import WAIT, GateStrategy
from resilio.strategies.fallback import Fallback
from resilio.testing import FakeClock

pytestmark = pytest.mark.anyio


class Recorder(GateStrategy):
    """A gate that logs its hooks, to check order and fusion."""

    __slots__ = ("log", "refuse", "wait")

    def __init__(self, name: str, log: list[str], *, refuse: bool = False, wait: bool = False):
        super().__init__(name=name)
        self.log = log
        self.refuse = refuse
        self.wait = wait

    @property
    def kind(self) -> str:
        return "recorder"

    def _enter(self) -> Any:
        self.log.append(f"enter {self.name}")
        if self.refuse:
            raise resilio.ExecutionRejectedError("no", strategy=self.label)
        return WAIT if self.wait else self.name

    async def _enter_wait(self) -> Any:
        self.log.append(f"wait {self.name}")
        return self.name

    def _ok(self, token: Any, result: Any) -> None:
        assert token == self.name
        self.log.append(f"ok {self.name}")

    def _err(self, token: Any, exc: BaseException) -> None:
        assert token == self.name
        self.log.append(f"err {self.name} {type(exc).__name__}")


async def test_empty_pipeline_calls_through(core: ModuleType, anyio_backend: str) -> None:
    async def f(a: int, *, b: int) -> int:
        return a + b

    assert await Pipeline().execute(f, 1, b=2) == 3


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_gates_run_outermost_first(core: ModuleType, anyio_backend: str, n: int) -> None:
    log: list[str] = []
    gates = [Recorder(f"g{i}", log, wait=(i == 1)) for i in range(n)]

    async def f() -> str:
        log.append("call")
        return "r"

    assert await Pipeline(*gates).execute(f) == "r"
    expected = []
    for i in range(n):
        expected.append(f"enter g{i}")
        if i == 1:
            expected.append("wait g1")
    expected += ["call"] + [f"ok g{i}" for i in reversed(range(n))]
    assert log == expected


async def test_refusal_unwinds_entered_gates(core: ModuleType, anyio_backend: str) -> None:
    log: list[str] = []
    p = Pipeline(Recorder("a", log), Recorder("b", log, refuse=True), Recorder("c", log))

    async def f() -> None:
        log.append("call")

    with pytest.raises(resilio.ExecutionRejectedError):
        await p.execute(f)
    assert log == ["enter a", "enter b", "err a ExecutionRejectedError"]


async def test_error_reaches_every_gate(core: ModuleType, anyio_backend: str) -> None:
    log: list[str] = []
    err = ValueError("x")

    async def f() -> None:
        raise err

    with pytest.raises(ValueError) as info:
        await Pipeline(Recorder("a", log), Recorder("b", log)).execute(f)
    assert info.value is err
    assert log[-2:] == ["err b ValueError", "err a ValueError"]


async def test_shaper_between_gates(core: ModuleType, anyio_backend: str) -> None:
    log: list[str] = []

    async def f() -> int:
        log.append("call")
        raise ConnectionError

    p = Pipeline(Recorder("outer", log), Fallback(value=5), Recorder("inner", log))
    assert await p.execute(f) == 5
    assert log == ["enter outer", "enter inner", "call", "err inner ConnectionError", "ok outer"]


async def test_decorator_keeps_signature_and_is_a_coroutine_function(
    core: ModuleType, anyio_backend: str
) -> None:
    p = Pipeline(Fallback(value=0))

    async def fetch_impl(url: str, *, retries: int = 1) -> int:
        """Fetch a thing."""
        return len(url) + retries

    fetch = p(fetch_impl)
    assert fetch.__name__ == "fetch_impl"
    assert fetch.__doc__ == "Fetch a thing."
    assert inspect.signature(fetch) == inspect.signature(fetch_impl)
    assert list(inspect.signature(fetch).parameters) == ["url", "retries"]
    assert asyncio.iscoroutinefunction(fetch)
    assert await fetch("abc", retries=2) == 5


def test_pipeline_clock_reaches_strategies() -> None:
    clock, own = FakeClock(), FakeClock()
    a, b = Fallback(value=1), Fallback(value=2, clock=own)
    Pipeline(a, b, clock=clock, name="p")
    assert a.clock is clock
    assert b.clock is own
    assert a.pipeline_name == "p"


def test_rejects_non_strategies() -> None:
    with pytest.raises(TypeError, match="strategies"):
        Pipeline(object())  # type: ignore[arg-type]
