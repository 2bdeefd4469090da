"""Prometheus metrics: a collector that reads the strategies' counters at scrape time.

Nothing runs on the call path: every strategy already counts its events in the
core (admitted, rejected, opened...), and `ResilioCollector.collect()` turns
those counters into metric families when Prometheus scrapes. The ASGI
middleware (rate limiting, load shedding) is exposed the same way. Pipelines
and middleware are held weakly, so dropping one drops its series.

Call durations are the one thing the counters cannot give: timing a call reads
the clock twice. Put a `Timing` gate in the pipelines whose durations you want
(first, to time what the caller sees); the collector renders it as the
`resilio_call_duration_seconds` histogram.

    collector = ResilioCollector(registry)
    collector.add(pipeline)          # or: instrument(pipeline, registry)
    collector.add(app, name="inbound")   # RateLimitMiddleware / LoadSheddingMiddleware
"""

from __future__ import annotations

import math
import threading
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from itertools import accumulate, repeat
from operator import itemgetter
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
from resilio.integrations.asgi import (
    DeadlineMiddleware,
    LoadSheddingMiddleware,
    RateLimitMiddleware,
)
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
        "Calls seen by a strategy, by outcome: admitted (limiters, breakers, bulkheads), "
        "success/failure (recorded by breakers), recovered/exhausted/budget_refused/gave_up "
        "(how executions that needed a retry ended). Refusals: resilio_rejections_total.",
        "outcome",
    ),
    ("resilio_retries", "counter", "Retries started.", ""),
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


# ---- what each strategy reports -----------------------------------------------------

_RETRY_OUTCOMES = (
    ("recovered", _retry.RECOVERED),
    ("exhausted", _retry.EXHAUSTED),
    ("budget_refused", _retry.BUDGET_REFUSED),
    ("gave_up", _retry.GAVE_UP),
)
_RETRY_INDICES = itemgetter(*[i for _, i in _RETRY_OUTCOMES], _retry.RETRIES)
_STATE_NAMES = tuple(s.name.lower() for s in CircuitState)
# The state gauge's values for each state, built once: a scrape only looks them up.
_ONE_HOT: Final = {
    state: tuple(1 if other is state else 0 for other in CircuitState) for state in CircuitState
}
_TRANSITIONS = ("open", "half_open", "closed", "isolated")


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


# A function giving a strategy's values now, in the order of the series _plan() lists.
Values = Callable[[Any], Sequence[float]]


def _limiter_values(s: Any) -> tuple[int, int]:
    # A RateLimiter, or a bucket table of RateLimitMiddleware: both count the same way.
    return (s.admitted, s.rejected)


def _bulkhead_values(s: Bulkhead) -> tuple[int, ...]:
    return (s.admitted, s.rejected, s.in_flight, s.queued, s.max_concurrency)


def _breaker_values(s: CircuitBreaker) -> tuple[int, ...]:
    return (
        s.admitted,
        s.successes,
        s.failures,
        s.rejected,
        *_ONE_HOT[s.state],
        s.opened,
        s.half_opened,
        s.closed,
        s.isolated,
    )


def _timeout_values(s: Timeout) -> tuple[int]:
    return (s.timeouts,)


def _retry_values(s: Retry) -> tuple[int, ...]:
    values: tuple[int, ...] = _RETRY_INDICES(s.counters.snapshot())
    return values


def _hedging_values(s: Hedging) -> tuple[int]:
    return (s.hedges,)


def _fallback_values(s: Fallback) -> tuple[int]:
    return (s.fallbacks,)


def _timing_values(s: Timing) -> list[float]:
    # Counters: one count per bucket, the +Inf overflow, the sum in ns.
    v = s.counters.snapshot()
    out: list[float] = list(accumulate(v[:-1]))
    out.append(out[-1])
    out.append(v[-1] / 1e9)
    return out


