"""resilio.config: decoding, one ConfigError naming the bad field, building what it describes.

Tests that build or run strategies take `core` (both core implementations); the ones
that run calls are `anyio` tests (asyncio and trio). Pure decoding tests need neither.
"""

from __future__ import annotations

import contextlib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, Union

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilio
from resilio import config as C
from resilio.config import ConfigError
from resilio.integrations.asgi import (
    DeadlineMiddleware,
    LoadSheddingMiddleware,
    RateLimitMiddleware,
)
from resilio.integrations.httpx import ResilientTransport
from resilio.strategies.retry import Backoff, Retry
from resilio.testing import FakeClock

yaml = pytest.importorskip("yaml")  # untyped; PyYAML is a test dependency

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TOML = ROOT / "docs" / "examples" / "config_example.toml"
EXAMPLE_YAML = ROOT / "docs" / "examples" / "config_example.yaml"


def error(doc: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        C.convert(doc)
    return info.value


def pipeline_doc(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"pipelines": {"payments": {"strategies": list(entries)}}}


# ---- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1.5h", 5400.0),
        ("1m30s", 90.0),
        (" 2 s ", 2.0),
        (".5s", 0.5),
        (3, 3.0),
        (0.125, 0.125),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert C.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "junk", ["", "2", "ms", "2x", "1e3s", "-1s", "s2", "2 parsecs", "inf", "nan", "2ss"]
)
def test_parse_duration_rejects_junk_strings(junk: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        C.parse_duration(junk)


@pytest.mark.parametrize("junk", [True, None, [1], {"s": 1}])
def test_parse_duration_rejects_other_types(junk: Any) -> None:
    with pytest.raises(TypeError):
        C.parse_duration(junk)


def test_parse_duration_bounds() -> None:
    with pytest.raises(ValueError, match="> 0"):
        C.parse_duration(0)
    assert C.parse_duration("0s", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        C.parse_duration(-0.5, allow_zero=True)
    for big in (math.inf, math.nan, 10**400, "9000h", C.MAX_SECONDS + 1):
        with pytest.raises(ValueError, match="at most"):
            C.parse_duration(big)
    assert C.parse_duration(C.MAX_SECONDS) == C.MAX_SECONDS


def test_durations_in_documents_accept_numbers_and_strings() -> None:
    cfg = C.convert(
        pipeline_doc(
            {"timeout": {"seconds": "250ms"}},
            {"timeout": {"seconds": 2}},
            {"hedging": {"delay": "0s"}},
        )
    )
    opts = [e.options for e in cfg.pipelines["payments"].strategies]
    assert [getattr(o, "seconds", None) for o in opts[:2]] == [0.25, 2.0]
    assert isinstance(opts[2], C.HedgingConfig) and opts[2].delay == 0.0


# ---- the shape of the document ------------------------------------------------------


def test_example_toml_decodes() -> None:
    cfg = C.load(EXAMPLE_TOML)
    payments = cfg.pipelines["payments"].strategies
    assert [e.kind for e in payments] == [
        "rate_limiter",
        "timeout",
        "retry",
        "circuit_breaker",
        "timeout",
    ]
    retry = payments[2].options
    assert isinstance(retry, C.RetryConfig)
    assert retry.backoff.delay == 0.2 and retry.backoff.max_delay == 10.0
    assert retry.budget == C.RetryBudgetConfig(ratio=0.2)
    assert [e.kind for e in cfg.pipelines["search"].strategies] == [
        "timing",
        "bulkhead",
        "hedging",
        "fallback",
    ]
    assert cfg.asgi is not None and cfg.asgi.deadline is not None
    assert cfg.asgi.deadline.routes == {"/reports": 60.0}
    assert cfg.httpx is not None and cfg.httpx.failure_statuses == [429, 502, 503, 504]


def test_toml_json_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    from_toml = C.load(EXAMPLE_TOML)
    raw = tomllib.loads(EXAMPLE_TOML.read_text())
    (tmp_path / "c.json").write_text(json.dumps(raw))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "c.YML").write_text(yaml.safe_dump(raw))
    assert C.load(tmp_path / "c.json") == from_toml
    assert C.load(tmp_path / "c.yaml") == from_toml
    assert C.load(tmp_path / "c.YML") == from_toml
    assert C.load(EXAMPLE_YAML) == from_toml


def test_loads_takes_text_or_bytes() -> None:
    doc = '{"pipelines": {"p": {"strategies": [{"timeout": {"seconds": "1s"}}]}}}'
    assert C.loads(doc, "json") == C.loads(doc.encode(), "json")
    assert C.loads("", "toml") == C.Config()
    assert C.loads("", "yaml") == C.Config()


def test_configs_can_be_built_in_code() -> None:
    cfg = C.Config(
        pipelines={
            "p": C.PipelineConfig(
                strategies=[C.StrategyConfig(timeout=C.TimeoutConfig(seconds=1.5))]
            )
        }
    )
    decoded = C.convert({"pipelines": {"p": {"strategies": [{"timeout": {"seconds": "1.5s"}}]}}})
    assert cfg == decoded
    assert cfg.pipelines["p"].strategies[0].options == C.TimeoutConfig(seconds=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        C.StrategyConfig()


def test_structs_are_frozen() -> None:
    cfg = C.TimeoutConfig(seconds=1.0)
    with pytest.raises(AttributeError):
        cfg.seconds = 2.0  # type: ignore[misc]


# ---- one ConfigError, naming the path and the value --------------------------------


def test_config_error_is_a_resilio_error_and_a_value_error() -> None:
    exc = error(pipeline_doc({"retry": {"attempts": 0}}))
    assert isinstance(exc, resilio.ResilioError)
    assert isinstance(exc, ValueError)


def test_error_names_the_field_path_and_the_value() -> None:
    exc = error(pipeline_doc({"timeout": {"seconds": "1s"}}, {"retry": {"attempts": 0}}))
    assert exc.path == "pipelines.payments.strategies[1].retry.attempts"
    assert exc.value == 0
    assert str(exc) == (
        "<data>: pipelines.payments.strategies[1].retry.attempts: Expected `int` >= 1 (got 0)"
    )


def test_error_in_a_dict_value_names_its_key() -> None:
    exc = error({"asgi": {"deadline": {"routes": {"/ok": "1s", "/bad": "soon"}}}})
    assert exc.path == "asgi.deadline.routes['/bad']"
    assert exc.value == "soon"
    assert "not a duration" in str(exc)
    exc = error({"pipelines": {"a": {}, "b": {"strategies": 3}}})
    assert exc.path == "pipelines.b.strategies"


def test_nested_dict_keys_are_found() -> None:
    doc = {
        "pipelines": {
            "ok": {"strategies": [{"timeout": {"seconds": 1}}]},
            "payments": {"strategies": [{"retry": {"backoff": {"delay": "-1s"}}}]},
        }
    }
    exc = error(doc)
    assert exc.path == "pipelines.payments.strategies[0].retry.backoff.delay"
    assert exc.value == "-1s"


def test_unknown_field_is_named_with_a_suggestion() -> None:
    exc = error(pipeline_doc({"retry": {"attemps": 3}}))
    assert exc.path == "pipelines.payments.strategies[0].retry.attemps"
    assert "did you mean 'attempts'" in str(exc)
    assert exc.value == 3
    exc = error({"pipeline": {}})
    assert exc.path == "pipeline"
    assert "did you mean 'pipelines'" in exc.reason


def test_missing_required_field() -> None:
    exc = error(pipeline_doc({"timeout": {}}))
    assert exc.path == "pipelines.payments.strategies[0].timeout.seconds"
    assert exc.reason == "required field missing"


def test_bad_key() -> None:
    exc = error({"pipelines": {"bad name!": {}}})
    assert exc.path == "pipelines"
    assert exc.value == "bad name!"
    assert exc.reason.startswith("bad key")


@pytest.mark.parametrize(
    ("entry", "path_end", "words"),
    [
        ({"timeout": {"seconds": 1}, "retry": {}}, "strategies[0]", "found retry and timeout"),
        ({}, "strategies[0]", "found none"),
        (
            {"circuit_breaker": {"break_duration": "5s", "max_break_duration": "1s"}},
            "circuit_breaker",
            "max_break_duration (1) must be >= break_duration (5)",
        ),
        ({"circuit_breaker": {"slow_call_ratio": 0.5}}, "circuit_breaker", "slow_call_duration"),
        ({"bulkhead": {"max_concurrency": 1, "queue_timeout": 1}}, "bulkhead", "max_queue > 0"),
        ({"rate_limiter": {"rate": 1, "burst": 2, "tokens": 3}}, "rate_limiter", "tokens (3)"),
        ({"rate_limiter": {"rate": 1e-9}}, "rate_limiter", "over a year"),
        ({"retry": {"backoff": {"delay": 5, "max_delay": 1}}}, "backoff", "max_delay (1)"),
        (
            {"retry": {"backoff": {"kind": "constant", "jitter": "decorrelated"}}},
            "backoff",
            "exponential",
        ),
        ({"retry": {"backoff": {"kind": "linear", "factor": 3}}}, "backoff", "factor"),
        ({"timing": {"buckets": [1, "500ms"]}}, "timing", "strictly increasing"),
        ({"rate_limiter": {"rate": math.inf}}, "rate", "<= 1000000000.0"),
        ({"circuit_breaker": {"failure_ratio": 1.5}}, "failure_ratio", "<= 1"),
        ({"circuit_breaker": {"half_open_calls": 32}}, "half_open_calls", "<= 31"),
        ({"hedging": {"delay": 1, "max_attempts": 17}}, "max_attempts", "<= 16"),
    ],
)
def test_cross_field_and_range_rules(entry: dict[str, Any], path_end: str, words: str) -> None:
    exc = error(pipeline_doc(entry))
    assert exc.path.startswith("pipelines.payments.strategies[0]")
    assert exc.path.endswith(path_end)
    assert words in str(exc)


def test_asgi_and_httpx_sections_are_validated() -> None:
    assert error({"asgi": {"rate_limit": {"rate": 1, "key": "ip"}}}).path == "asgi.rate_limit.key"
    assert error({"asgi": {"rate_limit": {"rate": 1, "exempt": ["health"]}}}).path == (
        "asgi.rate_limit.exempt[0]"
    )
    assert error({"httpx": {"failure_statuses": [503, 700]}}).path == ("httpx.failure_statuses[1]")
    exc = error({"httpx": {"retry": {}, "disable": ["retry"]}})
    assert exc.path == "httpx" and "both configured and disabled" in str(exc)
    assert error({"httpx": {"disable": ["hedging"]}}).path == "httpx.disable[0]"


def test_whole_document_errors() -> None:
    assert error([1, 2]).path == ""
    assert "Expected `object`, got `array`" in str(error([1, 2]))


def test_load_errors_are_config_errors(tmp_path: Path) -> None:
    cases = {
        "missing.toml": None,
        "bad.toml": "pipelines = [",
        "bad.json": "{",
        "bad.yaml": "a: [",
        "nan.json": '{"pipelines": NaN}',
        "binary.toml": b"\xff\xfe\x00",
        "config.ini": "[x]",
        "scalar.yaml": "3",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError) as info:
            C.load(path)
        assert str(path) in str(info.value), name


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resilio.toml"
    path.write_text("[[pipelines.payments.strategies]]\nretry = { attempts = -1 }\n")
    with pytest.raises(ConfigError) as info:
        C.load(path)
    assert str(info.value) == (
        f"{path}: pipelines.payments.strategies[0].retry.attempts: Expected `int` >= 1 (got -1)"
    )
    assert info.value.source == str(path)


# ---- junk never escapes as another exception type ----------------------------------

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
_durations = st.sampled_from(["250ms", "2s", "1m", "1.5h", "0s", "ms", "9999h", "1m30s", " 3s "])


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` four times in five, else junk."""
    return st.integers(0, 4).flatmap(lambda n: valid if n else _junk)


def _near_valid(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Documents shaped like `tp`, with junk at random leaves (reaches deep fields)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _mostly(_near_valid(typing.get_args(tp)[0], depth))
    if origin is Union or origin is types.UnionType:
        return st.one_of([_near_valid(a, depth) for a in typing.get_args(tp)])
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is list:
        return st.lists(_near_valid(typing.get_args(tp)[0], depth + 1), max_size=3)
    if origin is dict:
        bad_keys = st.one_of(st.integers(), st.text(max_size=4))
        keys = st.integers(0, 4).flatmap(
            lambda n: st.sampled_from(["p", "/a", "q_1"]) if n else bad_keys
        )
        return st.dictionaries(keys, _near_valid(typing.get_args(tp)[1], depth + 1), max_size=2)
    if tp in (C.Duration, C.Delay):
        return _mostly(st.one_of(_durations, st.floats(min_value=-1, max_value=1e9)))
    if tp is float:
        return _mostly(st.one_of(st.floats(min_value=0, max_value=3), st.integers(0, 10**10)))
    if tp is int:
        return _mostly(st.integers(0, 40))
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.sampled_from(["client", "route", "header:x-key", "GET", "p", "/x", "bad name"])
    if tp is Any:
        return _junk
    assert isinstance(tp, type) and issubclass(tp, msgspec.Struct), tp
    fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
    if tp is C.StrategyConfig:
        # Mostly exactly one strategy, as a valid entry has.
        return st.one_of(
            [st.fixed_dictionaries({k: _near_valid(f.type, depth + 1)}) for k, f in fields.items()]
        )
    if depth > 6:
        return st.just({})
    required = {k: _near_valid(f.type, depth + 1) for k, f in fields.items() if f.required}
    optional = {k: _near_valid(f.type, depth + 1) for k, f in fields.items() if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


def _only_config_errors(doc: Any) -> None:
    try:
        cfg = C.convert(doc)
    except ConfigError as exc:
        assert str(exc)
        return
    try:
        C.check(cfg)
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(_json_like)
def test_junk_documents_raise_only_config_error(doc: Any) -> None:
    _only_config_errors(doc)
    with contextlib.suppress(ConfigError):
        C.loads(json.dumps(doc), "json")


_pipeline_docs = st.lists(_near_valid(C.StrategyConfig), min_size=1, max_size=4).map(
    lambda entries: {"pipelines": {"p": {"strategies": entries}}}
)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(_near_valid(C.Config), _pipeline_docs))
def test_near_valid_documents_raise_only_config_error(doc: Any) -> None:
    _only_config_errors(doc)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=64), st.sampled_from(["toml", "json", "yaml"]))
def test_junk_bytes_raise_only_config_error(
    data: bytes, fmt: Literal["toml", "json", "yaml"]
) -> None:
    with contextlib.suppress(ConfigError):
        C.loads(data, fmt)


# ---- building -----------------------------------------------------------------------


def test_build_pipeline_follows_the_order_and_options(core: ModuleType) -> None:
    cfg = C.load(EXAMPLE_TOML)
    p = C.build_pipeline(cfg, "payments")
    assert p.name == "payments"
    kinds = [s.kind for s in p.strategies]
    assert kinds == ["rate_limiter", "timeout", "retry", "circuit_breaker", "timeout"]
    limiter, total, retry, breaker, attempt = p.strategies
    assert isinstance(limiter, resilio.RateLimiter) and limiter.rate == 100 and limiter.burst == 20
    assert isinstance(total, resilio.Timeout) and total.seconds == 30.0
    assert total.label == "total_timeout" and attempt.label == "attempt_timeout"
    assert isinstance(retry, Retry) and retry.attempts == 3
    assert retry.backoff.max_delay == 10.0 and retry.backoff.jitter == "decorrelated"
    assert retry.budget is not None and retry.budget.ratio == 0.2
    assert isinstance(breaker, resilio.CircuitBreaker)
    assert (breaker.failure_ratio, breaker.minimum_throughput) == (0.5, 20)
    assert (breaker.sampling_duration, breaker.break_duration) == (30.0, 5.0)
    search = cfg.pipeline("search")
    assert [s.kind for s in search.strategies] == ["timing", "bulkhead", "hedging", "fallback"]
    assert set(cfg.build()) == {"payments", "search"}


def test_unknown_pipeline_is_a_config_error() -> None:
    cfg = C.load(EXAMPLE_TOML)
    with pytest.raises(ConfigError, match=r"no pipeline named 'nope' \(have: payments, search\)"):
        C.build_pipeline(cfg, "nope")


def test_a_strategy_refusing_its_options_is_a_config_error(core: ModuleType) -> None:
    cfg = C.convert(pipeline_doc({"timeout": {"seconds": 1}}, {"hedging": {"delay": 0.1}}))
    with pytest.raises(ConfigError) as info:
        C.build_pipeline(cfg, "payments", extra={"hedging": {"handle": 42}})
    assert info.value.path == "pipelines.payments.strategies[1].hedging"
    assert "handle" in str(info.value)


@pytest.mark.anyio
async def test_built_pipeline_behaves_as_configured(core: ModuleType) -> None:
    doc = pipeline_doc(
        {
            "retry": {
                "attempts": 3,
                "backoff": {"kind": "constant", "delay": "10ms", "jitter": False},
            }
        },
        {
            "circuit_breaker": {
                "minimum_throughput": 2,
                "failure_ratio": 1.0,
                "break_duration": "5s",
            }
        },
    )
    clock = FakeClock()
    p = C.build_pipeline(
        C.convert(doc), "payments", clock=clock, extra={"retry": {"handle": ConnectionError}}
    )
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    with pytest.raises(resilio.BrokenCircuitError):
        await p.execute(down)
    # Two failures open the breaker; the third attempt is refused, not retried.
    assert calls == 2
    assert clock.sleeps == [0.01, 0.01]


@pytest.mark.anyio
async def test_extra_gives_code_only_options(core: ModuleType) -> None:
    cfg = C.convert(pipeline_doc({"rate_limiter": {"rate": 1, "burst": 1, "name": "per_user"}}))
    clock = FakeClock()
    p = cfg.pipeline("payments", clock=clock, extra={"per_user": {"key": lambda user: user}})

    async def hello(user: str) -> str:
        return f"hi {user}"

    assert await p.execute(hello, "ann") == "hi ann"
    assert await p.execute(hello, "bob") == "hi bob"  # another key, its own bucket
    with pytest.raises(resilio.RateLimitedError):
        await p.execute(hello, "ann")


# ---- the same config drives the ASGI middleware and the httpx transport -------------


async def _get(app: Any, path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": headers or [],
        "client": ("10.0.0.1", 1234),
    }
    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_wrap_asgi_stacks_the_configured_middleware(core: ModuleType) -> None:
    app = C.wrap_asgi(_ok_app, C.load(EXAMPLE_TOML))
    assert isinstance(app, RateLimitMiddleware)
    assert isinstance(app.app, DeadlineMiddleware)
    assert app.app.timeout_for("/reports/x") == 60.0 and app.app.timeout_for("/") == 10.0
    assert isinstance(app.app.app, LoadSheddingMiddleware)
    assert app.app.app.bulkhead.max_concurrency == 200
    assert app.app.app.app is _ok_app
    assert C.wrap_asgi(_ok_app, C.Config()) is _ok_app
    only = C.convert({"asgi": {"deadline": {}}})
    assert isinstance(C.wrap_asgi(_ok_app, only), DeadlineMiddleware)


@pytest.mark.anyio
async def test_wrapped_app_limits_requests(core: ModuleType) -> None:
    cfg = C.convert({"asgi": {"rate_limit": {"rate": 1, "burst": 2, "exempt": ["/health"]}}})
    app = C.wrap_asgi(_ok_app, cfg, clock=FakeClock(start=10.0))
    assert [await _get(app) for _ in range(3)] == [200, 200, 429]
    assert await _get(app, "/health") == 200


def test_transport_options_from_the_httpx_section(core: ModuleType) -> None:
    opts = C.transport_options(C.load(EXAMPLE_TOML))
    assert opts["total_timeout"] == 20.0 and opts["attempt_timeout"] == 5.0
    assert opts["retry_methods"] == {"GET", "HEAD", "PUT", "DELETE"}
    assert opts["failure_statuses"] == {429, 502, 503, 504}
    assert opts["max_origins"] == 500
    retry = opts["retry"]
    assert isinstance(retry, Retry) and retry.attempts == 4
    assert retry.backoff.base_delay == 0.1 and retry.backoff.max_delay == 5.0
    first, second = opts["breaker"](), opts["breaker"]()
    assert first is not second  # one breaker per origin
    assert first.failure_ratio == 0.2 and first.break_duration == 10.0
    assert "hedging" not in opts and "rate_limiter" not in opts
    ResilientTransport(transport=httpx.MockTransport(lambda r: httpx.Response(200)), **opts)


def test_transport_options_disable_layers_and_default_to_nothing() -> None:
    assert C.transport_options(C.Config()) == {}
    cfg = C.convert({"httpx": {"disable": ["retry", "total_timeout"]}})
    assert C.transport_options(cfg) == {"retry": None, "total_timeout": None}


@pytest.mark.anyio
async def test_configured_transport_retries_transient_statuses(core: ModuleType) -> None:
    cfg = C.convert(
        {
            "httpx": {
                "retry": {"attempts": 3, "backoff": {"delay": "0s"}},
                "disable": ["breaker", "total_timeout", "attempt_timeout"],
            }
        }
    )
    statuses = iter([503, 502, 200])
    transport = ResilientTransport(
        transport=httpx.MockTransport(lambda r: httpx.Response(next(statuses))),
        **C.transport_options(cfg),
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://svc.test/")
    assert response.status_code == 200


def test_check_builds_everything(core: ModuleType) -> None:
    C.check(C.load(EXAMPLE_TOML))
    # Valid as data, refused by the strategy: check() finds it, decoding alone does not.
    cfg = C.convert(pipeline_doc({"retry": {"budget": {"window": 5e-9}}}))
    with pytest.raises(ConfigError) as info:
        C.check(cfg, source="x.toml")
    assert str(info.value) == (
        "x.toml: pipelines.payments.strategies[0].retry: window must be >= 10 ns, got 5e-09"
    )


def test_backoff_config_builds_an_equal_backoff() -> None:
    b = C.BackoffConfig(kind="linear", delay=0.5, max_delay=4.0, jitter=False).build()
    assert isinstance(b, Backoff)
    assert [b.delay(n) for n in (1, 2, 3, 9)] == [0.5, 1.0, 1.5, 4.0]
