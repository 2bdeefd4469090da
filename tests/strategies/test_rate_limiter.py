"""RateLimiter: exact refusals, refills, FIFO waits and refunds, keyed buckets.

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
from resilio import Pipeline, RateLimitedError, _core_py
from resilio.strategies._base import GateStrategy, Shaper
from resilio.strategies.rate_limiter import KeyedRateLimiter, RateLimiter
from resilio.testing import FakeClock

pytestmark = pytest.mark.anyio
P = ParamSpec("P")


def bounded(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Fail a test that would hang (a waiter never woken) instead of blocking the run."""

    @functools.wraps(test)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with anyio.fail_after(5):
            await test(*args, **kwargs)

    return run


TICK = 0.1  # seconds per token at rate 10/s


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


class SteppedClock(FakeClock):
    """Virtual time where sleep() blocks until advance() reaches its end.

    FakeClock.sleep moves time itself, so concurrent sleepers would push each
    other's clocks; here time only moves when the test says so.
    """

    __slots__ = ("_sleepers",)

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self._sleepers: list[tuple[int, anyio.Event]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        until = self.now_ns() + round(seconds * 1e9)
        if until <= self.now_ns():
            await anyio.sleep(0)
            return
        ev = anyio.Event()
        self._sleepers.append((until, ev))
        await ev.wait()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        now = self.now_ns()
        for entry in list(self._sleepers):
            if entry[0] <= now:
                self._sleepers.remove(entry)
                entry[1].set()


calls: list[Any] = []


async def work(*args: Any, **kwargs: Any) -> str:
    calls.append(args or kwargs)
    return "done"


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


# ---- construction ---------------------------------------------------------------------


async def test_kinds(impl: ModuleType, anyio_backend: str) -> None:
    plain = RateLimiter(10.0)
    keyed = RateLimiter(10.0, key=lambda user: user)
    # The plain limiter is fused into the pipeline; the keyed one wraps the call.
    assert isinstance(plain, GateStrategy)
    assert not isinstance(plain, Shaper)
    assert isinstance(keyed, Shaper)
    assert not isinstance(keyed, GateStrategy)
    assert type(keyed) is KeyedRateLimiter
    assert issubclass(type(plain), RateLimiter)
    assert plain.kind == keyed.kind == "rate_limiter"
    assert repr(plain) == "RateLimiter(rate=10, burst=10, max_wait=0, tokens=1, name=None)"


@pytest.mark.parametrize(
    ("rate", "burst"), [(10.0, 10), (2.5, 3), (0.2, 1), (1, 1), (1000, 1000), (0.999, 1)]
)
async def test_default_burst_is_one_second(
    impl: ModuleType, anyio_backend: str, rate: float, burst: int
) -> None:
    assert RateLimiter(rate).burst == burst == max(1, math.ceil(rate))


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"rate": 0}, ValueError, "rate"),
        ({"rate": -1.0}, ValueError, "rate"),
        ({"rate": math.nan}, ValueError, "rate"),
        ({"rate": math.inf}, ValueError, "rate"),
        ({"rate": "10"}, TypeError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"rate": 10, "burst": 0}, ValueError, "burst"),
        ({"rate": 10, "burst": 2.0}, TypeError, "burst"),
        ({"rate": 10, "max_wait": -0.1}, ValueError, "max_wait"),
        ({"rate": 10, "max_wait": math.inf}, ValueError, "max_wait"),
        ({"rate": 10, "max_wait": "1"}, TypeError, "max_wait"),
        ({"rate": 10, "tokens": 0}, ValueError, "tokens"),
        ({"rate": 10, "tokens": 11}, ValueError, "tokens"),
        ({"rate": 10, "burst": 3, "tokens": 4}, ValueError, "tokens"),
        ({"rate": 10, "key": "user"}, TypeError, "key"),
        ({"rate": 10, "key": lambda: "k", "max_keys": 0}, ValueError, "max_keys"),
    ],
)
async def test_bad_options(
    impl: ModuleType, anyio_backend: str, kwargs: dict[str, Any], exc: type, word: str
) -> None:
    with pytest.raises(exc, match=word):
        RateLimiter(**kwargs)