def _plan(owner: str, label: str, s: object) -> tuple[Values, list[_Series]] | None:
    """How to read `s` (a strategy, or a middleware's bucket table), or None if it has
    no metrics (chaos, a user's own strategy)."""

    def series(family: int, suffix: str = "", **extra: str) -> _Series:
        return _Series(family, suffix, {"pipeline": owner, "strategy": label, **extra})

    def outcomes(*names: str) -> list[_Series]:
        return [series(_CALLS, "_total", outcome=o) for o in names]

    def rejections(reason: str) -> _Series:
        return series(_REJECTIONS, "_total", reason=reason)

    values: Values
    if isinstance(s, (RateLimiter, _Buckets)):
        values = _limiter_values
        out = [*outcomes("admitted"), rejections("rate_limited")]
    elif isinstance(s, CircuitBreaker):
        values = _breaker_values
        out = [
            *outcomes("admitted", "success", "failure"),
            rejections("circuit_open"),
            *[series(_CIRCUIT_STATE, state=st) for st in _STATE_NAMES],
            *[series(_CIRCUIT_TRANSITIONS, "_total", to=to) for to in _TRANSITIONS],
        ]
    elif isinstance(s, Bulkhead):
        values = _bulkhead_values
        out = [
            *outcomes("admitted"),
            rejections("bulkhead_full"),
            series(_BULKHEAD_IN_FLIGHT),
            series(_BULKHEAD_QUEUE),
            series(_BULKHEAD_LIMIT),
        ]
    elif isinstance(s, Timeout):
        values, out = _timeout_values, [rejections("timeout")]
    elif isinstance(s, Retry):
        values = _retry_values
        out = [*outcomes(*[name for name, _ in _RETRY_OUTCOMES]), series(_RETRIES, "_total")]
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
    return values, out


class _Buckets:
    """Marks the bucket table of a RateLimitMiddleware among a middleware stack's parts.

    The table itself may be a compiled object, a shared-memory one or a Redis one: all
    count `admitted` and `rejected`, which is all the collector reads.
    """

    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table

    @property
    def admitted(self) -> int:
        n: int = self.table.admitted
        return n

    @property
    def rejected(self) -> int:
        n: int = self.table.rejected
        return n


# ---- what can be exposed: pipelines and middleware stacks ----------------------------

#: What `ResilioCollector.add()` takes.
Exposable = Pipeline | RateLimitMiddleware | LoadSheddingMiddleware | DeadlineMiddleware
_MIDDLEWARE = (RateLimitMiddleware, LoadSheddingMiddleware, DeadlineMiddleware)


def _middleware_parts(app: object) -> tuple[object, ...]:
    """The countable parts of a stack of resilio middleware, outermost first.

    Follows `.app` through resilio's own middleware only: what wraps or sits below
    something else is not ours to walk into.
    """
    parts: list[object] = []
    while isinstance(app, _MIDDLEWARE):
        if isinstance(app, RateLimitMiddleware):
            parts.append(_Buckets(app.buckets))
        elif isinstance(app, LoadSheddingMiddleware):
            parts.append(app.bulkhead)
        app = app.app
    return tuple(parts)


class _Fixed:
    """The parts of a middleware stack, as found when it was added."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[object, ...]) -> None:
        self.parts = parts

    def __call__(self, target: object) -> tuple[object, ...]:
        return self.parts


def _pipeline_parts(pipeline: Pipeline) -> Sequence[object]:
    return pipeline.strategies


def _part_label(part: object) -> str:
    if isinstance(part, _Buckets):
        return "rate_limiter"
    assert isinstance(part, Strategy)
    return part.label


def _unique(labels: Iterable[str]) -> list[str]:
    """Labels made unique within one pipeline: `timeout`, `timeout_2`."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        n = seen.get(label, 0) + 1
        seen[label] = n
        out.append(label if n == 1 else f"{label}_{n}")
    return out


# One family's share of an entry's series: (family, positions among the entry's values,
# sample names, label dicts, their lines of text as a %-format).
Chunk = tuple[int, tuple[int, ...], tuple[str, ...], tuple[dict[str, str], ...], str]


class _Entry:
    """One exposed pipeline or middleware stack: a weak reference, its label, how to
    read it (which of its parts, with which values function), and its series, grouped
    by family so that a layout is put together without touching each series."""

    __slots__ = ("chunks", "name", "parts", "reads", "ref", "size")

    def __init__(
        self,
        ref: weakref.ref[Any],
        name: str,
        parts: Callable[[Any], Sequence[object]],
        reads: tuple[tuple[int, Values], ...],
        series: Sequence[_Series],
    ) -> None:
        self.ref = ref
        self.name = name
        self.parts = parts
        self.reads = reads
        self.size = len(series)
        by_family: dict[int, list[tuple[int, _Series]]] = {}
        for i, s in enumerate(series):
            by_family.setdefault(s.family, []).append((i, s))
        self.chunks: tuple[Chunk, ...] = tuple(
            (
                f,
                tuple(i for i, _ in mine),
                tuple(s.name for _, s in mine),
                tuple(s.labels for _, s in mine),
                "".join(f"{s.prefix.replace('%', '%%')}%s\n" for _, s in mine),
            )
            for f, mine in sorted(by_family.items())
        )


