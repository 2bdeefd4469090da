"""Redis backend: rate limits and circuit state shared by every host.

Rate limiting is GCRA in one atomic Lua script per decision (EVALSHA, one round
trip), keyed ``{prefix}:{key}``, on Redis's own clock (``redis.call('TIME')``), so
hosts whose clocks disagree still share one limit: GCRA needs exactly one clock,
and here it is Redis's. A key expires when its bucket would be full again, so
Redis holds only the buckets that are in use. Several limits checked together
(`RedisBackend.try_acquire_all`) are decided by one script that charges all of
them or none.

Circuit breakers keep counting outcomes locally (the core `Circuit`); what is
shared is the *break*: when one instance opens or isolates its circuit, it writes
``{prefix}:circuit:{name}`` with a compare-and-set on a generation number (a
write based on an older generation never replaces a newer one) and publishes it
in the same script. The others hear it on pub/sub at once, and poll the key every
`poll_interval` seconds in case a message was lost.

Failure: every Redis call has a deadline of `timeout` seconds (default 50 ms) from
the moment the decision asks. When Redis does not answer in time, refuses the
connection, or returns an error, the decision falls back to `on_redis_error`:
``"open"`` admits, ``"closed"`` refuses with `RateLimitedError`. After a failure,
decisions fail fast for a backoff period (growing up to `max_backoff`), then the
next decision probes Redis again (reconnecting if needed): a dead Redis costs no
I/O per decision, and the service goes back to Redis by itself once it answers.

The client speaks RESP2 over one asyncio connection per backend, pipelined: every
concurrent decision writes its EVALSHA at once and the replies come back in order,
so one connection carries as many decisions as Redis can run (redis-py's asyncio
client holds a connection per command in flight). It needs an asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import ssl as _ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

from resilio import _core, _core_args
from resilio.clock import Clock
from resilio.errors import BrokenCircuitError, ResilioError
from resilio.strategies._base import WAIT, GateStrategy, Runner, Shaper
from resilio.strategies.circuit_breaker import CircuitBreaker, CircuitState
from resilio.strategies.rate_limiter import (
    DEFAULT_MAX_KEYS,
    DEFAULT_MAX_WAIT,
    DEFAULT_TOKENS,
    MAX_KEY_BYTES,
    KeyFunc,
    RateLimiter,
)

__all__ = [
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "MAX_TOLERANCE_NS",
    "KeyedRedisRateLimiter",
    "RedisBackend",
    "RedisBackendError",
    "RedisBucket",
    "RedisBuckets",
    "RedisCircuitBreaker",
    "RedisFactory",
    "RedisOverloadedError",
    "RedisRateLimiter",
    "RedisRateLimits",
    "RedisReplyError",
    "RedisTimeoutError",
    "RedisUnavailableError",
    "open_backend",
    "shared_backend",
]

_log = logging.getLogger("resilio.backends.redis")

#: Seconds each Redis call may take, from the moment a decision asks.
DEFAULT_TIMEOUT = 0.05
#: Longest pause between two attempts to reach a Redis that is down.
DEFAULT_MAX_BACKOFF = 1.0
#: Seconds between two reads of a shared circuit state (the bound when pub/sub drops).
DEFAULT_POLL_INTERVAL = 1.0
#: First part of every key and channel this backend uses.
DEFAULT_PREFIX = "resilio"
#: Calls waiting for a reply on one connection at most; beyond, decisions fall back.
DEFAULT_MAX_IN_FLIGHT = 4096
#: burst * interval_ns must stay below 2**53: Lua numbers are doubles, and the script's
#: integer arithmetic on ns is exact only below it (about 104 days to refill).
MAX_TOLERANCE_NS = 1 << 53

OnRedisError: TypeAlias = Literal["open", "closed"]


# ---- errors -------------------------------------------------------------------------


class RedisBackendError(ResilioError):
    """Redis gave no usable answer (decisions then follow `on_redis_error`)."""


class RedisUnavailableError(RedisBackendError, ConnectionError):
    """Redis cannot be reached, the connection broke, or it is in a backoff period."""


class RedisTimeoutError(RedisUnavailableError, TimeoutError):
    """Redis did not answer within the call's timeout."""


class RedisOverloadedError(RedisUnavailableError):
    """Too many calls already wait for Redis on this connection (`max_in_flight`)."""


class RedisReplyError(RedisBackendError):
    """Redis answered with an error (``-ERR ...``)."""


# ---- RESP2 ----------------------------------------------------------------------------

_INCOMPLETE: Any = object()


def _parse(buf: bytearray, pos: int) -> Any:
    """One reply at `pos`: (value, next pos), or _INCOMPLETE. An error reply is returned
    as a RedisReplyError value (it may sit inside an array)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE
    kind = buf[pos]
    if kind == 58:  # ':' integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 36:  # '$' bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        start = end + 2
        stop = start + n
        if len(buf) < stop + 2:
            return _INCOMPLETE
        return bytes(buf[start:stop]), stop + 2
    if kind == 42:  # '*' array
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, end + 2
        items: list[Any] = []
        p = end + 2
        for _ in range(n):
            r = _parse(buf, p)
            if r is _INCOMPLETE:
                return r
            items.append(r[0])
            p = r[1]
        return items, p
    if kind == 43:  # '+' simple string
        return bytes(buf[pos + 1 : end]), end + 2
    if kind == 45:  # '-' error
        return RedisReplyError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos : pos + 16])!r}")


def _bulk(value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        value = b"%d" % value
    elif isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*parts: bytes | str | int) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a result nobody awaits, so asyncio does not log it as lost."""
    if not fut.cancelled():
        fut.exception()