# ---- refusing at once -----------------------------------------------------------------


async def test_burst_then_refused_with_exact_retry_after(
    impl: ModuleType, anyio_backend: str
) -> None:
    clock = FakeClock(start=1234.5)  # the bucket starts full at any clock time
    rl = RateLimiter(10.0, 5, clock=clock, name="api")
    p = Pipeline(rl)
    for _ in range(5):
        assert await p.execute(work) == "done"
    with pytest.raises(RateLimitedError) as info:
        await p.execute(work)
    assert info.value.retry_after == pytest.approx(TICK, abs=1e-12)
    assert info.value.strategy == "api"
    assert len(calls) == 5  # the refused call never ran
    assert (rl.admitted, rl.rejected) == (5, 1)
    assert clock.sleeps == []  # max_wait=0 never waits


async def test_retry_after_is_until_the_tokens_are_due(
    impl: ModuleType, anyio_backend: str
) -> None:
    clock = FakeClock()
    p = Pipeline(RateLimiter(3.0, 3, clock=clock))
    for _ in range(3):
        await p.execute(work)
    clock.advance(0.2)
    with pytest.raises(RateLimitedError) as info:
        await p.execute(work)
    # One token every ceil(1e9 / 3) ns: the first is due 333_333_334 ns after t=0.
    assert info.value.retry_after == pytest.approx(0.133333334, abs=1e-12)


async def test_refill_after_time_passes(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, 5, clock=clock)
    p = Pipeline(rl)
    for _ in range(5):
        await p.execute(work)
    assert rl.available() == 0
    clock.advance(TICK)
    assert rl.available() == 1
    await p.execute(work)
    with pytest.raises(RateLimitedError):
        await p.execute(work)
    clock.advance(100.0)  # refills up to burst, never beyond
    assert rl.available() == 5
    for _ in range(5):
        await p.execute(work)
    with pytest.raises(RateLimitedError):
        await p.execute(work)


async def test_tokens_per_call(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, 5, tokens=2, clock=clock)
    p = Pipeline(rl)
    await p.execute(work)
    await p.execute(work)
    assert rl.available() == 1
    with pytest.raises(RateLimitedError) as info:
        await p.execute(work)
    assert info.value.retry_after == pytest.approx(TICK, abs=1e-12)  # one more token needed


async def test_failed_call_keeps_its_token_spent(impl: ModuleType, anyio_backend: str) -> None:
    async def boom() -> None:
        raise ConnectionError

    rl = RateLimiter(10.0, 1, clock=FakeClock())
    p = Pipeline(rl)
    with pytest.raises(ConnectionError):
        await p.execute(boom)
    with pytest.raises(RateLimitedError):
        await p.execute(work)


async def test_pipeline_clock_drives_the_limiter(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, 1)
    p = Pipeline(rl, clock=clock)

    @p
    async def f() -> int:
        return 7

    assert await f() == 7
    with pytest.raises(RateLimitedError):
        await f()
    clock.advance(TICK)
    assert await f() == 7


async def test_fused_with_other_gates(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    outer, inner = RateLimiter(10.0, 3, clock=clock), RateLimiter(10.0, 1, clock=clock)
    p = Pipeline(outer, inner)
    await p.execute(work)
    with pytest.raises(RateLimitedError):
        await p.execute(work)
    assert (outer.admitted, inner.admitted, inner.rejected) == (2, 1, 1)


# ---- waiting --------------------------------------------------------------------------


async def test_max_wait_sleeps_exactly_until_the_token(
    impl: ModuleType, anyio_backend: str
) -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, 1, max_wait=1.0, clock=clock)
    seen: list[float] = []

    async def stamp() -> None:
        seen.append(clock.now())

    p = Pipeline(rl)
    await p.execute(stamp)
    await p.execute(stamp)
    await p.execute(stamp)
    assert clock.sleeps == [pytest.approx(TICK, abs=1e-12)] * 2
    assert seen == [0.0, pytest.approx(TICK), pytest.approx(2 * TICK)]
    assert (rl.admitted, rl.rejected) == (3, 0)  # a wait is not a refusal


