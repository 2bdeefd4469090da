"""CircuitBreaker: thresholds, windows, slow calls, half-open probes, hooks, cancellation.

Every test runs on both cores (compiled and twin) and both event loops, with a
FakeClock so break durations and windows are exact and instant.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest

import resilio._core
import resilio._core_py
from resilio.errors import (
    BrokenCircuitError,
    ExecutionRejectedError,
    IsolatedCircuitError,
    RateLimitedError,
)
from resilio.pipeline import Pipeline
from resilio.strategies._base import GateStrategy
from resilio.strategies.circuit_breaker import CircuitBreaker, CircuitState
from resilio.testing import FakeClock

pytestmark = pytest.mark.usefixtures("impl")

UNIT_NS = 1 << 16  # the core stores break ends in 65.536 us units, rounded up


@pytest.fixture
def impl(core: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Make `resilio._core` (what strategies build from) the core under test."""
    for name in resilio._core_py.__all__:
        monkeypatch.setattr(resilio._core, name, getattr(core, name))
    yield core


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


def state(cb: CircuitBreaker) -> CircuitState:
    # A call, not the property: mypy would narrow `cb.state` across awaits.
    return cb.state


def cancel(scope: anyio.CancelScope) -> None:
    # anyio 4.16 passes a reason to trio's CancelScope.cancel(), which trio < 0.32
    # rejects; an expired deadline cancels the same way on every version.
    scope.deadline = -math.inf