Getter = Callable[[list[float]], Sequence[float]]


def _getter(indices: Sequence[int]) -> Getter:
    """Pick `indices` out of a list, as a tuple, in one C call."""
    if len(indices) < 2:  # itemgetter of one index gives the item, not a tuple
        return lambda values: tuple(values[i] for i in indices)
    picked: Getter = itemgetter(*indices)
    return picked


class _Layout:
    """Everything a scrape needs that changes only when pipelines come and go.

    A scrape reads every exposed part's values into one flat list (entry by entry);
    the layout knows where each family's series sit in that list, and holds their
    names and labels (for `collect()`) and one %-format string with every line of
    the text exposition (for `render()`), so no label is touched at scrape time.
    """

    __slots__ = ("entries", "families", "in_order", "template")

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = tuple((e.ref, e.parts, e.reads) for e in entries)
        n = len(_FAMILIES)
        positions: list[list[int]] = [[] for _ in range(n)]
        names: list[list[str]] = [[] for _ in range(n)]
        labels: list[list[dict[str, str]]] = [[] for _ in range(n)]
        lines: list[list[str]] = [[] for _ in range(n)]
        start = 0
        for e in entries:
            for f, local, chunk_names, chunk_labels, text in e.chunks:
                positions[f].extend(map(start.__add__, local))
                names[f] += chunk_names
                labels[f] += chunk_labels
                lines[f].append(text)
            start += e.size
        #: Per non-empty family: its index, a getter of its values, names, labels.
        self.families = tuple(
            (f, _getter(positions[f]), tuple(names[f]), tuple(labels[f]))
            for f in range(n)
            if positions[f]
        )
        #: All values in exposition order. `%` over a tuple measured twice as fast as
        #: `str.format` with positional fields over the unordered list.
        self.in_order = _getter([i for family in positions for i in family])
        self.template = "".join(
            header.replace("%", "%%") + "".join(text)
            for header, text in zip(_HEADERS, lines, strict=True)
        )


# Sample is a NamedTuple whose generated __new__ (a Python function filling the
# optional fields) is most of what building a sample costs: tuple.__new__ over a
# zip of the fields builds every sample of a family without running Python code.
_new = tuple.__new__
_PADDING = len(Sample._fields) - 3


