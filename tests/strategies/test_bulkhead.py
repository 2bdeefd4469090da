"""Bulkhead: exact concurrency, a bounded FIFO queue, no barging, no leaked slots.

Every test runs on both core implementations (through `impl`, which installs the
chosen core in `resilio._core`) and on asyncio and trio.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any, ParamSpec

import anyio
import pytest

import resilio._core
from resilio import BulkheadFullError, Pipeline, _core_py
from resilio.strategies._base import WAIT
from resilio.strategies.bulkhead import Bulkhead

pytestmark = pytest.mark.anyio
P = ParamSpec("P")


def bounded(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Fail a test that would hang (a waiter never woken) instead of blocking the run."""

    @functools.wraps(test)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with anyio.fail_after(5):
            await test(*args, **kwargs)

    return run


@pytest.fixture
def impl(core: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Make strategies built during the test use `core` through `resilio._core`."""
    for name in _core_py.__all__:
        if hasattr(core, name):
            monkeypatch.setattr(resilio._core, name, getattr(core, name))
        else:  # a name the compiled core lacks must fail, not fall back to the twin
            monkeypatch.delattr(resilio._core, name, raising=False)
    # Pipelines pick the compiled or the Python runner by the core in use.
    impl_name = "python" if core is _core_py else "cython"
    monkeypatch.setattr(resilio._core, "core_impl", impl_name)
    yield core


class Held:
    """Calls that run until released, recording their order and peak concurrency."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.running = 0
        self.peak = 0
        self.release = anyio.Event()

    async def __call__(self, tag: Any) -> Any:
        self.started.append(tag)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        self.finished.append(tag)
        return tag

    def open(self) -> None:
        self.release.set()
        self.release = anyio.Event()


async def quick(tag: Any = None) -> Any:
    return tag


# ---- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "word"),
    [
        ((0,), {}, ValueError, "max_concurrency"),
        ((-1,), {}, ValueError, "max_concurrency"),
        ((2.0,), {}, TypeError, "max_concurrency"),
        ((True,), {}, TypeError, "max_concurrency"),
        ((1,), {"max_queue": -1}, ValueError, "max_queue"),
        ((1,), {"max_queue": 1.5}, TypeError, "max_queue"),
        ((1,), {"max_queue": 1, "queue_timeout": 0}, ValueError, "queue_timeout"),
        ((1,), {"max_queue": 1, "queue_timeout": -1.0}, ValueError, "queue_timeout"),
        ((1,), {"max_queue": 1, "queue_timeout": math.nan}, ValueError, "queue_timeout"),
        ((1,), {"max_queue": 1, "queue_timeout": "1"}, TypeError, "queue_timeout"),
        ((1,), {"queue_timeout": 1.0}, ValueError, "max_queue"),
    ],
)
async def test_bad_options(
    impl: ModuleType,
    anyio_backend: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: type,
    word: str,
) -> None:
    with pytest.raises(exc, match=word):
        Bulkhead(*args, **kwargs)


