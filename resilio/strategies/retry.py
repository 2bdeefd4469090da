"""Retry: run the call again when it fails with a handled outcome.

The first attempt costs a try/except around the awaited call (plus one
predicate call with `handle_result`, and one clock read and one core call
with a `RetryBudget`). Everything else (backoff, hints, deadline, budget
withdrawal, hooks, counters) runs only once an attempt has failed.

Between attempts the retry sleeps on its clock for the backoff delay, raised
to the `retry_after` hint of the error when it has one. It gives up at once,
with the last error (the very object the callee raised) or the last handled
result, when attempts run out, when the hint exceeds the backoff's
`max_delay`, when the delay would reach the enclosing deadline
(`resilio.deadline()`), or when the retry budget is spent. Cancellation is
never retried.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, cast

from resilio import _core
from resilio.clock import Clock
from resilio.context import deadline
from resilio.strategies._base import Runner, Shaper

__all__ = [
    "BUDGET_BUCKETS",
    "BUDGET_REFUSED",
    "COUNTER_NAMES",
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BACKOFF_DELAY",
    "DEFAULT_BACKOFF_MAX_DELAY",
    "DEFAULT_BUDGET_MIN_PER_SECOND",
    "DEFAULT_BUDGET_RATIO",
    "DEFAULT_BUDGET_WINDOW",
    "EXHAUSTED",
    "GAVE_UP",
    "HANDLED",
    "RECOVERED",
    "RETRIES",
    "Backoff",
    "BackoffState",
    "Retry",
    "RetryBudget",
]

DEFAULT_ATTEMPTS: Final = 3
#: The default backoff is `Backoff.exponential(0.2, max_delay=10.0, jitter=True)`.
DEFAULT_BACKOFF_DELAY: Final = 0.2
DEFAULT_BACKOFF_MAX_DELAY: Final = 10.0
DEFAULT_BUDGET_RATIO: Final = 0.2
DEFAULT_BUDGET_MIN_PER_SECOND: Final = 10.0
DEFAULT_BUDGET_WINDOW: Final = 10.0
#: The budget's window slides in this many steps (window / 10 each).
BUDGET_BUCKETS: Final = 10

# Indices into Retry.counters.
HANDLED: Final = 0  # attempts whose outcome was handled (retried or given up on)
RETRIES: Final = 1  # retries started
RECOVERED: Final = 2  # executions that succeeded after at least one retry
EXHAUSTED: Final = 3  # gave up: no attempt left
BUDGET_REFUSED: Final = 4  # gave up: the retry budget refused
GAVE_UP: Final = 5  # gave up: the retry_after hint or the deadline left no room
#: Names of `Retry.counters`, by index.
COUNTER_NAMES: Final = ("handled", "retries", "recovered", "exhausted", "budget_refused", "gave_up")

# Keeps unbounded delays finite (as Polly bounds them by TimeSpan.MaxValue): ~31.7 years.
_CEILING = 1e9
_PPM = 1_000_000

# Polly's DecorrelatedJitterBackoffV2 constants: PFactor smooths the first delay;
# the 1/1.4 scaling puts the median of retry t near delay * factor**(t - 1).
_P_FACTOR = 4.0
_RP_SCALING = 1 / 1.4

_CONSTANT, _LINEAR, _EXPONENTIAL = 0, 1, 2
_KINDS = ("constant", "linear", "exponential")
_NO_JITTER, _FULL, _DECORRELATED = 0, 1, 2
_JITTERS = (None, "full", "decorrelated")

JitterArg = bool | Literal["full", "decorrelated"] | None


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _pow(base: float, exp: float) -> float:
    try:
        return math.pow(base, exp)
    except OverflowError:
        return math.inf


class BackoffState:
    """What one execution's backoff remembers between its retries.

    Only decorrelated jitter uses it (the previous value of its formula); a
    retry makes one per failing execution, so concurrent calls never share it.
    """

    __slots__ = ("prev",)

    def __init__(self) -> None:
        self.prev = 0.0

    def __repr__(self) -> str:
        return f"BackoffState(prev={self.prev!r})"


class Backoff:
    """The delay before each retry: constant, linear or exponential, maybe jittered.

    Build one with `Backoff.constant`, `Backoff.linear` or `Backoff.exponential`.
    `delay(attempt, state)` gives the delay in seconds before retry number
    `attempt` (1 = the first retry). `max_delay` caps every delay, jitter
    included. A Backoff is immutable and can be shared; its random source is
    injected (`rng=` or `seed=`) so tests are deterministic.
    """

    __slots__ = ("_cap", "_delay", "_factor", "_jitter", "_kind", "_max_delay", "_random")

    _kind: int
    _delay: float
    _max_delay: float | None
    _cap: float
    _jitter: int
    _factor: float
    _random: Callable[[], float] | None

    def __init__(
        self,
        kind: Literal["constant", "linear", "exponential"],
        delay: float,
        *,
        max_delay: float | None = None,
        jitter: JitterArg = False,
        factor: float = 2.0,
        rng: random.Random | None = None,
        seed: int | None = None,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        k = _KINDS.index(kind)
        d = _number("delay", delay)
        if d < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        cap = _CEILING
        if max_delay is not None:
            cap = _number("max_delay", max_delay)
            if cap <= 0:
                raise ValueError(f"max_delay must be > 0, got {max_delay!r}")
            if cap < d:
                raise ValueError(f"max_delay must be >= delay ({d!r}), got {max_delay!r}")
        f = _number("factor", factor)
        if f < 1.0:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        if jitter is None or jitter is False:
            j = _NO_JITTER
        elif jitter is True:
            j = _DECORRELATED if k == _EXPONENTIAL else _FULL
        elif jitter == "full":
            j = _FULL
        elif jitter == "decorrelated":
            if k != _EXPONENTIAL:
                raise ValueError(f"jitter='decorrelated' is for exponential backoff, not {kind}")
            j = _DECORRELATED
        else:
            raise ValueError(f"jitter must be a bool, 'full' or 'decorrelated', got {jitter!r}")
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {rng!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int, got {seed!r}")
        rand: Callable[[], float] | None = None
        if j != _NO_JITTER:
            rand = (rng if rng is not None else random.Random(seed)).random
        setattr_ = object.__setattr__
        setattr_(self, "_kind", k)
        setattr_(self, "_delay", d)
        setattr_(self, "_max_delay", cap if max_delay is not None else None)
        setattr_(self, "_cap", cap)
        setattr_(self, "_jitter", j)
        setattr_(self, "_factor", f)
        setattr_(self, "_random", rand)

    @classmethod
    def constant(
        cls,
        delay: float,
        *,
        max_delay: float | None = None,
        jitter: bool | Literal["full"] | None = False,
        rng: random.Random | None = None,
        seed: int | None = None,
    ) -> Backoff:
        """The same `delay` before every retry (jitter: uniform in [0, delay))."""
        return cls("constant", delay, max_delay=max_delay, jitter=jitter, rng=rng, seed=seed)

    @classmethod
    def linear(
        cls,
        delay: float,
        max_delay: float | None = None,
        jitter: bool | Literal["full"] | None = False,
        *,
        rng: random.Random | None = None,
        seed: int | None = None,
    ) -> Backoff:
        """`delay * attempt` before retry `attempt` (jitter: uniform in [0, that))."""
        return cls("linear", delay, max_delay=max_delay, jitter=jitter, rng=rng, seed=seed)

    @classmethod
    def exponential(
        cls,
        delay: float,
        max_delay: float | None = None,
        jitter: JitterArg = False,
        factor: float = 2.0,
        *,
        rng: random.Random | None = None,
        seed: int | None = None,
    ) -> Backoff:
        """`delay * factor**(attempt - 1)` before retry `attempt`.

        jitter=True (or "decorrelated") uses Polly's decorrelated jitter V2: each
        delay is random, correlated with the previous one, with a median near the
        unjittered value. jitter="full" draws uniformly in [0, unjittered).
        """
        return cls(
            "exponential",
            delay,
            max_delay=max_delay,
            jitter=jitter,
            factor=factor,
            rng=rng,
            seed=seed,
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Backoff is immutable (cannot set {name!r})")

    # Immutable, so a copy is the object itself (and shares its random source).
    def __copy__(self) -> Backoff:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Backoff:
        return self

    @property
    def kind(self) -> str:
        """ "constant", "linear" or "exponential"."""
        return _KINDS[self._kind]

    @property
    def base_delay(self) -> float:
        """The `delay` it was built with, in seconds."""
        return self._delay

    @property
    def max_delay(self) -> float | None:
        """The cap on every delay (and on `retry_after` hints), or None."""
        return self._max_delay

    @property
    def jitter(self) -> str | None:
        """None, "full" or "decorrelated"."""
        return _JITTERS[self._jitter]

    @property
    def factor(self) -> float:
        return self._factor

    def new_state(self) -> BackoffState:
        """A fresh state for one execution's sequence of retries."""
        return BackoffState()

    def delay(self, attempt: int, state: BackoffState | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1 = the first retry).

        Pass the same `state` for every retry of one execution (decorrelated
        jitter depends on the previous delay); None means a fresh state.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt!r}")
        base = self._delay
        if base == 0.0:
            return 0.0
        jitter = self._jitter
        if jitter == _DECORRELATED:
            if state is None:
                state = BackoffState()
            t = (attempt - 1) + self._random()  # type: ignore[misc]
            nxt = _pow(self._factor, t) * math.tanh(math.sqrt(_P_FACTOR * t))
            d = (nxt - state.prev) * _RP_SCALING * base
            state.prev = nxt
            # `not <=` also catches NaN (inf - inf once the formula overflows).
            return d if d <= self._cap else self._cap
        kind = self._kind
        if kind == _CONSTANT:
            d = base
        elif kind == _LINEAR:
            d = base * attempt
        else:
            d = base * _pow(self._factor, attempt - 1)
        if not d <= self._cap:
            d = self._cap
        if jitter == _FULL:
            d *= self._random()  # type: ignore[misc]
        return d

    def __repr__(self) -> str:
        parts = [repr(self._delay)]
        if self._max_delay is not None:
            parts.append(f"max_delay={self._max_delay!r}")
        if self._jitter != _NO_JITTER:
            parts.append(f"jitter={self.jitter!r}")
        if self._kind == _EXPONENTIAL and self._factor != 2.0:
            parts.append(f"factor={self._factor!r}")
        return f"Backoff.{self.kind}({', '.join(parts)})"


