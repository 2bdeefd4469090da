"""Prometheus collector: exact values after driving calls, scraped as Prometheus would.

Every test that builds strategies takes `core` (both core implementations); the ones
that run calls are anyio tests (asyncio and trio). Scrapes go through
`prometheus_client.generate_latest` and are parsed back with its text parser.
"""

from __future__ import annotations

import gc
import math
import threading
import weakref
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import httpx
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import resilio
from resilio import (
    Backoff,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    Fallback,
    Hedging,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    Timeout,
)
from resilio.integrations.asgi import (
    DeadlineMiddleware,
    LoadSheddingMiddleware,
    RateLimitMiddleware,
)
from resilio.integrations.prometheus import (
    DEFAULT_BUCKETS,
    METRIC_NAMES,
    ResilioCollector,
    Timing,
    instrument,
    metrics_app,
)
from resilio.testing import FakeClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: bytes | str) -> Samples:
    if isinstance(text, bytes):
        text = text.decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and want <= k[1]}


def outcomes(samples: Samples, **labels: str) -> dict[str, float]:
    """`resilio_calls_total` of one strategy, by outcome."""
    found = series(samples, "resilio_calls_total", **labels)
    return {dict(k)["outcome"]: v for k, v in found.items()}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def collector(registry: CollectorRegistry) -> ResilioCollector:
    return ResilioCollector(registry)


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise ConnectionError("down")


# ---- counters, exactly --------------------------------------------------------------


@pytest.mark.anyio
async def test_breaker_state_gauge_and_transitions(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_ratio=0.5, minimum_throughput=2, sampling_duration=10.0, break_duration=5.0
    )
    p = Pipeline(breaker, name="payments", clock=clock)
    collector.add(p)
    labels = {"pipeline": "payments", "strategy": "circuit_breaker"}

    def states(samples: Samples) -> dict[str, float]:
        found = series(samples, "resilio_circuit_state", **labels)
        return {dict(k)["state"]: v for k, v in found.items()}

    s = scrape(registry)
    assert states(s) == {"closed": 1.0, "open": 0.0, "half_open": 0.0, "isolated": 0.0}

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await p.execute(boom)
    with pytest.raises(resilio.BrokenCircuitError):
        await p.execute(ok)
    s = scrape(registry)
    assert states(s) == {"closed": 0.0, "open": 1.0, "half_open": 0.0, "isolated": 0.0}
    transitions = "resilio_circuit_transitions_total"
    assert value(s, transitions, **labels, to="open") == 1
    assert value(s, transitions, **labels, to="half_open") == 0
    assert value(s, "resilio_calls_total", **labels, outcome="admitted") == 2
    assert value(s, "resilio_calls_total", **labels, outcome="failure") == 2
    assert value(s, "resilio_calls_total", **labels, outcome="success") == 0
    assert value(s, "resilio_rejections_total", **labels, reason="circuit_open") == 1
    assert set(outcomes(s, **labels)) == {"admitted", "success", "failure"}

    clock.advance(5.001)  # the core keeps open-until in 65 us units, rounded up
    assert await p.execute(ok) == "ok"  # the probe succeeds: half-open, then closed
    s = scrape(registry)
    assert states(s)["closed"] == 1.0
    assert value(s, transitions, **labels, to="half_open") == 1
    assert value(s, transitions, **labels, to="closed") == 1
    assert value(s, "resilio_calls_total", **labels, outcome="success") == 1

    breaker.isolate()
    s = scrape(registry)
    assert states(s) == {"closed": 0.0, "open": 0.0, "half_open": 0.0, "isolated": 1.0}
    assert value(s, transitions, **labels, to="isolated") == 1


