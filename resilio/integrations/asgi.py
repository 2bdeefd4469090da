"""Pure ASGI middleware: per-client rate limiting, load shedding, request deadlines.

No framework dependency: each middleware wraps any ASGI app (Starlette,
FastAPI, Litestar, plain ASGI). Only `http` scopes are acted on; `lifespan`
and `websocket` scopes pass straight through. A rejection is answered without
calling the app. Nothing per request is stored on the middleware object.

Malformed input never crashes a request:

- no client address (a Unix socket, a proxy that drops it): the request is
  limited under the shared key ``"-"``;
- a key longer than 64 bytes (a long API key) is hashed to 32 bytes first;
- a key header sent more than once with different values: ``400``;
- a `Request-Timeout` header that is not a positive finite number of seconds
  (or sent twice with different values): ignored, the route's timeout applies.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from types import MethodType
from typing import Any

from resilio import context as _ctx
from resilio.backends import Backend, is_awaited, resolve
from resilio.clock import SYSTEM_CLOCK, Clock
from resilio.errors import BulkheadFullError, TimeoutRejectedError
from resilio.strategies._base import WAIT
from resilio.strategies.bulkhead import Bulkhead
from resilio.strategies.timeout import Timeout

__all__ = [
    "DEADLINE_HEADER",
    "DeadlineMiddleware",
    "LoadSheddingMiddleware",
    "RateLimitMiddleware",
    "client_key",
    "header_key",
    "route_key",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Scope], "str | bytes | None"]

#: Incoming and outgoing header carrying the caller's remaining time, in seconds.
DEADLINE_HEADER = "request-timeout"
#: Key used when a request has no client address.
UNKNOWN_CLIENT = "-"
_MAX_KEY = 64
# A str of at most this many characters is at most _MAX_KEY bytes of UTF-8.
_ASCII_SAFE = _MAX_KEY // 4
# Distinct `remaining` values for which a RateLimitMiddleware keeps its header wrapper.
_HEADER_TABLE = 1024


class _BadRequest(Exception):
    """The request cannot be keyed (e.g. conflicting duplicate key headers)."""


def client_key(scope: Scope) -> str | bytes | None:
    """Key by the client's address (host only)."""
    client = scope.get("client")
    if not client:
        return None
    return client[0]  # type: ignore[no-any-return]


def header_key(name: str) -> KeyFunc:
    """Key by a request header (e.g. an API key); requests without it use `"-"`."""
    wanted = name.lower().encode("latin-1")

    def key(scope: Scope) -> bytes | None:
        found: bytes | None = None
        for k, v in scope.get("headers") or ():
            if k.lower() == wanted:
                if found is not None and found != v:
                    raise _BadRequest(f"conflicting {name} headers")
                found = v
        return found

    return key


def route_key(scope: Scope) -> str | None:
    """Key by the request path: one limit per route."""
    return scope.get("path")


async def _plain_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _exempt_set(exempt: Iterable[str]) -> frozenset[str]:
    paths = frozenset(exempt)
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/"):
            raise ValueError(f"exempt paths must start with '/', got {p!r}")
    return paths