class RetryBudget:
    """Cap retries at `ratio` of calls over a sliding window, plus a floor.

    Over the last `window` seconds (sliding in `BUDGET_BUCKETS` steps), a retry
    is allowed while ``retries + 1 <= ratio * calls + min_per_second * window``,
    where `calls` counts executions (first attempts) and `retries` the retries
    this budget allowed (Finagle's and Envoy's retry budgets). Ratios are
    exact to 1e-6. One budget can be shared by several `Retry` strategies
    (on the same clock); its counts live in one core `TimeWindow`.
    """

    __slots__ = (
        "_floor_ppm",
        "_ratio_ppm",
        "_record",
        "_snapshot",
        "min_per_second",
        "ratio",
        "window",
    )

    def __init__(
        self,
        ratio: float = DEFAULT_BUDGET_RATIO,
        min_per_second: float = DEFAULT_BUDGET_MIN_PER_SECOND,
        window: float = DEFAULT_BUDGET_WINDOW,
    ) -> None:
        r = _number("ratio", ratio)
        if r < 0:
            raise ValueError(f"ratio must be >= 0, got {ratio!r}")
        m = _number("min_per_second", min_per_second)
        if m < 0:
            raise ValueError(f"min_per_second must be >= 0, got {min_per_second!r}")
        w = _number("window", window)
        if w <= 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        window_ns = round(w * 1e9)
        if window_ns < BUDGET_BUCKETS:
            raise ValueError(f"window must be >= {BUDGET_BUCKETS} ns, got {window!r}")
        self.ratio = r
        self.min_per_second = m
        self.window = w
        self._ratio_ppm = round(r * _PPM)
        self._floor_ppm = round(m * w * _PPM)
        # Calls and retries share one window: a retry is recorded as a call with
        # the failure flag, so retries = failures and calls = calls - failures.
        win = _core.TimeWindow(window_ns, BUDGET_BUCKETS)
        self._record = win.record
        self._snapshot = win.snapshot

    def deposit(self, now_ns: int) -> None:
        """Count one call (an execution's first attempt) at `now_ns`."""
        self._record(now_ns)

    def available(self, now_ns: int) -> int:
        """How many retries the budget would allow at `now_ns`."""
        total, retries, _ = self._snapshot(now_ns)
        allowance = (self._ratio_ppm * (total - retries) + self._floor_ppm) // _PPM
        return allowance - retries if allowance > retries else 0

    def try_withdraw(self, now_ns: int) -> bool:
        """Take one retry at `now_ns` if the budget allows it; say whether it did."""
        if self.available(now_ns) < 1:
            return False
        self._record(now_ns, _core.OUTCOME_FAILURE)
        return True

    def calls_and_retries(self, now_ns: int) -> tuple[int, int]:
        """(calls, retries) counted in the window ending at `now_ns`."""
        total, retries, _ = self._snapshot(now_ns)
        return total - retries, retries

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, "
            f"window={self.window!r})"
        )


