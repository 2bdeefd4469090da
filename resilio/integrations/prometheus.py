"""Prometheus metrics: a collector that reads the strategies' counters at scrape time.

Nothing runs on the call path: every strategy already counts its events in the
core (admitted, rejected, opened...), and `ResilioCollector.collect()` turns
those counters into metric families when Prometheus scrapes. Pipelines are held
weakly, so dropping a pipeline drops its series.

Call durations are the one thing the counters cannot give: timing a call reads
the clock twice. Put a `Timing` gate in the pipelines whose durations you want
(first, to time what the caller sees); the collector renders it as the
`resilio_call_duration_seconds` histogram.

    collector = ResilioCollector(registry)
    collector.add(pipeline)          # or: instrument(pipeline, registry)
"""

from __future__ import annotations

import math
import threading
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from resilio import _core
from resilio.clock import Clock
from resilio.pipeline import Pipeline
from resilio.strategies import retry as _retry
from resilio.strategies._base import GateStrategy, Strategy
from resilio.strategies.bulkhead import Bulkhead
from resilio.strategies.circuit_breaker import CircuitBreaker, CircuitState
from resilio.strategies.fallback import Fallback
from resilio.strategies.hedging import Hedging
from resilio.strategies.rate_limiter import RateLimiter
from resilio.strategies.retry import Retry
from resilio.strategies.timeout import Timeout

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BUCKETS",
    "METRIC_NAMES",
    "ResilioCollector",
    "Timing",
    "instrument",
    "metrics_app",
]

#: Upper bounds (seconds) of the duration histogram: prometheus_client's defaults.
DEFAULT_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: A core Counters holds 32 values: the buckets, the +Inf bucket and the sum.
MAX_BUCKETS: Final = 30

# Metric families, in exposition order: (name, type, help, extra label).
_FAMILIES: Final = (
    (
        "resilio_calls",
        "counter",
        "Calls seen by a strategy, by outcome (admitted/rejected by limiters, breakers and "
        "bulkheads; success/failure recorded by breakers; how executions that needed a "
        "retry ended).",
        "outcome",
    ),
    ("resilio_retries", "counter", "Retries started.", ""),
    (
        "resilio_retry_handled",
        "counter",
        "Attempts whose outcome a retry handled (retried or given up on).",
        "",
    ),
    ("resilio_rejections", "counter", "Calls refused by a strategy, by reason.", "reason"),
    (
        "resilio_circuit_state",
        "gauge",
        "Circuit breaker state: 1 for the current state, 0 for the others.",
        "state",
    ),
    (
        "resilio_circuit_transitions",
        "counter",
        "Circuit breaker transitions, by the state moved to.",
        "to",
    ),
    ("resilio_bulkhead_in_flight", "gauge", "Calls holding a bulkhead slot.", ""),
    ("resilio_bulkhead_queue_depth", "gauge", "Calls waiting for a bulkhead slot.", ""),
    ("resilio_bulkhead_max_concurrency", "gauge", "Bulkhead slots (max_concurrency).", ""),
    ("resilio_hedges", "counter", "Extra hedged attempts started.", ""),
    ("resilio_fallbacks", "counter", "Calls answered by a fallback.", ""),
    (
        "resilio_call_duration_seconds",
        "histogram",
        "Duration of calls through a Timing gate (cancelled calls are not observed).",
        "",
    ),
)
(
    _CALLS,
    _RETRIES,
    _RETRY_HANDLED,
    _REJECTIONS,
    _CIRCUIT_STATE,
    _CIRCUIT_TRANSITIONS,
    _BULKHEAD_IN_FLIGHT,
    _BULKHEAD_QUEUE,
    _BULKHEAD_LIMIT,
    _HEDGES,
    _FALLBACKS,
    _DURATION,
) = range(len(_FAMILIES))

#: Every metric family the collector exposes (counters without their `_total`).
METRIC_NAMES: Final = tuple(f[0] for f in _FAMILIES)

_PS = ("pipeline", "strategy")
_METRIC_TYPES = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
}


