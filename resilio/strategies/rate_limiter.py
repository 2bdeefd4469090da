"""RateLimiter: admit calls at `rate` per second with bursts of up to `burst`.

The limiter is a token bucket run as GCRA on the core (`_core.TokenBucket`): one
integer, the theoretical arrival time, decides every call. The bucket starts
full. With `max_wait=0` a call without a token is refused at once with
`RateLimitedError(retry_after=...)`; with `max_wait > 0` a call whose tokens are
due within `max_wait` reserves them and sleeps until they are due. Reservations
are ordered by the time they were asked for, so waiters are served first come,
first served, and a waiter that is cancelled gives its tokens back.

`RateLimiter(..., key=fn)` limits each key separately (`_core.KeyedBuckets`, at
most `max_keys` keys). The key is computed from the call's arguments, which a
gate never sees, so the keyed limiter is a `KeyedRateLimiter` (a shaper that
wraps the call) while the plain limiter is a gate fused into the pipeline.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Awaitable, Callable
from typing import Any, overload

from resilio.backends import Backend, Factory, is_awaited, resolve
from resilio.clock import Clock
from resilio.errors import RateLimitedError
from resilio.strategies._base import WAIT, GateStrategy, Runner, Shaper, Strategy

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_TOKENS",
    "MAX_KEY_BYTES",
    "KeyedRateLimiter",
    "RateLimiter",
]

#: Seconds a call may wait for its tokens; 0 refuses at once.
DEFAULT_MAX_WAIT = 0.0
#: Distinct keys a keyed limiter tracks at most.
DEFAULT_MAX_KEYS = 10_000
#: Tokens each call takes.
DEFAULT_TOKENS = 1
#: Longest key (UTF-8 bytes for a str) the keyed core accepts.
MAX_KEY_BYTES = 64

#: Computes the limiter key from the call's (*args, **kwargs).
KeyFunc = Callable[..., str | bytes]


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _int(name: str, value: int, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    return value


class _Limiter(Strategy):
    """What the plain and the keyed limiter share: options, counters, refusals."""

    __slots__ = ("_burst", "_factory", "_max_wait", "_max_wait_ns", "_now_ns", "_rate", "_tokens")

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        key: KeyFunc | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        tokens: int = DEFAULT_TOKENS,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        rate = _number("rate", rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if burst is None:
            burst = max(1, math.ceil(rate))
        burst = _int("burst", burst, 1)
        max_wait = _number("max_wait", max_wait)
        if not math.isfinite(max_wait) or max_wait < 0:
            raise ValueError(f"max_wait must be a finite number >= 0, got {max_wait!r}")
        tokens = _int("tokens", tokens, 1)
        if tokens > burst:
            raise ValueError(
                f"tokens must be <= burst ({burst}): a call could never get them, got {tokens!r}"
            )
        self._rate = rate
        self._burst = burst
        self._tokens = tokens
        self._max_wait = max_wait
        self._max_wait_ns = round(max_wait * 1e9)
        self._now_ns = self._clock.now_ns
        # Where the bucket lives; `_setup` builds it there (a subclass may ignore it).
        self._factory: Factory = resolve(backend, name)
        self._setup(key, max_keys)

    def _setup(self, key: KeyFunc | None, max_keys: int) -> None:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        return "rate_limiter"

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> int:
        """Capacity of the bucket: the most calls admitted at once."""
        return self._burst

    @property
    def max_wait(self) -> float:
        """Seconds a call may wait for its tokens."""
        return self._max_wait

    @property
    def tokens(self) -> int:
        """Tokens each call takes."""
        return self._tokens

    @property
    def admitted(self) -> int:
        """Calls given their tokens (at once or after a wait)."""
        raise NotImplementedError

    @property
    def rejected(self) -> int:
        """Calls refused."""
        raise NotImplementedError

    def available(self, key: str | bytes | None = None) -> int:
        """Whole tokens available now (for `key`, on a keyed limiter)."""
        raise NotImplementedError

    def _bind(self, pipeline_name: str | None, clock: Clock | None) -> None:
        super()._bind(pipeline_name, clock)
        self._now_ns = self._clock.now_ns

    def _rejection(self, wait_ns: int) -> RateLimitedError:
        retry_after = wait_ns / 1e9
        return RateLimitedError(
            f"{self.label}: rate limit of {self._rate:g}/s exceeded, "
            f"retry after {retry_after:.3f} s",
            retry_after=retry_after,
            strategy=self.label,
        )

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self._rate:g}, burst={self._burst}, "
            f"max_wait={self._max_wait:g}, tokens={self._tokens}{self._repr_key()}, "
            f"name={self.name!r})"
        )

    def _repr_key(self) -> str:
        return ""


class RateLimiter(_Limiter):
    """Admit calls at `rate` per second, in bursts of up to `burst` calls.

    `burst` defaults to `max(1, ceil(rate))` (one second's worth). A call
    takes `tokens` tokens. Without a token the call is refused with
    `RateLimitedError` whose `retry_after` says when the tokens are due, unless
    they are due within `max_wait` seconds: then the call waits for them.

    With `key=fn`, `fn(*args, **kwargs)` names the bucket each call draws from
    (str or bytes of at most 64 bytes); up to `max_keys` keys are kept. The
    result is then a `KeyedRateLimiter`.

    `backend` says where the bucket lives: in this process (``"memory"``, the
    default) or shared by the processes of one host
    (``"shm:/dev/shm/NAME"``, a `resilio.backends.shm.SharedState`; the
    limiter's `name` then names the shared bucket), or by every host
    (``"redis://HOST:PORT/DB"``: the result is then a
    `resilio.backends.redis.RedisRateLimiter`, which awaits one round trip per
    decision). See `resilio.backends`.
    """

    __slots__ = ()

    @overload
    def __new__(
        cls,
        rate: float,
        burst: int | None = None,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        key: None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        tokens: int = DEFAULT_TOKENS,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend = None,
    ) -> RateLimiter: ...

    @overload
    def __new__(
        cls,
        rate: float,
        burst: int | None = None,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        key: KeyFunc,
        max_keys: int = DEFAULT_MAX_KEYS,
        tokens: int = DEFAULT_TOKENS,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend = None,
    ) -> KeyedRateLimiter: ...

    def __new__(
        cls,
        rate: float,
        burst: int | None = None,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        key: KeyFunc | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        tokens: int = DEFAULT_TOKENS,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend = None,
    ) -> RateLimiter:
        if cls is RateLimiter:
            if is_awaited(backend):
                # Imported here: the Redis limiter builds on this module.
                from resilio.backends.redis import RedisRateLimiter

                return RedisRateLimiter.__new__(RedisRateLimiter, rate, key=key)
            # The plain limiter is a gate (fused, no coroutine of its own); a keyed one
            # must see the call's arguments, which only a shaper does.
            cls = KeyedRateLimiter if key is not None else _GateRateLimiter
        return object.__new__(cls)


class _GateRateLimiter(RateLimiter, GateStrategy):
    """The unkeyed limiter: a gate over one `_core.TokenBucket`."""

    # `_enter` is an instance slot that shadows the method: a closure over the bucket's
    # bound methods, built once per clock, skips the attribute loads of a method
    # (about a third of the limiter's cost per call).
    __slots__ = ("_bucket", "_enter", "_pending", "_refund", "_reserve")

    def _setup(self, key: KeyFunc | None, max_keys: int) -> None:
        if key is not None:
            raise TypeError("a keyed limiter is a KeyedRateLimiter; build it with RateLimiter")
        self._bucket = self._factory.token_bucket(self._rate, self._burst)
        self._reserve = self._bucket.reserve
        self._refund = self._bucket.refund
        # The wait a reservation made in _enter must reach _enter_wait without a
        # per-call object. The runner awaits _enter_wait straight after _enter
        # returns WAIT, with no await between, so only another thread could slip
        # in: a thread-local slot is exact, and costs nothing on the admit path.
        self._pending = threading.local()
        self._enter = self._make_enter()  # type: ignore[method-assign]

    def _bind(self, pipeline_name: str | None, clock: Clock | None) -> None:
        super()._bind(pipeline_name, clock)
        self._enter = self._make_enter()  # type: ignore[method-assign]

    def _fast_kind(self) -> str:
        """Tell the compiled runner it may take tokens in C."""
        return "bucket"

    def _make_enter(self) -> Callable[[], Any]:
        """Build `_enter` for this limiter's options and clock."""
        now_ns = self._now_ns
        rejection = self._rejection
        n = self._tokens
        max_wait_ns = self._max_wait_ns
        if max_wait_ns == 0:
            try_acquire = self._bucket.try_acquire

            if n == 1:

                def enter() -> None:
                    r = try_acquire(now_ns())
                    if r:
                        raise rejection(r)

            else:

                def enter() -> None:
                    r = try_acquire(now_ns(), n)
                    if r:
                        raise rejection(r)

            return enter

        reserve = self._reserve
        pending = self._pending

        def enter_or_reserve() -> Any:
            # One reserve decides admit, wait or refuse: a try_acquire first would
            # count every waiter as a refusal in the core's counters too.
            r = reserve(now_ns(), n, max_wait_ns)
            if r == 0:
                return None
            if r < 0:
                raise rejection(-r)
            pending.wait_ns = r
            return WAIT

        return enter_or_reserve

    @property
    def admitted(self) -> int:
        return self._bucket.admitted

    @property
    def rejected(self) -> int:
        return self._bucket.rejected

    def available(self, key: str | bytes | None = None) -> int:
        if key is not None:
            raise TypeError("this limiter is not keyed; call available() without a key")
        return self._bucket.available(self._now_ns())

    async def _enter_wait(self) -> Any:
        pending = self._pending
        wait_ns: int = getattr(pending, "wait_ns", 0)
        if wait_ns > 0:
            pending.wait_ns = 0
        else:
            # Not right after an _enter that reserved: decide here.
            wait_ns = self._reserve(self._now_ns(), self._tokens, self._max_wait_ns)
            if wait_ns < 0:
                raise self._rejection(-wait_ns)
            if wait_ns == 0:
                return None
        try:
            await self._clock.sleep(wait_ns / 1e9)
        except BaseException:
            # Cancelled (or the clock failed) before using the tokens: give them back
            # so the reservations behind this one are not charged for it.
            self._refund(self._now_ns(), self._tokens)
            raise
        return None

    # Called after every admitted call with nothing to do (the tokens were spent on
    # entry): a C builtin that ignores its result costs less than a Python no-op.
    _ok = staticmethod(operator.is_)  # type: ignore[assignment]

    def _err(self, token: Any, exc: BaseException) -> None:
        pass  # a call that ran (even if cancelled) has used its tokens


class KeyedRateLimiter(RateLimiter, Shaper):
    """A rate limit per key: `key(*args, **kwargs)` names the bucket of each call.

    Built by `RateLimiter(..., key=fn)`. Keys are str or bytes of at most
    64 bytes (longer ones raise ValueError); at most `max_keys` keys are
    tracked.
    """

    __slots__ = ("_bucket", "_key", "_max_keys", "_refund")

    def _setup(self, key: KeyFunc | None, max_keys: int) -> None:
        if key is None or not callable(key):
            raise TypeError(f"key must be a callable returning str or bytes, got {key!r}")
        self._key = key
        self._max_keys = _int("max_keys", max_keys, 1)
        self._bucket = self._factory.keyed_buckets(self._rate, self._burst, self._max_keys)
        self._refund = self._bucket.refund

    @property
    def key(self) -> KeyFunc:
        """The function naming each call's bucket."""
        return self._key

    @property
    def max_keys(self) -> int:
        """Most keys tracked at once."""
        return self._max_keys

    @property
    def admitted(self) -> int:
        return self._bucket.admitted

    @property
    def rejected(self) -> int:
        return self._bucket.rejected

    def available(self, key: str | bytes | None = None) -> int:
        if key is None:
            raise TypeError("a keyed limiter needs the key: available(key)")
        return self._bucket.available(key, self._now_ns())

    async def _wait(self, key: str | bytes, wait_ns: int) -> None:
        try:
            await self._clock.sleep(wait_ns / 1e9)
        except BaseException:
            self._refund(key, self._now_ns(), self._tokens)
            raise

    def _wrap(self, inner: Runner | None) -> Runner:
        key_of = self._key
        reserve = self._bucket.reserve
        now_ns = self._now_ns
        n = self._tokens
        max_wait_ns = self._max_wait_ns
        wait = self._wait
        rejection = self._rejection

        if inner is None:

            async def run_direct(
                fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                k = key_of(*args, **kwargs)
                r = reserve(k, now_ns(), n, max_wait_ns)
                if r:
                    if r < 0:
                        raise rejection(-r)
                    await wait(k, r)
                return await fn(*args, **kwargs)

            return run_direct

        async def run_inner(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            k = key_of(*args, **kwargs)
            r = reserve(k, now_ns(), n, max_wait_ns)
            if r:
                if r < 0:
                    raise rejection(-r)
                await wait(k, r)
            return await inner(fn, args, kwargs)

        return run_inner

    def _repr_key(self) -> str:
        return f", key={self._key!r}, max_keys={self._max_keys}"