ExcPredicate = Callable[[BaseException], bool]
Handle = type[Exception] | tuple[type[Exception], ...] | ExcPredicate
OnRetry = Callable[[int, Any, float], Any]


def _exception_types(handle: Any) -> tuple[type[Exception], ...] | None:
    """The exception types in `handle`, or None if it is a predicate."""
    types_: tuple[Any, ...]
    if isinstance(handle, type):
        types_ = (handle,)
    elif isinstance(handle, tuple):
        if not handle:
            raise ValueError("handle must not be an empty tuple")
        types_ = handle
    elif callable(handle):
        return None
    else:
        raise TypeError(
            f"handle must be an exception type, a tuple of them or a predicate, got {handle!r}"
        )
    for t in types_:
        if not isinstance(t, type) or not issubclass(t, BaseException):
            raise TypeError(f"handle must hold exception types, got {t!r}")
        if not issubclass(t, Exception):
            raise ValueError(
                f"handle cannot include {t.__name__}: only Exception subclasses are retried "
                "(cancellation and other BaseExceptions always propagate)"
            )
    return types_


def _hint(exc: BaseException) -> float | None:
    """The error's `retry_after` in seconds, if it carries a usable one."""
    h = getattr(exc, "retry_after", None)
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        return None
    if not h >= 0.0 or h == math.inf:  # NaN fails the first test
        return None
    return float(h)


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method, to see if it is async
    return call is not None and inspect.iscoroutinefunction(call)


