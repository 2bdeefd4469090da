"""Fallback: answer with a substitute when the call fails."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from resilio.clock import Clock
from resilio.strategies._base import Runner, Shaper

__all__ = ["Fallback"]

_MISSING: Any = object()

Handle = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _exception_filter(handle: Handle) -> Callable[[Exception], bool]:
    if isinstance(handle, type) and issubclass(handle, BaseException):
        types: tuple[type[BaseException], ...] = (handle,)
    elif isinstance(handle, tuple):
        for t in handle:
            if not (isinstance(t, type) and issubclass(t, BaseException)):
                raise TypeError(f"handle must hold exception types, got {t!r}")
        types = handle
    elif callable(handle):
        return handle  # type: ignore[return-value]
    else:
        raise TypeError(f"handle must be exception types or a predicate, got {handle!r}")
    return lambda exc: isinstance(exc, types)


class Fallback(Shaper):
    """Return `value`, or `await handler(outcome)`, when the call fails.

    A failure is an exception matched by `handle` (types or a predicate;
    default: any Exception) or a result for which `handle_result` is true.
    The handler receives the exception or the rejected result.
    Cancellation is never a failure and always propagates.
    """

    __slots__ = ("_handle", "_handle_result", "_handler", "_value", "fallbacks")

    def __init__(
        self,
        *,
        value: Any = _MISSING,
        handler: Callable[[Any], Awaitable[Any]] | None = None,
        handle: Handle = Exception,
        handle_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        if (value is _MISSING) == (handler is None):
            raise ValueError("Fallback needs exactly one of value= or handler=")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be an async callable, got {handler!r}")
        self._value = value
        self._handler = handler
        self._handle = _exception_filter(handle)
        self._handle_result = handle_result
        #: How many calls were answered by the fallback.
        self.fallbacks = 0

    @property
    def kind(self) -> str:
        return "fallback"

    async def _substitute(self, outcome: Any) -> Any:
        self.fallbacks += 1
        if self._handler is None:
            return self._value
        return await self._handler(outcome)

    def _wrap(self, inner: Runner | None) -> Runner:
        handles, handle_result, substitute = self._handle, self._handle_result, self._substitute

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            try:
                if inner is None:
                    result = await fn(*args, **kwargs)
                else:
                    result = await inner(fn, args, kwargs)
            except Exception as exc:
                if not handles(exc):
                    raise
                return await substitute(exc)
            if handle_result is not None and handle_result(result):
                return await substitute(result)
            return result

        return run

    def __repr__(self) -> str:
        what = f"value={self._value!r}" if self._handler is None else f"handler={self._handler!r}"
        return f"Fallback({what})"