def _families() -> list[Metric]:
    """Fresh, empty metric families, in exposition order."""
    out: list[Metric] = []
    for name, kind, doc, extra in _FAMILIES:
        labels = (*_PS, extra) if extra else _PS
        out.append(_METRIC_TYPES[kind](name, doc, labels=labels))
    return out


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# The text format's family headers, rendered once.
_HEADERS: Final = tuple(
    f"# HELP {name}{'_total' if kind == 'counter' else ''} {_escape_help(doc)}\n"
    f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}\n"
    for name, kind, doc, _ in _FAMILIES
)


# ---- Timing: the opt-in duration histogram ------------------------------------------


def _bounds_ns(buckets: Sequence[float]) -> tuple[int, ...]:
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        raise TypeError(f"buckets must be a sequence of seconds, got {buckets!r}")
    if not 1 <= len(buckets) <= MAX_BUCKETS:
        raise ValueError(f"buckets must hold 1 to {MAX_BUCKETS} bounds, got {len(buckets)}")
    out: list[int] = []
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f"buckets must hold numbers of seconds, got {b!r}")
        if not math.isfinite(b) or b <= 0:
            raise ValueError(f"buckets must hold finite numbers of seconds > 0, got {b!r}")
        ns = round(b * 1e9)
        if out and ns <= out[-1]:
            raise ValueError(f"buckets must be strictly increasing (at ns precision): {buckets!r}")
        out.append(ns)
    return tuple(out)


class Timing(GateStrategy):
    """Observe each call's duration into a fixed histogram (for `ResilioCollector`).

    The only metrics strategy that costs anything per call: one clock read on
    entry, one on exit, a bisect and two counter adds. Put it first in the
    pipeline to time what the caller sees (rejections and retries included).
    Failed calls are observed; cancelled ones are not.
    """

    __slots__ = ("_bounds", "_enter", "_err", "_ok", "buckets", "counters")

    def __init__(
        self,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        *,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock)
        self._bounds = _bounds_ns(buckets)
        #: Upper bounds in seconds (the `le` labels, +Inf implied).
        self.buckets: tuple[float, ...] = tuple(float(b) for b in buckets)
        #: Per-bucket counts (not cumulative), then the +Inf overflow, then the sum in ns.
        self.counters = _core.Counters(len(self._bounds) + 2)
        self._make_hooks()

    @property
    def kind(self) -> str:
        return "timing"

    def _bind(self, pipeline_name: str | None, clock: Clock | None) -> None:
        super()._bind(pipeline_name, clock)
        self._make_hooks()

    def _make_hooks(self) -> None:
        # Instance slots shadow the gate methods: `_enter` is the clock's own now_ns
        # (a builtin on the system clock, so no Python frame), and the exits are
        # closures over bound methods, built once per clock.
        now_ns = self._clock.now_ns
        add = self.counters.add
        bounds = self._bounds
        sum_i = len(bounds) + 1

        def ok(token: Any, result: Any) -> None:
            d = now_ns() - token
            add(bisect_left(bounds, d))
            add(sum_i, d)

        def err(token: Any, exc: BaseException) -> None:
            if isinstance(exc, Exception):  # cancellation is not an outcome
                d = now_ns() - token
                add(bisect_left(bounds, d))
                add(sum_i, d)

        self._enter = now_ns  # type: ignore[method-assign]
        self._ok = ok  # type: ignore[method-assign]
        self._err = err  # type: ignore[method-assign]

    async def _enter_wait(self) -> Any:  # pragma: no cover - _enter never returns WAIT
        raise AssertionError("Timing never waits to enter")

    def snapshot(self) -> tuple[list[tuple[float, int]], int, float]:
        """(cumulative (upper bound, count) pairs ending with +Inf, count, sum in seconds)."""
        values = self.counters.snapshot()
        n = len(self._bounds)
        cumulative: list[tuple[float, int]] = []
        running = 0
        for i, bound in enumerate(self.buckets):
            running += values[i]
            cumulative.append((bound, running))
        running += values[n]
        cumulative.append((math.inf, running))
        return cumulative, running, values[n + 1] / 1e9

    def __repr__(self) -> str:
        return f"Timing(buckets={self.buckets!r}, name={self.name!r})"


# ---- the collector ------------------------------------------------------------------

_RETRY_OUTCOMES = (
    ("recovered", _retry.RECOVERED),
    ("exhausted", _retry.EXHAUSTED),
    ("budget_refused", _retry.BUDGET_REFUSED),
    ("gave_up", _retry.GAVE_UP),
)
_STATES = tuple(CircuitState)
_STATE_NAMES = tuple(s.name.lower() for s in _STATES)


