"""Configuration as data: pipelines, ASGI middleware and the httpx transport from one file.

A config file (TOML, JSON or YAML) decodes into frozen msgspec Structs that
mirror the strategies' options. Anything wrong with it, from a syntax error to
a cross-field rule, raises one `ConfigError` whose message names the file, the
path of the bad field (``pipelines.payments.strategies[0].retry.attempts``) and
the value found there. Callables (predicates, hooks, key functions) are code,
not config: pass them to `build_pipeline(..., extra=...)`.

    cfg = resilio.config.load("resilio.toml")
    payments = resilio.config.build_pipeline(cfg, "payments")
    app = resilio.config.wrap_asgi(app, cfg)
    client = resilio.integrations.httpx.client(**resilio.config.transport_options(cfg))

Durations are seconds: a number, or a string with units such as ``"250ms"``,
``"2s"``, ``"1m"``, ``"1.5h"`` or ``"1m30s"``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import itertools
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Union

import msgspec
from msgspec import Meta, Struct, field

from resilio.clock import Clock
from resilio.errors import ResilioError
from resilio.pipeline import Pipeline
from resilio.strategies._base import Strategy
from resilio.strategies.bulkhead import Bulkhead
from resilio.strategies.circuit_breaker import MAX_HALF_OPEN_CALLS, CircuitBreaker
from resilio.strategies.fallback import Fallback
from resilio.strategies.hedging import Hedging
from resilio.strategies.rate_limiter import RateLimiter
from resilio.strategies.retry import Backoff, Retry, RetryBudget
from resilio.strategies.timeout import Timeout

__all__ = [
    "MAX_SECONDS",
    "AsgiConfig",
    "BackoffConfig",
    "BulkheadConfig",
    "CircuitBreakerConfig",
    "Config",
    "ConfigError",
    "DeadlineConfig",
    "FallbackConfig",
    "HedgingConfig",
    "HttpxConfig",
    "LoadSheddingConfig",
    "PipelineConfig",
    "RateLimitConfig",
    "RateLimiterConfig",
    "RetryBudgetConfig",
    "RetryConfig",
    "StrategyConfig",
    "TimeoutConfig",
    "TimingConfig",
    "build_pipeline",
    "check",
    "convert",
    "load",
    "loads",
    "parse_duration",
    "transport_options",
    "wrap_asgi",
]

#: The longest duration a config may hold: one year, in seconds.
MAX_SECONDS: Final = 365 * 86400.0
#: Formats `load` knows, by file extension.
FORMATS: Final = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}

Format = Literal["toml", "json", "yaml"]


class ConfigError(ResilioError, ValueError):
    """A configuration could not be read, decoded, validated or built.

    `path` is the dotted path of the offending field ("" for the whole
    document), `value` what was found there (None if nothing was), `source`
    the file (or "<string>"), `reason` the problem alone.
    """

    def __init__(
        self, reason: str, *, source: str = "<config>", path: str = "", value: Any = None
    ) -> None:
        self.reason = reason
        self.source = source
        self.path = path
        self.value = value
        where = f"{source}: {path}" if path else source
        got = ""
        if value is not None and not isinstance(value, (dict, list)):
            text = repr(value)
            got = f" (got {text if len(text) <= 80 else text[:77] + '...'})"
        super().__init__(f"{where}: {reason}{got}")


# ---- durations ----------------------------------------------------------------------

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE: Final = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h)\s*)+")
_PART_RE: Final = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)")
_DURATION_HELP = "a duration is seconds (a number) or a string like '250ms', '2s', '1m', '1.5h'"


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from a number or a duration string ('250ms', '2s', '1m', '1.5h', '1m30s').

    Raises ValueError (TypeError for a value that is neither) unless the result
    is finite, > 0 (>= 0 with `allow_zero`) and at most `MAX_SECONDS`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected {_DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip()
        if not _DURATION_RE.fullmatch(text):
            raise ValueError(f"not a duration: {_DURATION_HELP}")
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART_RE.findall(text))
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"a duration must be finite and at most {MAX_SECONDS:g} s (a year)")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("a duration must be >= 0" if allow_zero else "a duration must be > 0")
    return seconds


# Type checkers see plain floats, so configs are easy to build in code; msgspec sees
# two custom types, which reach `_dec_hook` and so accept "250ms" as well as 0.25.
if TYPE_CHECKING:
    Duration = float
    Delay = float
else:

    class Duration(float):
        """Seconds > 0, from a number or a duration string."""

        __slots__ = ()

    class Delay(float):
        """Seconds >= 0, from a number or a duration string."""

        __slots__ = ()


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Duration:
        return Duration(parse_duration(obj))
    if tp is Delay:
        return Delay(parse_duration(obj, allow_zero=True))
    raise NotImplementedError(f"no decoder for {tp!r}")


# ---- constrained scalars ------------------------------------------------------------

Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
#: Where a limiter's or breaker's state lives: "memory", "shm:/dev/shm/NAME",
#: "redis://HOST:PORT/DB"... (see `resilio.backends`).
BackendSpec = Annotated[
    str, Meta(min_length=1, max_length=2048, pattern=r"^[a-z][a-z0-9+.-]*(:.*)?$")
]


def _check_backend(backend: str | None, name: str | None) -> None:
    """Refuse an unknown scheme, and a shared backend without the name that names
    the shared state, when the file is read rather than when it is built."""
    if backend is None:
        return
    from resilio.backends import SCHEMES

    scheme = backend.partition(":")[0]
    if scheme not in SCHEMES:
        known = ", ".join(sorted(SCHEMES))
        raise ValueError(f"unknown backend scheme {scheme!r} (known: {known})")
    if scheme != "memory" and name is None:
        raise ValueError(f"backend {backend!r} is shared: it needs a name to name the state")


Ratio = Annotated[float, Meta(gt=0, le=1)]
PositiveInt = Annotated[int, Meta(ge=1)]
Rate = Annotated[float, Meta(gt=0, le=1e9)]
Burst = Annotated[int, Meta(ge=1, le=1 << 31)]
MaxKeys = Annotated[int, Meta(ge=1, le=10_000_000)]
Path_ = Annotated[str, Meta(pattern=r"^/")]
Method = Annotated[str, Meta(pattern=r"^[A-Za-z]+$", max_length=32)]
Status = Annotated[int, Meta(ge=100, le=599)]


# ---- strategies ---------------------------------------------------------------------


class BackoffConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`Backoff` options: the delay before each retry."""

    kind: Literal["constant", "linear", "exponential"] = "exponential"
    delay: Delay = 0.2
    max_delay: Duration | None = 10.0
    jitter: bool | Literal["full", "decorrelated"] = True
    factor: Annotated[float, Meta(ge=1, le=100)] = 2.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_delay is not None and self.max_delay < self.delay:
            raise ValueError(f"max_delay ({self.max_delay:g}) must be >= delay ({self.delay:g})")
        if self.jitter == "decorrelated" and self.kind != "exponential":
            raise ValueError(f"jitter 'decorrelated' is for exponential backoff, not {self.kind}")
        if self.factor != 2.0 and self.kind != "exponential":
            raise ValueError(f"factor applies to exponential backoff only, not {self.kind}")

    def build(self) -> Backoff:
        return Backoff(
            self.kind,
            float(self.delay),
            max_delay=None if self.max_delay is None else float(self.max_delay),
            jitter=self.jitter,
            factor=self.factor,
            seed=self.seed,
        )


class RetryBudgetConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`RetryBudget` options: retries capped at a share of calls."""

    ratio: Annotated[float, Meta(ge=0, le=1000)] = 0.2
    min_per_second: Annotated[float, Meta(ge=0, le=1e9)] = 10.0
    window: Duration = 10.0

    def build(self) -> RetryBudget:
        return RetryBudget(self.ratio, self.min_per_second, float(self.window))


class RetryConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`Retry` options (which errors to retry is code: pass `handle` in `extra`)."""

    attempts: PositiveInt = 3
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    budget: RetryBudgetConfig | None = None
    name: Name | None = None

    def build(self, **code: Any) -> Retry:
        budget = None if self.budget is None else self.budget.build()
        return Retry(
            self.attempts, backoff=self.backoff.build(), budget=budget, name=self.name, **code
        )


class CircuitBreakerConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`CircuitBreaker` options."""

    failure_ratio: Ratio = 0.5
    minimum_throughput: Annotated[int, Meta(ge=1, le=1 << 32)] = 20
    sampling_duration: Duration = 30.0
    break_duration: Duration = 5.0
    max_break_duration: Duration | None = None
    half_open_calls: Annotated[int, Meta(ge=1, le=MAX_HALF_OPEN_CALLS)] = 1
    slow_call_duration: Duration | None = None
    slow_call_ratio: Ratio | None = None
    name: Name | None = None
    backend: BackendSpec | None = None

    def __post_init__(self) -> None:
        _check_backend(self.backend, self.name)
        if self.max_break_duration is not None and self.max_break_duration < self.break_duration:
            raise ValueError(
                f"max_break_duration ({self.max_break_duration:g}) must be >= "
                f"break_duration ({self.break_duration:g})"
            )
        if self.slow_call_ratio is not None and self.slow_call_duration is None:
            raise ValueError("slow_call_ratio needs slow_call_duration")

    def _options(self) -> dict[str, Any]:
        return {
            "failure_ratio": self.failure_ratio,
            "minimum_throughput": self.minimum_throughput,
            "sampling_duration": float(self.sampling_duration),
            "break_duration": float(self.break_duration),
            "max_break_duration": _opt_float(self.max_break_duration),
            "half_open_calls": self.half_open_calls,
            "slow_call_duration": _opt_float(self.slow_call_duration),
            "slow_call_ratio": self.slow_call_ratio,
            "name": self.name,
            "backend": self.backend,
        }

    def build(self, **code: Any) -> CircuitBreaker:
        return CircuitBreaker(**self._options(), **code)


class RateLimiterConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`RateLimiter` options (a key function for per-key limits is code: `extra`)."""

    rate: Rate
    burst: Burst | None = None
    max_wait: Delay = 0.0
    tokens: PositiveInt = 1
    max_keys: MaxKeys = 10_000
    name: Name | None = None
    backend: BackendSpec | None = None

    def __post_init__(self) -> None:
        _check_backend(self.backend, self.name)
        burst = self.burst if self.burst is not None else max(1, math.ceil(self.rate))
        if self.tokens > burst:
            raise ValueError(f"tokens ({self.tokens}) must be <= burst ({burst})")
        if burst / self.rate > MAX_SECONDS:
            raise ValueError(
                f"burst / rate is {burst / self.rate:g} s: the bucket would take over a year "
                "to refill"
            )

    def build(self, **code: Any) -> RateLimiter:
        limiter: RateLimiter = RateLimiter(
            self.rate,
            self.burst,
            max_wait=float(self.max_wait),
            tokens=self.tokens,
            max_keys=self.max_keys,
            name=self.name,
            backend=code.pop("backend", self.backend),
            **code,
        )
        return limiter


class TimeoutConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`Timeout` options."""

    seconds: Duration
    name: Name | None = None

    def build(self, **code: Any) -> Timeout:
        return Timeout(float(self.seconds), name=self.name, **code)


class BulkheadConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`Bulkhead` options."""

    max_concurrency: Annotated[int, Meta(ge=1, le=1 << 31)]
    max_queue: Annotated[int, Meta(ge=0, le=1 << 31)] = 0
    queue_timeout: Duration | None = None
    name: Name | None = None

    def __post_init__(self) -> None:
        if self.queue_timeout is not None and self.max_queue == 0:
            raise ValueError("queue_timeout needs max_queue > 0: nothing ever queues")

    def build(self, **code: Any) -> Bulkhead:
        return Bulkhead(
            self.max_concurrency,
            max_queue=self.max_queue,
            queue_timeout=_opt_float(self.queue_timeout),
            name=self.name,
            **code,
        )


class HedgingConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`Hedging` options."""

    delay: Delay
    max_attempts: Annotated[int, Meta(ge=1, le=16)] = 2
    name: Name | None = None

    def build(self, **code: Any) -> Hedging:
        return Hedging(float(self.delay), self.max_attempts, name=self.name, **code)


class FallbackConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`Fallback` with a fixed `value` (a handler function is code, not config)."""

    value: Any
    name: Name | None = None

    def build(self, **code: Any) -> Fallback:
        return Fallback(value=self.value, name=self.name, **code)


class TimingConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`resilio.integrations.prometheus.Timing`: a call duration histogram."""

    buckets: Annotated[list[Duration], Meta(min_length=1, max_length=30)] | None = None
    name: Name | None = None

    def __post_init__(self) -> None:
        b = self.buckets
        if b is not None and any(x >= y for x, y in itertools.pairwise(b)):
            raise ValueError(f"buckets must be strictly increasing, got {list(b)}")

    def build(self, **code: Any) -> Strategy:
        try:
            from resilio.integrations.prometheus import DEFAULT_BUCKETS, Timing
        except ImportError as exc:
            raise ValueError(
                f"timing needs prometheus_client (pip install 'resilio[prometheus]'): {exc}"
            ) from exc
        buckets = DEFAULT_BUCKETS if self.buckets is None else [float(x) for x in self.buckets]
        return Timing(buckets, name=self.name, **code)


#: The options of any one strategy entry.
StrategyOptions = (
    RetryConfig
    | CircuitBreakerConfig
    | RateLimiterConfig
    | TimeoutConfig
    | BulkheadConfig
    | HedgingConfig
    | FallbackConfig
    | TimingConfig
)


class StrategyConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """One entry of a pipeline: exactly one of its fields, named after the strategy."""

    retry: RetryConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    rate_limiter: RateLimiterConfig | None = None
    timeout: TimeoutConfig | None = None
    bulkhead: BulkheadConfig | None = None
    hedging: HedgingConfig | None = None
    fallback: FallbackConfig | None = None
    timing: TimingConfig | None = None

    def __post_init__(self) -> None:
        given = [f for f in self.__struct_fields__ if getattr(self, f) is not None]
        if len(given) != 1:
            kinds = ", ".join(self.__struct_fields__)
            found = " and ".join(given) if given else "none"
            raise ValueError(f"a strategy entry names exactly one of {kinds}; found {found}")

    @property
    def kind(self) -> str:
        """The strategy's field name: "retry", "timeout"..."""
        return next(f for f in self.__struct_fields__ if getattr(self, f) is not None)

    @property
    def options(self) -> StrategyOptions:
        """The options of the strategy this entry names."""
        opts: StrategyOptions = getattr(self, self.kind)
        return opts


class PipelineConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """A pipeline: its strategies, outermost first."""

    strategies: Annotated[list[StrategyConfig], Meta(max_length=64)] = []

    def build(
        self,
        name: str | None = None,
        *,
        clock: Clock | None = None,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Pipeline:
        """Build the `Pipeline`.

        `extra` maps a strategy's label (its `name`, else its kind, e.g.
        "retry") to keyword arguments that only code can give: `handle`,
        `handle_result`, `on_retry`, `key`, hooks...
        """
        return _build(self, name, clock, extra, f"pipelines.{name}" if name else "", "<config>")


# ---- ASGI ---------------------------------------------------------------------------


class RateLimitConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`RateLimitMiddleware` options."""

    rate: Rate
    burst: Burst | None = None
    key: Annotated[str, Meta(pattern=r"^(client|route|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")] = (
        "client"
    )
    max_keys: MaxKeys = 100_000
    exempt: list[Path_] = []
    policy: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)] = "default"
    backend: BackendSpec | None = None
    name: Name | None = None

    def __post_init__(self) -> None:
        _check_backend(self.backend, self.name)
        burst = self.burst if self.burst is not None else max(1, math.ceil(self.rate))
        if burst / self.rate > MAX_SECONDS:
            raise ValueError(
                f"burst / rate is {burst / self.rate:g} s: the bucket would take over a year "
                "to refill"
            )


class LoadSheddingConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`LoadSheddingMiddleware` options."""

    max_concurrency: Annotated[int, Meta(ge=1, le=1 << 31)]
    max_queue: Annotated[int, Meta(ge=0, le=1 << 31)] = 0
    queue_timeout: Duration | None = None
    retry_after: Annotated[int, Meta(ge=0, le=86400)] = 1
    exempt: list[Path_] = []

    def __post_init__(self) -> None:
        if self.queue_timeout is not None and self.max_queue == 0:
            raise ValueError("queue_timeout needs max_queue > 0: nothing ever queues")


class DeadlineConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`DeadlineMiddleware` options: `routes` maps a path prefix to its timeout."""

    timeout: Duration = 30.0
    routes: dict[Path_, Duration] = {}
    exempt: list[Path_] = []


class AsgiConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """Inbound middleware; `wrap_asgi` stacks the sections that are present."""

    rate_limit: RateLimitConfig | None = None
    load_shedding: LoadSheddingConfig | None = None
    deadline: DeadlineConfig | None = None


# ---- httpx --------------------------------------------------------------------------

_LAYERS = Literal["total_timeout", "attempt_timeout", "retry", "breaker"]


class HttpxConfig(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """`ResilientTransport` options. An absent option keeps the transport's default;
    `disable` removes a layer the transport has by default."""

    total_timeout: Duration | None = None
    attempt_timeout: Duration | None = None
    retry: RetryConfig | None = None
    breaker: CircuitBreakerConfig | None = None
    hedging: HedgingConfig | None = None
    rate_limiter: RateLimiterConfig | None = None
    retry_methods: list[Method] | None = None
    failure_statuses: list[Status] | None = None
    max_origins: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None
    disable: list[_LAYERS] = []

    def __post_init__(self) -> None:
        if self.breaker is not None and self.breaker.backend not in (None, "memory"):
            # The transport builds one breaker per origin from one set of options: a
            # shared backend would put every origin under the one name.
            raise ValueError(
                "breaker.backend: the transport's per-origin breakers live in this "
                f"process; a shared backend is not supported here (got {self.breaker.backend!r})"
            )
        for layer in self.disable:
            if getattr(self, layer) is not None:
                raise ValueError(f"{layer} is both configured and disabled")


# ---- the document -------------------------------------------------------------------


class Config(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """A whole configuration file."""

    pipelines: dict[Name, PipelineConfig] = {}
    asgi: AsgiConfig | None = None
    httpx: HttpxConfig | None = None

    def pipeline(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Pipeline:
        """Build the pipeline called `name` (see `PipelineConfig.build`)."""
        return build_pipeline(self, name, clock=clock, extra=extra)

    def build(
        self,
        *,
        clock: Clock | None = None,
        extra: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> dict[str, Pipeline]:
        """Build every pipeline; `extra` maps a pipeline name to its `extra`."""
        return {
            name: build_pipeline(self, name, clock=clock, extra=(extra or {}).get(name))
            for name in self.pipelines
        }


def build_pipeline(
    cfg: Config,
    name: str,
    *,
    clock: Clock | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    source: str = "<config>",
) -> Pipeline:
    """Build the pipeline `name` of `cfg`; a strategy that refuses its options raises
    ConfigError naming the entry (``pipelines.NAME.strategies[i].KIND``)."""
    pc = cfg.pipelines.get(name)
    if pc is None:
        have = ", ".join(sorted(cfg.pipelines)) or "none"
        raise ConfigError(f"no pipeline named {name!r} (have: {have})", source=source)
    return _build(pc, name, clock, extra, f"pipelines.{name}", source)


def _build(
    pc: PipelineConfig,
    name: str | None,
    clock: Clock | None,
    extra: Mapping[str, Mapping[str, Any]] | None,
    where: str,
    source: str,
) -> Pipeline:
    strategies: list[Strategy] = []
    for i, entry in enumerate(pc.strategies):
        kind = entry.kind
        opts = entry.options
        label = opts.name or kind
        path = f"{where}.strategies[{i}].{kind}".lstrip(".")
        try:
            strategies.append(opts.build(**dict((extra or {}).get(label, {}))))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ConfigError(str(exc), source=source, path=path) from exc
    return Pipeline(*strategies, name=name, clock=clock)


# ---- ASGI and httpx builders --------------------------------------------------------


def _asgi_section(cfg: Config | AsgiConfig) -> AsgiConfig:
    if isinstance(cfg, AsgiConfig):
        return cfg
    return cfg.asgi if cfg.asgi is not None else AsgiConfig()


def wrap_asgi(app: Any, cfg: Config | AsgiConfig, *, clock: Clock | None = None) -> Any:
    """Wrap an ASGI app in the middleware its `asgi` section configures.

    Outermost first: rate limit (the cheapest refusal), deadline (so time spent
    queued counts against it), load shedding, then the app. Absent sections
    add nothing.
    """
    from resilio.integrations.asgi import (
        DeadlineMiddleware,
        LoadSheddingMiddleware,
        RateLimitMiddleware,
    )

    sec = _asgi_section(cfg)
    if sec.load_shedding is not None:
        ls = sec.load_shedding
        app = LoadSheddingMiddleware(
            app,
            max_concurrency=ls.max_concurrency,
            max_queue=ls.max_queue,
            queue_timeout=_opt_float(ls.queue_timeout),
            retry_after=ls.retry_after,
            exempt=ls.exempt,
        )
    if sec.deadline is not None:
        dl = sec.deadline
        app = DeadlineMiddleware(
            app,
            timeout=float(dl.timeout),
            routes={k: float(v) for k, v in dl.routes.items()},
            exempt=dl.exempt,
        )
    if sec.rate_limit is not None:
        rl = sec.rate_limit
        app = RateLimitMiddleware(
            app,
            rate=rl.rate,
            burst=rl.burst,
            key=rl.key,
            max_keys=rl.max_keys,
            exempt=rl.exempt,
            policy=rl.policy,
            clock=clock,
            backend=rl.backend,
            name=rl.name,
        )
    return app


def transport_options(cfg: Config | HttpxConfig) -> dict[str, Any]:
    """Keyword arguments for `ResilientTransport` / `resilio.integrations.httpx.client`.

    Only configured options are present, so the transport's defaults hold for
    the rest. A configured retry or breaker handles the transport's
    `TRANSIENT_ERRORS`, as its defaults do.
    """
    from resilio.integrations import httpx as rhttpx

    sec = cfg if isinstance(cfg, HttpxConfig) else cfg.httpx
    if sec is None:
        return {}
    out: dict[str, Any] = {}
    if sec.total_timeout is not None:
        out["total_timeout"] = float(sec.total_timeout)
    if sec.attempt_timeout is not None:
        out["attempt_timeout"] = float(sec.attempt_timeout)
    if sec.retry is not None:
        code: dict[str, Any] = {"handle": rhttpx.TRANSIENT_ERRORS}
        # The transport's own retry frees a failed response's connection before the
        # backoff; a configured one should too.
        release = getattr(rhttpx, "_release_before_backoff", None)
        if release is not None:
            code["on_retry"] = release
        out["retry"] = sec.retry.build(**code)
    if sec.breaker is not None:
        out["breaker"] = functools.partial(
            CircuitBreaker, **sec.breaker._options(), handle=rhttpx.TRANSIENT_ERRORS
        )
    if sec.hedging is not None:
        out["hedging"] = sec.hedging.build(handle=rhttpx.TRANSIENT_ERRORS)
    if sec.rate_limiter is not None:
        out["rate_limiter"] = sec.rate_limiter.build()
    if sec.retry_methods is not None:
        out["retry_methods"] = frozenset(m.upper() for m in sec.retry_methods)
    if sec.failure_statuses is not None:
        out["failure_statuses"] = frozenset(sec.failure_statuses)
    if sec.max_origins is not None:
        out["max_origins"] = sec.max_origins
    for layer in sec.disable:
        out[layer] = None
    return out


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


# ---- loading ------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """Read a TOML, JSON or YAML file (by extension) into a validated `Config`."""
    p = Path(path)
    source = str(p)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise ConfigError(f"unknown config format {p.suffix!r} (use {known})", source=source)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from exc
    return loads(data, fmt, source=source)  # type: ignore[arg-type]  # FORMATS' values


def loads(data: str | bytes, format: Format, *, source: str = "<string>") -> Config:
    """Decode a document in `format` ("toml", "json" or "yaml") into a `Config`."""
    return convert(_parse(data, format, source), source=source)


def _parse(data: str | bytes, fmt: str, source: str) -> Any:
    try:
        if fmt == "json":
            return msgspec.json.decode(data)
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "yaml":
            try:
                yaml = importlib.import_module("yaml")  # untyped; optional
            except ImportError as exc:
                raise ConfigError(
                    "YAML needs PyYAML (pip install 'resilio[yaml]')", source=source
                ) from exc
            doc = yaml.safe_load(text)
            return {} if doc is None else doc
    except ConfigError:
        raise
    except (ValueError, TypeError, RecursionError, msgspec.MsgspecError) as exc:
        # UnicodeDecodeError, TOMLDecodeError and msgspec.DecodeError are ValueErrors.
        raise ConfigError(f"not valid {fmt.upper()}: {exc}", source=source) from exc
    except Exception as exc:
        # yaml.YAMLError (the parser's errors) is only importable with PyYAML.
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(f"not valid YAML: {exc}", source=source) from exc
        raise
    raise ConfigError(f"unknown config format {fmt!r}", source=source)


def convert(obj: Any, *, source: str = "<data>") -> Config:
    """Validate decoded data (dicts, lists, numbers, strings) into a `Config`."""
    try:
        return msgspec.convert(obj, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        path, reason, value = _explain(obj, Config, exc)
        raise ConfigError(reason, source=source, path=path, value=value) from None
    except RecursionError:
        raise ConfigError("the document is nested too deeply", source=source) from None


def check(cfg: Config, *, source: str = "<config>") -> None:
    """Build everything `cfg` describes, so options only a strategy rejects show up.

    Pipelines are built; the ASGI stack is built around a do-nothing app; the
    httpx options are built if httpx is installed. Raises ConfigError.
    """
    for name in cfg.pipelines:
        build_pipeline(cfg, name, source=source)
    for section, build in (("asgi", _check_asgi), ("httpx", _check_httpx)):
        if getattr(cfg, section) is None:
            continue
        try:
            build(cfg)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ConfigError(str(exc), source=source, path=section) from exc


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


def _check_asgi(cfg: Config) -> None:
    wrap_asgi(_noop_app, cfg)


def _check_httpx(cfg: Config) -> None:
    if importlib.util.find_spec("httpx") is None:
        return  # the transport cannot be built here, so there is nothing more to check
    transport_options(cfg)


# ---- error paths --------------------------------------------------------------------

_AT_RE: Final = re.compile(r"^(?P<msg>.*?) - at (?:`key` in )?`(?P<path>\$[^`]*)`$", re.S)
_KEY_RE: Final = re.compile(r" - at `key` in `\$[^`]*`$")
_TOKEN_RE: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(\.\.\.)\]")
_UNKNOWN_RE: Final = re.compile(r"^Object contains unknown field `(?P<f>[^`]*)`$")
_MISSING_RE: Final = re.compile(r"^Object missing required field `(?P<f>[^`]*)`$")
_PLAIN_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_NOTHING: Any = object()


def _key_part(key: Any) -> str:
    return f".{key}" if isinstance(key, str) and _PLAIN_KEY_RE.match(key) else f"[{key!r}]"


def _resolve(tp: Any, raw: Any) -> Any:
    """Strip Annotated and pick the member of a union that `raw` could be."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _resolve(typing.get_args(tp)[0], raw)
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        for m in members:
            base = typing.get_origin(m) or m
            if isinstance(raw, dict) and (base is dict or _is_struct(base)):
                return _resolve(m, raw)
            if isinstance(raw, list) and base is list:
                return _resolve(m, raw)
        return _resolve(members[0], raw) if members else tp
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Struct)


