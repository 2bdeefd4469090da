"""httpx integration: a transport that runs every request through resilience strategies.

`ResilientTransport` wraps an inner `httpx.AsyncBaseTransport` (by default
`httpx.AsyncHTTPTransport()`); `client(...)` builds an `httpx.AsyncClient` on
one. Per origin (scheme, host, port) it keeps two pipelines that share their
strategies: for replayable idempotent requests

    rate_limiter -> total_timeout -> retry -> hedging -> circuit breaker -> attempt_timeout

and the same without retry and hedging for everything else (POST, PATCH, or a
streaming request body, which cannot be sent twice). The circuit breaker is
per origin and sits inside the retry, so it counts attempts, not calls.

A response whose status is in `failure_statuses` is raised inside the
pipeline as `FailedResponse` (so the retry and the breaker see a failure, and
`Retry-After` becomes the error's `retry_after` hint) and unwrapped at the
end: when the retry gives up, the caller receives the last response, not an
error. Every other response of the call is closed, at the latest before the
next attempt is sent.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import math
import operator
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import anyio
import httpx

from resilio import context as _ctx
from resilio.clock import Clock
from resilio.errors import TimeoutRejectedError
from resilio.integrations.asgi import DEADLINE_HEADER
from resilio.pipeline import Pipeline
from resilio.standard import (
    ATTEMPT_TIMEOUT,
    BREAKER_BREAK,
    BREAKER_FAILURE_RATIO,
    BREAKER_MIN_THROUGHPUT,
    BREAKER_SAMPLING,
    RETRY_ATTEMPTS,
    RETRY_DELAY,
    RETRY_MAX_DELAY,
    TOTAL_TIMEOUT,
)
from resilio.strategies._base import Runner, Strategy
from resilio.strategies.circuit_breaker import CircuitBreaker
from resilio.strategies.hedging import Hedging
from resilio.strategies.retry import Backoff, Retry, RetryBudget
from resilio.strategies.timeout import Timeout

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_FAILURE_STATUSES",
    "DEFAULT_MAX_ORIGINS",
    "DEFAULT_RETRY_METHODS",
    "DEFAULT_TOTAL_TIMEOUT",
    "TRANSIENT_ERRORS",
    "FailedResponse",
    "ResilientTransport",
    "client",
    "parse_retry_after",
]

#: Methods retried (and hedged) by default: the idempotent ones (RFC 9110 9.2.2).
DEFAULT_RETRY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses that count as failures: timeout, throttled, server errors a retry may cure.
DEFAULT_FAILURE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: Origins that keep their own circuit breaker; the least recently used are dropped.
DEFAULT_MAX_ORIGINS: Final = 1000
DEFAULT_TOTAL_TIMEOUT: Final = TOTAL_TIMEOUT
DEFAULT_ATTEMPT_TIMEOUT: Final = ATTEMPT_TIMEOUT

#: (scheme, host, port); port None means the scheme's default.
_OriginKey = tuple[str, str, int | None]

_deadline_at = _ctx._DEADLINE.get
_monotonic = time.monotonic
_Response = httpx.Response
_ByteStream = httpx.ByteStream

# Sent with the canonical spelling; DEADLINE_HEADER is the lower-case name servers match.
_WIRE_HEADER: Final = "-".join(part.capitalize() for part in DEADLINE_HEADER.split("-"))
_WIRE_RAW: Final = _WIRE_HEADER.encode("ascii")
_WIRE_LOWER: Final = _WIRE_RAW.lower()
_header_name = operator.itemgetter(1)


def _probe_headers() -> bool:
    """Whether `Headers._list` holds (raw name, lower-case name, value) as we append them.

    Appending to it directly costs a fraction of `headers[name] = value` (which
    encodes, lower-cases and rebuilds a list on every call). If a future httpx
    lays its headers out otherwise, the public setter is used instead.
    """
    try:
        public = httpx.Headers({"Accept": "*/*"})
        public[_WIRE_HEADER] = "1.250"
        fast = httpx.Headers({"Accept": "*/*"})
        fast._list.append((_WIRE_RAW, _WIRE_LOWER, b"1.250"))
        return (
            public._list == fast._list
            and public.raw == fast.raw
            and fast[_WIRE_HEADER] == "1.250"
            and _WIRE_LOWER in map(_header_name, fast._list)
        )
    except Exception:
        return False


def _probe_url() -> bool:
    """Whether `URL._uri_reference` has the scheme, host and port the origin key needs.

    Three public properties cost four times as much as reading them there.
    """
    try:
        url = httpx.URL("https://Ex.test:8443/p?q")
        ref = url._uri_reference
        plain = httpx.URL("http://ex.test/")._uri_reference
        return (ref.scheme, ref.host, ref.port) == ("https", "ex.test", 8443) and (
            plain.scheme,
            plain.host,
            plain.port,
        ) == ("http", "ex.test", None)
    except Exception:
        return False


_FAST_HEADERS: Final = _probe_headers()
_FAST_URL: Final = _probe_url()


def _origin_key(url: httpx.URL) -> _OriginKey:
    """(scheme, host as sent on the wire, port or None): what the route table is keyed by.

    The host is the IDNA-encoded (ASCII) form, the one `URL._uri_reference` holds,
    so both ways of reading it give the same key.
    """
    return (url.scheme, url.raw_host.decode("ascii"), url.port)


def parse_retry_after(value: str) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or HTTP-date), or None.

    A date in the past gives 0.0; anything unparsable gives None.
    """
    value = value.strip()
    if not value:
        return None
    if value[0].isdigit():
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


