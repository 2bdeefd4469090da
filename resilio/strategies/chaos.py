"""Chaos: inject faults, substitute outcomes and add latency, on purpose, at a set rate.

Three shapers in the manner of Polly's chaos strategies (Simmy). Each one
draws a number in [0, 1) per call from its own `random.Random` (seeded for
reproducible runs) and injects when the number is below `rate`:

- `FaultInjection` raises an exception instead of making the call;
- `OutcomeInjection` returns a value instead of making the call;
- `LatencyInjection` sleeps on the strategy's clock, then makes the call.

`enabled` and `rate` (and `latency`) are plain settings read on every call,
so a test or an operator can switch chaos on and off while the pipeline runs.
A disabled strategy draws nothing, so toggling it does not shift the random
sequence that later calls see. Put chaos innermost (last) in a pipeline to
exercise the strategies outside it as a real failure of the call would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

from resilio.clock import Clock
from resilio.errors import ResilioError
from resilio.strategies._base import Runner, Shaper

__all__ = [
    "DEFAULT_LATENCY",
    "FaultInjection",
    "InjectedFaultError",
    "LatencyInjection",
    "OutcomeInjection",
]

#: Seconds LatencyInjection adds when no latency is given (Polly's default too).
DEFAULT_LATENCY: Final = 30.0

_MISSING: Any = object()


class InjectedFaultError(ResilioError):
    """The fault `FaultInjection` raises when no `exception` is given."""


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"rate must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"rate must be in [0, 1], got {value!r}")
    return float(value)


def _enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"enabled must be a bool, got {value!r}")
    return value


def _random(seed: int | None, rng: random.Random | None) -> Callable[[], float]:
    if rng is not None and seed is not None:
        raise ValueError("give rng or seed, not both")
    if rng is not None:
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        return rng.random
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return random.Random(seed).random


class _Chaos(Shaper):
    """What the three chaos strategies share: rate, enabled switch, random source."""

    __slots__ = ("_rand", "_rate", "enabled", "injected")

    def __init__(
        self,
        rate: float,
        *,
        enabled: bool,
        seed: int | None,
        rng: random.Random | None,
        name: str | None,
        clock: Clock | None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        self._rate = _rate(rate)
        #: Inject only while True; may be switched at any time.
        self.enabled: bool = _enabled(enabled)
        self._rand = _random(seed, rng)
        #: How many calls this strategy injected into.
        self.injected = 0

    @property
    def rate(self) -> float:
        """Share of calls injected into, in [0, 1]; may be changed at any time."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = _rate(value)


class FaultInjection(_Chaos):
    """Raise an exception instead of making the call, for `rate` of the calls.

    `exception` is an Exception subclass (built with the message "injected
    fault") or a zero-argument callable that returns a new exception each
    time; the default raises `InjectedFaultError`.
    """

    __slots__ = ("_make",)

    def __init__(
        self,
        rate: float,
        *,
        exception: type[Exception] | Callable[[], Exception] = InjectedFaultError,
        enabled: bool = True,
        seed: int | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(rate, enabled=enabled, seed=seed, rng=rng, name=name, clock=clock)
        if isinstance(exception, type):
            if not issubclass(exception, Exception):
                # Cancellation and other BaseExceptions are never outcomes to inject.
                raise TypeError(f"exception must be an Exception subclass, got {exception!r}")
        elif not callable(exception):
            # An instance (not callable) raised again and again would pile up tracebacks.
            raise TypeError(
                "exception must be an Exception subclass or a zero-argument callable "
                f"returning a new exception, got {exception!r}"
            )
        self._make = exception

    @property
    def kind(self) -> str:
        return "chaos_fault"

    def _fault(self) -> Exception:
        make = self._make
        exc = make("injected fault") if isinstance(make, type) else make()
        if not isinstance(exc, Exception):
            raise TypeError(f"the exception factory returned {exc!r}, not an Exception")
        return exc

    def _wrap(self, inner: Runner | None) -> Runner:
        rand, fault, strategy = self._rand, self._fault, self

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if strategy.enabled and rand() < strategy._rate:
                strategy.injected += 1
                raise fault()
            if inner is None:
                return await fn(*args, **kwargs)
            return await inner(fn, args, kwargs)

        return run

    def __repr__(self) -> str:
        return f"FaultInjection(rate={self._rate!r}, enabled={self.enabled!r})"


class OutcomeInjection(_Chaos):
    """Return a value instead of making the call, for `rate` of the calls.

    Give `value` (returned as is) or `factory`, a zero-argument callable
    called for each injected call (for results that must not be shared, such
    as an `httpx.Response`).
    """

    __slots__ = ("_factory", "_value")

    def __init__(
        self,
        rate: float,
        *,
        value: Any = _MISSING,
        factory: Callable[[], Any] | None = None,
        enabled: bool = True,
        seed: int | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(rate, enabled=enabled, seed=seed, rng=rng, name=name, clock=clock)
        if (value is _MISSING) == (factory is None):
            raise ValueError("OutcomeInjection needs exactly one of value= or factory=")
        if factory is not None and not callable(factory):
            raise TypeError(f"factory must be a zero-argument callable, got {factory!r}")
        self._value = None if value is _MISSING else value
        self._factory = factory

    @property
    def kind(self) -> str:
        return "chaos_outcome"

    def _wrap(self, inner: Runner | None) -> Runner:
        rand, value, factory, strategy = self._rand, self._value, self._factory, self

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if strategy.enabled and rand() < strategy._rate:
                strategy.injected += 1
                return value if factory is None else factory()
            if inner is None:
                return await fn(*args, **kwargs)
            return await inner(fn, args, kwargs)

        return run

    def __repr__(self) -> str:
        what = f"value={self._value!r}" if self._factory is None else f"factory={self._factory!r}"
        return f"OutcomeInjection(rate={self._rate!r}, {what}, enabled={self.enabled!r})"


def _latency(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"latency must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class LatencyInjection(_Chaos):
    """Sleep `latency` seconds on the strategy's clock before the call, for `rate` of calls.

    The sleep is a cancellation point: an enclosing `Timeout` cuts it short
    as it would a slow dependency.
    """

    __slots__ = ("_latency",)

    def __init__(
        self,
        rate: float,
        *,
        latency: float = DEFAULT_LATENCY,
        enabled: bool = True,
        seed: int | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(rate, enabled=enabled, seed=seed, rng=rng, name=name, clock=clock)
        self._latency = _latency(latency)

    @property
    def kind(self) -> str:
        return "chaos_latency"

    @property
    def latency(self) -> float:
        """Seconds added to an injected call; may be changed at any time."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = _latency(value)

    def _wrap(self, inner: Runner | None) -> Runner:
        rand, strategy = self._rand, self

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if strategy.enabled and rand() < strategy._rate:
                strategy.injected += 1
                # Read at call time: the clock is the pipeline's once bound.
                await strategy._clock.sleep(strategy._latency)
            if inner is None:
                return await fn(*args, **kwargs)
            return await inner(fn, args, kwargs)

        return run

    def __repr__(self) -> str:
        return (
            f"LatencyInjection(rate={self._rate!r}, latency={self._latency!r}, "
            f"enabled={self.enabled!r})"
        )