class RateLimitMiddleware:
    """Limit each client to `rate` requests per second, bursts up to `burst`.

    `key` picks the client: "client" (address, default), "route", "header:NAME"
    (e.g. "header:x-api-key"), or a callable of the ASGI scope. Every response
    carries `RateLimit-Policy` and `RateLimit` headers (IETF httpapi
    rate-limit-headers draft); a refused request gets `429` with `Retry-After`
    in whole seconds, rounded up.

    `backend` says where the per-client buckets live: in this process
    (``"memory"``, the default) or shared by the worker processes of one host
    (``"shm:/dev/shm/NAME"`` or a `resilio.backends.shm.SharedState`), so a
    client gets `rate` across all workers, not `rate` per worker, or by every host
    (``"redis://HOST:PORT/DB"``: one round trip per request, and Redis's
    `on_redis_error` decides while Redis is down); `name` then names the shared
    table.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        rate: float,
        burst: int | None = None,
        key: str | KeyFunc = "client",
        max_keys: int = 100_000,
        exempt: Iterable[str] = (),
        policy: str = "default",
        clock: Clock | None = None,
        backend: Backend = None,
        name: str | None = None,
    ) -> None:
        self.app = app
        if burst is None:
            burst = max(1, math.ceil(rate))
        factory = resolve(backend, name)
        # A Redis table answers with a round trip: its decisions are awaited.
        self._awaited = is_awaited(backend)
        self._buckets: Any = (
            factory.buckets(rate, burst)  # type: ignore[attr-defined]
            if self._awaited
            else factory.keyed_buckets(rate, burst, max_keys)
        )
        self._burst = burst
        self._interval_ns: int = self._buckets.interval_ns
        self._key = _key_func(key)
        self._exempt = _exempt_set(exempt)
        self._now_ns = (clock or SYSTEM_CLOCK).now_ns
        if not policy.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"policy must be a plain token, got {policy!r}")
        self._policy_name = policy
        window = math.ceil(burst * self._interval_ns / 1e9)
        self._policy_header = (
            b"ratelimit-policy",
            f'"{policy}";q={burst};w={window}'.encode(),
        )
        # The headers depend only on `remaining`: the function that adds them to a
        # response is built once per value, and a request binds it to its `send`.
        # Capped, so a huge burst cannot grow the table without bound.
        self._injectors: dict[int, _Inject] = {}
        # Bound once: these run on every request.
        self._by_client = self._key is client_key
        if not self._awaited:
            # One attribute, unpacked per request: cheaper than three loads.
            self._local = (self._now_ns, self._buckets.try_acquire, self._buckets.available)

    @property
    def buckets(self) -> Any:
        """The core keyed-bucket table (counters: admitted, rejected, evicted...)."""
        return self._buckets

    def _ratelimit_header(self, remaining: int) -> tuple[bytes, bytes]:
        missing = self._burst - remaining
        reset = math.ceil(missing * self._interval_ns / 1e9) if missing > 0 else 0
        return (b"ratelimit", f'"{self._policy_name}";r={remaining};t={reset}'.encode())

    def _headers(self, remaining: int) -> list[tuple[bytes, bytes]]:
        return [self._policy_header, self._ratelimit_header(remaining)]

    def _injector(self, remaining: int) -> _Inject:
        inject = self._injectors.get(remaining)
        if inject is None:
            inject = _header_injector(self._headers(remaining))
            if len(self._injectors) < _HEADER_TABLE:
                self._injectors[remaining] = inject
        return inject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exempt and scope["path"] in self._exempt):
            await self.app(scope, receive, send)
            return
        if self._by_client:
            # Subscript, not .get(): no method call on every request.
            try:
                client = scope["client"]
            except KeyError:
                client = None
            key = client[0] if client else None
        else:
            key_of = self._key
            try:
                key = key_of(scope)
            except _BadRequest as exc:
                await _plain_response(send, 400, str(exc).encode(), [])
                return
        if key is None:
            key = UNKNOWN_CLIENT
        if self._awaited:
            wait_ns, remaining = await self._buckets.acquire(_short_key(key))
        else:
            # Read into locals, then called: CPython 3.11 specializes loading an
            # instance attribute, not calling one as `self.x()`.
            clock, take, count = self._local
            now_ns = clock()
            try:
                wait_ns = take(key, now_ns)
            except ValueError:
                # Over the core's 64 bytes (it checks, so the common case pays
                # nothing): hashed, then admitted or refused like any key.
                key = _short_key(key)
                wait_ns = take(key, now_ns)
            remaining = count(key, now_ns)
        if wait_ns:
            retry_after = str(max(1, math.ceil(wait_ns / 1e9))).encode()
            await _plain_response(
                send,
                429,
                b"Too Many Requests",
                [(b"retry-after", retry_after), *self._headers(remaining)],
            )
            return
        try:
            inject = self._injectors[remaining]
        except KeyError:
            inject = self._injector(remaining)
        app = self.app
        await app(scope, receive, MethodType(inject, send))


_Inject = Callable[[Send, Message], Awaitable[None]]


def _header_injector(headers: list[tuple[bytes, bytes]]) -> _Inject:
    """A `send` wrapper, unbound: it adds `headers` to the response start."""

    # Not a coroutine: it returns `send`'s awaitable, so each message costs one call
    # and no coroutine object of its own.
    def inject(send: Send, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            try:
                # The usual case, a list: one concatenation, and the app's list is
                # left as it was (it may be reused for other responses).
                message["headers"] = message["headers"] + headers
            except (KeyError, TypeError):  # no headers, or another iterable
                message["headers"] = [*message.get("headers", ()), *headers]
        return send(message)

    return inject


def _short_key(key: str | bytes) -> str | bytes:
    """`key` if at most 64 bytes (UTF-8 for a str), else its BLAKE2b digest (32 bytes)."""
    if len(key) <= _ASCII_SAFE:
        return key
    raw = key.encode() if isinstance(key, str) else key
    if len(raw) > _MAX_KEY:
        return hashlib.blake2b(raw, digest_size=32).digest()
    return key


def _key_func(key: str | KeyFunc) -> KeyFunc:
    if callable(key):
        return key
    if key == "client":
        return client_key
    if key == "route":
        return route_key
    if isinstance(key, str) and key.startswith("header:") and len(key) > len("header:"):
        return header_key(key[len("header:") :])
    raise ValueError(f"key must be 'client', 'route', 'header:NAME' or a callable, got {key!r}")


class LoadSheddingMiddleware:
    """Serve at most `max_concurrency` requests at once; queue a bounded few more.

    Requests beyond the queue, or queued longer than `queue_timeout`, get `503`
    with `Retry-After`. Exempt paths (health checks) always pass.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        max_concurrency: int,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        retry_after: int = 1,
        exempt: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.bulkhead = Bulkhead(
            max_concurrency, max_queue=max_queue, queue_timeout=queue_timeout, name="load_shedding"
        )
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be an int >= 0 (seconds), got {retry_after!r}")
        self._retry_after = str(retry_after).encode()
        self._exempt = _exempt_set(exempt)
        # The bulkhead's gate, driven directly as the compiled runner's _BulkheadGate
        # does: a free slot is one C call in and one out, with no hook frames.
        bh = self.bulkhead
        self._try_enter = bh._gate.try_enter
        self._exit = bh._gate.exit
        self._waiters = bh._waiters
        self._release = bh._release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exempt and scope["path"] in self._exempt):
            await self.app(scope, receive, send)
            return
        # Locals, as in RateLimitMiddleware: calls through `self.x()` are not specialized.
        try_enter, app = self._try_enter, self.app
        if not try_enter():
            bh = self.bulkhead
            try:
                if bh._enter_slow() is WAIT:
                    await bh._enter_wait()
            except BulkheadFullError:
                await _plain_response(
                    send, 503, b"Service Unavailable", [(b"retry-after", self._retry_after)]
                )
                return
        try:
            await app(scope, receive, send)
        finally:
            # Success, failure or cancellation alike: the slot goes to the oldest
            # waiter, or back to the gate.
            if self._waiters:
                self._release()
            else:
                exit_ = self._exit
                exit_()