@bounded
async def test_waiters_are_served_in_order(impl: ModuleType, anyio_backend: str) -> None:
    clock = SteppedClock()
    rl = RateLimiter(10.0, 1, max_wait=1.0, clock=clock)
    p = Pipeline(rl)
    done: list[int] = []

    async def call(i: int) -> None:
        await p.execute(work, i)
        done.append(i)

    await p.execute(work, -1)  # takes the only token
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(call, i)
            await anyio.wait_all_tasks_blocked()
        # Each later asker waits one interval longer: reservations are ordered.
        assert clock.sleeps == [pytest.approx(k * TICK, abs=1e-12) for k in (1, 2, 3, 4)]
        for k in range(4):
            clock.advance(TICK)
            await anyio.wait_all_tasks_blocked()
            assert done == list(range(k + 1))
    assert calls == [(-1,), (0,), (1,), (2,), (3,)]


@bounded
async def test_refused_when_the_wait_exceeds_max_wait(impl: ModuleType, anyio_backend: str) -> None:
    clock = SteppedClock()
    rl = RateLimiter(10.0, 1, max_wait=0.15, clock=clock)
    p = Pipeline(rl)
    await p.execute(work)
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, work)  # waits 0.1 s <= 0.15 s
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(RateLimitedError) as info:
            await p.execute(work)  # would wait 0.2 s > 0.15 s: refused, without waiting
        assert info.value.retry_after == pytest.approx(2 * TICK, abs=1e-12)
        assert clock.sleeps == [pytest.approx(TICK, abs=1e-12)]
        clock.advance(TICK)
    assert len(calls) == 2
    assert (rl.admitted, rl.rejected) == (2, 1)


@bounded
async def test_cancelled_waiter_gives_its_tokens_back(impl: ModuleType, anyio_backend: str) -> None:
    clock = SteppedClock()
    rl = RateLimiter(10.0, 1, max_wait=1.0, clock=clock)
    p = Pipeline(rl)
    await p.execute(work, "first")
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, work, "cancelled")
        await anyio.wait_all_tasks_blocked()
        assert clock.sleeps == [pytest.approx(TICK, abs=1e-12)]
        tg.cancel_scope.cancel()
    assert calls == [("first",)]
    clock.advance(TICK)
    # Without the refund the reservation would still hold the token due now.
    assert rl.available() == 1
    await p.execute(work, "next")  # admitted at once, no wait
    assert len(clock.sleeps) == 1


@bounded
async def test_cancelling_one_waiter_leaves_the_others_waiting(
    impl: ModuleType, anyio_backend: str
) -> None:
    clock = SteppedClock()
    p = Pipeline(RateLimiter(10.0, 1, max_wait=1.0, clock=clock))
    await p.execute(work, 0)
    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(p.execute, work, "gone")  # due at 0.1 s
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(p.execute, work, 2)  # due at 0.2 s
            await anyio.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
        clock.advance(TICK)
        await anyio.wait_all_tasks_blocked()
        assert calls == [(0,)]  # a refund never lets an admitted waiter run early
        clock.advance(TICK)
    assert calls == [(0,), (2,)]


# ---- keyed ----------------------------------------------------------------------------


async def test_keys_are_limited_separately(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, 2, key=lambda user, *_: user, clock=clock)
    p = Pipeline(rl)
    await p.execute(work, "alice", 1)
    await p.execute(work, "alice", 2)
    with pytest.raises(RateLimitedError) as info:
        await p.execute(work, "alice", 3)
    assert info.value.retry_after == pytest.approx(TICK, abs=1e-12)
    await p.execute(work, "bob", 1)
    await p.execute(work, b"dave", 1)  # bytes are keys too
    assert rl.available("alice") == 0
    assert rl.available("bob") == 1
    assert rl.available(b"dave") == 1
    assert rl.available("carol") == 2
    clock.advance(TICK)
    assert rl.available("alice") == 1
    assert (rl.admitted, rl.rejected) == (4, 1)


