"""Where limiter and breaker state lives: the `backend=` of strategies and middleware.

A backend is named by a string, ``"scheme:rest"``, or given as an object:

- ``"memory"`` (the default, also ``None``): in this process's memory;
- ``"shm:/dev/shm/NAME"``: a shared-memory file, shared by the processes of one host
  (`resilio.backends.shm`); ``"shm:/dev/shm/NAME?size=256M"`` sizes a new file;
- an object with a ``factory(name)`` method, e.g. a `resilio.backends.shm.SharedState`.

`resolve(backend, name)` turns it into a `Factory` that builds the primitives of one
strategy; `name` (the strategy's name) names the shared objects and is required by
shared backends. More schemes plug in with `register` (e.g. ``"redis"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

from resilio import _core
from resilio.backends import memory, shm

__all__ = [
    "AWAITED_SCHEMES",
    "SCHEMES",
    "Backend",
    "Factory",
    "HasFactory",
    "Opener",
    "is_awaited",
    "register",
    "resolve",
]


class Factory(Protocol):
    """Builds a strategy's primitives, each with the API of the `resilio._core` class
    of the same name (`TokenBucket`, `KeyedBuckets`, `Circuit`, `Gate`, `Counters`)
    and the same constructor arguments."""

    def token_bucket(self, rate: float, burst: int) -> _core.TokenBucket: ...

    def keyed_buckets(self, rate: float, burst: int, max_keys: int) -> _core.KeyedBuckets: ...

    def circuit(
        self,
        failure_ratio: float,
        minimum_throughput: int,
        sampling_duration_ns: int,
        break_duration_ns: int,
        *,
        max_break_duration_ns: int = 0,
        half_open_calls: int = 1,
        slow_call_ratio: float | None = None,
        buckets: int = 10,
        now_ns: int = 0,
    ) -> _core.Circuit: ...

    def gate(self, limit: int) -> _core.Gate: ...

    def counters(self, n: int) -> _core.Counters: ...


@runtime_checkable
class HasFactory(Protocol):
    """A backend object: gives the factory of the strategy (or middleware) `name`."""

    def factory(self, name: str | None) -> Factory: ...


#: What `backend=` accepts.
Backend: TypeAlias = "str | HasFactory | None"
#: Opens a backend string for one strategy: (the whole string, name) -> factory.
Opener: TypeAlias = Callable[[str, "str | None"], Factory]


def _open_redis(spec: str, name: str | None) -> Factory:
    # Imported on first use: resilio.backends.redis builds on the strategies, which
    # import this module.
    from resilio.backends import redis

    return redis.open_backend(spec, name)


#: Backend schemes: the part of the string before the first ":" -> its opener.
SCHEMES: dict[str, Opener] = {
    "memory": memory.open_backend,
    "shm": shm.open_backend,
    "redis": _open_redis,
    "rediss": _open_redis,
}


#: Schemes whose decisions are network round trips: strategies and middleware built on
#: them await each decision (``RateLimiter(backend="redis://...")`` builds a
#: `resilio.backends.redis.RedisRateLimiter`).
AWAITED_SCHEMES = frozenset({"redis", "rediss"})


def is_awaited(backend: Backend) -> bool:
    """True when `backend` keeps its state behind a network round trip (Redis)."""
    if isinstance(backend, str):
        return backend.partition(":")[0] in AWAITED_SCHEMES
    return getattr(backend, "awaited", False) is True


def register(scheme: str, opener: Opener) -> None:
    """Make ``backend="SCHEME:..."`` strings open with `opener(string, name)`."""
    if not scheme.isidentifier():
        raise ValueError(f"scheme must be a plain word, got {scheme!r}")
    SCHEMES[scheme] = opener


def resolve(backend: Backend, name: str | None) -> Factory:
    """The factory that builds the primitives of the strategy `name` on `backend`."""
    if backend is None:
        return memory.FACTORY
    if isinstance(backend, str):
        opener = SCHEMES.get(backend.partition(":")[0])
        if opener is None:
            known = ", ".join(sorted(f"'{s}'" if s == "memory" else f"'{s}:...'" for s in SCHEMES))
            raise ValueError(f"unknown backend {backend!r}: expected one of {known}")
        return opener(backend, name)
    if isinstance(backend, HasFactory):
        return backend.factory(name)
    raise TypeError(
        f"backend must be a string such as 'memory' or 'shm:/dev/shm/NAME', or an object "
        f"with a factory(name) method, got {backend!r}"
    )
