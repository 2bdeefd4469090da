"""Circuit breaker: stop calling a dependency that keeps failing, probe it after a break.

A thin gate over the core state machine (`_core.Circuit`, csrc/rs_circuit.h):
the core owns the state word, the sliding window and the counters; this module
turns seconds into nanoseconds, classifies outcomes (handled exception,
failing result, slow call) and fires the transition hooks.

With slow-call detection off, a call's token is the core's int ticket (no
allocation); with it on, the token is `(ticket, start_ns)`.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, TypeAlias

from resilio import _core
from resilio.backends import Backend, is_awaited, resolve
from resilio.clock import Clock
from resilio.errors import BrokenCircuitError, IsolatedCircuitError
from resilio.strategies._base import GateStrategy

__all__ = [
    "DEFAULT_BREAK_DURATION",
    "DEFAULT_FAILURE_RATIO",
    "DEFAULT_HALF_OPEN_CALLS",
    "DEFAULT_MINIMUM_THROUGHPUT",
    "DEFAULT_SAMPLING_DURATION",
    "DEFAULT_SLOW_CALL_RATIO",
    "MAX_HALF_OPEN_CALLS",
    "WINDOW_BUCKETS",
    "CircuitBreaker",
    "CircuitState",
]

DEFAULT_FAILURE_RATIO = 0.5
DEFAULT_MINIMUM_THROUGHPUT = 20
DEFAULT_SAMPLING_DURATION = 30.0
DEFAULT_BREAK_DURATION = 5.0
DEFAULT_HALF_OPEN_CALLS = 1
#: slow_call_ratio used when slow_call_duration is set and slow_call_ratio is not.
DEFAULT_SLOW_CALL_RATIO = 1.0
#: The sampling window is split into this many buckets (it slides one bucket at a time).
WINDOW_BUCKETS = 10
#: The core's state word holds at most this many concurrent probes.
MAX_HALF_OPEN_CALLS = 31

_log = logging.getLogger("resilio.circuit_breaker")

# Both cores export the same constant values (they are the C ABI), so reading them
# from whichever core is selected at import is safe even if a test switches it later.
_FAILURE: int = _core.OUTCOME_FAILURE
_SLOW: int = _core.OUTCOME_SLOW
_OPEN: int = _core.OPEN
_CLOSED: int = _core.CLOSED
_HALF_OPEN: int = _core.HALF_OPEN
_ADMIT_ISOLATED: int = _core.ADMIT_ISOLATED
_MAX_SECONDS = float(1 << 59) / 1e9


class CircuitState(enum.IntEnum):
    """State of a circuit breaker (same numbers as the core)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    ISOLATED = 3


#: A transition hook: a plain (sync) callable that receives the breaker.
Hook: TypeAlias = Callable[["CircuitBreaker"], object]
#: What counts as a failure: exception type(s), or a predicate on the exception.
Handle: TypeAlias = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]


def _seconds_ns(name: str, value: float) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0 or value >= _MAX_SECONDS:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return max(1, round(value * 1e9))


