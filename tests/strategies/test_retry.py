"""Retry: attempts, backoff math, hints, deadline, budget, cancellation, pipeline use."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import math
import random
import sys
import time
import traceback
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest
import trio

import resilio
from resilio import Pipeline, context
from resilio import _core_py as core_py
from resilio.errors import RateLimitedError, TimeoutRejectedError
from resilio.strategies._base import GateStrategy
from resilio.strategies.retry import (
    BUDGET_REFUSED,
    COUNTER_NAMES,
    DEFAULT_ATTEMPTS,
    EXHAUSTED,
    GAVE_UP,
    HANDLED,
    RECOVERED,
    RETRIES,
    Backoff,
    BackoffState,
    Retry,
    RetryBudget,
)
from resilio.strategies.timeout import Timeout
from resilio.testing import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def impl(core: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Make `resilio._core` the implementation under test (compiled or twin)."""
    for name in core_py.__all__:
        monkeypatch.setattr(resilio._core, name, getattr(core, name))
    return core


class Flaky:
    """Fails `failures` times (a new error each time), then returns `result`."""

    def __init__(self, failures: int, exc: type[Exception] = ConnectionError, result: Any = "ok"):
        self.failures = failures
        self.exc = exc
        self.result = result
        self.calls = 0
        self.raised: list[BaseException] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            e = self.exc(f"failure {self.calls}")
            self.raised.append(e)
            raise e
        return self.result


def fixed(delay: float = 1.0) -> Backoff:
    return Backoff.constant(delay)


