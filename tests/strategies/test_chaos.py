"""Chaos strategies: injection rate, enabled switch, seeds, and use inside pipelines."""

from __future__ import annotations

import contextlib
import math
import random
import time
from types import ModuleType
from typing import Any

import anyio
import pytest

from resilio import Fallback, Pipeline, Retry, Timeout, TimeoutRejectedError
from resilio.errors import ResilioError
from resilio.strategies.chaos import (
    DEFAULT_LATENCY,
    FaultInjection,
    InjectedFaultError,
    LatencyInjection,
    OutcomeInjection,
)
from resilio.strategies.retry import Backoff
from resilio.testing import FakeClock

pytestmark = pytest.mark.anyio


class Counter:
    """An async callable that counts its calls and returns their number."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.calls


def expected_injections(seed: int, rate: float, n: int) -> list[bool]:
    """What a strategy seeded with `seed` decides for n calls: one draw each."""
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(n)]


# ---- FaultInjection ---------------------------------------------------------------------


async def test_fault_rate_one_raises_without_calling(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    chaos = FaultInjection(1.0)
    with pytest.raises(InjectedFaultError, match="injected fault"):
        await Pipeline(chaos).execute(fn)
    assert fn.calls == 0
    assert chaos.injected == 1
    assert issubclass(InjectedFaultError, ResilioError)


async def test_fault_rate_zero_never_injects(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    chaos = FaultInjection(0.0, seed=1)
    p = Pipeline(chaos)
    for _ in range(50):
        await p.execute(fn)
    assert fn.calls == 50
    assert chaos.injected == 0


async def test_fault_follows_the_seeded_sequence(core: ModuleType, anyio_backend: str) -> None:
    rate, n = 0.3, 200
    fn = Counter()
    p = Pipeline(FaultInjection(rate, seed=42))
    seen = []
    for _ in range(n):
        try:
            await p.execute(fn)
        except InjectedFaultError:
            seen.append(True)
        else:
            seen.append(False)
    assert seen == expected_injections(42, rate, n)
    assert 30 < sum(seen) < 90  # the rate is a rate


async def test_same_seed_same_faults_other_seed_differs(
    core: ModuleType, anyio_backend: str
) -> None:
    async def run(seed: int) -> list[bool]:
        p = Pipeline(FaultInjection(0.5, seed=seed))
        out = []
        for _ in range(64):
            try:
                await p.execute(Counter())
                out.append(False)
            except InjectedFaultError:
                out.append(True)
        return out

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)


async def test_shared_rng(core: ModuleType, anyio_backend: str) -> None:
    rng = random.Random(3)
    chaos = FaultInjection(0.5, rng=rng)
    p = Pipeline(chaos)
    for _ in range(10):
        with contextlib.suppress(InjectedFaultError):
            await p.execute(Counter())
    # Ten draws were taken from the shared generator.
    ref = random.Random(3)
    for _ in range(10):
        ref.random()
    assert rng.random() == ref.random()


async def test_exception_type_and_factory(core: ModuleType, anyio_backend: str) -> None:
    with pytest.raises(ConnectionResetError, match="injected fault"):
        await Pipeline(FaultInjection(1.0, exception=ConnectionResetError)).execute(Counter())

    made: list[Exception] = []

    def factory() -> Exception:
        made.append(TimeoutError(f"fault {len(made)}"))
        return made[-1]

    p = Pipeline(FaultInjection(1.0, exception=factory))
    errors = []
    for _ in range(2):
        with pytest.raises(TimeoutError) as info:
            await p.execute(Counter())
        errors.append(info.value)
    # A new exception each time: tracebacks never pile up on one object.
    assert errors == made and errors[0] is not errors[1]


async def test_factory_must_return_an_exception(core: ModuleType, anyio_backend: str) -> None:
    p = Pipeline(FaultInjection(1.0, exception=lambda: "nope"))  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="not an Exception"):
        await p.execute(Counter())


def test_fault_validation() -> None:
    with pytest.raises(TypeError, match="Exception subclass"):
        FaultInjection(0.1, exception=KeyboardInterrupt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="zero-argument callable"):
        FaultInjection(0.1, exception=ValueError("one instance"))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0.5", True, None])
def test_rate_type(bad: Any) -> None:
    with pytest.raises(TypeError, match="rate"):
        FaultInjection(bad)


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_rate_range(bad: float) -> None:
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        OutcomeInjection(bad, value=1)


def test_common_validation() -> None:
    with pytest.raises(TypeError, match="enabled must be a bool"):
        FaultInjection(0.1, enabled=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int"):
        FaultInjection(0.1, seed="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int"):
        FaultInjection(0.1, seed=True)
    with pytest.raises(ValueError, match="rng or seed"):
        FaultInjection(0.1, seed=1, rng=random.Random(1))
    with pytest.raises(TypeError, match=r"rng must be a random\.Random"):
        FaultInjection(0.1, rng=object())  # type: ignore[arg-type]
    chaos = FaultInjection(0.1)
    with pytest.raises(ValueError, match="rate"):
        chaos.rate = 2.0
    assert chaos.rate == 0.1


# ---- the enabled switch and run-time changes ---------------------------------------------


async def test_enabled_switch_at_run_time(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    chaos = FaultInjection(1.0, enabled=False)
    p = Pipeline(chaos)
    assert await p.execute(fn) == 1
    chaos.enabled = True
    with pytest.raises(InjectedFaultError):
        await p.execute(fn)
    chaos.enabled = False
    assert await p.execute(fn) == 2
    assert chaos.injected == 1


async def test_disabled_draws_nothing(core: ModuleType, anyio_backend: str) -> None:
    """Calls made while disabled do not shift the sequence later calls see."""
    chaos = FaultInjection(0.5, seed=11)
    p = Pipeline(chaos)
    seen = []
    for i in range(40):
        chaos.enabled = i % 2 == 0
        try:
            await p.execute(Counter())
            seen.append(False)
        except InjectedFaultError:
            seen.append(True)
    assert [s for i, s in enumerate(seen) if i % 2 == 0] == expected_injections(11, 0.5, 20)
    assert not any(s for i, s in enumerate(seen) if i % 2 == 1)


async def test_rate_change_at_run_time(core: ModuleType, anyio_backend: str) -> None:
    chaos = OutcomeInjection(0.0, value="chaos")
    p = Pipeline(chaos)
    assert await p.execute(Counter()) == 1
    chaos.rate = 1.0
    assert await p.execute(Counter()) == "chaos"


# ---- OutcomeInjection -------------------------------------------------------------------


async def test_outcome_value_replaces_the_call(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    chaos = OutcomeInjection(1.0, value=None)
    assert await Pipeline(chaos).execute(fn) is None
    assert fn.calls == 0
    assert chaos.injected == 1


async def test_outcome_factory_called_per_injection(core: ModuleType, anyio_backend: str) -> None:
    p = Pipeline(OutcomeInjection(1.0, factory=list))
    a, b = await p.execute(Counter()), await p.execute(Counter())
    assert a == [] and b == [] and a is not b


async def test_outcome_follows_the_seed(core: ModuleType, anyio_backend: str) -> None:
    p = Pipeline(OutcomeInjection(0.4, value=-1, seed=5))
    got = [await p.execute(Counter()) == -1 for _ in range(100)]
    assert got == expected_injections(5, 0.4, 100)


def test_outcome_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        OutcomeInjection(0.1)
    with pytest.raises(ValueError, match="exactly one"):
        OutcomeInjection(0.1, value=1, factory=list)
    with pytest.raises(TypeError, match="factory"):
        OutcomeInjection(0.1, factory=3)  # type: ignore[arg-type]


async def test_outcome_feeds_fallback_result_handling(core: ModuleType, anyio_backend: str) -> None:
    # The injected result goes through the strategies outside it like a real one.
    p = Pipeline(
        Fallback(value="fallback", handle_result=lambda r: r == 503),
        OutcomeInjection(1.0, value=503),
    )
    assert await p.execute(Counter()) == "fallback"


# ---- LatencyInjection -------------------------------------------------------------------


async def test_latency_sleeps_on_the_strategy_clock(core: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    fn = Counter()
    chaos = LatencyInjection(1.0, latency=2.5, clock=clock)
    assert await Pipeline(chaos).execute(fn) == 1
    assert clock.sleeps == [2.5]
    assert clock.now() == 2.5
    assert fn.calls == 1 and chaos.injected == 1


async def test_latency_takes_the_pipeline_clock(core: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    p = Pipeline(LatencyInjection(1.0, latency=0.75), clock=clock)
    await p.execute(Counter())
    await p.execute(Counter())
    assert clock.sleeps == [0.75, 0.75]


async def test_latency_rate_zero_never_sleeps(core: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    p = Pipeline(LatencyInjection(0.0, latency=1.0), clock=clock)
    for _ in range(10):
        await p.execute(Counter())
    assert clock.sleeps == []


async def test_latency_follows_the_seed_and_run_time_changes(
    core: ModuleType, anyio_backend: str
) -> None:
    clock = FakeClock()
    chaos = LatencyInjection(0.5, latency=1.0, seed=9, clock=clock)
    p = Pipeline(chaos)
    for _ in range(30):
        await p.execute(Counter())
    assert len(clock.sleeps) == sum(expected_injections(9, 0.5, 30))
    chaos.latency = 0.25
    chaos.rate = 1.0
    await p.execute(Counter())
    assert clock.sleeps[-1] == 0.25


async def test_latency_is_cut_by_an_enclosing_timeout(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    p = Pipeline(Timeout(0.02), LatencyInjection(1.0, latency=30.0))
    start = time.monotonic()
    with pytest.raises(TimeoutRejectedError):
        await p.execute(fn)
    assert time.monotonic() - start < 1.0
    assert fn.calls == 0


async def test_latency_sleep_is_a_cancellation_point(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    p = Pipeline(LatencyInjection(1.0, latency=30.0))
    with anyio.move_on_after(0.02) as scope:
        await p.execute(fn)
    assert scope.cancelled_caught
    assert fn.calls == 0


def test_latency_validation() -> None:
    assert LatencyInjection(0.1).latency == DEFAULT_LATENCY
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="latency"):
            LatencyInjection(0.1, latency=bad)
    with pytest.raises(TypeError, match="latency"):
        LatencyInjection(0.1, latency="1")  # type: ignore[arg-type]
    chaos = LatencyInjection(0.1, latency=1.0)
    with pytest.raises(ValueError, match="latency"):
        chaos.latency = -2.0
    assert chaos.latency == 1.0


# ---- inside pipelines -------------------------------------------------------------------


async def test_retry_recovers_from_injected_faults(core: ModuleType, anyio_backend: str) -> None:
    clock = FakeClock()
    fn = Counter()
    chaos = FaultInjection(0.5, seed=2)
    p = Pipeline(Retry(10, backoff=Backoff.constant(0.1)), chaos, clock=clock)
    for _ in range(20):
        await p.execute(fn)
    assert fn.calls == 20
    assert chaos.injected == sum(1 for _ in clock.sleeps)  # one backoff per injected fault
    assert chaos.injected > 0


async def test_retry_gives_up_on_a_total_fault(core: ModuleType, anyio_backend: str) -> None:
    fn = Counter()
    p = Pipeline(Retry(3, backoff=Backoff.constant(0.0)), FaultInjection(1.0))
    with pytest.raises(InjectedFaultError):
        await p.execute(fn)
    assert fn.calls == 0


async def test_chaos_outside_other_strategies(core: ModuleType, anyio_backend: str) -> None:
    # Not innermost: the chaos runner wraps an inner runner (here a gate).
    fn = Counter()
    clock = FakeClock()
    p = Pipeline(LatencyInjection(1.0, latency=1.0), FaultInjection(0.0), Timeout(5.0), clock=clock)
    assert await p.execute(fn) == 1
    assert clock.sleeps == [1.0]


async def test_decorator_and_arguments(core: ModuleType, anyio_backend: str) -> None:
    p = Pipeline(FaultInjection(0.0), OutcomeInjection(0.0, value=0))

    @p
    async def add(a: int, *, b: int) -> int:
        return a + b

    assert await add(1, b=2) == 3


def test_kinds_labels_and_repr() -> None:
    f = FaultInjection(0.25, name="faults")
    o = OutcomeInjection(0.5, value=1)
    lat = LatencyInjection(0.1, latency=2.0, enabled=False)
    assert (f.kind, o.kind, lat.kind) == ("chaos_fault", "chaos_outcome", "chaos_latency")
    assert f.label == "faults" and o.label == "chaos_outcome"
    assert repr(f) == "FaultInjection(rate=0.25, enabled=True)"
    assert "value=1" in repr(o)
    assert repr(lat) == "LatencyInjection(rate=0.1, latency=2.0, enabled=False)"
