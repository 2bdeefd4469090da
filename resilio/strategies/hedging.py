"""Hedging: start another attempt when the first is slow; the first good answer wins.

The primary attempt starts at once. While no attempt has produced an accepted
outcome, another starts every `delay` seconds, or at once when an attempt
fails, until `max_attempts` have started. The first accepted outcome wins;
every other attempt is cancelled and awaited before the result is returned,
so no attempt outlives the call. If every attempt fails, the last failure
propagates (the exception itself, or the last rejected result is returned).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from resilio.clock import Clock
from resilio.strategies._base import Runner, Shaper
from resilio.strategies.fallback import Handle, _exception_filter

__all__ = ["Hedging"]

DEFAULT_MAX_ATTEMPTS = 2


class _Race:
    """State of one hedged call, shared by its attempts."""

    __slots__ = ("failures", "has_winner", "kick", "last", "last_is_exc", "winner", "winner_is_exc")

    def __init__(self) -> None:
        self.has_winner = False
        self.winner: Any = None
        self.winner_is_exc = False
        self.last: Any = None
        self.last_is_exc = False
        self.failures = 0
        self.kick = anyio.Event()


class Hedging(Shaper):
    """Race up to `max_attempts` attempts started `delay` seconds apart."""

    __slots__ = ("_handle", "_handle_result", "delay", "hedges", "max_attempts")

    def __init__(
        self,
        delay: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        *,
        handle: Handle = Exception,
        handle_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be a number, got {delay!r}")
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay must be a finite number >= 0, got {delay!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {max_attempts!r}")
        if not 1 <= max_attempts <= 16:
            raise ValueError(f"max_attempts must be in [1, 16], got {max_attempts!r}")
        self.delay = float(delay)
        self.max_attempts = max_attempts
        self._handle = _exception_filter(handle)
        self._handle_result = handle_result
        #: How many extra attempts were started.
        self.hedges = 0

    @property
    def kind(self) -> str:
        return "hedging"

    def _wrap(self, inner: Runner | None) -> Runner:
        handles, handle_result = self._handle, self._handle_result
        max_attempts, delay = self.max_attempts, self.delay
        strategy = self

        async def attempt(
            race: _Race,
            scope: anyio.CancelScope,
            fn: Callable[..., Awaitable[Any]],
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> None:
            try:
                if inner is None:
                    result = await fn(*args, **kwargs)
                else:
                    result = await inner(fn, args, kwargs)
            except Exception as exc:
                if not handles(exc) and not race.has_winner:
                    # An error we do not handle ends the race with that error.
                    race.has_winner, race.winner, race.winner_is_exc = True, exc, True
                    scope.cancel()
                    return
                race.last, race.last_is_exc = exc, True
                race.failures += 1
                race.kick.set()
                return
            if race.has_winner:
                return
            if handle_result is not None and handle_result(result):
                race.last, race.last_is_exc = result, False
                race.failures += 1
                race.kick.set()
                return
            race.has_winner, race.winner = True, result
            scope.cancel()

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            race = _Race()
            async with anyio.create_task_group() as tg:
                scope = tg.cancel_scope
                started = 0
                while True:
                    tg.start_soon(attempt, race, scope, fn, args, kwargs)
                    started += 1
                    if started >= max_attempts:
                        break
                    with anyio.move_on_after(delay):
                        await race.kick.wait()
                    if race.has_winner:
                        break
                    if race.kick.is_set():
                        race.kick = anyio.Event()
                    strategy.hedges += 1
            if race.has_winner:
                if isinstance(race.winner, BaseException) and not isinstance(
                    race.winner, Exception
                ):
                    raise race.winner
                if isinstance(race.winner, Exception) and not handles(race.winner):
                    raise race.winner
                return race.winner
            if race.last_is_exc:
                raise race.last
            return race.last

        return run

    def __repr__(self) -> str:
        return f"Hedging(delay={self.delay:g}, max_attempts={self.max_attempts})"