def _le(bound: float) -> str:
    """The `le` label of a bucket, spelled as prometheus_client's own histograms do."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]  # untyped upstream
    return text


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Series:
    """One time series: its family, sample name and labels, and its text-format prefix."""

    __slots__ = ("family", "labels", "name", "prefix")

    def __init__(self, family: int, suffix: str, labels: dict[str, str]) -> None:
        self.family = family
        self.name = _FAMILIES[family][0] + suffix
        self.labels = labels
        text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
        self.prefix = f"{self.name}{{{text}}} "


# What each kind of strategy reports: a function giving its values now, in the order
# of the series that _plan() lists for it.


def _limiter_values(s: RateLimiter | Bulkhead) -> tuple[int, ...]:
    rejected = s.rejected
    return (s.admitted, rejected, rejected)


def _bulkhead_values(s: Bulkhead) -> tuple[int, ...]:
    rejected = s.rejected
    return (s.admitted, rejected, rejected, s.in_flight, s.queued, s.max_concurrency)


def _breaker_values(s: CircuitBreaker) -> tuple[int, ...]:
    rejected = s.rejected
    state = s.state
    return (
        s.admitted,
        rejected,
        s.successes,
        s.failures,
        rejected,
        *[1 if st is state else 0 for st in _STATES],
        s.opened,
        s.half_opened,
        s.closed,
        s.isolated,
    )


def _timeout_values(s: Timeout) -> tuple[int, ...]:
    return (s.timeouts,)


def _retry_values(s: Retry) -> tuple[int, ...]:
    v = s.counters.snapshot()
    return (*[v[i] for _, i in _RETRY_OUTCOMES], v[_retry.RETRIES], v[_retry.HANDLED])


def _hedging_values(s: Hedging) -> tuple[int, ...]:
    return (s.hedges,)


def _fallback_values(s: Fallback) -> tuple[int, ...]:
    return (s.fallbacks,)


def _timing_values(s: Timing) -> tuple[float, ...]:
    buckets, count, total = s.snapshot()
    return (*[c for _, c in buckets], count, total)


Values = Callable[[Any], Sequence[float]]


def _plan(pipeline: str, label: str, s: Strategy) -> tuple[Values, tuple[_Series, ...]] | None:
    """How to read strategy `s`, or None if it has no metrics (chaos, a user's own)."""

    def series(family: int, suffix: str = "", **extra: str) -> _Series:
        return _Series(family, suffix, {"pipeline": pipeline, "strategy": label, **extra})

    def outcomes(*names: str) -> list[_Series]:
        return [series(_CALLS, "_total", outcome=o) for o in names]

    values: Values
    if isinstance(s, RateLimiter):
        values = _limiter_values
        out = [
            *outcomes("admitted", "rejected"),
            series(_REJECTIONS, "_total", reason="rate_limited"),
        ]
    elif isinstance(s, CircuitBreaker):
        values = _breaker_values
        out = [
            *outcomes("admitted", "rejected", "success", "failure"),
            series(_REJECTIONS, "_total", reason="circuit_open"),
            *[series(_CIRCUIT_STATE, state=st) for st in _STATE_NAMES],
            *[
                series(_CIRCUIT_TRANSITIONS, "_total", to=to)
                for to in ("open", "half_open", "closed", "isolated")
            ],
        ]
    elif isinstance(s, Bulkhead):
        values = _bulkhead_values
        out = [
            *outcomes("admitted", "rejected"),
            series(_REJECTIONS, "_total", reason="bulkhead_full"),
            series(_BULKHEAD_IN_FLIGHT),
            series(_BULKHEAD_QUEUE),
            series(_BULKHEAD_LIMIT),
        ]
    elif isinstance(s, Timeout):
        values, out = _timeout_values, [series(_REJECTIONS, "_total", reason="timeout")]
    elif isinstance(s, Retry):
        values = _retry_values
        out = [
            *outcomes(*[name for name, _ in _RETRY_OUTCOMES]),
            series(_RETRIES, "_total"),
            series(_RETRY_HANDLED, "_total"),
        ]
    elif isinstance(s, Hedging):
        values, out = _hedging_values, [series(_HEDGES, "_total")]
    elif isinstance(s, Fallback):
        values, out = _fallback_values, [series(_FALLBACKS, "_total")]
    elif isinstance(s, Timing):
        values = _timing_values
        out = [series(_DURATION, "_bucket", le=_le(b)) for b in (*s.buckets, math.inf)]
        out += [series(_DURATION, "_count"), series(_DURATION, "_sum")]
    else:
        return None
    return values, tuple(out)


# Sample is a NamedTuple whose generated __new__ (a Python lambda filling the optional
# fields) is most of what building a sample costs; tuple.__new__ skips it.
_new = tuple.__new__
_PAD = (None,) * (len(Sample._fields) - 3)


#: (strategy index, its values function, then per series: family, sample name, labels,
#: text-format prefix). Parallel tuples keep the scrape loops to a zip.
Plan = tuple[
    int, Values, tuple[int, ...], tuple[str, ...], tuple[dict[str, str], ...], tuple[str, ...]
]


class _Entry:
    """One exposed pipeline: a (weak) reference, its label, and what to read from it."""

    __slots__ = ("name", "plans", "ref")

    def __init__(
        self, ref: Callable[[], Pipeline | None], name: str, plans: tuple[Plan, ...]
    ) -> None:
        self.ref = ref
        self.name = name
        self.plans = plans


def _strategy_labels(strategies: Sequence[Strategy]) -> list[str]:
    """Each strategy's label, made unique within the pipeline (`timeout`, `timeout_2`)."""
    seen: dict[str, int] = {}
    out = []
    for s in strategies:
        label = s.label
        n = seen.get(label, 0) + 1
        seen[label] = n
        out.append(label if n == 1 else f"{label}_{n}")
    return out


class ResilioCollector(Collector):
    """Expose the counters of pipelines as Prometheus metrics, read at scrape time.

    Registers itself on `registry` (default: prometheus_client's global
    REGISTRY); with `register=False` it is not registered anywhere (serve it
    with `metrics_app`, or register it yourself). `add(pipeline)` exposes a
    pipeline under its name. Pipelines are held weakly: one that is garbage
    collected is gone from the next scrape. Nothing is added to the call path.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, register: bool = True) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._by_name: dict[str, int] = {}
        self.registry = REGISTRY if registry is None else registry
        self.registered = register
        if register:
            self.registry.register(self)
            with _collectors_lock:
                # instrument() then reuses this collector instead of clashing with it.
                _collectors.setdefault(self.registry, self)

    def add(self, pipeline: Pipeline, *, name: str | None = None) -> None:
        """Expose `pipeline` with the label `pipeline=name` (default: the pipeline's name).

        Adding the same pipeline again only relabels it. Two live pipelines cannot
        share a name (their series would collide). Strategies that share a label
        within the pipeline are told apart by a suffix: `timeout`, `timeout_2`.
        """
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"add() takes a resilio Pipeline, got {pipeline!r}")
        label = pipeline.name if name is None else name
        if not isinstance(label, str) or not label:
            raise ValueError(
                "the pipeline needs a name for its `pipeline` label: build it with "
                "Pipeline(..., name=...) or pass add(pipeline, name=...)"
            )
        strategies = pipeline.strategies
        plans: list[Plan] = []
        for i, (s, slabel) in enumerate(zip(strategies, _strategy_labels(strategies), strict=True)):
            plan = _plan(label, slabel, s)
            if plan is not None:
                values, series = plan
                plans.append(
                    (
                        i,
                        values,
                        tuple(x.family for x in series),
                        tuple(x.name for x in series),
                        tuple(x.labels for x in series),
                        tuple(x.prefix for x in series),
                    )
                )
        ref = _weak(pipeline)
        key = id(pipeline)
        with self._lock:
            self._prune()
            other = self._by_name.get(label)
            if other is not None and other != key:
                raise ValueError(f"a pipeline named {label!r} is already exposed")
            old = self._entries.get(key)
            if old is not None:
                self._by_name.pop(old.name, None)
            self._entries[key] = _Entry(ref, label, tuple(plans))
            self._by_name[label] = key

    def remove(self, pipeline: Pipeline) -> None:
        """Stop exposing `pipeline` (nothing happens if it is not exposed)."""
        with self._lock:
            entry = self._entries.get(id(pipeline))
            if entry is not None and entry.ref() is pipeline:
                del self._entries[id(pipeline)]
                self._by_name.pop(entry.name, None)

    def __len__(self) -> int:
        """How many live pipelines are exposed."""
        with self._lock:
            self._prune()
            return len(self._entries)

    def _prune(self) -> None:
        # Under the lock. Dead entries are dropped here, not by weakref callbacks,
        # which can run inside a GC pass on a thread that already holds the lock.
        dead = [k for k, e in self._entries.items() if e.ref() is None]
        for k in dead:
            e = self._entries.pop(k)
            if self._by_name.get(e.name) == k:
                del self._by_name[e.name]

    def _live(self) -> list[tuple[Sequence[Strategy], tuple[Plan, ...]]]:
        with self._lock:
            self._prune()
            entries = list(self._entries.values())
        out: list[tuple[Sequence[Strategy], tuple[Plan, ...]]] = []
        for entry in entries:
            pipeline = entry.ref()
            if pipeline is not None:  # it may have died since the prune
                out.append((pipeline.strategies, entry.plans))
        return out

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (lets a registry detect name clashes)."""
        return _families()

    def collect(self) -> Iterable[Metric]:
        """Read every exposed pipeline's counters now, as metric families."""
        fams = _families()
        add = [f.samples.append for f in fams]
        for strategies, plans in self._live():
            for i, values, families, names, labels, _ in plans:
                for f, name, lab, v in zip(
                    families, names, labels, values(strategies[i]), strict=True
                ):
                    add[f](_new(Sample, (name, lab, v, *_PAD)))
        return fams

    def render(self) -> bytes:
        """Read every exposed pipeline's counters now, in the Prometheus text format.

        The same series as `collect()`, without prometheus_client's per-sample
        formatting: label sets are rendered once, at `add()`, so a scrape costs
        a few hundred nanoseconds per series.
        """
        lines: list[list[str]] = [[] for _ in _FAMILIES]
        add = [family.append for family in lines]
        for strategies, plans in self._live():
            for i, values, families, _, _, prefixes in plans:
                for f, prefix, v in zip(families, prefixes, values(strategies[i]), strict=True):
                    add[f](f"{prefix}{v}\n")
        return "".join(
            header + "".join(family) for header, family in zip(_HEADERS, lines, strict=True)
        ).encode()


class _Strong:
    """Stands in for a weak reference to an object that does not support one."""

    __slots__ = ("obj",)

    def __init__(self, obj: Pipeline) -> None:
        self.obj = obj

    def __call__(self) -> Pipeline:
        return self.obj


def _weak(pipeline: Pipeline) -> Callable[[], Pipeline | None]:
    try:
        return weakref.ref(pipeline)
    except TypeError:
        # Pipeline lacks a __weakref__ slot: hold it until remove() is called.
        return _Strong(pipeline)


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, ResilioCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.RLock()  # instrument() holds it while a collector registers


def instrument(
    pipeline: Pipeline, registry: CollectorRegistry | None = None, *, name: str | None = None
) -> ResilioCollector:
    """Expose `pipeline` on `registry` (default: the global REGISTRY); return the collector.

    One `ResilioCollector` is made per registry, on first use, and reused.
    """
    reg = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(reg)
        if collector is None:
            collector = _collectors[reg] = ResilioCollector(reg)
    collector.add(pipeline, name=name)
    return collector


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def metrics_app(
    collector: ResilioCollector, registry: CollectorRegistry | None = None
) -> Callable[[_Scope, _Receive, _Send], Awaitable[None]]:
    """An ASGI app serving `registry`'s metrics (default: the global REGISTRY) and the
    collector's, rendered by `ResilioCollector.render()`.

    For many pipelines: prometheus_client formats each sample anew on every
    scrape, `render()` does not. The collector must not also be registered on
    `registry` (build it with `register=False`), or its series would appear twice.
    """
    reg = REGISTRY if registry is None else registry
    if collector.registered and collector.registry is reg:
        raise ValueError(
            "the collector is registered on this registry, so its series would be served "
            "twice: build it with ResilioCollector(register=False)"
        )
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]

    async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        body = generate_latest(reg) + collector.render()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