def _field_type(struct: Any, name: str) -> Any:
    if _is_struct(struct):
        for f in msgspec.structs.fields(struct):
            if f.encode_name == name:
                return f.type
    return None


def _field_names(struct: Any) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(struct)] if _is_struct(struct) else []


def _explain(raw: Any, tp: Any, exc: msgspec.ValidationError) -> tuple[str, str, Any]:
    """(dotted path, reason, value found) for a validation error of `raw` against `tp`.

    msgspec writes a dict's keys as `[...]`; the key is found again by checking
    each value of that dict alone.
    """
    text = str(exc)
    key_error = bool(_KEY_RE.search(text))
    m = _AT_RE.match(text)
    reason, path = (m["msg"], m["path"]) if m else (text, "$")
    parts: list[str] = []
    value = raw
    cur_tp = _resolve(tp, raw)
    for name, index, dots in _TOKEN_RE.findall(path[1:]):
        if dots:
            if not isinstance(value, dict):
                parts.append("[...]")
                break
            args = typing.get_args(cur_tp)
            value_tp = args[1] if len(args) == 2 else Any
            for k, v in value.items():
                try:
                    msgspec.convert(v, value_tp, dec_hook=_dec_hook)
                except msgspec.ValidationError as sub:
                    sub_path, sub_reason, sub_value = _explain(v, value_tp, sub)
                    joined = "".join(parts) + _key_part(k)
                    if sub_path:
                        joined += sub_path if sub_path.startswith("[") else "." + sub_path
                    return joined.lstrip("."), sub_reason, sub_value
            parts.append("[...]")
            value = _NOTHING
            break
        if index:
            parts.append(f"[{index}]")
            i = int(index)
            value = value[i] if isinstance(value, list) and i < len(value) else _NOTHING
            args = typing.get_args(cur_tp)
            cur_tp = _resolve(args[0], value) if args else None
        else:
            parts.append("." + name)
            value = value.get(name, _NOTHING) if isinstance(value, dict) else _NOTHING
            cur_tp = _resolve(_field_type(cur_tp, name), value)
    if key_error and isinstance(value, dict):
        key_tp = typing.get_args(cur_tp)[0] if len(typing.get_args(cur_tp)) == 2 else str
        for k in value:
            try:
                msgspec.convert(k, key_tp)
            except msgspec.ValidationError:
                return "".join(parts).lstrip("."), f"bad key: {reason}", k
        return "".join(parts).lstrip("."), f"bad key: {reason}", _NOTHING
    unknown = _UNKNOWN_RE.match(reason)
    if unknown:
        f = unknown["f"]
        close = difflib.get_close_matches(f, _field_names(cur_tp), n=1)
        reason = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        parts.append(_key_part(f))
        value = value.get(f, _NOTHING) if isinstance(value, dict) else _NOTHING
    missing = _MISSING_RE.match(reason)
    if missing:
        parts.append(_key_part(missing["f"]))
        reason = "required field missing"
        value = _NOTHING
    return "".join(parts).lstrip("."), reason, None if value is _NOTHING else value