class _Connection(asyncio.Protocol):
    """One pipelined RESP2 connection: replies resolve the oldest waiting future.

    Deadlines need no timer per call: one timer per connection fires at the earliest
    deadline in flight; if that call has not been answered, the connection is
    declared broken (every waiting call fails with RedisTimeoutError) and closed.
    A caller that gives up (is cancelled) leaves its slot in the queue, so the
    replies that follow stay matched to their callers.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_push: Callable[[list[Any]], None] | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        self.loop = loop
        self._on_lost = on_lost
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[float] = deque()
        self._buf = bytearray()
        self._batch: list[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_push = on_push
        self._max_in_flight = max_in_flight

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailableError, f"connection to Redis lost ({exc or 'closed'})")

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        waiting = self._waiting
        on_push = self._on_push
        try:
            while pos < size:
                r = _parse(buf, pos)
                if r is _INCOMPLETE:
                    break
                value, pos = r
                if on_push is not None and type(value) is list and value[:1] == [b"message"]:
                    on_push(value)
                    continue
                if not waiting:
                    raise ValueError("a reply nobody asked for")
                fut = waiting.popleft()
                self._deadlines.popleft()
                if fut.done():
                    continue  # its caller gave up
                if type(value) is RedisReplyError:
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        except ValueError as exc:  # garbage on the wire: nothing after it can be trusted
            self._fail(RedisUnavailableError, f"Redis protocol error: {exc}")
            return
        if pos:
            del buf[:pos]

    # -- requests -------------------------------------------------------------------------

    def request(self, payload: bytes, deadline: float) -> asyncio.Future[Any]:
        """Send one command; the future resolves to its reply (or fails by `deadline`)."""
        if self.closed:
            raise RedisUnavailableError("connection to Redis closed")
        if len(self._waiting) >= self._max_in_flight:
            raise RedisOverloadedError(f"{self._max_in_flight} Redis calls already in flight")
        fut = self.loop.create_future()
        self._waiting.append(fut)
        self._deadlines.append(deadline)
        if self._batch is None:
            # First command this loop iteration goes out now; the rest of the
            # iteration's commands are joined into one write (one syscall) after it.
            assert self._transport is not None
            self._transport.write(payload)
            self._batch = []
            self.loop.call_soon(self._flush)
        else:
            self._batch.append(payload)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadlines)
        return fut

    def _flush(self) -> None:
        batch = self._batch
        self._batch = None
        if batch and not self.closed and self._transport is not None:
            self._transport.write(b"".join(batch))

    def _check_deadlines(self) -> None:
        self._timer = None
        if not self._deadlines or self.closed:
            return
        earliest = min(self._deadlines)
        if earliest <= self.loop.time():
            self._fail(RedisTimeoutError, "Redis did not answer in time")
            return
        self._timer = self.loop.call_at(earliest, self._check_deadlines)

    def _fail(self, kind: type[RedisUnavailableError], message: str) -> None:
        was_open = not self.closed
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting = self._waiting
        self._waiting = deque()
        self._deadlines = deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(kind(message))
        if self._transport is not None:
            # abort: a Redis that stopped answering should not be waited on to drain.
            self._transport.abort()
        if was_open and self._on_lost is not None:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                self.loop.call_soon(self._on_lost)

    def close(self) -> None:
        self._fail(RedisUnavailableError, "connection to Redis closed")

    @property
    def in_flight(self) -> int:
        return len(self._waiting)


# ---- scripts --------------------------------------------------------------------------


class _Script:
    """A Lua script run by EVALSHA, loaded again (SCRIPT LOAD) when Redis lost it."""

    __slots__ = ("head", "load_payload", "sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()
        self.load_payload = _command(b"SCRIPT", b"LOAD", self.source)
        self.head = b"$7\r\nEVALSHA\r\n" + _bulk(self.sha)

    def payload(self, keys: Sequence[bytes], args: Sequence[bytes | str | int]) -> bytes:
        return b"".join(
            (
                b"*%d\r\n" % (3 + len(keys) + len(args)),
                self.head,
                _bulk(len(keys)),
                *map(_bulk, keys),
                *map(_bulk, args),
            )
        )


# Redis TIME in microseconds is exact in a double (1.7e15 < 2**53). A bucket's state
# is "<written at, us>:<tat - written at, ns>": the offset is a small exact integer,
# so all arithmetic below is exact integer arithmetic on doubles. No state = full.
_GCRA = _Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, tat, ok = {}, {}, true
for i = 1, #KEYS do
  local a = 4 * i - 3
  local interval, burst = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local n, max_wait = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local k = KEYS[i]
  local d = tat[k]
  if d == nil then
    d = 0
    local v = redis.call('GET', k)
    if v then
      local at, off = string.match(v, '^(%d+):(%d+)$')
      if at then
        d = tonumber(off) - (now - tonumber(at)) * 1000
        if d < 0 then d = 0 end
      end
    end
  end
  local nd = d + n * interval
  local wait = nd - burst * interval
  if wait < 0 then wait = 0 end
  if wait > max_wait then
    ok = false
    out[2 * i - 1] = -wait
    out[2 * i] = d
  else
    out[2 * i - 1] = wait
    out[2 * i] = nd
    tat[k] = nd
  end
end
if ok then
  for k, nd in pairs(tat) do
    redis.call('SET', k, string.format('%.0f:%.0f', now, nd), 'PX', math.ceil(nd / 1000000))
  end
end
return out
"""
)

_GCRA_REFUND = _Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local at, off = string.match(v, '^(%d+):(%d+)$')
if not at then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local d = tonumber(off) - (now - tonumber(at)) * 1000 - tonumber(ARGV[1])
if d <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', now, d), 'PX', math.ceil(d / 1000000))
return d
"""
)

_GCRA_PEEK = _Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local at, off = string.match(v, '^(%d+):(%d+)$')
if not at then return 0 end
local t = redis.call('TIME')
local d = tonumber(off) - (tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(at)) * 1000
if d < 0 then return 0 end
return d
"""
)

# Circuit state: "<gen> <state> <break ends, Redis us; 0 none> <origin>". A proposal
# lands only with a generation above the stored one; it is published in the same
# script, so subscribers see states in generation order. Published messages add the
# break's remaining us, so receivers need no clock of Redis's.
_CIRCUIT_CAS = _Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('GET', KEYS[1])
local gen = tonumber(ARGV[1])
if cur then
  local g = tonumber(string.match(cur, '^(%d+) '))
  if g and gen <= g then return {0, cur, now} end
end
local until_ = 0
local brk = tonumber(ARGV[3])
if brk > 0 then until_ = now + brk end
local v = string.format('%.0f %s %.0f %s', gen, ARGV[2], until_, ARGV[4])
redis.call('SET', KEYS[1], v)
redis.call('PUBLISH', ARGV[5], string.format('%s %.0f', v, brk))
return {1, v, now}
"""
)

_CIRCUIT_READ = _Script(
    """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]), tonumber(t[1]) * 1000000 + tonumber(t[2])}