class Hinted(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__(f"retry after {retry_after}")
        self.retry_after = retry_after


@contextlib.contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    """Run the block under a deadline `seconds` from now (real monotonic time)."""
    _, token = context.push_deadline(time.monotonic() + seconds)
    try:
        yield
    finally:
        context.pop_deadline(token)


def cancel_now(scope: anyio.CancelScope) -> None:
    """Cancel `scope` at its next checkpoint (a past deadline works on every trio)."""
    scope.deadline = -math.inf


# ---- attempts and outcomes ----


async def test_retries_until_success(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(attempts=3, backoff=fixed(0.5), clock=clock)
    f = Flaky(2)
    assert await Pipeline(r).execute(f, 1, k=2) == "ok"
    assert f.calls == 3
    assert clock.sleeps == [0.5, 0.5]
    assert clock.now() == 1.0
    assert r.stats() == {
        "handled": 2,
        "retries": 2,
        "recovered": 1,
        "exhausted": 0,
        "budget_refused": 0,
        "gave_up": 0,
    }


@pytest.mark.parametrize("attempts", [1, 2, 5])
async def test_attempts_count_the_first_call(
    impl: ModuleType, anyio_backend: str, attempts: int
) -> None:
    clock = FakeClock()
    r = Retry(attempts=attempts, backoff=fixed(), clock=clock)
    f = Flaky(100)
    with pytest.raises(ConnectionError):
        await Pipeline(r).execute(f)
    assert f.calls == attempts
    assert len(clock.sleeps) == attempts - 1
    assert r.counters.get(EXHAUSTED) == 1
    assert r.counters.get(HANDLED) == attempts
    assert r.counters.get(RETRIES) == attempts - 1


async def test_success_path_touches_nothing(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(clock=clock)
    assert await Pipeline(r).execute(Flaky(0)) == "ok"
    assert clock.sleeps == []
    assert r.counters.snapshot() == (0,) * len(COUNTER_NAMES)


async def test_last_exception_propagates_unchanged(impl: ModuleType, anyio_backend: str) -> None:
    f = Flaky(100)
    with pytest.raises(ConnectionError) as info:
        await Pipeline(Retry(attempts=3, backoff=fixed(), clock=FakeClock())).execute(f)
    assert len(f.raised) == 3
    # The very object the callee raised last: no wrapping, copy or chaining.
    assert info.value is f.raised[-1]
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    assert not info.value.__suppress_context__
    # Earlier failures never became the context of later ones either.
    assert all(e.__context__ is None for e in f.raised)
    # Its traceback still ends where the callee raised it.
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "__call__"
    assert frames[-1].line == "raise e"


async def test_unhandled_type_passes_through_at_once(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(attempts=5, handle=ValueError, clock=clock)
    f = Flaky(100, exc=KeyError)
    with pytest.raises(KeyError) as info:
        await Pipeline(r).execute(f)
    assert info.value is f.raised[0]
    assert f.calls == 1
    assert clock.sleeps == []
    assert r.counters.snapshot() == (0,) * len(COUNTER_NAMES)


async def test_handle_tuple(impl: ModuleType, anyio_backend: str) -> None:
    r = Retry(attempts=3, backoff=fixed(), handle=(KeyError, ConnectionError), clock=FakeClock())
    f = Flaky(2)
    assert await Pipeline(r).execute(f) == "ok"
    assert f.calls == 3
    g = Flaky(2, exc=ValueError)
    with pytest.raises(ValueError):
        await Pipeline(r).execute(g)
    assert g.calls == 1


async def test_handle_subclasses(impl: ModuleType, anyio_backend: str) -> None:
    r = Retry(attempts=2, backoff=fixed(), handle=OSError, clock=FakeClock())
    f = Flaky(1, exc=ConnectionResetError)
    assert await Pipeline(r).execute(f) == "ok"
    assert f.calls == 2


async def test_handle_predicate(impl: ModuleType, anyio_backend: str) -> None:
    seen: list[BaseException] = []

    def transient(e: BaseException) -> bool:
        seen.append(e)
        return "1" in str(e)  # only the first failure is transient

    r = Retry(attempts=5, backoff=fixed(), handle=transient, clock=FakeClock())
    f = Flaky(100)
    with pytest.raises(ConnectionError) as info:
        await Pipeline(r).execute(f)
    assert f.calls == 2
    assert seen == f.raised
    assert info.value is f.raised[1]


async def test_unhandled_on_a_later_attempt_propagates(
    impl: ModuleType, anyio_backend: str
) -> None:
    errors = [ConnectionError("a"), KeyError("b"), ConnectionError("c")]
    calls = 0

    async def f() -> None:
        nonlocal calls
        calls += 1
        raise errors[calls - 1]

    r = Retry(attempts=5, backoff=fixed(), handle=ConnectionError, clock=FakeClock())
    with pytest.raises(KeyError) as info:
        await Pipeline(r).execute(f)
    assert info.value is errors[1]
    assert info.value.__context__ is None
    assert calls == 2


async def test_handle_result(impl: ModuleType, anyio_backend: str) -> None:
    results = iter([500, 503, 200])

    async def call() -> int:
        return next(results)

    clock = FakeClock()
    r = Retry(attempts=5, backoff=fixed(), handle_result=lambda s: s >= 500, clock=clock)
    assert await Pipeline(r).execute(call) == 200
    assert clock.sleeps == [1.0, 1.0]
    assert r.counters.get(RECOVERED) == 1


async def test_handle_result_returns_last_result_when_exhausted(
    impl: ModuleType, anyio_backend: str
) -> None:
    results = iter([500, 502, 503, 200])

    async def call() -> int:
        return next(results)

    r = Retry(attempts=3, backoff=fixed(), handle_result=lambda s: s >= 500, clock=FakeClock())
    assert await Pipeline(r).execute(call) == 503
    assert r.counters.get(EXHAUSTED) == 1


async def test_handle_result_and_errors_mix(impl: ModuleType, anyio_backend: str) -> None:
    outcomes: list[Any] = [ConnectionError("x"), 500, 200]

    async def call() -> int:
        o = outcomes.pop(0)
        if isinstance(o, Exception):
            raise o
        return int(o)

    r = Retry(attempts=3, backoff=fixed(), handle_result=lambda s: s >= 500, clock=FakeClock())
    assert await Pipeline(r).execute(call) == 200
    # With handle_result, an unhandled error still passes through at once.
    r2 = Retry(attempts=3, handle=KeyError, handle_result=bool, clock=FakeClock())
    f = Flaky(1)
    with pytest.raises(ConnectionError):
        await Pipeline(r2).execute(f)
    assert f.calls == 1


async def test_on_retry_sync(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    calls: list[tuple[int, Any, float, float]] = []

    def hook(attempt: int, outcome: Any, delay: float) -> None:
        calls.append((attempt, outcome, delay, clock.now()))

    r = Retry(attempts=4, backoff=Backoff.linear(1.0), on_retry=hook, clock=clock)
    f = Flaky(3)
    assert await Pipeline(r).execute(f) == "ok"
    # Called before each sleep, with the attempt that just failed and its error.
    assert calls == [
        (1, f.raised[0], 1.0, 0.0),
        (2, f.raised[1], 2.0, 1.0),
        (3, f.raised[2], 3.0, 3.0),
    ]


async def test_on_retry_async(impl: ModuleType, anyio_backend: str) -> None:
    calls: list[tuple[int, Any, float]] = []

    async def hook(attempt: int, outcome: Any, delay: float) -> None:
        await anyio.sleep(0)
        calls.append((attempt, outcome, delay))

    class AsyncHook:
        async def __call__(self, attempt: int, outcome: Any, delay: float) -> None:
            calls.append((attempt, outcome, delay))

    results = iter([1, 2])
    r = Retry(
        attempts=2,
        backoff=fixed(0.25),
        handle_result=lambda x: x == 1,
        on_retry=hook,
        clock=FakeClock(),
    )
    assert await Pipeline(r).execute(lambda: _value(next(results))) == 2
    assert calls == [(1, 1, 0.25)]
    calls.clear()
    r2 = Retry(attempts=2, backoff=fixed(0.25), on_retry=AsyncHook(), clock=FakeClock())
    f = Flaky(1)
    assert await Pipeline(r2).execute(f) == "ok"
    assert calls == [(1, f.raised[0], 0.25)]


async def _value(x: Any) -> Any:
    return x


# ---- backoff through the retry ----


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (Backoff.constant(0.3), [0.3, 0.3, 0.3, 0.3]),
        (Backoff.linear(0.5), [0.5, 1.0, 1.5, 2.0]),
        (Backoff.linear(0.5, max_delay=1.2), [0.5, 1.0, 1.2, 1.2]),
        (Backoff.exponential(0.1), [0.1, 0.2, 0.4, 0.8]),
        (Backoff.exponential(1.0, factor=3.0), [1.0, 3.0, 9.0, 27.0]),
        (Backoff.exponential(1.0, max_delay=5.0), [1.0, 2.0, 4.0, 5.0]),
        (Backoff.constant(0), [0.0, 0.0, 0.0, 0.0]),
    ],
)
async def test_backoff_sequence_is_slept(
    impl: ModuleType, anyio_backend: str, backoff: Backoff, expected: list[float]
) -> None:
    clock = FakeClock()
    with pytest.raises(ConnectionError):
        await Pipeline(Retry(attempts=5, backoff=backoff, clock=clock)).execute(Flaky(100))
    assert clock.sleeps == pytest.approx(expected, rel=1e-12, abs=0)


async def test_default_backoff(impl: ModuleType, anyio_backend: str) -> None:
    r = Retry()
    assert r.attempts == DEFAULT_ATTEMPTS == 3
    b = r.backoff
    assert (b.kind, b.base_delay, b.max_delay, b.jitter) == (
        "exponential",
        0.2,
        10.0,
        "decorrelated",
    )
    clock = FakeClock()
    with pytest.raises(ConnectionError):
        await Pipeline(Retry(clock=clock)).execute(Flaky(100))
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] < 0.2 * 2 * math.tanh(2) / 1.4


async def test_decorrelated_state_is_per_execution(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(attempts=5, backoff=Backoff.exponential(1.0, jitter=True, seed=7), clock=clock)
    for _ in range(30):
        with pytest.raises(ConnectionError):
            await Pipeline(r).execute(Flaky(100))
    # A state carried over from a previous execution would make first delays negative.
    firsts = clock.sleeps[::4]
    assert len(firsts) == 30
    assert all(0 <= d < 2 * math.tanh(2) / 1.4 for d in firsts)
    assert all(d >= 0 for d in clock.sleeps)


# ---- the Backoff object ----


def test_backoff_exact_values() -> None:
    st = BackoffState()
    assert [Backoff.constant(2.0).delay(a, st) for a in (1, 2, 9)] == [2.0, 2.0, 2.0]
    assert [Backoff.linear(0.5).delay(a, st) for a in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert [Backoff.exponential(0.5).delay(a, st) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert Backoff.exponential(1.0, max_delay=30.0).delay(1000) == 30.0
    # Unbounded but finite, even past float range.
    big = Backoff.exponential(1.0).delay(5000)
    assert math.isfinite(big) and big > 1e8


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: Backoff.constant(2.0, jitter=True, rng=rng),
        lambda rng: Backoff.linear(2.0, jitter="full", rng=rng),
        lambda rng: Backoff.exponential(2.0, jitter="full", rng=rng),
    ],
)
def test_full_jitter_bounds(make: Any) -> None:
    plain = {
        "constant": Backoff.constant(2.0),
        "linear": Backoff.linear(2.0),
        "exponential": Backoff.exponential(2.0),
    }
    b = make(random.Random(1))
    assert b.jitter == "full"
    ref = plain[b.kind]
    for attempt in (1, 2, 3):
        ds = [b.delay(attempt) for _ in range(2000)]
        top = ref.delay(attempt)
        assert all(0 <= d < top for d in ds)
        # Uniform: spread over the whole range, mean near the middle.
        assert min(ds) < 0.02 * top and max(ds) > 0.98 * top
        assert abs(sum(ds) / len(ds) - top / 2) < 0.05 * top


def test_full_jitter_is_capped_by_max_delay() -> None:
    b = Backoff.linear(1.0, max_delay=2.5, jitter=True, seed=3)
    ds = [b.delay(10) for _ in range(2000)]
    assert all(0 <= d < 2.5 for d in ds)
    assert max(ds) > 2.4


def test_decorrelated_jitter_matches_polly_formula() -> None:
    b = Backoff.exponential(0.2, jitter=True, seed=11)
    rng = random.Random(11)
    st = b.new_state()
    prev = 0.0
    for attempt in range(1, 9):
        # Polly DecorrelatedJitterBackoffV2 with its 0-based attempt = ours - 1.
        t = attempt - 1 + rng.random()
        nxt = 2.0**t * math.tanh(math.sqrt(4.0 * t))
        expected = (nxt - prev) * (1 / 1.4) * 0.2
        prev = nxt
        assert b.delay(attempt, st) == expected


def test_decorrelated_jitter_bounds_and_medians() -> None:
    b = Backoff.exponential(1.0, jitter=True, seed=5)
    delays: list[list[float]] = [[] for _ in range(6)]
    waited: list[list[float]] = [[] for _ in range(6)]
    for _ in range(4000):
        st = b.new_state()
        total = 0.0
        for a in range(1, 7):
            d = b.delay(a, st)
            total += d
            delays[a - 1].append(d)
            waited[a - 1].append(total)
    for a in range(1, 7):
        # t = a - 1 + U[0, 1): 2**t * tanh(.) < 2**a, and each step subtracts the last.
        assert all(0 <= d < 2**a / 1.4 for d in delays[a - 1])
        if a >= 2:
            # Polly's scaling: the median time from the first failure to retry a is
            # near delay * 2**(a-1), about half the total of the unjittered backoff.
            med = sorted(waited[a - 1])[len(waited[a - 1]) // 2]
            assert 0.9 * 2 ** (a - 1) < med < 1.1 * 2 ** (a - 1)


def test_decorrelated_jitter_is_capped_by_max_delay() -> None:
    b = Backoff.exponential(1.0, max_delay=3.0, jitter=True, seed=9)
    for _ in range(500):
        st = b.new_state()
        ds = [b.delay(a, st) for a in range(1, 12)]
        assert all(0 <= d <= 3.0 for d in ds)
        assert ds[-1] == 3.0  # late retries always hit the cap
    # Far past float range the formula overflows; the cap still holds.
    st = b.new_state()
    assert b.delay(2000, st) == 3.0
    assert b.delay(2001, st) == 3.0


def test_jitter_is_deterministic_with_seed_or_rng() -> None:
    def seq(b: Backoff) -> list[float]:
        st = b.new_state()
        return [b.delay(a, st) for a in range(1, 8)]

    assert seq(Backoff.exponential(0.2, jitter=True, seed=1)) == seq(
        Backoff.exponential(0.2, jitter=True, seed=1)
    )
    assert seq(Backoff.exponential(0.2, jitter=True, seed=1)) != seq(
        Backoff.exponential(0.2, jitter=True, seed=2)
    )
    assert seq(Backoff.linear(0.2, jitter=True, rng=random.Random(4))) == seq(
        Backoff.linear(0.2, jitter=True, rng=random.Random(4))
    )


def test_backoff_is_immutable_and_described() -> None:
    b = Backoff.exponential(0.2, max_delay=10.0, jitter=True, factor=3.0)
    with pytest.raises(AttributeError):
        b._delay = 5.0
    assert b.base_delay == 0.2
    assert repr(b) == "Backoff.exponential(0.2, max_delay=10.0, jitter='decorrelated', factor=3.0)"
    assert repr(Backoff.constant(1)) == "Backoff.constant(1.0)"
    assert b.factor == 3.0
    assert copy.copy(b) is b and copy.deepcopy(b) is b


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Backoff.constant(-1), ValueError, "delay"),
        (lambda: Backoff.constant(math.nan), ValueError, "delay"),
        (lambda: Backoff.constant("1"), TypeError, "delay"),  # type: ignore[arg-type]
        (lambda: Backoff.linear(1.0, max_delay=0.5), ValueError, "max_delay"),
        (lambda: Backoff.linear(1.0, max_delay=0), ValueError, "max_delay"),
        (lambda: Backoff.exponential(1.0, factor=0.5), ValueError, "factor"),
        (lambda: Backoff.linear(1.0, jitter="decorrelated"), ValueError, "jitter"),  # type: ignore[arg-type]
        (lambda: Backoff.exponential(1.0, jitter="half"), ValueError, "jitter"),  # type: ignore[arg-type]
        (lambda: Backoff.constant(1.0, rng=random.Random(), seed=1), ValueError, "rng or seed"),
        (lambda: Backoff.constant(1.0, jitter=True, rng=object()), TypeError, "rng"),  # type: ignore[arg-type]
        (lambda: Backoff.constant(1.0, seed=1.5), TypeError, "seed"),  # type: ignore[arg-type]
        (lambda: Backoff("cubic", 1.0), ValueError, "kind"),  # type: ignore[arg-type]
        (lambda: Backoff.constant(1.0).delay(0), ValueError, "attempt"),
    ],
)
def test_backoff_validation(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


# ---- retry_after hints and the deadline ----


async def test_retry_after_is_a_minimum(impl: ModuleType, anyio_backend: str) -> None:
    errors = [Hinted(3.0), Hinted(0.1), RateLimitedError("slow down", retry_after=2)]
    calls = 0

    async def f() -> str:
        nonlocal calls
        calls += 1
        if calls <= len(errors):
            raise errors[calls - 1]
        return "ok"

    clock = FakeClock()
    r = Retry(attempts=4, backoff=fixed(1.0), clock=clock)
    assert await Pipeline(r).execute(f) == "ok"
    assert clock.sleeps == [3.0, 1.0, 2.0]


@pytest.mark.parametrize("hint", [None, -1.0, math.nan, math.inf, "5", True])
async def test_unusable_hints_are_ignored(impl: ModuleType, anyio_backend: str, hint: Any) -> None:
    clock = FakeClock()
    r = Retry(attempts=2, backoff=fixed(1.0), clock=clock)
    calls = 0

    async def f() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Hinted(hint)
        return "ok"

    assert await Pipeline(r).execute(f) == "ok"
    assert clock.sleeps == [1.0]


async def test_hint_longer_than_max_delay_gives_up(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(attempts=5, backoff=Backoff.exponential(0.1, max_delay=2.0), clock=clock)
    err = RateLimitedError("no", retry_after=2.5)

    async def f() -> None:
        raise err

    with pytest.raises(RateLimitedError) as info:
        await Pipeline(r).execute(f)
    assert info.value is err
    assert clock.sleeps == []
    assert r.counters.get(GAVE_UP) == 1
    # A hint equal to max_delay is still waited for.
    clock2 = FakeClock()
    f2 = Flaky(1, exc=lambda msg: Hinted(2.0))  # type: ignore[arg-type]
    r2 = Retry(attempts=5, backoff=Backoff.exponential(0.1, max_delay=2.0), clock=clock2)
    assert await Pipeline(r2).execute(f2) == "ok"
    assert clock2.sleeps == [2.0]


async def test_hint_longer_than_deadline_gives_up(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(attempts=5, backoff=fixed(0.01), clock=clock)
    f = Flaky(100, exc=lambda msg: Hinted(30.0))  # type: ignore[arg-type]
    with deadline_in(10.0), pytest.raises(Hinted) as info:
        await Pipeline(r).execute(f)
    assert info.value is f.raised[0]
    assert f.calls == 1
    assert clock.sleeps == []
    assert r.counters.get(GAVE_UP) == 1


async def test_never_sleeps_past_the_deadline(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    r = Retry(attempts=10, backoff=Backoff.linear(4.0), clock=clock)
    f = Flaky(100)
    # The fake clock never moves real time: about 10 s stay left throughout.
    with deadline_in(10.0), pytest.raises(ConnectionError) as info:
        await Pipeline(r).execute(f)
    # Delays 4 and 8 fit before the deadline; 12 would not, so it gives up at once.
    assert clock.sleeps == [4.0, 8.0]
    assert f.calls == 3
    assert info.value is f.raised[-1]
    assert r.counters.get(GAVE_UP) == 1
    assert r.counters.get(EXHAUSTED) == 0


async def test_deadline_returns_last_handled_result(impl: ModuleType, anyio_backend: str) -> None:
    results = iter(range(100))

    async def f() -> int:
        return next(results)

    clock = FakeClock()
    r = Retry(attempts=10, backoff=Backoff.linear(2.0), handle_result=lambda x: x < 50, clock=clock)
    with deadline_in(5.0):
        assert await Pipeline(r).execute(f) == 2
    assert clock.sleeps == [2.0, 4.0]


async def test_deadline_from_an_outer_timeout(impl: ModuleType, anyio_backend: str) -> None:
    # Timeout(5) outside: a 10 s backoff could only end in a cancellation, so give up.
    clock = FakeClock()
    r = Retry(attempts=3, backoff=fixed(10.0), clock=clock)
    f = Flaky(100)
    with pytest.raises(ConnectionError):
        await Pipeline(Timeout(5.0), r).execute(f)
    assert f.calls == 1
    assert clock.sleeps == []


# ---- retry budget ----


async def test_budget_refuses_and_raises_last_error(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock(start=100.0)
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
    r = Retry(attempts=2, backoff=fixed(0.0), budget=budget, clock=clock)
    p = Pipeline(r)
    outcomes = []
    for _ in range(6):
        f = Flaky(100)
        with pytest.raises(ConnectionError) as info:
            await p.execute(f)
        assert info.value is f.raised[-1]
        outcomes.append(f.calls)
    # Calls 1..6 allow floor(0.5 * calls) retries in all: 0, 1, 1, 2, 2, 3.
    assert outcomes == [1, 2, 1, 2, 1, 2]
    assert r.counters.get(BUDGET_REFUSED) == 3
    assert r.counters.get(RETRIES) == 3
    assert budget.calls_and_retries(clock.now_ns()) == (6, 3)


async def test_budget_window_slides(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    r = Retry(attempts=2, backoff=fixed(0.0), budget=budget, clock=clock)
    p = Pipeline(r)
    f = Flaky(1)
    assert await p.execute(f) == "ok"  # 1 call, 1 retry
    clock.advance(5.0)
    g = Flaky(1)
    await p.execute(Flaky(0))  # a second call, no retry
    assert await p.execute(g) == "ok"
    assert g.calls == 2
    assert budget.calls_and_retries(clock.now_ns()) == (3, 2)
    clock.advance(10.0)  # everything left the window
    assert budget.calls_and_retries(clock.now_ns()) == (0, 0)
    assert budget.available(clock.now_ns()) == 0


async def test_budget_floor(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=4.0)  # 2 retries per window
    r = Retry(attempts=10, backoff=fixed(0.0), budget=budget, clock=clock)
    f = Flaky(100)
    with pytest.raises(ConnectionError):
        await Pipeline(r).execute(f)
    assert f.calls == 3
    assert budget.available(clock.now_ns()) == 0


async def test_budget_refusal_returns_last_result(impl: ModuleType, anyio_backend: str) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    results = iter([1, 2, 3])

    async def f() -> int:
        return next(results)

    r = Retry(attempts=3, backoff=fixed(), handle_result=bool, budget=budget, clock=FakeClock())
    assert await Pipeline(r).execute(f) == 1
    assert r.counters.get(BUDGET_REFUSED) == 1


async def test_budget_is_shared(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.3, window=10.0)  # 3 retries in all
    a = Retry(attempts=10, backoff=fixed(0.0), budget=budget, clock=clock)
    b = Retry(attempts=10, backoff=fixed(0.0), budget=budget, clock=clock)
    fa, fb = Flaky(2), Flaky(100)
    assert await Pipeline(a).execute(fa) == "ok"
    with pytest.raises(ConnectionError):
        await Pipeline(b).execute(fb)
    assert (fa.calls, fb.calls) == (3, 2)
    assert b.counters.get(BUDGET_REFUSED) == 1
    assert budget.calls_and_retries(clock.now_ns()) == (2, 3)


def test_budget_arithmetic_is_exact(impl: ModuleType) -> None:
    # 0.29 * 100 is 28.999999999999996 in floats; the budget counts in millionths.
    budget = RetryBudget(ratio=0.29, min_per_second=0.0, window=10.0)
    for _ in range(100):
        budget.deposit(1)
    assert budget.available(1) == 29
    for _ in range(29):
        assert budget.try_withdraw(2)
    assert not budget.try_withdraw(2)
    assert budget.calls_and_retries(3) == (100, 29)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": -0.1}, ValueError, "ratio"),
        ({"ratio": math.inf}, ValueError, "ratio"),
        ({"ratio": "0.2"}, TypeError, "ratio"),
        ({"min_per_second": -1}, ValueError, "min_per_second"),
        ({"window": 0}, ValueError, "window"),
        ({"window": 1e-9}, ValueError, "window"),
    ],
)
def test_budget_validation(
    impl: ModuleType, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RetryBudget(**kwargs)


# ---- cancellation ----


class Stop(BaseException):
    """A BaseException that is not an Exception (like KeyboardInterrupt)."""


async def test_base_exceptions_are_never_retried(impl: ModuleType, anyio_backend: str) -> None:
    calls = 0

    async def f() -> None:
        nonlocal calls
        calls += 1
        raise Stop

    r = Retry(attempts=5, handle=lambda e: True, clock=FakeClock())
    with pytest.raises(Stop):
        await Pipeline(r).execute(f)
    assert calls == 1
    assert r.counters.snapshot() == (0,) * len(COUNTER_NAMES)


async def test_cancellation_during_the_call(impl: ModuleType, anyio_backend: str) -> None:
    calls = 0

    async def f() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(10)

    clock = FakeClock()
    r = Retry(attempts=5, handle=lambda e: True, clock=clock)
    with anyio.CancelScope() as scope:
        cancel_now(scope)
        await Pipeline(r).execute(f)
    assert scope.cancelled_caught
    assert calls == 1
    assert clock.sleeps == []
    assert r.counters.snapshot() == (0,) * len(COUNTER_NAMES)


async def test_cancellation_during_backoff_fake_clock(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    f = Flaky(100)
    with anyio.CancelScope() as scope:
        # Cancel the enclosing scope from the hook: the backoff sleep is the next checkpoint.
        r = Retry(
            attempts=5, backoff=fixed(1.0), on_retry=lambda *a: cancel_now(scope), clock=clock
        )
        await Pipeline(r).execute(f)
    assert scope.cancelled_caught
    assert f.calls == 1
    assert clock.sleeps == [1.0]


async def test_cancellation_during_backoff_real_clock(impl: ModuleType, anyio_backend: str) -> None:
    f = Flaky(100)
    r = Retry(attempts=5, backoff=fixed(5.0))
    start = time.monotonic()
    with anyio.move_on_after(0.02) as scope:
        await Pipeline(r).execute(f)
    assert scope.cancelled_caught
    assert time.monotonic() - start < 2.0
    assert f.calls == 1
    assert r.counters.get(RETRIES) == 1


# ---- inside a pipeline ----


class CountingGate(GateStrategy):
    """A test gate recording what the pipeline tells it."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    @property
    def kind(self) -> str:
        return "counting"

    def _enter(self) -> Any:
        self.events.append("enter")
        return None

    async def _enter_wait(self) -> Any:  # pragma: no cover - never waits
        raise AssertionError

    def _ok(self, token: Any, result: Any) -> None:
        self.events.append("ok")

    def _err(self, token: Any, exc: BaseException) -> None:
        self.events.append(type(exc).__name__)


@pytest.mark.parametrize("with_result", [False, True])
async def test_retry_wraps_inner_strategies(
    impl: ModuleType, anyio_backend: str, with_result: bool
) -> None:
    gate = CountingGate()
    clock = FakeClock()
    r = Retry(
        attempts=3,
        backoff=fixed(),
        handle_result=(lambda x: False) if with_result else None,
        clock=clock,
    )
    f = Flaky(2)
    assert await Pipeline(r, gate).execute(f) == "ok"
    assert gate.events == ["enter", "ConnectionError", "enter", "ConnectionError", "enter", "ok"]
    g = Flaky(100)
    with pytest.raises(ConnectionError) as info:
        await Pipeline(r, gate).execute(g)
    assert info.value is g.raised[-1]


async def test_retry_around_attempt_timeout(impl: ModuleType, anyio_backend: str) -> None:
    calls = 0

    async def f() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(5)
        return "ok"

    r = Retry(attempts=2, backoff=fixed(0.0), handle=TimeoutRejectedError)
    assert await Pipeline(r, Timeout(0.01)).execute(f) == "ok"
    assert calls == 2


async def test_as_decorator_keeps_signature_and_name(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    calls = 0

    @Pipeline(Retry(attempts=3, backoff=fixed(0.5)), clock=clock)
    async def fetch(url: str, *, timeout: float = 1.0) -> bytes:
        """Fetch a URL."""
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(url)
        return url.encode()

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch a URL."
    assert str(inspect.signature(fetch)) == "(url: 'str', *, timeout: 'float' = 1.0) -> 'bytes'"
    if sys.version_info >= (3, 12):
        assert inspect.iscoroutinefunction(fetch)
    else:  # 3.11's inspect cannot be told; asyncio's marker is what frameworks read
        assert asyncio.iscoroutinefunction(fetch)
    assert await fetch("x", timeout=2.0) == b"x"
    # The pipeline's clock reached the retry.
    assert clock.sleeps == [0.5, 0.5]


async def test_budget_in_pipeline_counts_executions(impl: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    budget = RetryBudget()
    p = Pipeline(Retry(budget=budget), CountingGate(), clock=clock)
    for _ in range(5):
        await p.execute(Flaky(0))
    assert budget.calls_and_retries(clock.now_ns()) == (5, 0)


# ---- construction ----


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts"),
        ({"attempts": True}, TypeError, "attempts"),
        ({"attempts": 2.0}, TypeError, "attempts"),
        ({"backoff": 1.0}, TypeError, "backoff"),
        ({"handle": ()}, ValueError, "handle"),
        ({"handle": 3}, TypeError, "handle"),
        ({"handle": (ValueError, int)}, TypeError, "handle"),
        ({"handle": BaseException}, ValueError, "BaseException"),
        ({"handle": (ValueError, asyncio.CancelledError)}, ValueError, "CancelledError"),
        ({"handle": trio.Cancelled}, ValueError, "Cancelled"),
        ({"handle_result": 1}, TypeError, "handle_result"),
        ({"on_retry": "x"}, TypeError, "on_retry"),
        ({"budget": 0.2}, TypeError, "budget"),
    ],
)
def test_retry_validation(
    impl: ModuleType, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Retry(**kwargs)


def test_repr_and_label(impl: ModuleType) -> None:
    r = Retry(2, backoff=Backoff.constant(1.0), budget=RetryBudget(), name="db")
    assert r.kind == "retry"
    assert r.label == "db"
    assert repr(r) == (
        "Retry(attempts=2, backoff=Backoff.constant(1.0), "
        "budget=RetryBudget(ratio=0.2, min_per_second=10.0, window=10.0), name='db')"
    )
    assert isinstance(r.counters, resilio._core.Counters)