class FailedResponse(Exception):
    """A response whose status is a failure, raised inside the pipeline only.

    Strategies see it as a failed attempt; its `retry_after` (seconds, from the
    `Retry-After` header) is the hint the retry honours. The transport unwraps
    it, so callers receive `response`, never this error.
    """

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        header = response.headers.get("retry-after")
        self.retry_after: float | None = None if header is None else parse_retry_after(header)


#: What the default retry and breaker handle: failure statuses, network and protocol
#: errors, httpx timeouts and attempt timeouts. Not UnsupportedProtocol,
#: LocalProtocolError or InvalidURL: the same request would fail the same way.
TRANSIENT_ERRORS: Final[tuple[type[Exception], ...]] = (
    FailedResponse,
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    TimeoutRejectedError,
)


async def _discard(responses: list[httpx.Response], keep: httpx.Response | None) -> None:
    """Close every response but `keep`, even while the call is being cancelled."""
    with anyio.CancelScope(shield=True):
        for r in responses:
            if r is not keep:
                # A connection that broke while closing must not replace the outcome.
                with contextlib.suppress(Exception):
                    await r.aclose()


async def _release_before_backoff(attempt: int, outcome: Any, delay: float) -> None:
    # The default retry frees the failed response's connection before sleeping,
    # not after: a backoff can last seconds and the pool is bounded.
    if isinstance(outcome, FailedResponse):
        await _discard([outcome.response], None)


# A call's state is a list, not an object, because one is built per request:
# [the request, the responses to close (None until an attempt fails)]. The hot
# paths index it with literals 0 and 1: a named constant is a global lookup each.
_Call = list[Any]
_NO_KWARGS: Final[dict[str, Any]] = {}


class _Route:
    """The pipelines of one origin (or of the user's pipeline), as their runners."""

    __slots__ = ("breaker", "once", "repeat", "repeat_attempt")

    def __init__(
        self,
        repeat: Pipeline,
        once: Pipeline,
        breaker: CircuitBreaker | None,
        repeat_attempt: Callable[[_Call], Awaitable[httpx.Response]],
    ) -> None:
        # The compiled runners, called directly: Pipeline.execute would add a frame.
        self.repeat: Runner = repeat._run
        self.once: Runner = once._run
        self.breaker = breaker
        self.repeat_attempt = repeat_attempt


_DEFAULT: Any = object()


def _timeout(name: str, value: object) -> Timeout | None:
    if value is None or isinstance(value, Timeout):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds, a Timeout or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return Timeout(value, name=name)


def _methods(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"retry_methods must be a collection of method names, got {value!r}")
    methods = []
    for m in value:
        if not isinstance(m, str) or not m.isalpha():
            raise ValueError(f"retry_methods must hold HTTP method names, got {m!r}")
        methods.append(m.upper())
    return frozenset(methods)


def _statuses(value: object) -> frozenset[int]:
    if not isinstance(value, Iterable):
        raise TypeError(f"failure_statuses must be a collection of status codes, got {value!r}")
    statuses = []
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599:
            raise ValueError(f"failure_statuses must hold status codes in [100, 599], got {s!r}")
        statuses.append(s)
    return frozenset(statuses)


def _strategy(name: str, value: Any, kind: type[Strategy]) -> Any:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, got {value!r}")
    return value