async def test_key_from_keyword_arguments(impl: ModuleType, anyio_backend: str) -> None:
    rl = RateLimiter(1.0, 1, key=lambda **kw: kw["tenant"], clock=FakeClock())
    p = Pipeline(rl)
    await p.execute(work, tenant="a")
    await p.execute(work, tenant="b")
    with pytest.raises(RateLimitedError):
        await p.execute(work, tenant="a")


async def test_key_longer_than_64_bytes_is_refused(impl: ModuleType, anyio_backend: str) -> None:
    p = Pipeline(RateLimiter(10.0, key=lambda k: k, clock=FakeClock()))
    await p.execute(work, "k" * 64)
    with pytest.raises(ValueError):
        await p.execute(work, "k" * 65)
    assert calls == [("k" * 64,)]


@bounded
async def test_keyed_wait_and_refund(impl: ModuleType, anyio_backend: str) -> None:
    clock = SteppedClock()
    rl = RateLimiter(10.0, 1, max_wait=1.0, key=lambda k: k, clock=clock)
    p = Pipeline(rl)
    await p.execute(work, "a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, work, "a")
        await anyio.wait_all_tasks_blocked()
        await p.execute(work, "b")  # another key does not queue behind "a"
        assert clock.sleeps == [pytest.approx(TICK, abs=1e-12)]
        tg.cancel_scope.cancel()
    assert calls == [("a",), ("b",)]
    clock.advance(TICK)
    assert rl.available("a") == 1  # the cancelled waiter's token came back
    async with anyio.create_task_group() as tg:
        await p.execute(work, "a")
        tg.start_soon(p.execute, work, "a")
        await anyio.wait_all_tasks_blocked()
        assert calls[-1] == ("a",) and len(calls) == 3
        clock.advance(TICK)
    assert len(calls) == 4
    short = Pipeline(RateLimiter(10.0, 1, max_wait=0.05, key=lambda k: k, clock=clock))
    await short.execute(work, "x")
    with pytest.raises(RateLimitedError) as info:
        await short.execute(work, "x")  # needs 0.1 s > max_wait
    assert info.value.retry_after == pytest.approx(TICK, abs=1e-12)


async def test_keyed_around_inner_strategies(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    keyed = RateLimiter(10.0, 2, key=lambda k: k, clock=clock)
    gate = RateLimiter(10.0, 1, clock=clock)
    p = Pipeline(keyed, gate)
    await p.execute(work, "a")
    with pytest.raises(RateLimitedError) as info:
        await p.execute(work, "a")
    assert info.value.strategy == "rate_limiter"
    assert (keyed.admitted, gate.rejected) == (2, 1)
    assert keyed.available("a") == 0  # spent even though an inner strategy refused


async def test_available_key_argument(impl: ModuleType, anyio_backend: str) -> None:
    with pytest.raises(TypeError):
        RateLimiter(10.0).available("a")
    with pytest.raises(TypeError):
        RateLimiter(10.0, key=lambda k: k).available()


async def test_enter_wait_decides_alone(impl: ModuleType, anyio_backend: str) -> None:
    # Called without a reserving _enter just before, _enter_wait reserves itself.
    clock = FakeClock()
    rl = RateLimiter(10.0, 1, max_wait=0.15, clock=clock)
    assert isinstance(rl, GateStrategy)
    assert await rl._enter_wait() is None  # a token was there: no wait
    assert clock.sleeps == []
    assert await rl._enter_wait() is None  # waits for the next one
    assert clock.sleeps == [pytest.approx(TICK, abs=1e-12)]
    clock2 = FakeClock()
    strict = RateLimiter(10.0, 1, max_wait=0.05, clock=clock2)
    assert isinstance(strict, GateStrategy)
    await strict._enter_wait()
    with pytest.raises(RateLimitedError):
        await strict._enter_wait()
    assert (strict.admitted, strict.rejected) == (1, 1)