@pytest.mark.anyio
async def test_limiter_rejections(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    clock = FakeClock()
    p = Pipeline(RateLimiter(rate=1.0, burst=2), name="api", clock=clock)
    collector.add(p)
    for _ in range(2):
        await p.execute(ok)
    for _ in range(3):
        with pytest.raises(RateLimitedError):
            await p.execute(ok)
    s = scrape(registry)
    labels = {"pipeline": "api", "strategy": "rate_limiter"}
    assert value(s, "resilio_calls_total", **labels, outcome="admitted") == 2
    assert value(s, "resilio_rejections_total", **labels, reason="rate_limited") == 3
    # Refusals are counted once, by reason: not again as a call outcome.
    assert outcomes(s, **labels) == {"admitted": 2}


@pytest.mark.anyio
async def test_keyed_limiter_counts(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    p = Pipeline(RateLimiter(1.0, 1, key=lambda user: user), name="api", clock=FakeClock())
    collector.add(p)

    async def hello(user: str) -> str:
        return user

    await p.execute(hello, "a")
    await p.execute(hello, "b")
    with pytest.raises(RateLimitedError):
        await p.execute(hello, "a")
    s = scrape(registry)
    labels = {"pipeline": "api", "strategy": "rate_limiter"}
    assert value(s, "resilio_calls_total", **labels, outcome="admitted") == 2
    assert value(s, "resilio_rejections_total", **labels, reason="rate_limited") == 1


@pytest.mark.anyio
async def test_retries(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    retry = Retry(3, backoff=Backoff.constant(0.0), handle=ConnectionError)
    p = Pipeline(retry, name="svc", clock=FakeClock())
    collector.add(p)
    failures = 2

    async def flaky() -> str:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError
        return "ok"

    assert await p.execute(flaky) == "ok"  # two retries, then recovered
    with pytest.raises(ConnectionError):
        await p.execute(boom)  # two retries, then exhausted
    assert await p.execute(ok) == "ok"  # never retried
    s = scrape(registry)
    labels = {"pipeline": "svc", "strategy": "retry"}
    assert value(s, "resilio_retries_total", **labels) == 4
    assert value(s, "resilio_calls_total", **labels, outcome="recovered") == 1
    assert value(s, "resilio_calls_total", **labels, outcome="exhausted") == 1
    assert value(s, "resilio_calls_total", **labels, outcome="budget_refused") == 0
    assert value(s, "resilio_calls_total", **labels, outcome="gave_up") == 0


@pytest.mark.anyio
async def test_bulkhead_gauges_and_rejections(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    p = Pipeline(Bulkhead(2, max_queue=1), name="db")
    collector.add(p)
    release = anyio.Event()
    labels = {"pipeline": "db", "strategy": "bulkhead"}

    async def held() -> None:
        await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(p.execute, held)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(BulkheadFullError):
                await p.execute(held)
            s = scrape(registry)
            assert value(s, "resilio_bulkhead_in_flight", **labels) == 2
            assert value(s, "resilio_bulkhead_queue_depth", **labels) == 1
            assert value(s, "resilio_bulkhead_max_concurrency", **labels) == 2
            assert value(s, "resilio_rejections_total", **labels, reason="bulkhead_full") == 1
            release.set()
    s = scrape(registry)
    assert value(s, "resilio_bulkhead_in_flight", **labels) == 0
    assert value(s, "resilio_bulkhead_queue_depth", **labels) == 0
    assert value(s, "resilio_calls_total", **labels, outcome="admitted") == 3
    assert value(s, "resilio_rejections_total", **labels, reason="bulkhead_full") == 1


@pytest.mark.anyio
async def test_timeouts_hedges_and_fallbacks(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    p = Pipeline(Fallback(value="fallback"), Hedging(0.001, 2), Timeout(0.02), name="slow")
    collector.add(p)

    async def hang() -> str:
        await anyio.sleep(1)
        return "late"

    with anyio.fail_after(5):
        assert await p.execute(hang) == "fallback"
    s = scrape(registry)
    base = {"pipeline": "slow"}
    assert value(s, "resilio_rejections_total", **base, strategy="timeout", reason="timeout") == 2
    assert value(s, "resilio_hedges_total", **base, strategy="hedging") == 1
    assert value(s, "resilio_fallbacks_total", **base, strategy="fallback") == 1


# ---- the duration histogram ---------------------------------------------------------


@pytest.mark.anyio
async def test_timing_histogram(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    clock = FakeClock()
    p = Pipeline(Timing(buckets=(0.01, 0.1, 1.0)), name="svc", clock=clock)
    collector.add(p)

    async def takes(seconds: float, fail: bool = False) -> None:
        clock.advance(seconds)
        if fail:
            raise ConnectionError

    await p.execute(takes, 0.005)
    await p.execute(takes, 0.01)  # le is inclusive
    await p.execute(takes, 0.5)
    with pytest.raises(ConnectionError):
        await p.execute(takes, 2.0, True)  # failures are observed

    async def cancelled() -> None:
        clock.advance(0.05)
        await anyio.sleep(1)

    with anyio.CancelScope() as scope:
        scope.cancel()
        await p.execute(cancelled)  # cancellation is not observed

    s = scrape(registry)
    labels = {"pipeline": "svc", "strategy": "timing"}
    name = "resilio_call_duration_seconds"
    assert value(s, name + "_bucket", **labels, le="0.01") == 2
    assert value(s, name + "_bucket", **labels, le="0.1") == 2
    assert value(s, name + "_bucket", **labels, le="1.0") == 3
    assert value(s, name + "_bucket", **labels, le="+Inf") == 4
    assert value(s, name + "_count", **labels) == 4
    assert value(s, name + "_sum", **labels) == pytest.approx(2.515)
    buckets, count, total = p.strategies[0].snapshot()  # type: ignore[attr-defined]
    assert buckets == [(0.01, 2), (0.1, 2), (1.0, 3), (math.inf, 4)]
    assert (count, total) == (4, pytest.approx(2.515))


def test_timing_default_buckets_and_validation(core: ModuleType) -> None:
    assert Timing().buckets == DEFAULT_BUCKETS
    for bad in [(), (0.1, 0.1), (0.2, 0.1), (0.0,), (math.inf,), tuple(range(1, 32))]:
        with pytest.raises(ValueError):
            Timing(bad)
    for bad_type in ["0.1", (True,), ("1",), 0.5]:
        with pytest.raises(TypeError):
            Timing(bad_type)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_timing_uses_the_pipeline_clock_and_fuses_with_gates(core: ModuleType) -> None:
    clock = FakeClock()
    timing = Timing(buckets=(1.0,))
    p = Pipeline(timing, RateLimiter(100.0), CircuitBreaker(), name="svc", clock=clock)

    async def slow() -> None:
        clock.advance(3.0)

    await p.execute(slow)
    assert timing.snapshot()[0] == [(1.0, 0), (math.inf, 1)]
    assert timing.snapshot()[2] == 3.0


# ---- exposure: labels, names, lifetime, registries ---------------------------------


def test_standard_pipeline_series(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    std = resilio.standard_pipeline("std")  # held: the collector holds pipelines weakly
    collector.add(std)
    s = scrape(registry)
    found = {(name, dict(labels)["strategy"], _extra(labels)) for name, labels in s}
    assert found == {
        ("resilio_calls_total", "rate_limiter", "outcome=admitted"),
        ("resilio_rejections_total", "rate_limiter", "reason=rate_limited"),
        ("resilio_rejections_total", "total_timeout", "reason=timeout"),
        *[
            ("resilio_calls_total", "retry", f"outcome={o}")
            for o in ("recovered", "exhausted", "budget_refused", "gave_up")
        ],
        ("resilio_retries_total", "retry", ""),
        *[
            ("resilio_calls_total", "circuit_breaker", f"outcome={o}")
            for o in ("admitted", "success", "failure")
        ],
        ("resilio_rejections_total", "circuit_breaker", "reason=circuit_open"),
        *[
            ("resilio_circuit_state", "circuit_breaker", f"state={st}")
            for st in ("closed", "open", "half_open", "isolated")
        ],
        *[
            ("resilio_circuit_transitions_total", "circuit_breaker", f"to={to}")
            for to in ("open", "half_open", "closed", "isolated")
        ],
        ("resilio_rejections_total", "attempt_timeout", "reason=timeout"),
    }
    assert len(s) == 21  # the figure the scrape timing in docs/metrics.md assumes
    assert {dict(labels)["pipeline"] for _, labels in s} == {"std"}
    closed = {"pipeline": "std", "strategy": "circuit_breaker", "state": "closed"}
    assert value(s, "resilio_circuit_state", **closed) == 1
    assert sum(s.values()) == 1  # nothing has happened yet


def _extra(labels: frozenset[tuple[str, str]]) -> str:
    """The label other than pipeline and strategy, as `name=value` ("" if none)."""
    rest = [f"{k}={v}" for k, v in labels if k not in ("pipeline", "strategy")]
    assert len(rest) <= 1, rest
    return rest[0] if rest else ""


def test_series_of_the_other_strategies(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    held = Pipeline(
        Timing(buckets=(0.5,)), Fallback(value=0), Hedging(0.1), Bulkhead(4), name="other"
    )
    collector.add(held)
    s = scrape(registry)
    found = {(name, dict(labels)["strategy"], _extra(labels)) for name, labels in s}
    assert found == {
        ("resilio_call_duration_seconds_bucket", "timing", "le=0.5"),
        ("resilio_call_duration_seconds_bucket", "timing", "le=+Inf"),
        ("resilio_call_duration_seconds_count", "timing", ""),
        ("resilio_call_duration_seconds_sum", "timing", ""),
        ("resilio_fallbacks_total", "fallback", ""),
        ("resilio_hedges_total", "hedging", ""),
        ("resilio_calls_total", "bulkhead", "outcome=admitted"),
        ("resilio_rejections_total", "bulkhead", "reason=bulkhead_full"),
        ("resilio_bulkhead_in_flight", "bulkhead", ""),
        ("resilio_bulkhead_queue_depth", "bulkhead", ""),
        ("resilio_bulkhead_max_concurrency", "bulkhead", ""),
    }
    assert value(s, "resilio_bulkhead_max_concurrency", pipeline="other", strategy="bulkhead") == 4
    families = {f.name: f.type for f in text_string_to_metric_families(render_text(registry))}
    assert families == {
        "resilio_calls": "counter",
        "resilio_retries": "counter",
        "resilio_rejections": "counter",
        "resilio_circuit_state": "gauge",
        "resilio_circuit_transitions": "counter",
        "resilio_bulkhead_in_flight": "gauge",
        "resilio_bulkhead_queue_depth": "gauge",
        "resilio_bulkhead_max_concurrency": "gauge",
        "resilio_hedges": "counter",
        "resilio_fallbacks": "counter",
        "resilio_call_duration_seconds": "histogram",
    }


def render_text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_every_family_is_described(
    registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    names = {m.name for m in collector.describe()}
    assert names == set(METRIC_NAMES)
    with pytest.raises(ValueError, match="Duplicated"):
        ResilioCollector(registry)  # a second collector would clash on the same registry


def test_duplicate_strategy_labels_get_a_suffix(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    held = Pipeline(Timeout(1.0), Timeout(2.0), Timeout(3.0, name="x"), name="p")
    collector.add(held)
    found = series(scrape(registry), "resilio_rejections_total", pipeline="p")
    assert {dict(k)["strategy"] for k in found} == {"timeout", "timeout_2", "x"}


def test_pipeline_names(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    unnamed = Pipeline(Timeout(1.0))
    with pytest.raises(ValueError, match="needs a name"):
        collector.add(unnamed)
    collector.add(unnamed, name="given")
    first = Pipeline(Timeout(1.0), name="same")
    collector.add(first)
    collector.add(first)  # the same pipeline again is fine
    with pytest.raises(ValueError, match="already exposed"):
        collector.add(Pipeline(Timeout(1.0), name="same"))
    collector.add(first, name="renamed")
    names = {dict(k)["pipeline"] for k in series(scrape(registry), "resilio_rejections_total")}
    assert names == {"given", "renamed"}
    with pytest.raises(TypeError):
        collector.add(Timeout(1.0))  # type: ignore[arg-type]


def test_remove(core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector) -> None:
    p = Pipeline(Timeout(1.0), name="p")
    collector.add(p)
    assert len(collector) == 1
    collector.remove(p)
    collector.remove(p)
    assert len(collector) == 0
    assert scrape(registry) == {}


def _weakrefable() -> bool:
    try:
        weakref.ref(Pipeline())
    except TypeError:
        return False
    return True


def test_dropping_a_pipeline_drops_its_series(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    kept = Pipeline(Timeout(1.0), name="kept")
    dropped = Pipeline(Timeout(1.0), name="dropped")
    collector.add(kept)
    collector.add(dropped)
    assert {dict(k)["pipeline"] for k in series(scrape(registry), "resilio_rejections_total")} == {
        "kept",
        "dropped",
    }
    del dropped
    gc.collect()
    assert {dict(k)["pipeline"] for k in series(scrape(registry), "resilio_rejections_total")} == {
        "kept"
    }
    assert len(collector) == 1
    collector.add(Pipeline(Timeout(1.0), name="dropped"))  # the name is free again


def test_a_dead_pipelines_name_is_free_before_any_scrape(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    first = Pipeline(RateLimiter(1.0), name="svc")
    collector.add(first)
    del first
    gc.collect()
    second = Pipeline(Timeout(1.0), name="svc")
    collector.add(second)  # no scrape has pruned the first yet
    s = scrape(registry)
    assert {(dict(k)["pipeline"], dict(k)["strategy"]) for _, k in s} == {("svc", "timeout")}
    assert len(collector) == 1


@pytest.mark.anyio
async def test_scrape_adds_nothing_to_the_call_path(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    p = Pipeline(RateLimiter(1000.0), CircuitBreaker(), name="p")
    run = p._run
    collector.add(p)
    assert p._run is run
    assert await p.execute(ok) == "ok"


def test_instrument_reuses_one_collector_per_registry(core: ModuleType) -> None:
    reg = CollectorRegistry()
    a = instrument(Pipeline(Timeout(1.0), name="a"), reg)
    b = instrument(Pipeline(Timeout(1.0), name="b"), reg)
    assert a is b and a.registry is reg
    mine = CollectorRegistry()
    explicit = ResilioCollector(mine)
    assert instrument(Pipeline(Timeout(1.0), name="c"), mine) is explicit


def test_default_registry_is_the_global_one(core: ModuleType) -> None:
    collector = ResilioCollector()
    try:
        assert collector.registry is prometheus_client.REGISTRY
        p = Pipeline(Timeout(1.0), name="global_test")
        collector.add(p)
        assert b'pipeline="global_test"' in generate_latest()
    finally:
        prometheus_client.REGISTRY.unregister(collector)


# ---- serving ------------------------------------------------------------------------


async def _http_get(app: Any) -> tuple[int, bytes, dict[str, str]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/metrics")
    return r.status_code, r.content, dict(r.headers)


@pytest.mark.anyio
async def test_works_with_prometheus_make_asgi_app(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    p = Pipeline(RateLimiter(1.0, 1), name="api", clock=FakeClock())
    collector.add(p)
    await p.execute(ok)
    status, body, _ = await _http_get(prometheus_client.make_asgi_app(registry))
    assert status == 200
    labels = {"pipeline": "api", "strategy": "rate_limiter", "outcome": "admitted"}
    assert value(parse(body), "resilio_calls_total", **labels) == 1


def test_render_matches_generate_latest(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    held_all: list[Pipeline] = []  # the collector holds pipelines weakly
    for i in range(3):
        held_all.append(resilio.standard_pipeline(f"p{i}"))
        collector.add(held_all[-1])
    held_all.append(
        Pipeline(Timing(), Bulkhead(3), Hedging(0.1), Fallback(value=0), name='odd "name"\\')
    )
    collector.add(held_all[-1])
    rendered = collector.render()
    assert parse(rendered) == scrape(registry)
    assert len(parse(rendered)) == 3 * 21 + 17 + 5 + 2


@pytest.mark.anyio
async def test_metrics_app_serves_the_registry_and_the_collector(core: ModuleType) -> None:
    registry = CollectorRegistry()
    prometheus_client.Counter("app_requests", "Requests.", registry=registry).inc(3)
    collector = ResilioCollector(registry, register=False)
    held = Pipeline(Timeout(1.0), name="p")
    collector.add(held)
    status, body, headers = await _http_get(metrics_app(collector, registry))
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    s = parse(body)
    assert value(s, "app_requests_total") == 3
    assert (
        value(s, "resilio_rejections_total", pipeline="p", strategy="timeout", reason="timeout")
        == 0
    )
    with pytest.raises(ValueError, match="twice"):
        metrics_app(ResilioCollector(registry), registry)


def test_render_escapes_names_that_look_like_format_fields(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    held = [
        Pipeline(Timeout(1.0, name="%s {0} %%"), name="%d {} }{"),
        Pipeline(Timeout(1.0), name='new\nline "quoted" back\\slash'),
    ]
    for p in held:
        collector.add(p)
    assert parse(collector.render()) == scrape(registry)
    names = {dict(k)["pipeline"] for k in series(scrape(registry), "resilio_rejections_total")}
    assert names == {"%d {} }{", 'new\nline "quoted" back\\slash'}


def test_openmetrics_exposition(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    held = Pipeline(Timing(buckets=(0.1,)), CircuitBreaker(), name="om")
    collector.add(held)
    text: str = openmetrics_latest(registry).decode()  # type: ignore[no-untyped-call]  # untyped upstream
    assert text.endswith("# EOF\n")
    found = {
        (s.name, s.labels.get("state", s.labels.get("le", s.labels.get("outcome", "")))): s.value
        for f in openmetrics_families(text)  # type: ignore[no-untyped-call]  # untyped upstream
        for s in f.samples
    }
    assert found[("resilio_circuit_state", "closed")] == 1
    assert found[("resilio_calls_total", "admitted")] == 0
    assert found[("resilio_call_duration_seconds_bucket", "+Inf")] == 0


@pytest.mark.anyio
async def test_a_scrape_reads_values_now_and_sees_pipelines_come_and_go(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    a = Pipeline(RateLimiter(100.0, 100), name="a", clock=FakeClock())
    collector.add(a)
    admitted = {"pipeline": "a", "strategy": "rate_limiter", "outcome": "admitted"}
    assert value(scrape(registry), "resilio_calls_total", **admitted) == 0
    await a.execute(ok)
    assert value(scrape(registry), "resilio_calls_total", **admitted) == 1
    assert parse(collector.render())[("resilio_calls_total", frozenset(admitted.items()))] == 1
    b = Pipeline(Timeout(1.0), name="b")
    collector.add(b)
    pipelines = {dict(k)["pipeline"] for _, k in scrape(registry)}
    assert pipelines == {"a", "b"}
    collector.add(b, name="b2")
    assert {dict(k)["pipeline"] for _, k in parse(collector.render())} == {"a", "b2"}
    collector.remove(a)
    assert {dict(k)["pipeline"] for _, k in scrape(registry)} == {"b2"}
    del b
    gc.collect()
    assert parse(collector.render()) == {}
    assert scrape(registry) == {}


def test_concurrent_scrapes_while_pipelines_come_and_go(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    kept = [Pipeline(Timeout(1.0), name=f"kept{i}") for i in range(20)]
    for p in kept:
        collector.add(p)
    expected = {f"kept{i}" for i in range(20)}
    churned = {f"churn{i}" for i in range(300)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def scraper() -> None:
        try:
            while not stop.is_set():
                for text in (generate_latest(registry), collector.render()):
                    found = parse(text)  # asserts that no series is there twice
                    names = {dict(k)["pipeline"] for _, k in found}
                    assert expected <= names <= expected | churned
                    assert len(found) == len(names)  # one series per Timeout pipeline
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=scraper) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            # Unique names: a scraper may hold a dying pipeline for a moment.
            p = Pipeline(Timeout(1.0), name=f"churn{i}")
            collector.add(p)
            if i % 3 == 0:
                collector.remove(p)
            del p  # the others die here, between or during scrapes
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[0]
    gc.collect()
    assert {dict(k)["pipeline"] for _, k in scrape(registry)} == expected


# ---- ASGI middleware ----------------------------------------------------------------


async def _request(app: Any, path: str = "/") -> int:
    """Send one GET to an ASGI app; return the status (no HTTP client: works on trio)."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [],
        "client": ("10.0.0.1", 1234),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


@pytest.mark.anyio
async def test_middleware_counters(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    release = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    shedding = LoadSheddingMiddleware(app, max_concurrency=1, max_queue=1)
    limited = RateLimitMiddleware(
        DeadlineMiddleware(shedding), rate=1.0, burst=5, clock=FakeClock()
    )
    collector.add(limited, name="inbound")
    limit = {"pipeline": "inbound", "strategy": "rate_limiter"}
    shed = {"pipeline": "inbound", "strategy": "load_shedding"}

    s = scrape(registry)
    assert {dict(k)["strategy"] for _, k in s} == {"rate_limiter", "load_shedding"}
    assert value(s, "resilio_bulkhead_max_concurrency", **shed) == 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_request, limited, "/slow")
            tg.start_soon(_request, limited, "/slow")
            await anyio.wait_all_tasks_blocked()
            assert await _request(limited, "/slow") == 503  # one running, one queued
            s = scrape(registry)
            assert value(s, "resilio_bulkhead_in_flight", **shed) == 1
            assert value(s, "resilio_bulkhead_queue_depth", **shed) == 1
            release.set()
    assert [await _request(limited) for _ in range(3)] == [200, 200, 429]

    s = scrape(registry)
    assert outcomes(s, **limit) == {"admitted": 5}
    assert value(s, "resilio_rejections_total", **limit, reason="rate_limited") == 1
    assert outcomes(s, **shed) == {"admitted": 4}
    assert value(s, "resilio_rejections_total", **shed, reason="bulkhead_full") == 1
    assert value(s, "resilio_bulkhead_in_flight", **shed) == 0
    assert value(s, "resilio_bulkhead_queue_depth", **shed) == 0
    assert parse(collector.render()) == s


def test_middleware_exposure_rules(
    core: ModuleType, registry: CollectorRegistry, collector: ResilioCollector
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    outer = LoadSheddingMiddleware(
        LoadSheddingMiddleware(app, max_concurrency=1), max_concurrency=2
    )
    with pytest.raises(ValueError, match="name="):
        collector.add(outer)
    with pytest.raises(TypeError):
        collector.add(app, name="x")  # type: ignore[arg-type]
    collector.add(outer, name="inbound")
    limits = series(scrape(registry), "resilio_bulkhead_max_concurrency", pipeline="inbound")
    assert {dict(k)["strategy"]: v for k, v in limits.items()} == {
        "load_shedding": 2,
        "load_shedding_2": 1,
    }

    # Only resilio's own middleware is walked through: below anything else, nothing.
    class Other:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    hidden = RateLimitMiddleware(Other(LoadSheddingMiddleware(app, max_concurrency=1)), rate=1.0)
    instrument(hidden, registry, name="hidden")
    found = {dict(k)["strategy"] for _, k in scrape(registry) if ("pipeline", "hidden") in k}
    assert found == {"rate_limiter"}
    with pytest.raises(ValueError, match="already exposed"):
        collector.add(Pipeline(Timeout(1.0), name="inbound"))
    del outer, hidden
    gc.collect()
    assert scrape(registry) == {}


@pytest.fixture(autouse=True)
def _no_leaked_collectors() -> Iterator[None]:
    before = set(prometheus_client.REGISTRY._collector_to_names)
    yield
    assert set(prometheus_client.REGISTRY._collector_to_names) == before