def _is_factory(value: object) -> bool:
    # A CircuitBreaker instance is the usual mistake: each origin needs its own.
    return callable(value) and not isinstance(value, Strategy)


def _origin(key: _OriginKey) -> str:
    scheme, host, port = key
    if port is None:
        port = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


class ResilientTransport(httpx.AsyncBaseTransport):
    """Send each request through retry, a per-origin circuit breaker and timeouts.

    Keyword options build the pipelines (pass None to drop a layer):
    `total_timeout` (30 s) and `attempt_timeout` (10 s) as seconds or a
    `Timeout`; `retry` (4 attempts, exponential backoff from 2 s with jitter,
    30 s cap, a retry budget); `hedging` (off); `breaker`, a zero-argument
    factory called once per origin (the standard breaker: 10 % failures over
    30 s, at least 100 attempts, 5 s break); `rate_limiter` (off; one for the
    whole transport). `retry_methods` and `failure_statuses` say which requests
    may be sent again and which statuses are failures. `forward_deadline`
    sends the time left as a `Request-Timeout` header on each attempt.

    A `pipeline` given instead is used as-is for every request (no per-origin
    breaker); non-retryable requests run it without its Retry and Hedging.
    """

    __slots__ = (
        "_attempt_fn",
        "_attempt_timeout",
        "_clock",
        "_failure_statuses",
        "_forward_deadline",
        "_hedged",
        "_inner",
        "_make_breaker",
        "_max_origins",
        "_name",
        "_once_outer",
        "_outer",
        "_recent",
        "_retry_methods",
        "_routes",
        "_send",
        "_single",
        "_touch",
    )

    def __init__(
        self,
        pipeline: Pipeline | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        total_timeout: float | Timeout | None = _DEFAULT,
        retry: Retry | None = _DEFAULT,
        hedging: Hedging | None = None,
        breaker: Callable[[], CircuitBreaker] | None = _DEFAULT,
        attempt_timeout: float | Timeout | None = _DEFAULT,
        rate_limiter: Strategy | None = None,
        retry_methods: Iterable[str] = DEFAULT_RETRY_METHODS,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
        max_origins: int = DEFAULT_MAX_ORIGINS,
        forward_deadline: bool = True,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"transport must be an httpx.AsyncBaseTransport, got {transport!r}")
        if isinstance(max_origins, bool) or not isinstance(max_origins, int):
            raise TypeError(f"max_origins must be an int, got {max_origins!r}")
        if max_origins < 1:
            raise ValueError(f"max_origins must be >= 1, got {max_origins!r}")
        self._retry_methods = _methods(retry_methods)
        self._failure_statuses = _statuses(failure_statuses)
        self._max_origins = max_origins
        if not isinstance(forward_deadline, bool):
            raise TypeError(f"forward_deadline must be a bool, got {forward_deadline!r}")
        self._forward_deadline = forward_deadline
        self._name = name
        self._clock = clock
        self._routes: OrderedDict[_OriginKey, _Route] = OrderedDict()
        self._touch = self._routes.move_to_end
        # The most recently used route, so that a run of requests to one origin
        # does not reorder the LRU table on every request.
        self._recent: _Route | None = None
        self._attempt_fn = self._attempt
        self._single: _Route | None = None
        self._make_breaker: Callable[[], CircuitBreaker] | None = None
        self._outer: list[Strategy] = []
        self._once_outer: list[Strategy] = []
        self._attempt_timeout: Timeout | None = None
        self._hedged = False

        if pipeline is not None:
            if not isinstance(pipeline, Pipeline):
                raise TypeError(f"pipeline must be a resilio Pipeline or None, got {pipeline!r}")
            given = {
                "total_timeout": total_timeout is not _DEFAULT,
                "retry": retry is not _DEFAULT,
                "hedging": hedging is not None,
                "breaker": breaker is not _DEFAULT,
                "attempt_timeout": attempt_timeout is not _DEFAULT,
                "rate_limiter": rate_limiter is not None,
                "clock": clock is not None,
                "name": name is not None,
            }
            clash = [k for k, v in given.items() if v]
            if clash:
                raise TypeError(
                    f"pass either pipeline or the options that build one, not both: {clash}"
                )
            strategies = pipeline.strategies
            kept = [s for s in strategies if not isinstance(s, (Retry, Hedging))]
            once = (
                pipeline
                if len(kept) == len(strategies)
                else Pipeline(*kept, name=pipeline.name, clock=pipeline.clock)
            )
            hedged = any(isinstance(s, Hedging) for s in strategies)
            attempt = self._attempt_tracked if hedged else self._attempt_fn
            self._single = _Route(pipeline, once, None, attempt)
        else:
            self._configure(total_timeout, retry, hedging, breaker, attempt_timeout, rate_limiter)
        # Last, once the options are known to be good: the default builds an SSL context.
        if transport is None:
            transport = httpx.AsyncHTTPTransport()
        self._inner = transport
        self._send = transport.handle_async_request

    def _configure(
        self,
        total_timeout: float | Timeout | None,
        retry: Retry | None,
        hedging: Hedging | None,
        breaker: Callable[[], CircuitBreaker] | None,
        attempt_timeout: float | Timeout | None,
        rate_limiter: Strategy | None,
    ) -> None:

        rate_limiter = _strategy("rate_limiter", rate_limiter, Strategy)
        total = _timeout(
            "total_timeout", DEFAULT_TOTAL_TIMEOUT if total_timeout is _DEFAULT else total_timeout
        )
        if retry is _DEFAULT:
            retry = Retry(
                RETRY_ATTEMPTS,
                backoff=Backoff.exponential(RETRY_DELAY, max_delay=RETRY_MAX_DELAY, jitter=True),
                handle=TRANSIENT_ERRORS,
                on_retry=_release_before_backoff,
                budget=RetryBudget(),
            )
        retry = _strategy("retry", retry, Retry)
        hedging = _strategy("hedging", hedging, Hedging)
        if breaker is _DEFAULT:
            breaker = self._standard_breaker
        elif breaker is not None and not _is_factory(breaker):
            raise TypeError(
                "breaker must be a zero-argument factory returning a CircuitBreaker "
                f"(e.g. lambda: CircuitBreaker(...)) or None, got {breaker!r}"
            )
        self._make_breaker = breaker
        self._attempt_timeout = _timeout(
            "attempt_timeout",
            DEFAULT_ATTEMPT_TIMEOUT if attempt_timeout is _DEFAULT else attempt_timeout,
        )
        once_outer = [s for s in (rate_limiter, total) if s is not None]
        self._once_outer = once_outer
        self._outer = once_outer + [s for s in (retry, hedging) if s is not None]
        self._hedged = hedging is not None
        if breaker is None:
            # Nothing is per origin: one route serves every request.
            self._single = self._build_route(None)

    def _standard_breaker(self) -> CircuitBreaker:
        return CircuitBreaker(
            failure_ratio=BREAKER_FAILURE_RATIO,
            minimum_throughput=BREAKER_MIN_THROUGHPUT,
            sampling_duration=BREAKER_SAMPLING,
            break_duration=BREAKER_BREAK,
            handle=TRANSIENT_ERRORS,
            clock=self._clock,
        )

    def _build_route(self, key: _OriginKey | None) -> _Route:
        breaker: CircuitBreaker | None = None
        inner: list[Strategy] = []
        if key is not None and self._make_breaker is not None:
            breaker = self._make_breaker()
            if not isinstance(breaker, CircuitBreaker):
                raise TypeError(
                    f"the breaker factory must return a CircuitBreaker, got {breaker!r}"
                )
            if breaker.name is None:
                # Errors then say which origin is refused.
                breaker.name = _origin(key)
            inner.append(breaker)
        if self._attempt_timeout is not None:
            inner.append(self._attempt_timeout)
        name, clock = self._name, self._clock
        repeat = Pipeline(*self._outer, *inner, name=name, clock=clock)
        once = Pipeline(*self._once_outer, *inner, name=name, clock=clock)
        attempt = self._attempt_tracked if self._hedged else self._attempt_fn
        return _Route(repeat, once, breaker, attempt)

    def _add_route(self, key: _OriginKey, url: httpx.URL) -> _Route:
        # Named after the host as users write it (IDNA decoded), not as it is keyed.
        route = self._build_route((url.scheme, url.host, url.port))
        routes = self._routes
        routes[key] = route
        if len(routes) > self._max_origins:
            # Bounded memory: the least recently used origin forgets its breaker.
            routes.popitem(last=False)
        self._recent = route
        return route

    def circuit_breaker(self, url: httpx.URL | str) -> CircuitBreaker | None:
        """The circuit breaker of `url`'s origin, or None if it has none (yet)."""
        route = self._routes.get(_origin_key(httpx.URL(url)))
        return None if route is None else route.breaker

    @property
    def origins(self) -> int:
        """How many origins currently have their own pipelines."""
        return len(self._routes)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        route = self._single
        if route is None:
            url = request.url
            if _FAST_URL:
                ref = url._uri_reference
                key = (ref.scheme, ref.host, ref.port)
            else:
                key = _origin_key(url)
            route = self._routes.get(key)
            if route is None:
                route = self._add_route(key, url)
            elif route is not self._recent:
                self._touch(key)
                self._recent = route
        call: _Call = [request, None]
        if request.method in self._retry_methods and isinstance(request.stream, _ByteStream):
            run = route.repeat(route.repeat_attempt, (call,), _NO_KWARGS)
        else:
            run = route.once(self._attempt_fn, (call,), _NO_KWARGS)
        try:
            response = await run
        except FailedResponse as failed:
            response = failed.response
        except BaseException:
            if call[1] is not None:
                await _discard(call[1], None)
            raise
        if call[1] is not None:
            await _discard(call[1], response)
        if type(response) is not _Response and not isinstance(response, _Response):
            raise TypeError(f"the pipeline returned {response!r}, not an httpx.Response")
        return response

    async def _attempt(self, call: _Call) -> httpx.Response:
        seen = call[1]
        if seen is not None:
            # Earlier attempts' responses are discarded: a new attempt means none won.
            call[1] = None
            await _discard(seen, None)
        request: httpx.Request = call[0]
        if self._forward_deadline:
            at = _deadline_at()
            if at is not None:
                left = at - _monotonic()
                value = b"%.3f" % (left if left > 0.0 else 0.0)
                headers = request.headers
                if _FAST_HEADERS and _WIRE_LOWER not in map(_header_name, headers._list):
                    headers._list.append((_WIRE_RAW, _WIRE_LOWER, value))
                else:
                    # Set by an earlier attempt or by the caller: replaced, as documented.
                    headers[_WIRE_HEADER] = value.decode("ascii")
        response = await self._send(request)
        if response.status_code in self._failure_statuses:
            if call[1] is None:
                call[1] = [response]
            else:
                call[1].append(response)
            raise FailedResponse(response)
        return response

    async def _attempt_tracked(self, call: _Call) -> httpx.Response:
        response = await self._attempt(call)
        # A hedged attempt that loses the race still returns its response here.
        if call[1] is None:
            call[1] = [response]
        else:
            call[1].append(response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def client(
    pipeline: Pipeline | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    total_timeout: float | Timeout | None = _DEFAULT,
    retry: Retry | None = _DEFAULT,
    hedging: Hedging | None = None,
    breaker: Callable[[], CircuitBreaker] | None = _DEFAULT,
    attempt_timeout: float | Timeout | None = _DEFAULT,
    rate_limiter: Strategy | None = None,
    retry_methods: Iterable[str] = DEFAULT_RETRY_METHODS,
    failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    max_origins: int = DEFAULT_MAX_ORIGINS,
    forward_deadline: bool = True,
    name: str | None = None,
    clock: Clock | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` whose requests go through a `ResilientTransport`.

    The transport takes the resilience options; every other keyword goes to
    `httpx.AsyncClient`. Without `transport`, the inner `AsyncHTTPTransport` is
    built from the connection keywords (verify, cert, trust_env, http1, http2,
    limits, proxy), as AsyncClient would have.
    """
    if transport is None:
        conn: dict[str, Any] = {
            k: kwargs[k]
            for k in ("verify", "cert", "trust_env", "http1", "http2", "limits")
            if k in kwargs
        }
        if "proxy" in kwargs:
            # A client-level proxy would mount its own transport and bypass ours.
            conn["proxy"] = kwargs.pop("proxy")
        transport = httpx.AsyncHTTPTransport(**conn)
    elif "proxy" in kwargs:
        raise TypeError(
            "proxy= with transport= would send requests past the resilient transport: "
            "give the proxy to your inner transport instead"
        )
    options: dict[str, Any] = {
        "hedging": hedging,
        "rate_limiter": rate_limiter,
        "retry_methods": retry_methods,
        "failure_statuses": failure_statuses,
        "max_origins": max_origins,
        "forward_deadline": forward_deadline,
        "name": name,
        "clock": clock,
    }
    for key, value in (
        ("total_timeout", total_timeout),
        ("retry", retry),
        ("breaker", breaker),
        ("attempt_timeout", attempt_timeout),
    ):
        if value is not _DEFAULT:
            options[key] = value
    resilient = ResilientTransport(pipeline, transport, **options)
    return httpx.AsyncClient(transport=resilient, **kwargs)
