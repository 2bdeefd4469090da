"""The default backend: each primitive lives in the memory of the process that built it."""

from __future__ import annotations

from resilio import _core

__all__ = ["FACTORY", "MemoryFactory", "open_backend"]


class MemoryFactory:
    """Builds primitives with the selected core (`resilio._core`); names are not used."""

    __slots__ = ()

    # `_core.X` is looked up at each call, not at import: tests switch the selected
    # core (compiled or twin) by patching `resilio._core`.

    def token_bucket(self, rate: float, burst: int) -> _core.TokenBucket:
        return _core.TokenBucket(rate, burst)

    def keyed_buckets(self, rate: float, burst: int, max_keys: int) -> _core.KeyedBuckets:
        return _core.KeyedBuckets(rate, burst, max_keys)

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
    ) -> _core.Circuit:
        return _core.Circuit(
            failure_ratio,
            minimum_throughput,
            sampling_duration_ns,
            break_duration_ns,
            max_break_duration_ns=max_break_duration_ns,
            half_open_calls=half_open_calls,
            slow_call_ratio=slow_call_ratio,
            buckets=buckets,
            now_ns=now_ns,
        )

    def gate(self, limit: int) -> _core.Gate:
        return _core.Gate(limit)

    def counters(self, n: int) -> _core.Counters:
        return _core.Counters(n)

    def __repr__(self) -> str:
        return "MemoryFactory()"


#: The one in-process factory (it has no state).
FACTORY = MemoryFactory()


def open_backend(spec: str, name: str | None) -> MemoryFactory:
    """The factory for ``backend="memory"`` (any name, or none)."""
    if spec != "memory":
        raise ValueError(f"backend {spec!r}: the in-process backend is spelled 'memory'")
    return FACTORY