def parse_deadline_header(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The `Request-Timeout` value in seconds, or None if absent or malformed."""
    found: float | None = None
    for k, v in headers:
        # The length check first: it spares a lowercased copy of every other header.
        if len(k) != _DEADLINE_LEN or k.lower() != _DEADLINE_BYTES:
            continue
        try:
            seconds = float(v.decode("latin-1").strip())
        except ValueError:
            return None
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        if found is not None and found != seconds:
            return None
        found = seconds
    return found


_DEADLINE_BYTES = DEADLINE_HEADER.encode()
_DEADLINE_LEN = len(_DEADLINE_BYTES)


class DeadlineMiddleware:
    """Give each request a deadline; answer `504` if the app has not responded by then.

    The deadline is the route's timeout (`routes` maps a path prefix to
    seconds, longest prefix wins; else `timeout`), shortened by the caller's
    `Request-Timeout` header (seconds left) when that is smaller. The app reads
    it with `resilio.deadline()`, and `ResilientTransport` forwards it on
    outbound calls. If the response has already started when time runs out,
    the app is cancelled and the connection is left to the server to close.

    The deadline is enforced as a `resilio.Timeout` enforces its own: on asyncio
    it is filed in the loop's deadline wheel (no loop timer per request; it fires
    at most a couple of milliseconds late), elsewhere (trio) a cancel scope.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        timeout: float = 30.0,
        routes: Mapping[str, float] | None = None,
        exempt: Iterable[str] = (),
    ) -> None:
        self.app = app
        for name, value in [
            ("timeout", timeout),
            *((f"routes[{p!r}]", t) for p, t in (routes or {}).items()),
        ]:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        self._timeout = float(timeout)
        # Longest prefix first, so the most specific route wins.
        self._routes = sorted((routes or {}).items(), key=lambda kv: -len(kv[0]))
        self._exempt = _exempt_set(exempt)
        # One Timeout per distinct value, shared by the requests it applies to: its
        # hooks hold no per-request state.
        timeouts: dict[float, Timeout] = {}
        for seconds in (self._timeout, *(float(s) for _, s in self._routes)):
            if seconds not in timeouts:
                timeouts[seconds] = Timeout(seconds, name="deadline")
        self._default = timeouts[self._timeout]
        self._route_timeouts = [(prefix, timeouts[float(s)]) for prefix, s in self._routes]

    def timeout_for(self, path: str) -> float:
        """The configured timeout for a path."""
        for prefix, seconds in self._routes:
            if path.startswith(prefix):
                return seconds
        return self._timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exempt and scope["path"] in self._exempt):
            await self.app(scope, receive, send)
            return
        timeout = self._default
        if self._route_timeouts:
            path = scope["path"]
            for prefix, route_timeout in self._route_timeouts:
                if path.startswith(prefix):
                    timeout = route_timeout
                    break
        headers = scope.get("headers")
        asked = parse_deadline_header(headers) if headers else None
        pushed = None
        if asked is not None and asked < timeout.seconds:
            # The caller has less time than the route allows: its deadline goes into
            # the context, and the route's Timeout clamps itself to it.
            _, pushed = _ctx.push_deadline(time.monotonic() + asked)
        started = False

        # Not a coroutine: it returns `send`'s awaitable (one call per message).
        def send_tracking(message: Message) -> Awaitable[None]:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            return send(message)

        expired = False
        app = self.app  # a local: calls through `self.x()` are not specialized
        token = timeout._enter()
        try:
            await app(scope, receive, send_tracking)
        except BaseException as exc:
            try:
                timeout._err(token, exc)
            except TimeoutRejectedError:
                # Our own expiry: the app has been cancelled and has unwound.
                expired = True
            else:
                raise
        else:
            timeout._ok(token, None)
        finally:
            if pushed is not None:
                _ctx.pop_deadline(pushed)
        if expired and not started:
            await _plain_response(send, 504, b"Gateway Timeout", [])