"""
)


# ---- backend --------------------------------------------------------------------------


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _on_error(value: str) -> bool:
    """True when failing open."""
    if value not in ("open", "closed"):
        raise ValueError(f'on_redis_error must be "open" or "closed", got {value!r}')
    return value == "open"


_URL_OPTIONS = {"timeout", "on_redis_error", "prefix", "max_backoff", "max_in_flight"}


class RedisBackend:
    """A Redis server shared by rate limiters and circuit breakers on many hosts.

    `url` is ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS);
    options may also be given in its query string, e.g.
    ``redis://cache:6379/0?timeout=0.02&on_redis_error=closed``.

    Every call gets `timeout` seconds in all (connecting included). When Redis fails,
    decisions follow `on_redis_error` (``"open"`` admits, ``"closed"`` refuses) and
    skip Redis for a backoff period that doubles, with jitter, up to `max_backoff`
    seconds; the first decision after it probes Redis again. A backend serves one
    event loop at a time (it reconnects if used from another); share it between the
    tasks of a process, not between threads.
    """

    #: Decisions are awaited round trips (see `resilio.backends.is_awaited`).
    awaited: ClassVar[bool] = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        timeout: float | None = None,
        on_redis_error: OnRedisError | None = None,
        max_backoff: float | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"a Redis URL starts with redis:// or rediss://, got {url!r}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        unknown = sorted(set(query) - _URL_OPTIONS)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} in Redis URL {url!r}")
        try:
            port = parts.port or 6379
        except ValueError as exc:
            raise ValueError(f"bad port in Redis URL {url!r}") from exc
        self._host = parts.hostname or "127.0.0.1"
        self._port = port
        self._tls = parts.scheme == "rediss"
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password is not None else None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the path of a Redis URL is a database number, got {url!r}")
        self._db = int(path) if path else 0
        self._url = url

        def pick(name: str, given: Any, default: Any) -> Any:
            return given if given is not None else query.get(name, default)

        self.prefix: str = pick("prefix", prefix, DEFAULT_PREFIX)
        if not self.prefix:
            raise ValueError("prefix must not be empty")
        self._timeout = _seconds("timeout", float(pick("timeout", timeout, DEFAULT_TIMEOUT)))
        self._max_backoff = _seconds(
            "max_backoff", float(pick("max_backoff", max_backoff, DEFAULT_MAX_BACKOFF))
        )
        self._fail_open = _on_error(pick("on_redis_error", on_redis_error, "open"))
        self._max_in_flight = int(pick("max_in_flight", max_in_flight, DEFAULT_MAX_IN_FLIGHT))
        if self._max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self._max_in_flight!r}")
        self._min_backoff = min(self._timeout, self._max_backoff)
        self._backoff = self._min_backoff
        self._down_until = 0.0
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        #: Calls that got a reply; calls that failed; times the backend went down.
        self.calls = 0
        self.failures = 0
        self.outages = 0
        self.connects = 0

    # -- views ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def timeout(self) -> float:
        """Seconds each call may take."""
        return self._timeout

    @property
    def fail_open(self) -> bool:
        """True when a decision Redis cannot make admits (on_redis_error="open")."""
        return self._fail_open

    @property
    def on_redis_error(self) -> OnRedisError:
        return "open" if self._fail_open else "closed"

    @property
    def max_backoff(self) -> float:
        return self._max_backoff

    @property
    def healthy(self) -> bool:
        """False while in a backoff period after a failure."""
        return self._down_until == 0.0

    def retry_after(self) -> float:
        """Seconds until the next attempt to reach Redis (the timeout when up)."""
        if not self._down_until:
            return self._timeout
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return self._backoff
        return max(self._down_until - now, self._timeout)

    def __repr__(self) -> str:
        return (
            f"RedisBackend({self._host}:{self._port}/{self._db}, prefix={self.prefix!r}, "
            f"timeout={self._timeout:g}, on_redis_error={self.on_redis_error!r})"
        )

    # -- connections ------------------------------------------------------------------------

    async def _open(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        on_push: Callable[[list[Any]], None] | None = None,
        on_lost: Callable[[], object] | None = None,
    ) -> _Connection:
        """Connect (and AUTH/SELECT) by `deadline`."""
        ssl_ctx = _ssl.create_default_context() if self._tls else None
        conn: _Connection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, on_push, self._max_in_flight, on_lost),
                    self._host,
                    self._port,
                    ssl=ssl_ctx,
                )
                hello: list[asyncio.Future[Any]] = []
                if self._password is not None:
                    auth = (
                        _command(b"AUTH", self._username, self._password)
                        if self._username
                        else _command(b"AUTH", self._password)
                    )
                    hello.append(conn.request(auth, deadline))
                if self._db:
                    hello.append(conn.request(_command(b"SELECT", self._db), deadline))
                for fut in hello:
                    await fut
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, RedisBackendError):
                raise
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(
                    f"no connection to Redis at {self._host}:{self._port} in time"
                ) from exc
            if isinstance(exc, OSError):
                raise RedisUnavailableError(
                    f"cannot connect to Redis at {self._host}:{self._port}: {exc}"
                ) from exc
            raise
        self.connects += 1
        return conn

    async def _connection(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed and conn.loop is loop:
            return conn
        if conn is not None and conn.loop is not loop and not conn.closed:
            with contextlib.suppress(Exception):  # its loop may be closed already
                conn.close()
        self._conn = None
        task = self._connecting
        if task is None or task.get_loop() is not loop:
            # One connect at a time: callers arriving meanwhile wait for the same one,
            # which ends by the first caller's deadline (earlier than theirs).
            task = loop.create_task(self._open(loop, deadline))
            self._connecting = task
            task.add_done_callback(self._connected)
        return await asyncio.shield(task)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()
        if self._conn is None or self._conn.closed:
            self._conn = conn
        elif self._conn is not conn:
            conn.close()

    # -- health -----------------------------------------------------------------------------

    def _gate(self, now: float) -> bool:
        """Raise while in a backoff period; True when this call is the probe after one."""
        if now < self._down_until:
            raise RedisUnavailableError(
                f"Redis at {self._host}:{self._port} is down; next try in "
                f"{self._down_until - now:.3f} s"
            )
        # Others keep failing fast while this one probes.
        self._down_until = now + self._backoff
        return True

    def _failed(self, now: float, exc: BaseException, probe: bool) -> None:
        self.failures += 1
        if probe:
            self._backoff = min(self._backoff * 2, self._max_backoff)
            _log.debug("Redis at %s:%s still down: %s", self._host, self._port, exc)
        elif self._down_until:
            return  # a call sent before the outage began: already accounted for
        else:
            self.outages += 1
            _log.warning(
                "Redis at %s:%s is unavailable (%s); failing %s until it answers",
                self._host,
                self._port,
                exc,
                self.on_redis_error,
            )
        # Jitter keeps a fleet of clients from probing a recovering Redis in lockstep.
        self._down_until = now + self._backoff * (0.75 + 0.5 * random.random())

    def _recovered(self) -> None:
        if self._down_until:
            _log.warning("Redis at %s:%s answers again", self._host, self._port)
        self._down_until = 0.0
        self._backoff = self._min_backoff

    # -- calls ------------------------------------------------------------------------------

    async def _call(self, payload: bytes, script: _Script | None = None) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("the Redis backend runs on an asyncio event loop") from None
        now = loop.time()
        deadline = now + self._timeout
        probe = self._gate(now) if self._down_until else False
        try:
            conn = self._conn
            if conn is None or conn.closed or conn.loop is not loop:
                conn = await self._connection(loop, deadline)
            try:
                value = await conn.request(payload, deadline)
            except RedisReplyError as exc:
                if script is None or not str(exc).startswith("NOSCRIPT"):
                    raise
                # Redis lost the script (SCRIPT FLUSH, restart, failover): load it and
                # run it again, both in one more round trip.
                load = conn.request(script.load_payload, deadline)
                again = conn.request(payload, deadline)
                again.add_done_callback(_consume)
                await load
                value = await again
        except RedisOverloadedError:
            if probe:
                self._down_until = 0.0  # not an answer about Redis: let the next call probe
            raise
        except RedisBackendError as exc:
            self._failed(loop.time(), exc, probe)
            raise
        self.calls += 1
        if probe:
            self._recovered()
        return value

    async def execute(self, *command: bytes | str | int) -> Any:
        """Run one Redis command within the timeout; raise RedisBackendError if it fails."""
        return await self._call(_command(*command))

    async def eval(
        self, script: _Script, keys: Sequence[bytes], args: Sequence[bytes | str | int]
    ) -> Any:
        """Run one of this module's scripts (EVALSHA; SCRIPT LOAD and again on NOSCRIPT)."""
        return await self._call(script.payload(keys, args), script)

    def _send_nowait(self, script: _Script, keys: Sequence[bytes], args: Sequence[int]) -> None:
        """Send a script without waiting for its reply (a refund from a cancelled waiter:
        cancellation must not wait on a round trip). Dropped if not connected."""
        conn = self._conn
        if conn is None or conn.closed or self._down_until:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if conn.loop is not loop:
            return
        # EVAL, not EVALSHA: nobody is there to reload the script on NOSCRIPT.
        payload = _command(b"EVAL", script.source, len(keys), *keys, *args)
        with contextlib.suppress(RedisBackendError):
            conn.request(payload, loop.time() + self._timeout).add_done_callback(_consume)

    async def ping(self) -> bool:
        """True when Redis answers PING within the timeout."""
        try:
            return bool(await self.execute(b"PING") == b"PONG")
        except RedisBackendError:
            return False

    async def aclose(self) -> None:
        """Close the connection (the next call reconnects)."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def __aenter__(self) -> RedisBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- rate limits ------------------------------------------------------------------------

    def factory(self, name: str | None) -> RedisFactory:
        """`backend=` of resilio strategies accepts this backend object (`HasFactory`)."""
        return RedisFactory(self, name)

    def buckets(self, rate: float, burst: int | None = None, *, name: str) -> RedisBuckets:
        """Keyed token buckets named `name` (keys ``{prefix}:{name}:{key}``)."""
        return RedisBuckets(self, rate, burst, name=name)

    def bucket(self, rate: float, burst: int | None = None, *, name: str) -> RedisBucket:
        """One token bucket named `name` (key ``{prefix}:{name}``)."""
        return RedisBucket(self, rate, burst, name=name)

    async def reserve_all(
        self,
        requests: Sequence[tuple[RedisBuckets, str | bytes | None, int]],
        max_wait_ns: int | Sequence[int] = 0,
    ) -> list[int]:
        """Reserve tokens on several limits at once, all or none, in one round trip.

        `requests` holds (buckets, key, n); `key` is None for a `RedisBucket`. Returns
        one entry per request, the core's `reserve` contract: all >= 0 when every limit
        admitted (each is that limit's wait; sleep the largest), else nothing was
        charged and each negative entry is -(wait) of a limit that refused.
        """
        if not requests:
            return []
        waits = [max_wait_ns] * len(requests) if isinstance(max_wait_ns, int) else list(max_wait_ns)
        if len(waits) != len(requests):
            raise ValueError("max_wait_ns needs one entry per request")
        keys: list[bytes] = []
        args: list[int] = []
        for (b, key, n), mw in zip(requests, waits, strict=True):
            if b._backend is not self:
                raise ValueError(f"{b!r} belongs to another backend")
            keys.append(b._key(key))
            args += (b.interval_ns, b.burst, b._tokens(n), _max_wait(mw))
        try:
            reply = await self.eval(_GCRA, keys, args)
        except RedisBackendError:
            if self._fail_open:
                for b, _, _ in requests:
                    b.fallbacks += 1
                    b.admitted += 1
                return [0] * len(requests)
            wait = -max(1, round(self.retry_after() * 1e9))
            for b, _, _ in requests:
                b.fallbacks += 1
                b.rejected += 1
            return [wait] * len(requests)
        out: list[int] = reply[0::2]
        refused = any(r < 0 for r in out)
        for b, _, _ in requests:
            if refused:
                b.rejected += 1
            else:
                b.admitted += 1
        return out

    async def try_acquire_all(
        self, requests: Sequence[tuple[RedisBuckets, str | bytes | None, int]]
    ) -> list[int]:
        """Take tokens from several limits at once, all or none, in one round trip.

        Returns one wait per request (ns), the core's `try_acquire` contract: all 0 when
        every limit admitted and was charged; otherwise none was charged and each entry
        is the time until that limit could admit (0 for a limit that had the tokens).
        """
        return [-r if r < 0 else 0 for r in await self.reserve_all(requests, 0)]


def _max_wait(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_wait_ns must be an int, got {value!r}")
    if value < 0:
        raise ValueError(_core_args.MSG_MAX_WAIT.format(value))
    return min(value, MAX_TOLERANCE_NS)


# ---- token buckets ----------------------------------------------------------------------

# A decision Redis did not make: the tat offset it returns (always >= 0) is replaced by
# one of these.
_FELL_OPEN = -1
_FELL_CLOSED = -2


class RedisBuckets:
    """Keyed token buckets (GCRA) in Redis: the async twin of `_core.KeyedBuckets`.

    Same arguments and the same return contract as the core (`try_acquire`: 0 admitted,
    else ns to wait; `reserve`: the wait >= 0, or -(wait) refused), awaited. `now_ns`
    is accepted so code written for the core runs unchanged, and ignored: Redis's
    clock decides. There is no `max_keys`: a key expires as soon as its bucket is full
    again, so Redis holds only the buckets in use.
    """

    __slots__ = (
        "_backend",
        "_head",
        "_interval",
        "_prefix",
        "_rate",
        "_static",
        "admitted",
        "burst",
        "fallbacks",
        "rejected",
    )

    def __init__(
        self, backend: RedisBackend, rate: float, burst: int | None = None, *, name: str
    ) -> None:
        if not isinstance(backend, RedisBackend):
            raise TypeError(f"backend must be a RedisBackend, got {backend!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str (it names the keys), got {name!r}")
        if name == "circuit":
            raise ValueError("the name 'circuit' is reserved: {prefix}:circuit:* are breakers")
        if burst is None:
            _core_args.interval_ns(rate)  # the rate's checks and errors first
            burst = max(1, math.ceil(rate))
        interval, b = _core_args.bucket_args(rate, burst)
        if interval * b >= MAX_TOLERANCE_NS:
            raise ValueError(
                f"burst / rate must be below 2**53 ns (about 104 days) for the Redis "
                f"backend, got burst={burst!r} rate={rate!r}"
            )
        self._backend = backend
        self._rate = float(rate)
        self._interval = interval
        self.burst = b
        self._prefix = f"{backend.prefix}:{name}".encode()
        self._head = _GCRA.head + _bulk(1)
        self._static = _bulk(interval) + _bulk(b)
        #: Decisions this process made (fallbacks included), and those Redis could not make.
        self.admitted = 0
        self.rejected = 0
        self.fallbacks = 0

    @property
    def backend(self) -> RedisBackend:
        return self._backend

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def interval_ns(self) -> int:
        return self._interval

    @property
    def prefix(self) -> bytes:
        """The Redis key of bucket `k` is prefix + b":" + k."""
        return self._prefix

    def _key(self, key: str | bytes | None) -> bytes:
        if key is None:
            raise TypeError("these buckets are keyed: pass the key")
        k = key.encode() if isinstance(key, str) else key
        if not isinstance(k, bytes):
            raise TypeError(f"key must be str or bytes, got {key!r}")
        if len(k) > MAX_KEY_BYTES:
            raise ValueError(f"key must be at most {MAX_KEY_BYTES} bytes, got {len(k)}")
        return self._prefix + b":" + k

    def _tokens(self, n: int) -> int:
        if type(n) is not int or not 1 <= n <= self.burst:
            n = _core_args.tokens(n, self.burst)
        return n

    async def _decide(
        self, rkey: bytes, n: int, max_wait_ns: int, fail_open: bool | None = None
    ) -> list[int]:
        """[wait or -(wait), tat - now] from Redis; else the failure policy's answer,
        marked by a negative second item (_FELL_OPEN, _FELL_CLOSED)."""
        payload = b"".join(
            (
                b"*8\r\n",
                self._head,
                b"$%d\r\n%s\r\n" % (len(rkey), rkey),
                self._static,
                b"$%d\r\n%d\r\n" % (len(b"%d" % n), n),
                _bulk(max_wait_ns),
            )
        )
        try:
            reply: list[int] = await self._backend._call(payload, _GCRA)
        except RedisBackendError:
            self.fallbacks += 1
            if self._backend._fail_open if fail_open is None else fail_open:
                self.admitted += 1
                return [0, _FELL_OPEN]
            self.rejected += 1
            return [-max(1, round(self._backend.retry_after() * 1e9)), _FELL_CLOSED]
        if reply[0] < 0:
            self.rejected += 1
        else:
            self.admitted += 1
        return reply

    async def try_acquire(self, key: str | bytes, now_ns: int | None = None, n: int = 1) -> int:
        """Take n tokens now: 0 when admitted, else ns until n are available."""
        r = (await self._decide(self._key(key), self._tokens(n), 0))[0]
        return -r if r < 0 else 0

    async def reserve(self, key: str | bytes, now_ns: int | None, n: int, max_wait_ns: int) -> int:
        """Reserve n tokens usable within max_wait_ns: the wait (>= 0), or -(wait)."""
        return (await self._decide(self._key(key), self._tokens(n), _max_wait(max_wait_ns)))[0]

    async def acquire(self, key: str | bytes, n: int = 1) -> tuple[int, int]:
        """Take n tokens now: (0 or ns to wait, whole tokens left), in one round trip.

        The tokens left are what `RateLimit` response headers report; when Redis did
        not answer they are `burst` (failing open) or 0 (failing closed).
        """
        r, d = await self._decide(self._key(key), self._tokens(n), 0)
        if d == _FELL_OPEN:
            return 0, self.burst
        if d == _FELL_CLOSED:
            return -r, 0
        return (-r if r < 0 else 0), self._available(d)

    def _available(self, d: int) -> int:
        free = self.burst * self._interval - d
        return 0 if free <= 0 else min(self.burst, free // self._interval)

    async def refund(self, key: str | bytes, now_ns: int | None = None, n: int = 1) -> None:
        """Give back n unused tokens of a reservation (never above full)."""
        with contextlib.suppress(RedisBackendError):
            await self._backend.eval(
                _GCRA_REFUND, [self._key(key)], [self._tokens(n) * self._interval]
            )

    def refund_nowait(self, key: str | bytes | None, n: int = 1) -> None:
        """Send a refund without waiting for Redis (safe in a cancellation handler)."""
        self._backend._send_nowait(
            _GCRA_REFUND, [self._key(key)], [self._tokens(n) * self._interval]
        )

    async def available(self, key: str | bytes, now_ns: int | None = None) -> int:
        """Whole tokens available now (`burst` or 0 per the failure policy if Redis fails)."""
        try:
            d: int = await self._backend.eval(_GCRA_PEEK, [self._key(key)], [])
        except RedisBackendError:
            return self.burst if self._backend._fail_open else 0
        return self._available(d)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rate={self._rate:g}, burst={self.burst}, "
            f"prefix={self._prefix.decode(errors='replace')!r})"
        )


class RedisBucket(RedisBuckets):
    """One token bucket in Redis: the async twin of `_core.TokenBucket` (key = prefix)."""

    __slots__ = ()

    def _key(self, key: str | bytes | None) -> bytes:
        if key is not None:
            raise TypeError("this bucket is not keyed")
        return self._prefix

    async def try_acquire(  # type: ignore[override]  # the core's TokenBucket signature
        self, now_ns: int | None = None, n: int = 1
    ) -> int:
        r = (await self._decide(self._prefix, self._tokens(n), 0))[0]
        return -r if r < 0 else 0

    async def reserve(  # type: ignore[override]  # the core's TokenBucket signature
        self, now_ns: int | None, n: int, max_wait_ns: int
    ) -> int:
        return (await self._decide(self._prefix, self._tokens(n), _max_wait(max_wait_ns)))[0]

    async def refund(  # type: ignore[override]  # the core's TokenBucket signature
        self, now_ns: int | None = None, n: int = 1
    ) -> None:
        with contextlib.suppress(RedisBackendError):
            await self._backend.eval(
                _GCRA_REFUND, [self._prefix], [self._tokens(n) * self._interval]
            )

    async def available(  # type: ignore[override]  # the core's TokenBucket signature
        self, now_ns: int | None = None
    ) -> int:
        try:
            d: int = await self._backend.eval(_GCRA_PEEK, [self._prefix], [])
        except RedisBackendError:
            return self.burst if self._backend._fail_open else 0
        return self._available(d)


# ---- rate limiter strategies ------------------------------------------------------------

_SHARED: dict[str, RedisBackend] = {}


def shared_backend(url: str) -> RedisBackend:
    """The backend for a redis:// URL: one per URL per process, so one connection."""
    backend = _SHARED.get(url)
    if backend is None:
        backend = _SHARED[url] = RedisBackend(url)
    return backend


def _backend_of(backend: RedisBackend | RedisFactory | str) -> RedisBackend:
    if isinstance(backend, RedisBackend):
        return backend
    if isinstance(backend, RedisFactory):
        return backend.backend
    if isinstance(backend, str):
        return shared_backend(backend)
    raise TypeError(f"backend must be a RedisBackend or a redis:// URL, got {backend!r}")


_AWAITED = (
    "a Redis decision is a network round trip, so it is awaited and cannot stand in for "
    "the synchronous core {}: build the strategy with resilio.backends.redis.{} (same "
    "options, backend={!r}, name=...), or await the twin {}"
)


class RedisFactory:
    """What `resilio.backends.resolve` returns for ``redis://`` and ``rediss://``.

    The core primitives of the `Factory` protocol are synchronous, and a Redis
    decision cannot be: those methods raise TypeError naming the strategy to use
    (`RedisRateLimiter`, `RedisCircuitBreaker`) instead of silently keeping the
    state local. The awaited twins are `bucket`, `buckets` and `backend`.
    """

    __slots__ = ("backend", "name")

    awaited: ClassVar[bool] = True

    def __init__(self, backend: RedisBackend, name: str | None) -> None:
        self.backend = backend
        self.name = name

    def _named(self) -> str:
        if not self.name:
            raise ValueError("a Redis-backed strategy needs a name: it names the shared state")
        return self.name

    def bucket(self, rate: float, burst: int) -> RedisBucket:
        """The awaited twin of `token_bucket` (key ``{prefix}:{name}``)."""
        return RedisBucket(self.backend, rate, burst, name=self._named())

    def buckets(self, rate: float, burst: int, max_keys: int | None = None) -> RedisBuckets:
        """The awaited twin of `keyed_buckets` (keys ``{prefix}:{name}:{key}``; Redis
        expires idle keys, so `max_keys` is not needed)."""
        return RedisBuckets(self.backend, rate, burst, name=self._named())

    def token_bucket(self, rate: float, burst: int) -> Any:
        raise TypeError(
            _AWAITED.format("TokenBucket", "RedisRateLimiter", self.backend.url, "bucket()")
        )

    def keyed_buckets(self, rate: float, burst: int, max_keys: int) -> Any:
        raise TypeError(
            _AWAITED.format(
                "KeyedBuckets", "RedisRateLimiter(key=...)", self.backend.url, "buckets()"
            )
        )

    def circuit(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "a shared break needs the breaker to listen to Redis: build it with "
            f"resilio.backends.redis.RedisCircuitBreaker (same options, "
            f"backend={self.backend.url!r}, name=...)"
        )

    def gate(self, limit: int) -> Any:
        raise TypeError("the Redis backend holds rate limits and circuit breaks, not bulkheads")

    def counters(self, n: int) -> Any:
        raise TypeError("the Redis backend holds rate limits and circuit breaks, not counters")

    def __repr__(self) -> str:
        return f"RedisFactory({self.backend!r}, name={self.name!r})"


def open_backend(spec: str, name: str | None) -> RedisFactory:
    """The opener of ``backend="redis://..."`` (and ``rediss://``) for `resolve`."""
    return RedisFactory(shared_backend(spec), name)


class RedisRateLimiter(RateLimiter):
    """A `RateLimiter` whose bucket lives in Redis, shared by every host.

    `name` is required: it names the bucket (key ``{prefix}:{name}``, or
    ``{prefix}:{name}:{key}`` with `key=fn`). Everything else is `RateLimiter`'s:
    the decisions and `retry_after` are the same, on Redis's clock.

    A Redis decision is awaited, so this gate's `_enter` always returns WAIT and the
    round trip happens in `_enter_wait` (one EVALSHA per call). When Redis fails,
    `on_redis_error` (default: the backend's) decides: ``"open"`` admits,
    ``"closed"`` raises `RateLimitedError` with `retry_after` = time until Redis is
    tried again.
    """

    __slots__ = ("_backend", "_buckets", "_local_fail_open")

    _backend: RedisBackend
    _buckets: RedisBuckets
    _local_fail_open: bool | None

    def __new__(cls, *args: Any, **kwargs: Any) -> RedisRateLimiter:
        if cls is RedisRateLimiter:
            cls = KeyedRedisRateLimiter if kwargs.get("key") is not None else _GateRedisRateLimiter
        return object.__new__(cls)

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        backend: RedisBackend | RedisFactory | str,
        name: str,
        max_wait: float = DEFAULT_MAX_WAIT,
        key: KeyFunc | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        tokens: int = DEFAULT_TOKENS,
        on_redis_error: OnRedisError | None = None,
        clock: Clock | None = None,
    ) -> None:
        # `max_keys` is accepted so that `RateLimiter(..., backend="redis://...")` takes
        # the same options; Redis expires idle keys, so it bounds nothing here.
        del max_keys
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"a Redis rate limiter needs a name (it names the bucket), got {name!r}"
            )
        self._backend = _backend_of(backend)
        self._local_fail_open = None if on_redis_error is None else _on_error(on_redis_error)
        super().__init__(
            rate, burst, max_wait=max_wait, key=key, tokens=tokens, name=name, clock=clock
        )

    @property
    def backend(self) -> RedisBackend:
        return self._backend

    @property
    def buckets(self) -> RedisBuckets:
        return self._buckets

    @property
    def admitted(self) -> int:
        """Calls this process admitted (Redis fallbacks included)."""
        return self._buckets.admitted

    @property
    def rejected(self) -> int:
        return self._buckets.rejected

    @property
    def fallbacks(self) -> int:
        """Decisions made by `on_redis_error` because Redis did not answer."""
        return self._buckets.fallbacks

    @property
    def on_redis_error(self) -> OnRedisError:
        fail_open = self._local_fail_open
        if fail_open is None:
            fail_open = self._backend._fail_open
        return "open" if fail_open else "closed"

    def _repr_key(self) -> str:
        return f", backend={self._backend!r}"


