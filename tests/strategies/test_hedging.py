"""Hedging: the first accepted outcome wins; losers are cancelled and awaited."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from types import ModuleType
from typing import Any

import anyio
import pytest

import resilio.context
from resilio import Pipeline
from resilio.strategies import hedging as hedging_module
from resilio.strategies.hedging import Hedging
from resilio.strategies.timeout import Timeout

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


# --- The asyncio fast path and the race semantics it must keep ------------------------


def _tasks_now() -> int:
    """Tasks on the running asyncio loop (0 on trio)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


def _cancelling() -> int | None:
    """Cancel requests pending on the current asyncio task (None on trio)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return None if task is None else task.cancelling()


async def test_fast_primary_creates_no_task(core: ModuleType, anyio_backend: str) -> None:
    created = 0
    if anyio_backend == "asyncio":
        loop = asyncio.get_running_loop()
        previous = loop.get_task_factory()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)
    seen: list[object] = []

    async def f(x: int) -> int:
        await anyio.sleep(0)  # suspends inside the call, as real I/O does
        seen.append(asyncio.current_task() if anyio_backend == "asyncio" else None)
        return x + 1

    h = Hedging(delay=1.0, max_attempts=3)
    run = Pipeline(h)
    try:
        for i in range(20):
            assert await run.execute(f, i) == i + 1
    finally:
        if anyio_backend == "asyncio":
            loop.set_task_factory(previous)
    assert h.hedges == 0
    if anyio_backend == "asyncio":
        # The primary ran inline in the caller's task: no task, not even one per call.
        assert created == 0
        assert seen == [asyncio.current_task()] * 20
        # Nothing of the calls is left in the wheel.
        assert all(e is None for slot in hedging_module._hot[1].slots.values() for e in slot)


async def test_hedge_wins_while_primary_inline(core: ModuleType, anyio_backend: str) -> None:
    log: list[str] = []
    n = 0
    where: list[object] = []

    async def f() -> str:
        nonlocal n
        n += 1
        me = n
        if anyio_backend == "asyncio":
            where.append(asyncio.current_task())
        try:
            await anyio.sleep(5 if me == 1 else 0)
        except BaseException:
            log.append(f"cancelled {me}")
            raise
        log.append(f"done {me}")
        return f"attempt {me}"

    before, tasks = _cancelling(), _tasks_now()
    h = Hedging(delay=0.005, max_attempts=3)
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == "attempt 2"
    # The primary was cancelled and had unwound before the call returned.
    assert log == ["done 2", "cancelled 1"]
    assert h.hedges == 1
    # Our cancellation of the caller's task was withdrawn.
    assert _cancelling() == before
    if anyio_backend == "asyncio":
        me = asyncio.current_task()
        assert where[0] is me and where[1] is not me
        assert _tasks_now() == tasks  # the hedge's task is done
    await anyio.sleep(0)  # and no stray cancellation is delivered later


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncio.timeout is asyncio's
async def test_hedge_win_inside_asyncio_timeout(core: ModuleType, anyio_backend: str) -> None:

    async def f(first: list[bool]) -> str:
        if first:
            first.clear()
            await asyncio.sleep(5)
        return "hedge"

    async with asyncio.timeout(2):
        assert await Pipeline(Hedging(0.005, 2)).execute(f, [True]) == "hedge"
        await asyncio.sleep(0.001)  # the timeout's own bookkeeping is intact
    assert _cancelling() == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # cancels an asyncio task directly
async def test_external_cancel_while_hedge_wins_propagates(
    core: ModuleType, anyio_backend: str
) -> None:
    finished: list[int] = []
    caller: list[asyncio.Task[Any]] = []
    n = 0

    async def f() -> str:
        nonlocal n
        n += 1
        me = n
        try:
            if me == 1:
                await asyncio.sleep(5)
            # The caller is cancelled from outside just as this hedge wins.
            caller[0].cancel()
            return "hedge"
        finally:
            finished.append(me)

    async def call() -> str:
        caller.append(asyncio.current_task())  # type: ignore[arg-type]
        return await Pipeline(Hedging(0.005, 2)).execute(f)

    task = asyncio.get_running_loop().create_task(call())
    with pytest.raises(asyncio.CancelledError):
        await task
    # Our own cancel was withdrawn, the caller's was not: the call was cancelled.
    assert task.cancelled() and task.cancelling() == 1
    assert sorted(finished) == [1, 2]


async def test_caller_cancel_during_inline_primary_awaits_hedges(
    core: ModuleType, anyio_backend: str
) -> None:
    started = 0
    finished = 0
    all_started = anyio.Event()

    async def f() -> None:
        nonlocal started, finished
        started += 1
        if started == 3:
            all_started.set()
        try:
            await anyio.sleep(5)
        finally:
            finished += 1

    h = Hedging(delay=0.002, max_attempts=3)
    tasks = _tasks_now()
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def call() -> None:
            with scope:
                await Pipeline(h).execute(f)

        tg.start_soon(call)
        with anyio.fail_after(2):
            await all_started.wait()
        scope.cancel()
    assert scope.cancelled_caught
    assert started == 3 and finished == 3 and h.hedges == 2
    assert _tasks_now() == tasks


async def test_primary_failure_after_hedges_started_starts_next_at_once(
    core: ModuleType, anyio_backend: str
) -> None:
    delay = 0.05
    starts: list[float] = []
    hedge_started = anyio.Event()

    async def f() -> str:
        me = len(starts) + 1
        starts.append(anyio.current_time())
        if me == 1:
            await hedge_started.wait()
            raise ConnectionError("primary fails while the hedge runs")
        if me == 2:
            hedge_started.set()
            await anyio.sleep(5)
        return f"attempt {me}"

    h = Hedging(delay=delay, max_attempts=3)
    t0 = anyio.current_time()
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == "attempt 3"
    assert len(starts) == 3 and h.hedges == 2
    # The hedge waited for its delay; the third attempt did not wait for another.
    assert starts[1] - t0 >= delay
    assert starts[2] - starts[1] < delay * 0.8


async def test_hedge_never_starts_early(core: ModuleType, anyio_backend: str) -> None:
    delay = 0.02
    starts: list[float] = []

    async def f() -> int:
        starts.append(anyio.current_time())
        if len(starts) == 1:
            await anyio.sleep(5)
        return len(starts)

    t0 = anyio.current_time()
    with anyio.fail_after(2):
        assert await Pipeline(Hedging(delay=delay, max_attempts=2)).execute(f) == 2
    assert starts[1] - t0 >= delay


async def test_hedge_fails_primary_still_wins(core: ModuleType, anyio_backend: str) -> None:
    n = 0
    primary_may_finish = anyio.Event()

    async def f() -> str:
        nonlocal n
        n += 1
        if n == 1:
            await primary_may_finish.wait()
            return "primary"
        primary_may_finish.set()
        raise ConnectionError("hedge fails")

    before = _cancelling()
    h = Hedging(delay=0.002, max_attempts=2)
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == "primary"
    assert h.hedges == 1 and _cancelling() == before


async def test_hedge_unhandled_error_cancels_inline_primary(
    core: ModuleType, anyio_backend: str
) -> None:
    err = KeyError("bad")
    log: list[str] = []

    async def f(first: list[bool]) -> None:
        if first:
            first.clear()
            try:
                await anyio.sleep(5)
            finally:
                log.append("primary unwound")
        raise err

    before = _cancelling()
    with anyio.fail_after(2), pytest.raises(KeyError) as info:
        await Pipeline(Hedging(delay=0.002, max_attempts=2, handle=OSError)).execute(f, [True])
    assert info.value is err
    assert log == ["primary unwound"]
    assert _cancelling() == before


async def test_all_fail_with_hedges_last_failure_propagates(
    core: ModuleType, anyio_backend: str
) -> None:
    errors = [ConnectionError(str(i)) for i in range(3)]
    n = 0
    release = anyio.Event()

    async def f() -> None:
        nonlocal n
        n += 1
        me = n
        if me == 1:
            await release.wait()  # fails last, after both hedges
            await anyio.sleep(0.005)
        elif me == 3:
            release.set()
        raise errors[me - 1]

    with anyio.fail_after(2), pytest.raises(ConnectionError) as info:
        await Pipeline(Hedging(delay=0.002, max_attempts=3)).execute(f)
    assert info.value is errors[0]  # the primary's failure came last


async def test_rejected_results_with_hedges_return_last(
    core: ModuleType, anyio_backend: str
) -> None:
    n = 0

    async def f() -> int:
        nonlocal n
        n += 1
        me = n
        if me == 1:
            await anyio.sleep(0.02)  # the hedge's rejected result comes first
        return 500 + me

    h = Hedging(delay=0.002, max_attempts=2, handle_result=lambda r: r >= 500)
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == 501


async def test_hedges_get_the_callers_context(core: ModuleType, anyio_backend: str) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")

    async def f(first: list[bool]) -> str:
        if first:
            first.clear()
            var.set("primary")  # made by the primary: no concern of the hedge
            await anyio.sleep(5)
        return var.get()

    with anyio.fail_after(2):
        assert await Pipeline(Hedging(0.002, 2)).execute(f, [True]) == "caller"


async def test_attempt_timeouts_are_per_attempt(core: ModuleType, anyio_backend: str) -> None:
    deadlines: list[float | None] = []

    async def f() -> int:
        deadlines.append(resilio.context.deadline_at())
        if len(deadlines) == 1:
            await anyio.sleep(5)
        return len(deadlines)

    p = Pipeline(Hedging(0.01, 2), Timeout(1.0))
    with anyio.fail_after(2):
        assert await p.execute(f) == 2
    first, second = deadlines
    assert first is not None and second is not None
    # The hedge's timeout runs from its own start, not from the primary's.
    assert second > first + 0.005


async def test_many_concurrent_calls(core: ModuleType, anyio_backend: str) -> None:
    h = Hedging(delay=0.005, max_attempts=2)
    p = Pipeline(h)
    results: dict[int, str] = {}

    async def f(i: int, first: list[bool]) -> str:
        slow = first and i % 3 == 0
        first.clear()
        await anyio.sleep(5 if slow else 0.001 * (i % 4))
        return f"{i}"

    async def call(i: int) -> None:
        results[i] = await p.execute(f, i, [True])

    tasks = _tasks_now()
    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(call, i)
    assert results == {i: f"{i}" for i in range(60)}
    assert h.hedges >= 20  # every slow primary was hedged
    assert _tasks_now() == tasks
    assert _cancelling() in (0, None)


async def test_one_attempt_is_the_call_itself(core: ModuleType, anyio_backend: str) -> None:
    async def f(x: int, *, y: int) -> int:
        return x + y

    h = Hedging(delay=0.0, max_attempts=1)
    assert await Pipeline(h).execute(f, 1, y=2) == 3
    with pytest.raises(ZeroDivisionError):
        await Pipeline(h).execute(lambda: _raise(ZeroDivisionError()))
    assert h.hedges == 0


async def _raise(exc: BaseException) -> None:
    raise exc


async def test_zero_delay_starts_every_attempt(core: ModuleType, anyio_backend: str) -> None:
    started = 0

    async def f() -> int:
        nonlocal started
        started += 1
        me = started
        await anyio.sleep(5 if me < 3 else 0)
        return me

    h = Hedging(delay=0, max_attempts=3)
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == 3
    assert h.hedges == 2


async def test_kwargs_reach_every_attempt(core: ModuleType, anyio_backend: str) -> None:
    seen: list[tuple[int, int]] = []

    async def f(x: int, *, y: int) -> int:
        seen.append((x, y))
        if len(seen) == 1:
            await anyio.sleep(5)
        return x * y

    with anyio.fail_after(2):
        assert await Pipeline(Hedging(0.002, 2)).execute(f, 6, y=7) == 42
    assert seen == [(6, 7), (6, 7)]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"delay": "1"}, TypeError),
        ({"delay": True}, TypeError),
        ({"delay": float("inf")}, ValueError),
        ({"delay": 0.1, "max_attempts": 2.0}, TypeError),
        ({"delay": 0.1, "handle_result": 3}, TypeError),
    ],
)
def test_bad_option_types(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Hedging(**kwargs)


async def test_primary_wins_after_hedges_started_they_are_awaited(
    core: ModuleType, anyio_backend: str
) -> None:
    log: list[str] = []
    last_started = anyio.Event()
    n = 0

    async def f() -> str:
        nonlocal n
        n += 1
        me = n
        if me == 1:
            await last_started.wait()
            return "primary"
        if me == 3:
            last_started.set()
        try:
            await anyio.sleep(5)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0)  # unwinding takes a while
            log.append(f"hedge {me} unwound")
        return "hedge"

    before = _cancelling()
    h = Hedging(delay=0.002, max_attempts=3)
    with anyio.fail_after(2):
        assert await Pipeline(h).execute(f) == "primary"
    # Both hedges were cancelled and had unwound before the call returned.
    assert sorted(log) == ["hedge 2 unwound", "hedge 3 unwound"]
    assert h.hedges == 2 and _cancelling() == before


async def test_each_callers_hedges_get_its_context(core: ModuleType, anyio_backend: str) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    results: dict[str, str] = {}

    async def f(first: list[bool]) -> str:
        if first:
            first.clear()
            await anyio.sleep(5)
        return var.get()

    p = Pipeline(Hedging(0.002, 2))

    async def call(name: str) -> None:
        var.set(name)
        results[name] = await p.execute(f, [True])

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(call, name)
    assert results == {"a": "a", "b": "b", "c": "c"}


async def test_no_hedge_starts_while_the_caller_is_being_cancelled(
    core: ModuleType, anyio_backend: str
) -> None:
    unwound = anyio.Event()
    calls = 0

    async def f() -> None:
        nonlocal calls
        calls += 1
        try:
            await anyio.sleep(5)
        finally:
            # A slow cleanup, longer than the hedge delay.
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.02)
            unwound.set()

    h = Hedging(delay=0.002, max_attempts=3)
    with anyio.move_on_after(0.001) as scope:
        await Pipeline(h).execute(f)
    assert scope.cancelled_caught and unwound.is_set()
    await anyio.sleep(0.005)
    assert calls == 1 and h.hedges == 0


async def test_nested_hedging_outer_hedge_wins(core: ModuleType, anyio_backend: str) -> None:
    log: list[str] = []
    n = 0

    async def f() -> str:
        nonlocal n
        n += 1
        me = n
        try:
            # Attempts 1 and 2 belong to the inner race of the outer primary;
            # attempt 3 is the outer hedge.
            await anyio.sleep(0 if me == 3 else 5)
        except BaseException:
            log.append(f"cancelled {me}")
            raise
        return f"attempt {me}"

    outer, inner = Hedging(0.01, 2), Hedging(0.002, 2)
    before, tasks = _cancelling(), _tasks_now()
    with anyio.fail_after(2):
        assert await Pipeline(outer, inner).execute(f) == "attempt 3"
    assert sorted(log) == ["cancelled 1", "cancelled 2"]
    # The outer primary's inner race hedged once; the outer hedge's answered at once.
    assert outer.hedges == 1 and inner.hedges == 1
    assert _cancelling() == before and _tasks_now() == tasks


async def test_nested_hedging_inner_hedge_wins(core: ModuleType, anyio_backend: str) -> None:
    n = 0

    async def f() -> str:
        nonlocal n
        n += 1
        me = n
        await anyio.sleep(5 if me == 1 else 0)
        return f"attempt {me}"

    outer, inner = Hedging(1.0, 2), Hedging(0.002, 2)
    before = _cancelling()
    with anyio.fail_after(2):
        assert await Pipeline(outer, inner).execute(f) == "attempt 2"
    assert outer.hedges == 0 and inner.hedges == 1
    assert _cancelling() == before


def test_loops_in_threads(core: ModuleType) -> None:
    h = Hedging(delay=0.002, max_attempts=2)
    p = Pipeline(h)
    errors: list[BaseException] = []

    async def f(i: int, first: list[bool]) -> int:
        if first and i % 10 == 0:
            first.clear()
            await asyncio.sleep(5)
        await asyncio.sleep(0)
        return i

    async def main() -> None:
        for i in range(100):
            assert await p.execute(f, i, [True]) == i

    def worker() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert h.hedges == 30


def test_hedge_delay_runs_on_the_loop_clock(core: ModuleType) -> None:
    class ShiftedClockLoop(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return super().time() - 1000.0  # far from time.monotonic()

    starts: list[float] = []

    async def f() -> int:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) == 1:
            await asyncio.sleep(5)
        return len(starts)

    async def main() -> int:
        return await asyncio.wait_for(Pipeline(Hedging(0.01, 2)).execute(f), 2)

    loop = ShiftedClockLoop()
    try:
        assert loop.run_until_complete(main()) == 2
    finally:
        loop.close()
    assert 0.009 <= starts[1] - starts[0] < 1.0  # not 1000 s late or early
