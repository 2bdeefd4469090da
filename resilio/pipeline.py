"""Pipeline: strategies composed outermost first, executed as one loop.

At construction the pipeline compiles its strategies into a chain of runners:
adjacent gates (limiter, breaker, bulkhead, timeout) fuse into one step that
calls their enter/exit hooks around the awaited call; shapers (retry, hedging,
fallback, chaos) wrap what is inside them. Nothing is allocated per call but
the coroutines themselves.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from resilio import _core
from resilio.clock import Clock
from resilio.strategies._base import WAIT, GateStrategy, Runner, Shaper, Strategy

__all__ = ["Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")


def _gate1(g: GateStrategy, inner: Runner | None) -> Runner:
    enter, enter_wait, ok, err = g._enter, g._enter_wait, g._ok, g._err
    if inner is None:

        async def run_direct(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            tok = enter()
            if tok is WAIT:
                tok = await enter_wait()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as e:
                err(tok, e)
                raise
            ok(tok, result)
            return result

        return run_direct

    async def run_inner(
        fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tok = enter()
        if tok is WAIT:
            tok = await enter_wait()
        try:
            result = await inner(fn, args, kwargs)
        except BaseException as e:
            err(tok, e)
            raise
        ok(tok, result)
        return result

    return run_inner


def _exit_error(
    gates: Sequence[GateStrategy], tokens: Sequence[Any], exc: BaseException
) -> BaseException:
    """Run `_err` of entered gates, innermost first; a gate may replace the error."""
    for g, tok in zip(reversed(gates), reversed(tokens), strict=True):
        try:
            g._err(tok, exc)
        except BaseException as replaced:
            exc = replaced
    return exc


def _gate_n(gates: tuple[GateStrategy, ...], inner: Runner | None) -> Runner:
    call: Runner = inner if inner is not None else (lambda fn, a, kw: fn(*a, **kw))

    async def run(
        fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tokens: list[Any] = []
        try:
            for g in gates:
                tok = g._enter()
                if tok is WAIT:
                    tok = await g._enter_wait()
                tokens.append(tok)
        except BaseException as e:
            exc = _exit_error(gates[: len(tokens)], tokens, e)
            if exc is e:
                raise
            raise exc from e
        try:
            result = await call(fn, args, kwargs)
        except BaseException as e:
            exc = _exit_error(gates, tokens, e)
            if exc is e:
                raise
            raise exc from e
        for g, tok in zip(reversed(gates), reversed(tokens), strict=True):
            g._ok(tok, result)
        return result

    return run


_CGateGroup: Any
_CBound: Any
try:
    from resilio._runner_c import Bound as _CBound
    from resilio._runner_c import GateGroup as _CGateGroup
except ImportError:  # pure-Python install: the Python runners below do the same
    _CGateGroup = _CBound = None

_MAX_C_GATES = 4


def _gate_runner(gates: tuple[GateStrategy, ...], inner: Runner | None) -> Runner:
    # The compiled step follows the core choice, so both are tested together.
    if _CGateGroup is not None and _core.core_impl == "cython" and len(gates) <= _MAX_C_GATES:
        return _CGateGroup(gates, inner)  # type: ignore[no-any-return]
    return _gate1(gates[0], inner) if len(gates) == 1 else _gate_n(gates, inner)


def _compile(strategies: Sequence[Strategy]) -> Runner | None:
    """Build the runner chain from the innermost strategy outwards."""
    runner: Runner | None = None
    pending: list[GateStrategy] = []

    def flush() -> None:
        nonlocal runner
        if not pending:
            return
        gates = tuple(reversed(pending))  # pending was collected innermost first
        runner = _gate_runner(gates, runner)
        pending.clear()

    for s in reversed(strategies):
        if isinstance(s, GateStrategy):
            pending.append(s)
        elif isinstance(s, Shaper):
            flush()
            runner = s._wrap(runner)
        else:
            raise TypeError(f"not a resilio strategy: {s!r}")
    flush()
    return runner


def _mark_coroutine_function(fn: Callable[..., Any]) -> None:
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # Python >= 3.12
        mark(fn)
    else:
        # asyncio.iscoroutinefunction() honours this marker on 3.11.
        fn._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


class Pipeline:
    """Strategies applied outermost first around each call.

    `await pipeline.execute(fn, *args, **kwargs)` runs `fn(*args, **kwargs)`
    through every strategy; `@pipeline` decorates an async function with the
    same effect and the same signature.
    """

    __slots__ = ("__weakref__", "_run", "_strategies", "clock", "name")

    def __init__(
        self, *strategies: Strategy, name: str | None = None, clock: Clock | None = None
    ) -> None:
        for s in strategies:
            if not isinstance(s, Strategy):
                raise TypeError(f"Pipeline takes strategies, got {s!r}")
        self.name = name
        self.clock = clock
        self._strategies = tuple(strategies)
        for s in self._strategies:
            s._bind(name, clock)
        runner = _compile(self._strategies)
        self._run: Runner = runner if runner is not None else (lambda fn, a, kw: fn(*a, **kw))

    @property
    def strategies(self) -> tuple[Strategy, ...]:
        """The strategies, outermost first."""
        return self._strategies

    def execute(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        """Run `fn(*args, **kwargs)` through the pipeline; await the result."""
        return self._run(fn, args, kwargs)  # type: ignore[return-value]

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate an async function so every call runs through the pipeline."""
        run = self._run
        if _CBound is not None and _core.core_impl == "cython":
            # A compiled callable: no Python frame between the caller and the runner.
            bound = _CBound(run, fn)
            functools.update_wrapper(bound, fn)
            _mark_coroutine_function(bound)
            return bound  # type: ignore[no-any-return]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
            return run(fn, args, kwargs)  # type: ignore[return-value]

        _mark_coroutine_function(wrapper)
        return wrapper

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self._strategies)
        return f"Pipeline({inner}, name={self.name!r})"