def _ratio(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def _int(name: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def _handle_args(
    handle: Handle,
) -> tuple[tuple[type[Exception], ...] | None, Callable[[Exception], bool] | None]:
    """Split `handle` into (exception types, None) or (None, predicate)."""
    if isinstance(handle, (type, tuple)):
        types: tuple[Any, ...] = handle if isinstance(handle, tuple) else (handle,)
        for t in types:
            if not isinstance(t, type) or not issubclass(t, Exception):
                # Cancellation and other BaseExceptions are never outcomes.
                raise TypeError(f"handle must name Exception subclasses, got {t!r}")
        return types, None
    if callable(handle):
        return None, handle
    raise TypeError(
        f"handle must be an exception type, a tuple of them, or a predicate, got {handle!r}"
    )


def _hook(name: str, fn: Hook | None) -> Hook | None:
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"{name} must be a callable or None, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{name} must be a plain function (hooks run inline, they are not awaited), "
            f"got coroutine function {fn!r}"
        )
    return fn


class CircuitBreaker(GateStrategy):
    """Reject calls while a dependency is failing; probe it after a break.

    Opens when, over the last `sampling_duration` seconds and at least
    `minimum_throughput` calls, the share of failures reaches `failure_ratio`
    (or the share of calls slower than `slow_call_duration` reaches
    `slow_call_ratio`). While open, calls raise `BrokenCircuitError` at once.
    After `break_duration`, up to `half_open_calls` probes run: all succeed and
    it closes, any fails and it opens again.

    `backend` says where the circuit lives: in this process (``"memory"``, the
    default) or shared by the processes of one host (``"shm:/dev/shm/NAME"``, a
    `resilio.backends.shm.SharedState`; the breaker's `name` then names the
    shared circuit, and a circuit opened by one process is open for all), or shared
    by every host (``"redis://HOST:PORT/DB"``: the result is then a
    `resilio.backends.redis.RedisCircuitBreaker`, which counts outcomes locally and
    shares its breaks). Hooks fire in the process whose call made the transition.
    """

    __slots__ = (
        "_admit",
        "_break_duration",
        "_circuit",
        "_failure_ratio",
        "_half_open_calls",
        "_handle_pred",
        "_handle_result",
        "_handle_types",
        "_max_break_duration",
        "_minimum_throughput",
        "_now_ns",
        "_on_closed",
        "_on_half_opened",
        "_on_opened",
        "_plain_enter",
        "_plain_ok",
        "_record",
        "_release",
        "_sampling_duration",
        "_seen_half_opened",
        "_slow_call_duration",
        "_slow_call_ratio",
        "_slow_ns",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> CircuitBreaker:
        if cls is CircuitBreaker and is_awaited(kwargs.get("backend")):
            # Imported here: the Redis breaker builds on this module.
            from resilio.backends.redis import RedisCircuitBreaker

            return object.__new__(RedisCircuitBreaker)
        return object.__new__(cls)

    def __init__(
        self,
        *,
        failure_ratio: float = DEFAULT_FAILURE_RATIO,
        minimum_throughput: int = DEFAULT_MINIMUM_THROUGHPUT,
        sampling_duration: float = DEFAULT_SAMPLING_DURATION,
        break_duration: float = DEFAULT_BREAK_DURATION,
        max_break_duration: float | None = None,
        half_open_calls: int = DEFAULT_HALF_OPEN_CALLS,
        slow_call_duration: float | None = None,
        slow_call_ratio: float | None = None,
        handle: Handle = Exception,
        handle_result: Callable[[Any], bool] | None = None,
        on_opened: Hook | None = None,
        on_closed: Hook | None = None,
        on_half_opened: Hook | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        self._failure_ratio = _ratio("failure_ratio", failure_ratio)
        self._minimum_throughput = _int("minimum_throughput", minimum_throughput, 1, 1 << 32)
        sampling_ns = _seconds_ns("sampling_duration", sampling_duration)
        self._sampling_duration = float(sampling_duration)
        break_ns = _seconds_ns("break_duration", break_duration)
        self._break_duration = float(break_duration)
        max_break_ns = 0
        if max_break_duration is not None:
            max_break_ns = _seconds_ns("max_break_duration", max_break_duration)
            if max_break_ns < break_ns:
                raise ValueError(
                    f"max_break_duration must be None or >= break_duration "
                    f"({break_duration!r}), got {max_break_duration!r}"
                )
        self._max_break_duration = None if max_break_duration is None else float(max_break_duration)
        self._half_open_calls = _int("half_open_calls", half_open_calls, 1, MAX_HALF_OPEN_CALLS)
        self._slow_ns = 0
        if slow_call_duration is not None:
            self._slow_ns = _seconds_ns("slow_call_duration", slow_call_duration)
            slow_call_ratio = _ratio(
                "slow_call_ratio",
                DEFAULT_SLOW_CALL_RATIO if slow_call_ratio is None else slow_call_ratio,
            )
        elif slow_call_ratio is not None:
            raise ValueError(
                f"slow_call_ratio ({slow_call_ratio!r}) needs slow_call_duration to be set"
            )
        self._slow_call_duration = None if slow_call_duration is None else float(slow_call_duration)
        self._slow_call_ratio = slow_call_ratio
        self._handle_types, pred = _handle_args(handle)
        # With types, the predicate is never called; `bool` only keeps the slot typed.
        self._handle_pred: Callable[[Exception], bool] = pred if pred is not None else bool
        if handle_result is not None and not callable(handle_result):
            raise TypeError(f"handle_result must be a callable or None, got {handle_result!r}")
        self._handle_result = handle_result
        self._on_opened = _hook("on_opened", on_opened)
        self._on_closed = _hook("on_closed", on_closed)
        self._on_half_opened = _hook("on_half_opened", on_half_opened)

        self._circuit = resolve(backend, name).circuit(
            self._failure_ratio,
            self._minimum_throughput,
            sampling_ns,
            break_ns,
            max_break_duration_ns=max_break_ns,
            half_open_calls=self._half_open_calls,
            slow_call_ratio=slow_call_ratio,
            buckets=WINDOW_BUCKETS,
            now_ns=self._clock.now_ns(),
        )
        self._admit = self._circuit.admit
        self._record = self._circuit.record
        self._release = self._circuit.release
        self._now_ns = self._clock.now_ns
        # A shared circuit (backend=) may have half-opened before this process saw it.
        self._seen_half_opened = self._circuit.half_opened
        # One flag test per hook keeps the common configuration's success path short.
        self._plain_enter = not self._slow_ns and self._on_half_opened is None
        self._plain_ok = not self._slow_ns and self._handle_result is None

    def _bind(self, pipeline_name: str | None, clock: Clock | None) -> None:
        super()._bind(pipeline_name, clock)
        self._now_ns = self._clock.now_ns

    @property
    def kind(self) -> str:
        return "circuit_breaker"

    # -- gate protocol ------------------------------------------------------------

    def _fast_kind(self) -> str | None:
        """Tell the compiled runner it may run admit/record in C (plain outcomes only)."""
        return "circuit" if self._plain_ok else None

    def _enter(self) -> Any:
        now = self._now_ns()
        t = self._admit(now)
        if t < 0:
            raise self._rejection(t)
        if self._plain_enter:
            return t
        if self._on_half_opened is not None and t & 3 == _HALF_OPEN:
            self._probe_admitted(t)
        return (t, now) if self._slow_ns else t

    async def _enter_wait(self) -> Any:  # pragma: no cover - _enter never returns WAIT
        raise AssertionError("CircuitBreaker never waits to enter")

    def _ok(self, token: Any, result: Any) -> None:
        if self._plain_ok:
            r = self._record(token, self._now_ns(), 0)
        else:
            r = self._ok_classified(token, result)
        if r >= 0:
            self._transitioned(r)

    def _ok_classified(self, token: Any, result: Any) -> int:
        now = self._now_ns()
        if self._slow_ns:
            ticket, start = token
            outcome = self._slow_outcome(ticket, now - start)
        else:
            ticket = token
            outcome = 0
        if self._handle_result is not None:
            try:
                if self._handle_result(result):
                    outcome |= _FAILURE
            except BaseException:
                self._release(ticket)
                raise
        return self._record(ticket, now, outcome)

    def _err(self, token: Any, exc: BaseException) -> None:
        ticket = token[0] if self._slow_ns else token
        if not isinstance(exc, Exception):
            # Cancellation is not an outcome; a cancelled probe gives its permit back.
            self._release(ticket)
            return
        try:
            if self._handle_types is not None:
                handled = isinstance(exc, self._handle_types)
            else:
                handled = bool(self._handle_pred(exc))
        except BaseException:
            self._release(ticket)
            raise
        if not handled:
            # Ignored outcome: neither success nor failure, but a probe's permit is freed.
            self._release(ticket)
            return
        now = self._now_ns()
        outcome = _FAILURE
        if self._slow_ns:
            outcome |= self._slow_outcome(ticket, now - token[1])
        r = self._record(ticket, now, outcome)
        if r >= 0:
            self._transitioned(r)

    def _slow_outcome(self, ticket: int, elapsed_ns: int) -> int:
        if elapsed_ns <= self._slow_ns:
            return 0
        # A slow probe fails the probe: the dependency answered, but not healthily.
        return _SLOW | _FAILURE if ticket & 3 == _HALF_OPEN else _SLOW

    def _rejection(self, t: int) -> BrokenCircuitError:
        if t == _ADMIT_ISOLATED:
            return IsolatedCircuitError(
                f"circuit breaker {self.label!r} is isolated", strategy=self.label
            )
        wait = (-t - 1) / 1e9
        return BrokenCircuitError(
            f"circuit breaker {self.label!r} is open; retry after {wait:.6g} s",
            retry_after=wait,
            strategy=self.label,
        )

    def _probe_admitted(self, ticket: int) -> None:
        # The core counts every half-open period it starts; a probe ticket seen with a
        # higher count than last time means this admission began a new period.
        n = self._circuit.half_opened
        if n == self._seen_half_opened:
            return
        self._seen_half_opened = n
        try:
            self._fire(self._on_half_opened, "on_half_opened")
        except BaseException:
            # The pipeline calls no exit hook when _enter raises: give the permit back.
            self._release(ticket)
            raise

    def _transitioned(self, state: int) -> None:
        if state == _OPEN:
            self._fire(self._on_opened, "on_opened")
        elif state == _CLOSED:
            self._fire(self._on_closed, "on_closed")

    def _fire(self, hook: Hook | None, what: str) -> None:
        if hook is None:
            return
        try:
            hook(self)
        except Exception:
            # A broken hook must not turn the call's outcome into an error or leak a permit.
            _log.exception("%s hook of circuit breaker %r failed", what, self.label)

    # -- manual control -----------------------------------------------------------

    def isolate(self) -> None:
        """Hold the circuit open (calls raise IsolatedCircuitError) until reset().

        Fires on_opened unless it was already isolated.
        """
        before = self._circuit.isolated
        self._circuit.isolate(self._now_ns())
        if self._circuit.isolated != before:
            self._fire(self._on_opened, "on_opened")

    def reset(self) -> None:
        """Close the circuit and forget the sampling window.

        Fires on_closed unless it was already closed.
        """
        before = self._circuit.closed
        self._circuit.reset(self._now_ns())
        if self._circuit.closed != before:
            self._fire(self._on_closed, "on_closed")

    # -- options (read-only: the core was built from them) -------------------------

    @property
    def failure_ratio(self) -> float:
        return self._failure_ratio

    @property
    def minimum_throughput(self) -> int:
        return self._minimum_throughput

    @property
    def sampling_duration(self) -> float:
        return self._sampling_duration

    @property
    def break_duration(self) -> float:
        return self._break_duration

    @property
    def max_break_duration(self) -> float | None:
        return self._max_break_duration

    @property
    def half_open_calls(self) -> int:
        return self._half_open_calls

    @property
    def slow_call_duration(self) -> float | None:
        return self._slow_call_duration

    @property
    def slow_call_ratio(self) -> float | None:
        return self._slow_call_ratio

    # -- views --------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The stored state.

        OPEN stays OPEN after the break has ended until the next call is admitted as
        a probe (the transition is lazy); `retry_after == 0.0` tells the two apart.
        """
        return CircuitState(self._circuit.state)

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call could be admitted (0.0: now); None when isolated."""
        ns = self._circuit.retry_after_ns(self._now_ns())
        return None if ns < 0 else ns / 1e9

    @property
    def admitted(self) -> int:
        """Calls let through (including probes)."""
        return self._circuit.admitted

    @property
    def rejected(self) -> int:
        """Calls refused (open, isolated, or every probe permit taken)."""
        return self._circuit.rejected

    @property
    def successes(self) -> int:
        """Recorded successful outcomes (ignored and cancelled calls are not counted)."""
        return self._circuit.successes

    @property
    def failures(self) -> int:
        """Recorded failed outcomes (handled exceptions, failing results, slow probes)."""
        return self._circuit.failures

    @property
    def slow(self) -> int:
        """Recorded outcomes slower than slow_call_duration."""
        return self._circuit.slow

    @property
    def opened(self) -> int:
        """Times the circuit opened (from CLOSED or HALF_OPEN)."""
        return self._circuit.opened

    @property
    def half_opened(self) -> int:
        """Half-open periods started."""
        return self._circuit.half_opened

    @property
    def closed(self) -> int:
        """Times the circuit closed (after probes, or by reset())."""
        return self._circuit.closed

    @property
    def isolated(self) -> int:
        """Times isolate() moved the circuit to ISOLATED."""
        return self._circuit.isolated

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failure_ratio={self._failure_ratio!r}, "
            f"minimum_throughput={self._minimum_throughput!r}, "
            f"sampling_duration={self._sampling_duration!r}, "
            f"break_duration={self._break_duration!r}, name={self.name!r})"
        )
