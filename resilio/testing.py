"""Test helpers: a virtual clock that makes time-based tests exact and instant, and
a TCP proxy that injects network faults (latency, resets, black holes, refusals)."""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from types import TracebackType
from typing import Final, Literal

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

__all__ = ["PROXY_MODES", "ChaosProxy", "FakeClock", "ProxyMode"]


class FakeClock:
    """A clock that only moves when told to.

    `sleep(s)` advances virtual time by `s` at once (and yields to the event
    loop once, so it is still a cancellation point). Strategies given this
    clock see backoff delays, limiter refills, break durations and windows in
    virtual time.
    """

    __slots__ = ("_ns", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start!r}")
        self._ns = round(start * 1e9)
        #: Every duration passed to sleep(), in order (handy for backoff tests).
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Virtual seconds."""
        return self._ns / 1e9

    def now_ns(self) -> int:
        """Virtual nanoseconds."""
        return self._ns

    def advance(self, seconds: float) -> None:
        """Move virtual time forward."""
        if seconds < 0:
            raise ValueError(f"cannot move time backwards by {seconds!r} s")
        self._ns += round(seconds * 1e9)

    async def sleep(self, seconds: float) -> None:
        """Advance virtual time by `seconds` and yield once."""
        self.sleeps.append(seconds)
        if seconds > 0:
            self._ns += round(seconds * 1e9)
        await anyio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now()!r})"


# ---- ChaosProxy ------------------------------------------------------------------------

ProxyMode = Literal["pass", "latency", "reset", "blackhole", "refuse"]
#: What `ChaosProxy.mode` accepts.
PROXY_MODES: Final[tuple[str, ...]] = ("pass", "latency", "reset", "blackhole", "refuse")
_BACKLOG: Final = 512
_CHUNK: Final = 65536
# Chunks held by a connection's latency line before its reader waits (bounded memory).
_LATENCY_BUFFER: Final = 64
_RST_LINGER: Final = struct.pack("ii", 1, 0)
# A connection that broke under us: the peer reset it, or it was closed meanwhile.
_BROKEN: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# "refuse" closes an open connection once no byte has moved on it for _QUIET seconds, so
# that a response being sent is not cut in two.
_QUIET: Final = 0.05


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (linger on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    sock.close()


class _Conn:
    """One client connection through the proxy."""

    __slots__ = ("blackholed", "closing", "last", "reset", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.blackholed = False
        self.reset = False
        #: When a byte last moved either way (anyio.current_time()).
        self.last = anyio.current_time()
        #: Set by "refuse": close once idle.
        self.closing = False


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 whose faults you switch while it runs.

    `async with ChaosProxy(upstream_host, upstream_port) as proxy:` listens on
    a free port (`proxy.port`) and forwards each connection to the upstream.
    Set `proxy.mode` at any time (from the proxy's event loop):

    - "pass": forward bytes both ways;
    - "latency": hold every chunk the upstream sends `proxy.latency` seconds
      before it reaches the client (each chunk once, in order);
    - "reset": reset (RST) every open connection, and each new one as soon
      as it is accepted;
    - "blackhole": accept, never answer: new connections and the open ones
      swallow every byte (an open connection stays black-holed);
    - "refuse": stop listening (new connections are refused) and close the
      open ones once they are idle (no byte either way for 50 ms), as a
      restarting server does; leaving it listens again on the same port.

    It runs on asyncio or trio (anyio). "refuse" takes effect at once on
    Linux; elsewhere, when the proxy's accept loop next runs.
    """

    __slots__ = (
        "_accept_scope",
        "_closer",
        "_latency",
        "_listening",
        "_live",
        "_mode",
        "_replace",
        "_sock",
        "_tg",
        "_wake",
        "connections",
        "host",
        "port",
        "resets",
        "upstream_host",
        "upstream_port",
    )

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        mode: ProxyMode = "pass",
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        given: object = upstream_host  # checked at run time, whatever the annotation says
        if not isinstance(given, str) or not given:
            raise TypeError(f"upstream_host must be a host name or address, got {upstream_host!r}")
        for name, value in (("upstream_port", upstream_port), ("port", port)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in [0, 65535], got {value!r}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        #: The port it listens on (known once started; the `port` argument until then).
        self.port = port
        self._mode: str = _proxy_mode(mode)
        self._latency = _proxy_latency(latency)
        #: Connections accepted so far.
        self.connections = 0
        #: Connections the proxy reset (mode "reset", or the upstream was unreachable).
        self.resets = 0
        self._sock: socket.socket | None = None
        self._listening = False
        self._replace = False
        self._live: set[_Conn] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        # Events need a running event loop: made by the accept loop.
        self._wake: anyio.Event | None = None
        self._accept_scope: anyio.CancelScope | None = None
        self._closer = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) that clients connect to."""
        return (self.host, self.port)

    @property
    def active(self) -> int:
        """Connections open right now."""
        return len(self._live)

    @property
    def latency(self) -> float:
        """Seconds each upstream chunk is held in mode "latency"."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = _proxy_latency(value)

    @property
    def mode(self) -> str:
        """The current fault: "pass", "latency", "reset", "blackhole" or "refuse"."""
        return self._mode

    @mode.setter
    def mode(self, value: ProxyMode) -> None:
        mode = _proxy_mode(value)
        self._mode = mode
        if mode == "refuse":
            if self._listening and self._sock is not None:
                # On Linux, shutting a listening socket down stops it accepting at once
                # (and wakes the accept loop, which swaps in a bound, idle socket).
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                self._listening = False
                self._replace = True
                if self._accept_scope is not None:
                    self._accept_scope.cancel()
            if self._live:
                for conn in self._live:
                    conn.closing = True
                if not self._closer and self._tg is not None:
                    self._closer = True
                    self._tg.start_soon(self._close_quiet)
        elif mode == "reset":
            for conn in self._live:
                conn.reset = True
                conn.scope.cancel()
        elif mode == "blackhole":
            for conn in self._live:
                conn.blackholed = True
        if mode != "refuse" and not self._listening and self._sock is not None:
            if not self._replace:
                # The bound, idle socket left by "refuse": listening again is immediate.
                self._sock.listen(_BACKLOG)
                self._listening = True
            if self._wake is not None:
                self._wake.set()

    async def __aenter__(self) -> ChaosProxy:
        sock = self._bound_socket(self.port)
        self.port = sock.getsockname()[1]
        self._sock = sock
        if self._mode != "refuse":
            sock.listen(_BACKLOG)
            self._listening = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._accept_loop, tg)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                return await tg.__aexit__(exc_type, exc, tb)
            return None
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._listening = False

    def _bound_socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Lets "refuse" rebind the same port while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _accept_loop(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            if self._replace:
                # The shut-down listener is replaced by a bound socket that does not
                # listen: the port stays ours and connecting to it is refused.
                old = self._sock
                if old is not None:
                    old.close()
                self._sock = self._bound_socket(self.port)
                self._replace = False
                if self._mode != "refuse":
                    self._sock.listen(_BACKLOG)
                    self._listening = True
            sock = self._sock
            if not self._listening or sock is None:
                wake = self._wake = anyio.Event()
                await wake.wait()
                continue
            with anyio.CancelScope() as scope:
                self._accept_scope = scope
                try:
                    await anyio.wait_readable(sock)
                finally:
                    self._accept_scope = None
            if scope.cancelled_caught or self._replace:
                continue
            try:
                raw, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._refusing():
                    continue
                raise
            self.connections += 1
            if self._mode == "reset":
                self.resets += 1
                _reset(raw)
                continue
            raw.setblocking(False)
            # Without it, a response written in two pieces (head, then body) waits for
            # the client's delayed ACK (40 ms on Linux) between them.
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tg.start_soon(self._serve, raw)

    async def _close_quiet(self) -> None:
        """Close the connections "refuse" marked, each once it is idle."""
        try:
            while True:
                now = anyio.current_time()
                closing = [c for c in self._live if c.closing]
                if not closing:
                    return
                for conn in closing:
                    if now - conn.last >= _QUIET:
                        conn.scope.cancel()
                await anyio.sleep(_QUIET / 5)
        finally:
            self._closer = False

    def _refusing(self) -> bool:
        # A method, not an inline test: `mode = "refuse"` may have run since the last check.
        return self._replace or not self._listening

    async def _serve(self, raw: socket.socket) -> None:
        conn = _Conn()
        self._live.add(conn)
        upstream: anyio.abc.SocketStream | None = None
        client: anyio.abc.SocketStream | None = None
        try:
            with conn.scope:
                try:
                    client = await anyio.abc.SocketStream.from_socket(raw)
                except OSError:
                    return  # the client is gone already (reset before we looked)
                if self._mode == "blackhole":
                    conn.blackholed = True
                else:
                    try:
                        upstream = await anyio.connect_tcp(self.upstream_host, self.upstream_port)
                    except OSError:
                        conn.reset = True
                        return
                async with anyio.create_task_group() as pipes:
                    if upstream is None:
                        pipes.start_soon(self._swallow, conn, client)
                    else:
                        send, recv = anyio.create_memory_object_stream[tuple[float, bytes]](
                            _LATENCY_BUFFER
                        )
                        pipes.start_soon(self._up, conn, client, upstream)
                        pipes.start_soon(self._down_read, conn, upstream, send)
                        pipes.start_soon(self._down_write, conn, client, recv)
        finally:
            self._live.discard(conn)
            # Closing a broken socket may fail too: that must not stop the proxy.
            with anyio.CancelScope(shield=True), contextlib.suppress(*_BROKEN):
                if upstream is not None:
                    await upstream.aclose()
                if conn.reset:
                    self.resets += 1
                    if client is not None:
                        client.extra(SocketAttribute.raw_socket).setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER
                        )
                    else:
                        _reset(raw)
                if client is not None:
                    await client.aclose()
                elif not conn.reset:
                    raw.close()

    async def _swallow(self, conn: _Conn, client: anyio.abc.SocketStream) -> None:
        """A black-holed connection: read and drop until the client leaves."""
        with contextlib.suppress(anyio.EndOfStream, *_BROKEN):
            while True:
                await client.receive(_CHUNK)
        conn.scope.cancel()

    async def _up(
        self, conn: _Conn, client: anyio.abc.SocketStream, upstream: anyio.abc.SocketStream
    ) -> None:
        try:
            while True:
                data = await client.receive(_CHUNK)
                conn.last = anyio.current_time()
                if not conn.blackholed:
                    await upstream.send(data)
        except anyio.EndOfStream:
            if conn.blackholed:
                conn.scope.cancel()
                return
            # Half-close: the upstream may still answer what it was sent.
            with contextlib.suppress(*_BROKEN):
                await upstream.send_eof()
        except _BROKEN:
            conn.scope.cancel()

    async def _down_read(
        self,
        conn: _Conn,
        upstream: anyio.abc.SocketStream,
        send: anyio.abc.ObjectSendStream[tuple[float, bytes]],
    ) -> None:
        async with send:
            try:
                while True:
                    data = await upstream.receive(_CHUNK)
                    conn.last = now = anyio.current_time()
                    if not conn.blackholed:
                        await send.send((now, data))
            except anyio.EndOfStream:
                pass
            except anyio.BrokenResourceError:
                # The upstream reset the connection: so does the proxy, to the client.
                conn.reset = True
                conn.scope.cancel()
            except _BROKEN:
                conn.scope.cancel()

    async def _down_write(
        self,
        conn: _Conn,
        client: anyio.abc.SocketStream,
        recv: anyio.abc.ObjectReceiveStream[tuple[float, bytes]],
    ) -> None:
        try:
            async with recv:
                async for arrived, data in recv:
                    if self._mode == "latency" and self._latency > 0:
                        # Held from arrival, not from the previous chunk: latency is added once.
                        await anyio.sleep_until(arrived + self._latency)
                    if not conn.blackholed:
                        await client.send(data)
                        conn.last = anyio.current_time()
        except _BROKEN:
            conn.scope.cancel()
            return
        if conn.blackholed:
            return
        # The upstream is done sending: the client hears it, then the connection ends.
        conn.scope.cancel()

    def __repr__(self) -> str:
        return (
            f"ChaosProxy({self.upstream_host!r}, {self.upstream_port!r}, port={self.port!r}, "
            f"mode={self._mode!r})"
        )


def _proxy_mode(value: object) -> str:
    if value not in PROXY_MODES:
        raise ValueError(f"mode must be one of {PROXY_MODES}, got {value!r}")
    return str(value)


def _proxy_latency(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"latency must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