class _GateRedisRateLimiter(RedisRateLimiter, GateStrategy):
    """The unkeyed Redis limiter: a gate whose decision is awaited in `_enter_wait`."""

    __slots__ = ()

    def _setup(self, key: KeyFunc | None, max_keys: int, *_: Any) -> None:
        self._buckets = RedisBucket(self._backend, self._rate, self._burst, name=self.name or "")

    def _fast_kind(self) -> None:
        return None  # no compiled path: the decision is a round trip

    def _enter(self) -> Any:
        return WAIT

    async def _enter_wait(self) -> Any:
        r = await _decide(self, None)
        if r:
            await _sleep_or_refund(self, None, r)
        return None

    def _ok(self, token: Any, result: Any) -> None:
        pass

    def _err(self, token: Any, exc: BaseException) -> None:
        pass  # a call that ran (even if cancelled) has used its tokens

    async def available(self, key: str | bytes | None = None) -> int:  # type: ignore[override]  # awaited
        """Whole tokens available now in Redis."""
        if key is not None:
            raise TypeError("this limiter is not keyed; call available() without a key")
        return await self._buckets.available(None)  # type: ignore[arg-type]  # RedisBucket


class KeyedRedisRateLimiter(RedisRateLimiter, Shaper):
    """A Redis rate limit per key: `key(*args, **kwargs)` names each call's bucket."""

    __slots__ = ("_key",)

    def _setup(self, key: KeyFunc | None, max_keys: int, *_: Any) -> None:
        if key is None or not callable(key):
            raise TypeError(f"key must be a callable returning str or bytes, got {key!r}")
        self._key = key
        self._buckets = RedisBuckets(self._backend, self._rate, self._burst, name=self.name or "")

    @property
    def key(self) -> KeyFunc:
        return self._key

    async def available(self, key: str | bytes | None = None) -> int:  # type: ignore[override]  # awaited
        if key is None:
            raise TypeError("a keyed limiter needs the key: available(key)")
        return await self._buckets.available(key)

    def _wrap(self, inner: Runner | None) -> Runner:
        key_of = self._key

        async def run(
            fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            k = key_of(*args, **kwargs)
            r = await _decide(self, k)
            if r:
                await _sleep_or_refund(self, k, r)
            if inner is None:
                return await fn(*args, **kwargs)
            return await inner(fn, args, kwargs)

        return run

    def _repr_key(self) -> str:
        return f", key={self._key!r}, backend={self._backend!r}"


async def _decide(lim: RedisRateLimiter, key: str | bytes | None) -> int:
    """Reserve the limiter's tokens: the wait (>= 0), or raise RateLimitedError."""
    b = lim._buckets
    r = (await b._decide(b._key(key), lim._tokens, lim._max_wait_ns, lim._local_fail_open))[0]
    if r < 0:
        raise lim._rejection(-r)
    return r


async def _sleep_or_refund(lim: RedisRateLimiter, key: str | bytes | None, wait_ns: int) -> None:
    try:
        await lim._clock.sleep(wait_ns / 1e9)
    except BaseException:
        # Cancelled before using the tokens: give them back without awaiting Redis.
        lim._buckets.refund_nowait(key, lim._tokens)
        raise


class RedisRateLimits(GateStrategy):
    """Several unkeyed Redis limiters checked as one gate: one round trip, all or none.

    E.g. 10/s and 1000/hour: a call is admitted only if every limit has its tokens,
    and a refused call charges none of them. `retry_after` is the longest wait
    among the limits that refused.
    """

    __slots__ = ("_backend", "_limiters")

    def __init__(self, *limiters: RedisRateLimiter, name: str | None = None) -> None:
        super().__init__(name=name)
        if not limiters:
            raise ValueError("RedisRateLimits needs at least one limiter")
        for lim in limiters:
            if not isinstance(lim, _GateRedisRateLimiter):
                raise TypeError(f"RedisRateLimits takes unkeyed RedisRateLimiters, got {lim!r}")
        backends = {id(lim._backend) for lim in limiters}
        if len(backends) != 1:
            raise ValueError("every limiter of a RedisRateLimits must use the same backend")
        self._backend = limiters[0]._backend
        self._limiters = limiters

    @property
    def kind(self) -> str:
        return "rate_limiter"

    @property
    def limiters(self) -> tuple[RedisRateLimiter, ...]:
        return self._limiters

    def _bind(self, pipeline_name: str | None, clock: Clock | None) -> None:
        super()._bind(pipeline_name, clock)
        for lim in self._limiters:
            lim._bind(pipeline_name, clock)

    def _fast_kind(self) -> None:
        return None

    def _enter(self) -> Any:
        return WAIT

    async def _enter_wait(self) -> Any:
        lims = self._limiters
        waits = await self._backend.reserve_all(
            [(lim._buckets, None, lim._tokens) for lim in lims],
            [lim._max_wait_ns for lim in lims],
        )
        refused = [(w, lim) for w, lim in zip(waits, lims, strict=True) if w < 0]
        if refused:
            wait, lim = min(refused, key=lambda x: x[0])
            raise lim._rejection(-wait)
        wait = max(waits)
        if wait:
            try:
                await self._clock.sleep(wait / 1e9)
            except BaseException:
                for lim in lims:
                    lim._buckets.refund_nowait(None, lim._tokens)
                raise
        return None

    def _ok(self, token: Any, result: Any) -> None:
        pass

    def _err(self, token: Any, exc: BaseException) -> None:
        pass

    def __repr__(self) -> str:
        return f"RedisRateLimits({', '.join(map(repr, self._limiters))}, name={self.name!r})"


# ---- circuit breaker ------------------------------------------------------------------------

_CLOSED: int = _core.CLOSED
_OPEN: int = _core.OPEN
_ISOLATED: int = _core.ISOLATED
_STATE_WORDS = {_CLOSED: b"closed", _OPEN: b"open", _ISOLATED: b"isolated"}
_WORD_STATES = {v: k for k, v in _STATE_WORDS.items()}


def _parse_state(value: bytes) -> tuple[int, int, int, bytes] | None:
    """(gen, state, until_us, origin) of a stored circuit value, None if malformed."""
    parts = value.split(b" ")
    if len(parts) < 4 or parts[1] not in _WORD_STATES:
        return None
    try:
        return int(parts[0]), _WORD_STATES[parts[1]], int(parts[2]), parts[3]
    except ValueError:
        return None


class _LocalOnly:
    """Stands for the sync task where there is no asyncio loop to run it."""

    __slots__ = ()

    def done(self) -> bool:
        return False


_LOCAL_ONLY = _LocalOnly()


class RedisCircuitBreaker(CircuitBreaker):
    """A `CircuitBreaker` whose breaks are shared through Redis by every instance.

    Outcomes are counted locally, exactly as `CircuitBreaker` does. When this
    instance's circuit opens (or is isolated, or reset by hand), it publishes the new
    state under the next *generation* with a compare-and-set: a state written from an
    older generation never replaces a newer one. Every instance applies a newer state
    it hears of: an open break rejects its calls with `BrokenCircuitError` until that
    break ends (on Redis's clock); isolation isolates it until someone resets; a reset
    closes it. States arrive by pub/sub at once and by a poll every `poll_interval`
    seconds, which bounds the delay when a message is lost to
    `poll_interval + backend.timeout`.

    While Redis is unreachable the breaker keeps working on its local state alone;
    a transition it could not publish is published when Redis answers again, if it
    is still in effect. The background task that listens and polls starts with the
    first call on an asyncio loop (or `await breaker.start()`); `await
    breaker.aclose()` stops it.
    """

    __slots__ = (
        "_applying",
        "_backend",
        "_channel",
        "_key",
        "_low_polls",
        "_origin",
        "_pending",
        "_poll_interval",
        "_pubsub",
        "_ready",
        "_remote_gen",
        "_remote_origin",
        "_remote_state",
        "_remote_until",
        "_sub",
        "_task",
        "_wake",
        "history",
    )

    def __init__(
        self,
        *,
        backend: RedisBackend | RedisFactory | str,
        name: str,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        pubsub: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"a Redis circuit breaker needs a name (it names the state), got {name!r}"
            )
        super().__init__(name=name, **options)
        self._backend = _backend_of(backend)
        self._poll_interval = _seconds("poll_interval", poll_interval)
        self._pubsub = bool(pubsub)
        self._key = f"{self._backend.prefix}:circuit:{name}".encode()
        self._channel = self._key
        self._origin = os.urandom(8).hex().encode()
        self._remote_gen = 0
        self._remote_state = _CLOSED
        self._remote_origin = b""
        self._remote_until = 0  # local now_ns at which a remote break ends; 0: none
        self._pending: tuple[int, int, int, bool, int] | None = None
        self._applying = False
        self._task: asyncio.Task[None] | _LocalOnly | None = None
        self._wake: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._sub: _Connection | None = None
        self._low_polls = 0
        #: (generation, state) of every shared state this instance adopted or wrote,
        #: in order (the last 64): what the generation guarantee is checked against.
        self.history: deque[tuple[int, int]] = deque(maxlen=64)

    # -- views -----------------------------------------------------------------------------

    @property
    def backend(self) -> RedisBackend:
        return self._backend

    @property
    def poll_interval(self) -> float:
        return self._poll_interval

    @property
    def generation(self) -> int:
        """The newest shared generation this instance knows."""
        return self._remote_gen

    @property
    def propagation_bound(self) -> float:
        """Seconds within which a state written to Redis reaches this instance, even
        when pub/sub drops it (Redis reachable): poll_interval + timeout."""
        return self._poll_interval + self._backend.timeout

    @property
    def state(self) -> CircuitState:
        ru = self._remote_until
        if ru and self._now_ns() < ru:
            return CircuitState.OPEN
        return super().state

    @property
    def retry_after(self) -> float | None:
        ru = self._remote_until
        if ru:
            now = self._now_ns()
            if now < ru:
                return (ru - now) / 1e9
        return super().retry_after

    # -- gate ---------------------------------------------------------------------------------

    def _fast_kind(self) -> None:
        return None  # the remote break is checked in Python before the core

    def _enter(self) -> Any:
        task = self._task
        if task is None or task.done():
            self._start_soon()  # first call, or first on a new event loop
        ru = self._remote_until
        if ru:
            now = self._now_ns()
            if now < ru:
                wait = (ru - now) / 1e9
                raise BrokenCircuitError(
                    f"circuit breaker {self.label!r} is open (shared break); "
                    f"retry after {wait:.6g} s",
                    retry_after=wait,
                    strategy=self.label,
                )
            self._remote_until = 0
        return CircuitBreaker._enter(self)

    # -- local transitions -> Redis ---------------------------------------------------------

    def _transitioned(self, state: int) -> None:
        super()._transitioned(state)
        if not self._applying and state in (_OPEN, _CLOSED):
            self._queue(state, manual=False)

    def isolate(self) -> None:
        super().isolate()
        if not self._applying:
            self._queue(_ISOLATED, manual=True)

    def reset(self) -> None:
        self._remote_until = 0
        super().reset()
        if not self._applying:
            self._queue(_CLOSED, manual=True)

    def _queue(self, state: int, *, manual: bool) -> None:
        now = self._now_ns()
        brk = 0
        if state == _OPEN:
            brk = max(1, self._circuit.retry_after_ns(now))
        self._pending = (state, brk, now, manual, self._remote_gen)
        if self._wake is not None:
            self._wake.set()

    # -- Redis -> local ----------------------------------------------------------------------------

    def _adopt(self, gen: int, state: int, remaining_ns: int, origin: bytes) -> None:
        """Apply a shared state newer than any this instance knows."""
        if gen <= self._remote_gen:
            return
        self._remote_gen = gen
        self._remote_state = state
        self._remote_origin = origin
        self.history.append((gen, state))
        if origin == self._origin:
            return  # written by this instance: its local circuit is already there
        pending = self._pending
        if pending is not None and self._supersedes(pending[0], pending[3], state):
            return  # a local transition not yet published overrides it (see _flush)
        self._applying = True
        try:
            if state == _OPEN:
                if remaining_ns > 0:
                    was_blocked = self.state != CircuitState.CLOSED
                    self._remote_until = self._now_ns() + remaining_ns
                    if not was_blocked:
                        self._fire(self._on_opened, "on_opened")
            elif state == _ISOLATED:
                self._remote_until = 0
                super().isolate()
            else:
                was_remote = bool(self._remote_until) and self._now_ns() < self._remote_until
                self._remote_until = 0
                if self._circuit.state != _CLOSED:
                    super().reset()
                elif was_remote:
                    self._fire(self._on_closed, "on_closed")
        finally:
            self._applying = False

    def _adopt_value(self, value: Any, now_us: int, *, force: bool = False) -> int:
        """Adopt a stored value read at Redis time `now_us`; returns its generation.
        `force` adopts it even if older than the newest known (Redis lost its data)."""
        parsed = _parse_state(value) if isinstance(value, bytes) else None
        if parsed is None:
            return 0
        gen, state, until, origin = parsed
        if force and gen <= self._remote_gen:
            self._remote_gen = gen - 1
        self._adopt(gen, state, (until - now_us) * 1000 if until else 0, origin)
        return gen

    def _on_push(self, message: list[Any]) -> None:
        data = message[2] if len(message) > 2 else None
        if not isinstance(data, bytes):
            return
        parsed = _parse_state(data)
        parts = data.split(b" ")
        if parsed is None or len(parts) < 5:
            return
        gen, state, _, origin = parsed
        try:
            remaining_us = int(parts[4])
        except ValueError:
            return
        self._adopt(gen, state, remaining_us * 1000, origin)

    async def _poll(self) -> None:
        value, now_us = await self._backend.eval(_CIRCUIT_READ, [self._key], [])
        parsed = _parse_state(value) if isinstance(value, bytes) else None
        gen = parsed[0] if parsed is not None else 0
        if gen >= self._remote_gen:
            self._low_polls = 0
            self._adopt_value(value, now_us)
            return
        # Redis holds an older generation than one this instance has seen: either this
        # reply raced a newer message (it cannot twice in a row), or Redis lost its data
        # (a restart without persistence, a flush). Then Redis is the truth again, but a
        # break this instance started and that still holds is written back first.
        self._low_polls += 1
        if self._low_polls < 2:
            return
        self._low_polls = 0
        if self._remote_origin == self._origin and self._in_effect():
            st = self._remote_state
            brk = max(1, self._circuit.retry_after_ns(self._now_ns())) if st == _OPEN else 0
            await self._cas(self._remote_gen, st, brk)
            return
        if parsed is None:
            self._remote_gen = 0
            self._remote_state = _CLOSED
            self._remote_origin = b""
        else:
            self._adopt_value(value, now_us, force=True)

    def _in_effect(self) -> bool:
        st = self._remote_state
        if st == _ISOLATED:
            return self._circuit.state == _ISOLATED
        if st == _OPEN:
            return self._circuit.retry_after_ns(self._now_ns()) > 0
        return False

    async def _cas(self, gen: int, state: int, break_ns: int) -> tuple[bool, Any, int]:
        ok, value, now_us = await self._backend.eval(
            _CIRCUIT_CAS,
            [self._key],
            [gen, _STATE_WORDS[state], (break_ns + 999) // 1000, self._origin, self._channel],
        )
        return bool(ok), value, now_us

    async def _flush(self) -> None:
        """Publish the pending local transition: a CAS on the next generation, again on
        top of a newer state that won the race if this transition still overrides it."""
        for _ in range(4):
            pending = self._pending
            if pending is None:
                return
            state, brk, queued, manual, base_gen = pending
            if state == _OPEN:
                brk -= self._now_ns() - queued
                if brk <= 0:
                    self._pending = None  # the break is over: nothing left to tell
                    return
            if self._remote_gen > base_gen and not self._supersedes(
                state, manual, self._remote_state
            ):
                self._pending = None  # a newer shared state made it moot
                return
            ok, value, now_us = await self._cas(self._remote_gen + 1, state, brk)
            if ok and self._pending is pending:
                self._pending = None
            # Won: record it. Lost: adopt the winner, unless this transition overrides
            # it (then _adopt only records its generation, and the loop writes on top).
            self._adopt_value(value, now_us)
            if ok:
                return

    @staticmethod
    def _supersedes(state: int, manual: bool, remote_state: int) -> bool:
        """Whether a local transition decided before a newer shared state still holds:
        a manual one does (isolate, reset); an automatic open does over a close; an
        automatic close never (someone opened or isolated since)."""
        return manual or (state == _OPEN and remote_state == _CLOSED)

    # -- background sync ------------------------------------------------------------------------

    def _start_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Not on asyncio (trio): the breaker works on its local state alone.
            _log.warning(
                "circuit %r: no asyncio loop, so no Redis sync; the breaker is local only",
                self.label,
            )
            self._task = _LOCAL_ONLY
            return
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # a subscription from an ended loop
                sub.close()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = loop.create_task(self._sync(), name=f"resilio-redis-circuit:{self.label}")

    async def start(self) -> None:
        """Start listening and polling now (else the first call starts it); return once
        the first subscription and poll were tried (each bounded by the timeout)."""
        if self._task is None or self._task.done():
            self._start_soon()
        if self._ready is not None and isinstance(self._task, asyncio.Task):
            await self._ready.wait()

    async def sync_now(self) -> None:
        """Publish a pending transition and poll once, now (tests, shutdown)."""
        if self._pending is not None:
            await self._flush()
        await self._poll()

    async def aclose(self) -> None:
        """Stop the background task and the subscription."""
        task, self._task = self._task, None
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()

    async def __aenter__(self) -> RedisCircuitBreaker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _subscribe(self, loop: asyncio.AbstractEventLoop) -> None:
        backend = self._backend
        now = loop.time()
        if backend._down_until and now < backend._down_until:
            return
        deadline = now + backend.timeout
        try:
            # Losing the subscription wakes the sync loop to subscribe again (and poll).
            conn = await backend._open(loop, deadline, self._on_push, self._wake_up)
            try:
                await conn.request(_command(b"SUBSCRIBE", self._channel), deadline)
            except BaseException:
                conn.close()
                raise
        except RedisBackendError as exc:
            _log.debug("circuit %r: cannot subscribe: %s", self.label, exc)
            return
        self._sub = conn

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        next_poll = 0.0
        while True:
            wake.clear()
            try:
                if self._pubsub and (self._sub is None or self._sub.closed):
                    self._sub = None
                    await self._subscribe(loop)
                    if self._sub is not None:
                        next_poll = 0.0  # catch up on what was said while deaf
                if self._pending is not None:
                    await self._flush()
                if loop.time() >= next_poll:
                    next_poll = loop.time() + self._poll_interval
                    await self._poll()
            except RedisBackendError as exc:
                _log.debug("circuit %r: Redis sync failed: %s", self.label, exc)
            except Exception:  # a bug here must not stop the breaker's sync for good
                _log.exception("circuit %r: Redis sync failed", self.label)
            assert self._ready is not None
            self._ready.set()
            delay = next_poll - loop.time()
            if self._pending is not None or (self._pubsub and self._sub is None):
                delay = min(delay, self._backend.retry_after())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()

    def __repr__(self) -> str:
        return (
            f"RedisCircuitBreaker(name={self.name!r}, backend={self._backend!r}, "
            f"poll_interval={self._poll_interval!r}, failure_ratio={self._failure_ratio!r}, "
            f"break_duration={self._break_duration!r})"
        )