async def test_properties(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(4, max_queue=2, queue_timeout=1.5, name="db")
    assert (bh.max_concurrency, bh.max_queue, bh.queue_timeout) == (4, 2, 1.5)
    assert (bh.in_flight, bh.queued, bh.admitted, bh.rejected) == (0, 0, 0, 0)
    assert bh.kind == "bulkhead" and bh.label == "db"
    assert repr(bh) == "Bulkhead(4, max_queue=2, queue_timeout=1.5, name='db')"


# ---- the limit ------------------------------------------------------------------------


@bounded
async def test_concurrency_limit_is_exact(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(3, max_queue=10)
    p = Pipeline(bh)
    held = Held()
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(p.execute, held, i)
        await anyio.wait_all_tasks_blocked()
        assert (held.running, bh.in_flight, bh.queued) == (3, 3, 7)
        while len(held.finished) < 10:
            held.open()
            await anyio.wait_all_tasks_blocked()
            assert held.running <= 3
    assert held.peak == 3
    assert (bh.in_flight, bh.queued, bh.admitted, bh.rejected) == (0, 0, 10, 0)


async def test_slot_freed_by_success_error_and_cancel(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(1)
    p = Pipeline(bh)

    async def boom() -> None:
        raise ConnectionError

    assert await p.execute(quick, 1) == 1
    with pytest.raises(ConnectionError):
        await p.execute(boom)
    with anyio.move_on_after(0.01):
        await p.execute(anyio.sleep_forever)
    assert bh.in_flight == 0
    assert await p.execute(quick, 2) == 2
    assert (bh.admitted, bh.rejected) == (4, 0)


# ---- refusing -------------------------------------------------------------------------


@bounded
async def test_no_queue_refuses_at_once(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(2)
    p = Pipeline(bh)
    held = Held()
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, held, 1)
        tg.start_soon(p.execute, held, 2)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BulkheadFullError) as info:
            await p.execute(held, 3)
        assert info.value.retry_after is None
        assert info.value.strategy == "bulkhead"
        held.open()
    assert sorted(held.started) == [1, 2]
    assert (bh.admitted, bh.rejected, bh.in_flight) == (2, 1, 0)


@bounded
async def test_full_queue_refuses_at_once(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(1, max_queue=2, name="pool")
    p = Pipeline(bh)
    held = Held()
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(p.execute, held, i)
        await anyio.wait_all_tasks_blocked()
        assert (bh.in_flight, bh.queued) == (1, 2)
        with pytest.raises(BulkheadFullError) as info:
            await p.execute(held, "late")
        assert info.value.strategy == "pool" and info.value.retry_after is None
        while len(held.finished) < 3:
            held.open()
            await anyio.wait_all_tasks_blocked()
    assert "late" not in held.started
    assert (bh.admitted, bh.rejected, bh.in_flight, bh.queued) == (3, 1, 0, 0)


@bounded
async def test_queue_timeout(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(1, max_queue=1, queue_timeout=0.02)
    p = Pipeline(bh)
    held = Held()
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, held, "holder")
        await anyio.wait_all_tasks_blocked()
        t0 = anyio.current_time()
        with pytest.raises(BulkheadFullError) as info:
            await p.execute(held, "queued")
        assert anyio.current_time() - t0 >= 0.015
        assert "queue_timeout" in str(info.value) and info.value.retry_after is None
        assert (bh.in_flight, bh.queued, bh.rejected) == (1, 0, 1)
        held.open()
    assert held.started == ["holder"]
    assert bh.in_flight == 0
    assert await p.execute(quick, "after") == "after"


# ---- the queue ------------------------------------------------------------------------


@bounded
async def test_queue_is_fifo(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(1, max_queue=5)
    p = Pipeline(bh)
    held = Held()
    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(p.execute, held, i)
            await anyio.wait_all_tasks_blocked()  # fixes the arrival order
        for k in range(6):
            assert held.started == list(range(k + 1))
            held.open()
            await anyio.wait_all_tasks_blocked()
    assert held.finished == list(range(6))


@bounded
async def test_slot_is_handed_to_the_oldest_waiter_no_barging(
    impl: ModuleType, anyio_backend: str
) -> None:
    bh = Bulkhead(1, max_queue=2)
    p = Pipeline(bh)
    order: list[str] = []

    async def record(tag: str) -> None:
        order.append(tag)

    tok = bh._enter()  # a call holds the only slot
    assert tok is None
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, record, "waiter")
        await anyio.wait_all_tasks_blocked()
        assert bh.queued == 1
        bh._ok(tok, None)  # the call ends: its slot goes to the waiter, not to the gate
        assert (bh.in_flight, bh.queued) == (1, 0)
        # A newcomer arriving before the waiter has woken up must queue behind it.
        assert bh._enter() is WAIT
        tg.start_soon(p.execute, record, "newcomer")
    assert order == ["waiter", "newcomer"]
    assert (bh.in_flight, bh.queued, bh.admitted) == (0, 0, 3)


@bounded
async def test_cancelled_waiter_leaves_no_trace(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(1, max_queue=3)
    p = Pipeline(bh)
    held = Held()
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, held, "holder")
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(p.execute, held, "cancelled")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(p.execute, held, "next")
            await anyio.wait_all_tasks_blocked()
            assert bh.queued == 2
            doomed.cancel_scope.cancel()
        assert (bh.in_flight, bh.queued) == (1, 1)
        held.open()
        await anyio.wait_all_tasks_blocked()
        held.open()
    assert held.started == ["holder", "next"]
    assert (bh.in_flight, bh.queued, bh.rejected) == (0, 0, 0)


@pytest.mark.parametrize(
    "cancel_first", [True, False], ids=["cancel-then-slot", "slot-then-cancel"]
)
@bounded
async def test_waiter_cancelled_as_it_is_handed_a_slot(
    impl: ModuleType, anyio_backend: str, cancel_first: bool
) -> None:
    bh = Bulkhead(1, max_queue=2)
    p = Pipeline(bh)
    ran: list[str] = []
    doomed = anyio.CancelScope()

    async def run(tag: str) -> None:
        ran.append(tag)

    async def doomed_call() -> None:
        with doomed:
            await p.execute(run, "doomed")

    tok = bh._enter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(doomed_call)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(p.execute, run, "next")
        await anyio.wait_all_tasks_blocked()
        # Both happen before the first waiter gets to run again.
        if cancel_first:
            doomed.cancel()
            bh._ok(tok, None)
        else:
            bh._ok(tok, None)
            doomed.cancel()
        assert (bh.in_flight, bh.queued) == (1, 1)
    if cancel_first:
        # Cancelled while waiting, then handed the slot: it passes the slot on.
        assert ran == ["next"]
    else:
        # Woken with the slot before the cancel: it runs (the cancel lands at its
        # next await), then the slot goes on.
        assert ran == ["doomed", "next"]
    assert (bh.in_flight, bh.queued, bh.admitted) == (0, 0, 3)


@bounded
async def test_cancellations_under_churn_leak_nothing(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(2, max_queue=60)
    p = Pipeline(bh)
    done = 0

    async def work() -> None:
        nonlocal done
        await anyio.sleep(0.001)
        done += 1

    async def call(i: int) -> None:
        # Cancelled before entering, while queued, while running, or never.
        with anyio.move_on_after((0, 0.001, 0.003, 1.0)[i % 4]):
            await p.execute(work)

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(call, i)
    assert (bh.in_flight, bh.queued, bh.rejected) == (0, 0, 0)
    assert 15 <= done < 60
    assert await p.execute(quick, "still works") == "still works"


@bounded
async def test_enter_wait_alone_takes_a_free_slot(impl: ModuleType, anyio_backend: str) -> None:
    bh = Bulkhead(1, max_queue=1)
    assert await bh._enter_wait() is None  # not after a refused _enter: a slot was free
    assert (bh.in_flight, bh.queued) == (1, 0)
    bh._ok(None, None)
    assert bh.in_flight == 0