def ceil_unit(ns: int) -> int:
    return -(-ns // UNIT_NS) * UNIT_NS


class Calls:
    """Async callables that count how often they ran."""

    def __init__(self) -> None:
        self.n = 0

    async def ok(self) -> str:
        self.n += 1
        return "ok"

    async def fail(self) -> str:
        self.n += 1
        raise ConnectionError("down")


def breaker(clock: FakeClock, **kw: Any) -> tuple[CircuitBreaker, Pipeline]:
    kw.setdefault("minimum_throughput", 2)
    kw.setdefault("break_duration", 5.0)
    cb = CircuitBreaker(clock=clock, **kw)
    return cb, Pipeline(cb)


async def outcome(p: Pipeline, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run fn through p; return its result or the exception it raised."""
    try:
        return await p.execute(fn)
    except Exception as e:
        return e


async def trip(cb: CircuitBreaker, p: Pipeline) -> None:
    calls = Calls()
    while state(cb) is not CircuitState.OPEN:
        assert isinstance(await outcome(p, calls.fail), ConnectionError)


# -- closed state: thresholds and window ------------------------------------------------


@pytest.mark.anyio
async def test_opens_when_ratio_reached_with_minimum_throughput(clock: FakeClock) -> None:
    cb, p = breaker(clock, failure_ratio=0.5, minimum_throughput=4)
    c = Calls()
    assert await p.execute(c.ok) == "ok"
    assert await p.execute(c.ok) == "ok"
    assert isinstance(await outcome(p, c.fail), ConnectionError)
    assert state(cb) is CircuitState.CLOSED  # 1/3 failed, and 3 < minimum_throughput
    # 2 of 4 failed: exactly the ratio, which opens it; the call's own error surfaces.
    assert isinstance(await outcome(p, c.fail), ConnectionError)
    assert state(cb) is CircuitState.OPEN
    assert (cb.opened, cb.failures, cb.successes) == (1, 2, 2)
    with pytest.raises(BrokenCircuitError) as ei:
        await p.execute(c.ok)
    assert c.n == 4  # the rejected call never ran
    assert ei.value.strategy == "circuit_breaker"
    assert cb.rejected == 1


@pytest.mark.anyio
async def test_below_minimum_throughput_never_opens(clock: FakeClock) -> None:
    cb, p = breaker(clock, failure_ratio=0.1, minimum_throughput=5)
    c = Calls()
    for _ in range(4):
        await outcome(p, c.fail)
    assert state(cb) is CircuitState.CLOSED
    await outcome(p, c.fail)
    assert state(cb) is CircuitState.OPEN


@pytest.mark.anyio
async def test_below_ratio_stays_closed(clock: FakeClock) -> None:
    cb, p = breaker(clock, failure_ratio=0.5, minimum_throughput=2)
    c = Calls()
    for _ in range(3):
        await p.execute(c.ok)
    await outcome(p, c.fail)
    await outcome(p, c.fail)  # 2 of 5
    assert state(cb) is CircuitState.CLOSED
    await outcome(p, c.fail)  # 3 of 6
    assert state(cb) is CircuitState.OPEN


@pytest.mark.anyio
async def test_old_failures_leave_the_sampling_window(clock: FakeClock) -> None:
    cb, p = breaker(clock, failure_ratio=0.5, minimum_throughput=2, sampling_duration=10.0)
    c = Calls()
    await outcome(p, c.fail)
    clock.advance(11.0)
    await outcome(p, c.fail)  # the first failure is out of the window: 1 call < 2
    assert state(cb) is CircuitState.CLOSED
    await outcome(p, c.fail)
    assert state(cb) is CircuitState.OPEN


# -- what counts as a failure -----------------------------------------------------------


@pytest.mark.anyio
async def test_unhandled_exceptions_pass_through_uncounted(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, handle=ConnectionError)

    async def bad() -> None:
        raise KeyError("not a dependency failure")

    for _ in range(5):
        with pytest.raises(KeyError):
            await p.execute(bad)
    assert state(cb) is CircuitState.CLOSED
    assert (cb.failures, cb.successes, cb.admitted) == (0, 0, 5)
    await outcome(p, Calls().fail)
    assert state(cb) is CircuitState.OPEN


@pytest.mark.anyio
async def test_handle_tuple_of_types(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, handle=(TimeoutError, ConnectionError))

    async def timeout() -> None:
        raise TimeoutError

    await outcome(p, timeout)
    assert state(cb) is CircuitState.OPEN


@pytest.mark.anyio
async def test_handle_predicate(clock: FakeClock) -> None:
    seen: list[Exception] = []

    def is_5xx(e: Exception) -> bool:
        seen.append(e)
        return isinstance(e, HttpError) and e.status >= 500

    class HttpError(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    cb, p = breaker(clock, minimum_throughput=1, handle=is_5xx)

    async def status(code: int) -> None:
        raise HttpError(code)

    for _ in range(3):
        with pytest.raises(HttpError):
            await p.execute(status, 404)
    assert state(cb) is CircuitState.CLOSED and cb.failures == 0
    with pytest.raises(HttpError):
        await p.execute(status, 503)
    assert state(cb) is CircuitState.OPEN and cb.failures == 1
    assert len(seen) == 4


@pytest.mark.anyio
async def test_predicate_that_raises_frees_the_probe(clock: FakeClock) -> None:
    def broken(e: Exception) -> bool:
        if isinstance(e, KeyError):
            raise RuntimeError("predicate bug")
        return True

    cb, p = breaker(clock, minimum_throughput=1, handle=broken)
    await trip(cb, p)
    clock.advance(cb.retry_after or 0.0)

    async def key_error() -> None:
        raise KeyError

    with pytest.raises(RuntimeError, match="predicate bug"):
        await p.execute(key_error)
    assert state(cb) is CircuitState.HALF_OPEN
    assert await p.execute(Calls().ok) == "ok"  # the permit came back
    assert state(cb) is CircuitState.CLOSED


@pytest.mark.anyio
async def test_handle_result_counts_results_as_failures(clock: FakeClock) -> None:
    cb, p = breaker(
        clock, failure_ratio=0.6, minimum_throughput=2, handle_result=lambda r: r is None
    )

    async def empty() -> str | None:
        return None

    assert await p.execute(empty) is None  # the result is still returned
    assert state(cb) is CircuitState.CLOSED
    assert await p.execute(Calls().ok) == "ok"
    assert await p.execute(empty) is None  # 2 of 3 failed
    assert state(cb) is CircuitState.OPEN
    assert (cb.failures, cb.successes) == (2, 1)


@pytest.mark.anyio
async def test_handle_result_that_raises_frees_the_probe(clock: FakeClock) -> None:
    def judge(r: object) -> bool:
        if r == "weird":
            raise RuntimeError("judge bug")
        return False

    cb, p = breaker(clock, minimum_throughput=1, handle_result=judge)
    await trip(cb, p)
    clock.advance(cb.retry_after or 0.0)

    async def weird() -> str:
        return "weird"

    with pytest.raises(RuntimeError, match="judge bug"):
        await p.execute(weird)
    assert state(cb) is CircuitState.HALF_OPEN
    assert await p.execute(Calls().ok) == "ok"
    assert state(cb) is CircuitState.CLOSED


@pytest.mark.anyio
async def test_slow_calls_open_it(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=2, slow_call_duration=1.0)
    assert cb.slow_call_ratio == 1.0

    async def takes(seconds: float) -> str:
        clock.advance(seconds)
        return "done"

    assert await p.execute(takes, 1.0) == "done"  # exactly the limit is not slow
    assert await p.execute(takes, 2.0) == "done"
    assert state(cb) is CircuitState.CLOSED  # 1 of 2 slow < 1.0
    assert cb.slow == 1
    await p.execute(takes, 1.5)
    await p.execute(takes, 3.0)  # window: fast, slow, slow, slow
    assert state(cb) is CircuitState.CLOSED
    cb.reset()
    await p.execute(takes, 1.5)
    await p.execute(takes, 1.5)
    assert state(cb) is CircuitState.OPEN  # successes, but every one slow
    assert (cb.failures, cb.slow) == (0, 5)


@pytest.mark.anyio
async def test_slow_call_ratio(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=4, slow_call_duration=0.5, slow_call_ratio=0.5)

    async def takes(seconds: float) -> None:
        clock.advance(seconds)

    for s in (0.1, 0.1, 0.6):
        await p.execute(takes, s)
    assert state(cb) is CircuitState.CLOSED
    await p.execute(takes, 0.6)
    assert state(cb) is CircuitState.OPEN


@pytest.mark.anyio
async def test_slow_failures_count_as_slow_and_failed(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=10, slow_call_duration=1.0)

    async def slow_fail() -> None:
        clock.advance(2.0)
        raise ConnectionError

    await outcome(p, slow_fail)
    assert (cb.failures, cb.slow, cb.successes) == (1, 1, 0)


# -- open state and retry_after -----------------------------------------------------------


@pytest.mark.anyio
async def test_retry_after_is_exact(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, break_duration=5.0, name="db")
    assert cb.retry_after == 0.0
    clock.advance(0.123456789)
    opened_at = clock.now_ns()
    await trip(cb, p)
    until = ceil_unit(opened_at + 5_000_000_000)
    with pytest.raises(BrokenCircuitError) as ei:
        await p.execute(Calls().ok)
    assert ei.value.retry_after == (until - clock.now_ns()) / 1e9
    assert 5.0 <= ei.value.retry_after < 5.0 + UNIT_NS / 1e9  # never early
    assert ei.value.strategy == "db"
    assert not isinstance(ei.value, IsolatedCircuitError)
    clock.advance(3.0)
    with pytest.raises(BrokenCircuitError) as ei:
        await p.execute(Calls().ok)
    assert ei.value.retry_after == (until - clock.now_ns()) / 1e9
    assert cb.retry_after == ei.value.retry_after
    clock.advance(ei.value.retry_after - 1e-9)
    with pytest.raises(BrokenCircuitError) as ei:
        await p.execute(Calls().ok)
    assert ei.value.retry_after == 1e-9
    clock.advance(1e-9)
    assert cb.retry_after == 0.0
    assert state(cb) is CircuitState.OPEN  # moves to HALF_OPEN lazily, on the next call
    assert await p.execute(Calls().ok) == "ok"


@pytest.mark.anyio
async def test_straggler_from_closed_period_moves_nothing(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=2)
    started, go = anyio.Event(), anyio.Event()

    async def straggler() -> str:
        started.set()
        await go.wait()
        return "late"

    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, straggler)
        await started.wait()
        await trip(cb, p)
        clock.advance(5.0)
        go.set()
    # Its ticket is from the closed period: no probe, no close, no window entry.
    assert state(cb) is CircuitState.OPEN
    assert cb.successes == 1


# -- half-open ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_probe_success_closes_and_clears_window(clock: FakeClock) -> None:
    cb, p = breaker(clock, failure_ratio=0.5, minimum_throughput=2, break_duration=5.0)
    await trip(cb, p)
    clock.advance(4.9)
    with pytest.raises(BrokenCircuitError):
        await p.execute(Calls().ok)
    clock.advance(0.1 + UNIT_NS / 1e9)
    states: list[CircuitState] = []

    async def probe() -> str:
        states.append(cb.state)
        return "ok"

    assert await p.execute(probe) == "ok"
    assert states == [CircuitState.HALF_OPEN]
    assert state(cb) is CircuitState.CLOSED
    assert (cb.half_opened, cb.closed) == (1, 1)
    # The two failures that opened it are forgotten: one failure is below throughput.
    await outcome(p, Calls().fail)
    assert state(cb) is CircuitState.CLOSED


@pytest.mark.anyio
async def test_probe_failure_reopens_with_doubling_break(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, break_duration=1.0, max_break_duration=4.0)
    c = Calls()
    await trip(cb, p)
    for expected in (2.0, 4.0, 4.0, 4.0):
        clock.advance(cb.retry_after or 0.0)
        await outcome(p, c.fail)  # the probe fails
        assert state(cb) is CircuitState.OPEN
        ra = cb.retry_after
        assert ra is not None and expected <= ra < expected + UNIT_NS / 1e9
    clock.advance(cb.retry_after or 0.0)
    await p.execute(c.ok)
    assert state(cb) is CircuitState.CLOSED
    await trip(cb, p)  # a fresh open starts from break_duration again
    ra = cb.retry_after
    assert ra is not None and 1.0 <= ra < 1.0 + UNIT_NS / 1e9


@pytest.mark.anyio
async def test_constant_break_without_max(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, break_duration=1.0)
    await trip(cb, p)
    for _ in range(3):
        clock.advance(cb.retry_after or 0.0)
        await outcome(p, Calls().fail)
        ra = cb.retry_after
        assert ra is not None and 1.0 <= ra < 1.0 + UNIT_NS / 1e9


@pytest.mark.anyio
async def test_slow_probe_reopens(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, slow_call_duration=1.0)
    await trip(cb, p)
    clock.advance(cb.retry_after or 0.0)

    async def slow() -> str:
        clock.advance(2.0)
        return "slow"

    assert await p.execute(slow) == "slow"
    assert state(cb) is CircuitState.OPEN


@pytest.mark.anyio
async def test_half_open_calls_limit_concurrent_probes(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, half_open_calls=2, break_duration=5.0)
    await trip(cb, p)
    clock.advance(cb.retry_after or 0.0)
    probe_start = clock.now_ns()
    started = [anyio.Event(), anyio.Event()]
    go = [anyio.Event(), anyio.Event()]
    results: list[object] = []

    async def probe(i: int) -> int:
        started[i].set()
        await go[i].wait()
        return i

    async def run(i: int) -> None:
        results.append(await p.execute(probe, i))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0)
        tg.start_soon(run, 1)
        await started[0].wait()
        await started[1].wait()
        assert state(cb) is CircuitState.HALF_OPEN
        clock.advance(1.0)
        with pytest.raises(BrokenCircuitError) as ei:
            await p.execute(Calls().ok)
        # Full: the next probe is possible when the probes' lease ends.
        assert (
            ei.value.retry_after == (ceil_unit(probe_start + 5_000_000_000) - clock.now_ns()) / 1e9
        )
        go[0].set()
        await anyio.wait_all_tasks_blocked()
        assert results == [0]
        assert state(cb) is CircuitState.HALF_OPEN  # one of two successes so far
        go[1].set()
    assert results == [0, 1]
    assert state(cb) is CircuitState.CLOSED
    assert (cb.half_opened, cb.closed) == (1, 1)


@pytest.mark.anyio
async def test_cancelled_probe_gives_its_permit_back(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1)
    await trip(cb, p)
    clock.advance(cb.retry_after or 0.0)
    entered = anyio.Event()

    async def hang() -> None:
        entered.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(p.execute, hang)
        await entered.wait()
        with pytest.raises(BrokenCircuitError):
            await p.execute(Calls().ok)  # the only permit is taken
        cancel(tg.cancel_scope)
    assert state(cb) is CircuitState.HALF_OPEN
    failures, successes = cb.failures, cb.successes
    assert await p.execute(Calls().ok) == "ok"  # admitted as a probe
    assert state(cb) is CircuitState.CLOSED
    assert (cb.failures, cb.successes) == (failures, successes + 1)


@pytest.mark.anyio
async def test_cancellation_is_never_counted(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1)
    with anyio.CancelScope() as scope:
        cancel(scope)
        await p.execute(anyio.sleep, 1)
    assert scope.cancelled_caught
    assert (cb.failures, cb.successes, cb.state) == (0, 0, CircuitState.CLOSED)


@pytest.mark.anyio
async def test_unhandled_error_in_probe_frees_the_permit(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1, handle=ConnectionError)
    await trip(cb, p)
    clock.advance(cb.retry_after or 0.0)

    async def bad() -> None:
        raise ValueError

    with pytest.raises(ValueError):
        await p.execute(bad)
    assert state(cb) is CircuitState.HALF_OPEN
    assert await p.execute(Calls().ok) == "ok"
    assert state(cb) is CircuitState.CLOSED


# -- manual control -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_isolate_and_reset(clock: FakeClock) -> None:
    cb, p = breaker(clock, minimum_throughput=1)
    c = Calls()
    cb.isolate()
    assert state(cb) is CircuitState.ISOLATED
    assert cb.retry_after is None
    clock.advance(3600.0)
    with pytest.raises(IsolatedCircuitError) as ei:
        await p.execute(c.ok)
    assert ei.value.retry_after is None
    assert isinstance(ei.value, BrokenCircuitError)
    assert c.n == 0
    cb.reset()
    assert state(cb) is CircuitState.CLOSED
    assert await p.execute(c.ok) == "ok"
    assert (cb.isolated, cb.closed) == (1, 1)


@pytest.mark.anyio
async def test_reset_closes_an_open_circuit_and_forgets_the_window(clock: FakeClock) -> None:
    cb, p = breaker(clock, failure_ratio=0.5, minimum_throughput=3)
    await outcome(p, Calls().fail)
    await outcome(p, Calls().fail)
    cb.reset()
    await outcome(p, Calls().fail)
    assert state(cb) is CircuitState.CLOSED  # 1 call after reset, not 3
    await trip(cb, p)
    cb.reset()
    assert state(cb) is CircuitState.CLOSED
    assert await p.execute(Calls().ok) == "ok"


# -- hooks --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hooks_fire_once_per_transition(clock: FakeClock) -> None:
    events: list[tuple[str, CircuitState]] = []

    def on(what: str) -> Callable[[CircuitBreaker], None]:
        return lambda b: events.append((what, b.state))

    cb, p = breaker(
        clock,
        minimum_throughput=1,
        half_open_calls=2,
        on_opened=on("opened"),
        on_closed=on("closed"),
        on_half_opened=on("half_opened"),
    )
    c = Calls()
    await trip(cb, p)
    for _ in range(3):
        with pytest.raises(BrokenCircuitError):
            await p.execute(c.ok)
    clock.advance(cb.retry_after or 0.0)
    await outcome(p, c.fail)  # probe fails: half-open, then open again
    clock.advance(cb.retry_after or 0.0)
    await p.execute(c.ok)  # two probes: half-open once, closed after the second
    await p.execute(c.ok)
    await p.execute(c.ok)
    opened = ("opened", CircuitState.OPEN)
    half_opened = ("half_opened", CircuitState.HALF_OPEN)
    closed = ("closed", CircuitState.CLOSED)
    assert events == [opened, half_opened, opened, half_opened, closed]
    events.clear()
    cb.isolate()
    cb.isolate()
    cb.reset()
    cb.reset()
    assert events == [("opened", CircuitState.ISOLATED), closed]


@pytest.mark.anyio
async def test_failing_hook_is_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(b: CircuitBreaker) -> None:
        raise RuntimeError("hook bug")

    cb, p = breaker(clock, minimum_throughput=1, on_opened=bad, on_half_opened=bad)
    with caplog.at_level(logging.ERROR, logger="resilio.circuit_breaker"):
        await trip(cb, p)
        clock.advance(cb.retry_after or 0.0)
        assert await p.execute(Calls().ok) == "ok"
    assert state(cb) is CircuitState.CLOSED
    assert [r.getMessage() for r in caplog.records] == [
        "on_opened hook of circuit breaker 'circuit_breaker' failed",
        "on_half_opened hook of circuit breaker 'circuit_breaker' failed",
    ]


# -- composition and clocks ---------------------------------------------------------------


class CountingGate(GateStrategy):
    """A gate that records what the pipeline told it, and can refuse."""

    __slots__ = ("errs", "oks", "refuse")

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.oks = 0
        self.errs: list[BaseException] = []

    @property
    def kind(self) -> str:
        return "counting"

    def _enter(self) -> Any:
        if self.refuse:
            raise RateLimitedError("no", retry_after=1.0, strategy=self.label)
        return 7

    def _ok(self, token: Any, result: Any) -> None:
        assert token == 7
        self.oks += 1

    def _err(self, token: Any, exc: BaseException) -> None:
        assert token == 7
        self.errs.append(exc)


@pytest.mark.anyio
async def test_inside_a_pipeline_with_other_gates(clock: FakeClock) -> None:
    outer, inner = CountingGate(), CountingGate()
    cb = CircuitBreaker(minimum_throughput=1, break_duration=5.0, handle=ConnectionError)
    p = Pipeline(outer, cb, inner, clock=clock)
    c = Calls()
    assert await p.execute(c.ok) == "ok"
    assert (outer.oks, inner.oks) == (1, 1)
    # An inner gate's rejection is not a dependency failure here (handle excludes it).
    inner.refuse = True
    with pytest.raises(RateLimitedError):
        await p.execute(c.ok)
    assert state(cb) is CircuitState.CLOSED
    inner.refuse = False
    await outcome(p, c.fail)
    assert state(cb) is CircuitState.OPEN
    with pytest.raises(BrokenCircuitError):
        await p.execute(c.ok)
    assert isinstance(outer.errs[-1], BrokenCircuitError)  # the outer gate is released
    assert len(inner.errs) == 1  # the inner gate was never entered when rejected
    # The breaker took the pipeline's clock: its break runs on virtual time.
    clock.advance(5.0 + UNIT_NS / 1e9)
    inner.refuse = True
    with pytest.raises(RateLimitedError):
        await p.execute(c.ok)  # a probe refused further in gives its permit back
    assert state(cb) is CircuitState.HALF_OPEN
    inner.refuse = False
    assert await p.execute(c.ok) == "ok"
    assert state(cb) is CircuitState.CLOSED


@pytest.mark.anyio
async def test_as_decorator(clock: FakeClock) -> None:
    cb = CircuitBreaker(minimum_throughput=1, clock=clock)

    @Pipeline(cb)
    async def fetch(x: int) -> int:
        if x < 0:
            raise ConnectionError
        return x * 2

    assert await fetch(21) == 42
    with pytest.raises(ConnectionError):
        await fetch(-1)
    with pytest.raises(ExecutionRejectedError):
        await fetch(1)


# -- options --------------------------------------------------------------------------


def test_options_and_defaults() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_ratio, cb.minimum_throughput, cb.sampling_duration) == (0.5, 20, 30.0)
    assert (cb.break_duration, cb.max_break_duration, cb.half_open_calls) == (5.0, None, 1)
    assert (cb.slow_call_duration, cb.slow_call_ratio) == (None, None)
    assert cb.state is CircuitState.CLOSED and cb.retry_after == 0.0
    assert cb.label == "circuit_breaker"
    assert [int(s) for s in CircuitState] == [0, 1, 2, 3]
    for name in ("CLOSED", "OPEN", "HALF_OPEN", "ISOLATED"):
        assert CircuitState[name] == getattr(resilio._core, name)
    assert CircuitBreaker(slow_call_duration=0.2).slow_call_ratio == 1.0


async def _async_hook(b: CircuitBreaker) -> None:
    pass


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"failure_ratio": 0.0}, ValueError, "failure_ratio"),
        ({"failure_ratio": 1.5}, ValueError, "failure_ratio"),
        ({"failure_ratio": "1"}, TypeError, "failure_ratio"),
        ({"minimum_throughput": 0}, ValueError, "minimum_throughput"),
        ({"minimum_throughput": 2.0}, TypeError, "minimum_throughput"),
        ({"sampling_duration": 0}, ValueError, "sampling_duration"),
        ({"sampling_duration": float("nan")}, ValueError, "sampling_duration"),
        ({"break_duration": -1.0}, ValueError, "break_duration"),
        ({"break_duration": float("inf")}, ValueError, "break_duration"),
        ({"break_duration": True}, TypeError, "break_duration"),
        ({"max_break_duration": 1.0}, ValueError, "max_break_duration"),
        ({"half_open_calls": 0}, ValueError, "half_open_calls"),
        ({"half_open_calls": 32}, ValueError, "half_open_calls"),
        ({"slow_call_duration": 0.0}, ValueError, "slow_call_duration"),
        ({"slow_call_ratio": 0.5}, ValueError, "slow_call_duration"),
        ({"slow_call_duration": 1.0, "slow_call_ratio": 0}, ValueError, "slow_call_ratio"),
        ({"handle": asyncio.CancelledError}, TypeError, "handle"),
        ({"handle": KeyboardInterrupt}, TypeError, "handle"),
        ({"handle": (ValueError, 3)}, TypeError, "handle"),
        ({"handle": 42}, TypeError, "handle"),
        ({"handle_result": 1}, TypeError, "handle_result"),
        ({"on_opened": "x"}, TypeError, "on_opened"),
        ({"on_closed": _async_hook}, TypeError, "on_closed"),
    ],
)
def test_invalid_options(kw: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CircuitBreaker(**kw)