class ResilioCollector(Collector):
    """Expose the counters of pipelines and middleware as Prometheus metrics, read at
    scrape time.

    Registers itself on `registry` (default: prometheus_client's global
    REGISTRY); with `register=False` it is not registered anywhere (serve it
    with `metrics_app`, or register it yourself). `add()` exposes a pipeline or
    a stack of resilio ASGI middleware under a name. Both are held weakly: one
    that is garbage collected is gone from the next scrape. Nothing is added to
    the call path.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, register: bool = True) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._by_name: dict[str, int] = {}
        self._layout: _Layout | None = None
        self.registry = REGISTRY if registry is None else registry
        self.registered = register
        if register:
            self.registry.register(self)
            with _collectors_lock:
                # instrument() then reuses this collector instead of clashing with it.
                _collectors.setdefault(self.registry, self)

    def add(self, target: Exposable, *, name: str | None = None) -> None:
        """Expose a pipeline, or a stack of resilio ASGI middleware, as `pipeline=name`.

        A pipeline's name defaults to its own; middleware needs `name=`. Given a
        middleware, every `RateLimitMiddleware` and `LoadSheddingMiddleware` reached
        through `.app` from it (across resilio middleware only) is exposed, as the
        strategies `rate_limiter` and `load_shedding`. Adding the same object again
        only relabels it; two live objects cannot share a name. Strategies that share
        a label are told apart by a suffix: `timeout`, `timeout_2`.
        """
        parts_of: Callable[[Any], Sequence[object]]
        parts: Sequence[object]
        if isinstance(target, Pipeline):
            parts_of, default, parts = _pipeline_parts, target.name, target.strategies
        elif isinstance(target, _MIDDLEWARE):
            # Found once: a scrape must not walk `.app`, which its owner could reassign.
            parts = _middleware_parts(target)
            parts_of, default = _Fixed(parts), None
        else:
            raise TypeError(
                f"add() takes a resilio Pipeline or resilio ASGI middleware, got {target!r}"
            )
        label = default if name is None else name
        if not isinstance(label, str) or not label:
            raise ValueError(
                "the pipeline label needs a name: build the pipeline with "
                "Pipeline(..., name=...) or pass add(target, name=...)"
                if isinstance(target, Pipeline)
                else "middleware has no name of its own: pass add(middleware, name=...)"
            )
        reads: list[tuple[int, Values]] = []
        series: list[_Series] = []
        labels = _unique(_part_label(p) for p in parts)
        for i, (part, part_label) in enumerate(zip(parts, labels, strict=True)):
            plan = _plan(label, part_label, part)
            if plan is not None:
                reads.append((i, plan[0]))
                series += plan[1]
        entry = _Entry(weakref.ref(target), label, parts_of, tuple(reads), series)
        key = id(target)
        with self._lock:
            other = self._by_name.get(label)
            if other is not None and other != key:
                holder = self._entries[other]
                if holder.ref() is not None:
                    raise ValueError(f"a pipeline named {label!r} is already exposed")
                del self._entries[other]  # dead: its name is free again
            old = self._entries.get(key)
            if old is not None:
                self._by_name.pop(old.name, None)
            self._entries[key] = entry
            self._by_name[label] = key
            self._layout = None

    def remove(self, target: Exposable) -> None:
        """Stop exposing `target` (nothing happens if it is not exposed)."""
        with self._lock:
            entry = self._entries.get(id(target))
            if entry is not None and entry.ref() is target:
                del self._entries[id(target)]
                self._by_name.pop(entry.name, None)
                self._layout = None

    def __len__(self) -> int:
        """How many live pipelines and middleware stacks are exposed."""
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
        if dead:
            self._layout = None

    def _read(self) -> tuple[_Layout, list[float]]:
        """The current layout and every exposed value, read now."""
        while True:
            layout = self._layout
            if layout is None:
                with self._lock:
                    self._prune()
                    layout = self._layout = _Layout(list(self._entries.values()))
            values: list[float] = []
            extend = values.extend
            for ref, parts_of, reads in layout.entries:
                target = ref()
                if target is None:
                    break  # died since the layout was made: make a new one
                parts = parts_of(target)
                for i, read in reads:
                    extend(read(parts[i]))
            else:
                return layout, values
            with self._lock:
                self._prune()

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (lets a registry detect name clashes)."""
        return _families()

    def collect(self) -> Iterable[Metric]:
        """Read every exposed counter now, as metric families."""
        layout, values = self._read()
        families = _families()
        pad = (repeat(None),) * _PADDING
        for f, get, names, labels in layout.families:
            families[f].samples = list(
                map(_new, repeat(Sample), zip(names, labels, get(values), *pad, strict=False))
            )
        return families

    def render(self) -> bytes:
        """Read every exposed counter now, in the Prometheus text format.

        The same series as `collect()`, without prometheus_client's per-sample
        formatting: every line is laid out once, when the set of pipelines
        changes, so a scrape costs one read per strategy and one `%` format.
        """
        layout, values = self._read()
        return (layout.template % layout.in_order(values)).encode()


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, ResilioCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.RLock()  # instrument() holds it while a collector registers


def instrument(
    target: Exposable, registry: CollectorRegistry | None = None, *, name: str | None = None
) -> ResilioCollector:
    """Expose a pipeline or middleware stack on `registry` (default: the global
    REGISTRY); return the collector.

    One `ResilioCollector` is made per registry, on first use, and reused.
    """
    reg = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(reg)
        if collector is None:
            collector = _collectors[reg] = ResilioCollector(reg)
    collector.add(target, name=name)
    return collector


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def metrics_app(
    collector: ResilioCollector, registry: CollectorRegistry | None = None
) -> Callable[[_Scope, _Receive, _Send], Awaitable[None]]:
    """An ASGI app serving `registry`'s metrics (default: the global REGISTRY) and the
    collector's, rendered by `ResilioCollector.render()`.

    The fast path for many pipelines: prometheus_client formats each sample anew
    on every scrape, `render()` does not. The collector must not also be
    registered on `registry` (build it with `register=False`), or its series
    would appear twice.
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
