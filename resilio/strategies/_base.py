"""The contract between strategies and the pipeline.

Two kinds of strategy exist. A *gate* only decides around a call: it enters
before (and may refuse), and exits after with the outcome (rate limiter,
circuit breaker, bulkhead, timeout). The pipeline fuses adjacent gates into
one execution step, so a gate costs a couple of method calls, not a
coroutine. A *shaper* re-runs or forks the call (retry, hedging, fallback,
chaos) and wraps whatever is inside it in its own loop.

An `Exception` from the call is an outcome; any other `BaseException`
(cancellation, KeyboardInterrupt) is not: gates release what they hold and
record nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from resilio.clock import SYSTEM_CLOCK, Clock

__all__ = ["WAIT", "GateStrategy", "Runner", "Shaper", "Strategy", "direct"]

#: Runs one call: (fn, args, kwargs) -> awaitable result.
Runner = Callable[[Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


def direct(
    fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Awaitable[Any]:
    """The innermost runner: call the user's function (no extra coroutine)."""
    return fn(*args, **kwargs)


class _Wait:
    __slots__ = ()

    def __repr__(self) -> str:
        return "WAIT"


#: Returned by `GateStrategy._enter` when the decision needs an await (a queue or a wait).
WAIT: Any = _Wait()


class Strategy:
    """Base of every strategy."""

    __slots__ = ("_clock", "_explicit_clock", "name", "pipeline_name")

    def __init__(self, *, name: str | None = None, clock: Clock | None = None) -> None:
        self.name = name
        self._explicit_clock = clock
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.pipeline_name: str | None = None

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def kind(self) -> str:
        """Short name used in errors and metrics, e.g. "retry"."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.name or self.kind

    def _bind(self, pipeline_name: str | None, clock: Clock | None) -> None:
        """Take the pipeline's name and clock (a clock given to the strategy wins)."""
        if self.pipeline_name is None:
            self.pipeline_name = pipeline_name
        if self._explicit_clock is None and clock is not None:
            self._clock = clock


class GateStrategy(Strategy):
    """A strategy that only decides before and after a call."""

    __slots__ = ()

    def _enter(self) -> Any:
        """Admit (return a token), refuse (raise), or return WAIT."""
        raise NotImplementedError

    async def _enter_wait(self) -> Any:
        """Finish an admission that `_enter` could not decide at once."""
        raise NotImplementedError

    def _ok(self, token: Any, result: Any) -> None:
        """The call returned `result`."""
        raise NotImplementedError

    def _err(self, token: Any, exc: BaseException) -> None:
        """The call raised `exc` (maybe a cancellation). May raise a replacement."""
        raise NotImplementedError


class Shaper(Strategy):
    """A strategy that runs what is inside it its own way (again, in parallel...)."""

    __slots__ = ()

    def _wrap(self, inner: Runner | None) -> Runner:
        """Return a runner that applies this strategy around `inner` (None: the call)."""
        raise NotImplementedError