class Retry(Shaper):
    """Run the call up to `attempts` times while its outcome is handled.

    `handle` says which errors are retried: an exception type, a tuple of
    them, or a predicate on the error. `handle_result`, a predicate on the
    result, makes a result retried too; when attempts run out the last result
    is returned. `on_retry(attempt, outcome, delay)` (sync or async) runs
    before each backoff sleep; `attempt` is the number of the attempt that
    just failed. When it gives up, the last error propagates unchanged.
    """

    __slots__ = (
        "_attempts",
        "_backoff",
        "_budget",
        "_catch",
        "_handle",
        "_handle_result",
        "_on_retry",
        "_on_retry_async",
        "_pred",
        "counters",
    )

    def __init__(
        self,
        attempts: int = DEFAULT_ATTEMPTS,
        *,
        backoff: Backoff | None = None,
        handle: Handle = Exception,
        handle_result: Callable[[Any], bool] | None = None,
        on_retry: OnRetry | None = None,
        budget: RetryBudget | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int, got {attempts!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1 (it counts the first call), got {attempts!r}")
        if backoff is None:
            backoff = Backoff.exponential(
                DEFAULT_BACKOFF_DELAY, max_delay=DEFAULT_BACKOFF_MAX_DELAY, jitter=True
            )
        elif not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, got {backoff!r}")
        types_ = _exception_types(handle)
        if handle_result is not None and not callable(handle_result):
            raise TypeError(f"handle_result must be a predicate or None, got {handle_result!r}")
        if on_retry is not None and not callable(on_retry):
            raise TypeError(f"on_retry must be callable or None, got {on_retry!r}")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self._attempts = attempts
        self._backoff = backoff
        self._handle = handle
        # Types are matched by the except clause itself; a predicate sees every Exception.
        self._catch: tuple[type[Exception], ...] = types_ if types_ is not None else (Exception,)
        self._pred: ExcPredicate | None = None if types_ is not None else cast(ExcPredicate, handle)
        self._handle_result = handle_result
        self._on_retry = on_retry
        self._on_retry_async = on_retry is not None and _is_async_callable(on_retry)
        self._budget = budget
        #: Event counters, indexed like COUNTER_NAMES (read at scrape time).
        self.counters = _core.Counters(len(COUNTER_NAMES))

    @property
    def kind(self) -> str:
        return "retry"

    @property
    def attempts(self) -> int:
        return self._attempts

    @property
    def backoff(self) -> Backoff:
        return self._backoff

    @property
    def budget(self) -> RetryBudget | None:
        return self._budget

    def stats(self) -> dict[str, int]:
        """The counters by name."""
        return dict(zip(COUNTER_NAMES, self.counters.snapshot(), strict=True))

    def _wrap(self, inner: Runner | None) -> Runner:
        catch, pred, hr, again = self._catch, self._pred, self._handle_result, self._again
        deposit: Callable[[int], None] | None = None
        now_ns = self._clock.now_ns
        if self._budget is not None:
            deposit = self._budget._record

        if hr is None and _core.core_impl == "cython":
            try:
                from resilio._runner_c import RetryRunner
            except ImportError:  # a pure install: the Python runners below
                pass
            else:
                # The same steps as `run` / `run_inner`, without a Python coroutine
                # for the first attempt.
                return RetryRunner(inner, catch, pred, again, deposit, now_ns)

        if inner is None:
            if hr is None:

                async def run(
                    fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> Any:
                    if deposit is not None:
                        deposit(now_ns())
                    try:
                        # Without keywords, fn(*args) skips building a keyword vector.
                        return await (fn(*args, **kwargs) if kwargs else fn(*args))
                    except catch as e:
                        if pred is not None and not pred(e):
                            raise
                        exc = e
                    # Outside the except clause, so later errors get no __context__ from it.
                    try:
                        return await again(None, fn, args, kwargs, exc, True)
                    finally:
                        del exc  # its traceback holds this frame

                return run

            async def run_result(
                fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                if deposit is not None:
                    deposit(now_ns())
                try:
                    result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                except catch as e:
                    if pred is not None and not pred(e):
                        raise
                    exc = e
                else:
                    if not hr(result):
                        return result
                    return await again(None, fn, args, kwargs, result, False)
                try:
                    return await again(None, fn, args, kwargs, exc, True)
                finally:
                    del exc

            return run_result

        if hr is None:

            async def run_inner(
                fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                if deposit is not None:
                    deposit(now_ns())
                try:
                    return await inner(fn, args, kwargs)
                except catch as e:
                    if pred is not None and not pred(e):
                        raise
                    exc = e
                try:
                    return await again(inner, fn, args, kwargs, exc, True)
                finally:
                    del exc

            return run_inner

        async def run_inner_result(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if deposit is not None:
                deposit(now_ns())
            try:
                result = await inner(fn, args, kwargs)
            except catch as e:
                if pred is not None and not pred(e):
                    raise
                exc = e
            else:
                if not hr(result):
                    return result
                return await again(inner, fn, args, kwargs, result, False)
            try:
                return await again(inner, fn, args, kwargs, exc, True)
            finally:
                del exc

        return run_inner_result

    async def _again(
        self,
        inner: Runner | None,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        outcome: Any,
        failed: bool,
    ) -> Any:
        """Retry after a handled `outcome` (an error if `failed`, else a result)."""
        add = self.counters.add
        catch, pred, hr = self._catch, self._pred, self._handle_result
        backoff, budget, clock = self._backoff, self._budget, self._clock
        max_delay = backoff.max_delay
        on_retry = self._on_retry
        state = backoff.new_state()
        attempt = 1
        while True:
            add(HANDLED)
            if attempt >= self._attempts:
                add(EXHAUSTED)
                break
            delay = backoff.delay(attempt, state)
            if failed:
                hint = _hint(outcome)
                if hint is not None:
                    if max_delay is not None and hint > max_delay:
                        add(GAVE_UP)
                        break
                    if hint > delay:
                        delay = hint
            left = deadline()
            # A retry that starts at (or past) the deadline could only be cancelled.
            if left is not None and delay >= left:
                add(GAVE_UP)
                break
            if budget is not None and not budget.try_withdraw(clock.now_ns()):
                add(BUDGET_REFUSED)
                break
            add(RETRIES)
            if on_retry is not None:
                if self._on_retry_async:
                    await on_retry(attempt, outcome, delay)
                else:
                    on_retry(attempt, outcome, delay)
            await clock.sleep(delay)
            attempt += 1
            try:
                if inner is None:
                    result = await (fn(*args, **kwargs) if kwargs else fn(*args))
                else:
                    result = await inner(fn, args, kwargs)
            except catch as e:
                if pred is not None and not pred(e):
                    raise
                outcome, failed = e, True
                continue
            if hr is not None and hr(result):
                outcome, failed = result, False
                continue
            add(RECOVERED)
            return result
        if not failed:
            return outcome
        try:
            raise outcome
        finally:
            # The error's traceback holds this frame: drop the cycle through `outcome`.
            outcome = None

    def __repr__(self) -> str:
        parts = [f"attempts={self._attempts!r}", f"backoff={self._backoff!r}"]
        if self._budget is not None:
            parts.append(f"budget={self._budget!r}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        return f"Retry({', '.join(parts)})"
