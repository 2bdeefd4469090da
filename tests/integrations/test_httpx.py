"""ResilientTransport against real servers on 127.0.0.1 (uvicorn, and raw TCP faults)."""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from flaky_server import FlakyApp, RawServer, Switchboard  # tests/integrations is on sys.path

from resilio import (
    Backoff,
    BrokenCircuitError,
    CircuitBreaker,
    CircuitState,
    Hedging,
    Pipeline,
    Retry,
    Timeout,
    TimeoutRejectedError,
)
from resilio.integrations import httpx as rhttpx
from resilio.integrations.httpx import (
    TRANSIENT_ERRORS,
    FailedResponse,
    ResilientTransport,
    client,
    parse_retry_after,
)
from resilio.strategies import timeout as timeout_module
from resilio.testing import ChaosProxy, FakeClock

pytestmark = pytest.mark.anyio

Serve = Callable[[FlakyApp], str]


@pytest.fixture(scope="module")
def switchboard() -> Iterator[tuple[Switchboard, str]]:
    """One uvicorn server on 127.0.0.1 for the whole module (it runs in a thread)."""
    board = Switchboard()
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says TCP. Without it a keep-alive response (head, then body) can wait
    # 40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(board, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.005)
    yield board, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def serve(switchboard: tuple[Switchboard, str]) -> Serve:
    """Like the package's `serve` fixture, on the module's shared server: plug `app` in."""
    board, url = switchboard

    def plug(app: FlakyApp) -> str:
        board.app = app
        return url

    return plug


# One SSL context for every transport: httpx builds a new one (~0.3 s) per transport.
SSL_CONTEXT = ssl.create_default_context()


def plain() -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(verify=SSL_CONTEXT)


def fast_retry(attempts: int = 3, max_delay: float = 10.0, **kw: Any) -> Retry:
    """A retry whose own backoff is 10 ms (virtual, with a FakeClock transport)."""
    return Retry(
        attempts,
        backoff=Backoff.constant(0.01, max_delay=max_delay),
        handle=TRANSIENT_ERRORS,
        **kw,
    )


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; counts responses opened and closed, and closes seen at each send."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        on_send: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner or plain()
        self.on_send = on_send
        self.opened = 0
        self.closed = 0
        self.closed_at_send: list[int] = []
        self.closed_inner = False

    @property
    def sent(self) -> int:
        return len(self.closed_at_send)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.closed_at_send.append(self.closed)
        if self.on_send is not None:
            await self.on_send(self.sent)  # 1 for the first request sent
        response = await self.inner.handle_async_request(request)
        self.opened += 1
        response.stream = _CountingStream(response.stream, self)
        return response

    async def aclose(self) -> None:
        self.closed_inner = True
        await self.inner.aclose()


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, owner: CountingTransport) -> None:
        self.inner = inner
        self.owner = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        self.owner.closed += 1
        await self.inner.aclose()


class SpyClock(FakeClock):
    """A FakeClock that notes `probe()` each time a retry starts its backoff sleep."""

    def __init__(self, probe: Callable[[], int]) -> None:
        super().__init__()
        self.probe = probe
        self.at_sleep: list[int] = []

    async def sleep(self, seconds: float) -> None:
        self.at_sleep.append(self.probe())
        await super().sleep(seconds)


def transport(inner: httpx.AsyncBaseTransport | None = None, **kw: Any) -> ResilientTransport:
    kw.setdefault("clock", FakeClock())
    return ResilientTransport(transport=inner or plain(), **kw)


# -- retries -----------------------------------------------------------------------------


async def test_retries_503_then_succeeds(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(2, 503)
    url = serve(app)
    clock = FakeClock()
    async with httpx.AsyncClient(transport=transport(retry=fast_retry(), clock=clock)) as c:
        r = await c.get(url + "/x")
    assert r.status_code == 200
    assert r.json()["n"] == 3
    assert [s.status for s in app.requests] == [503, 503, 200]
    assert clock.sleeps == [0.01, 0.01]


async def test_transport_error_is_retried(core: ModuleType, serve: Serve) -> None:
    async with RawServer("drop", "reset", "garbage") as raw:
        t = transport(retry=fast_retry(4))
        async with httpx.AsyncClient(transport=t) as c:
            r = await c.get(raw.url)
        assert r.status_code == 200 and r.text == "ok"
        assert raw.connections == 4


@pytest.mark.parametrize("mode", ["drop", "reset", "garbage"])
async def test_each_connection_fault_is_retried(core: ModuleType, mode: str) -> None:
    async with RawServer(mode) as raw:
        async with httpx.AsyncClient(transport=transport(retry=fast_retry(2))) as c:
            r = await c.get(raw.url)
        assert r.text == "ok"
        assert raw.connections == 2


async def test_connection_fault_propagates_when_attempts_run_out(core: ModuleType) -> None:
    async with RawServer("drop", "drop") as raw:
        async with httpx.AsyncClient(transport=transport(retry=fast_retry(2))) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(raw.url)
        assert raw.connections == 2


async def test_exhausted_attempts_return_last_response(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(5, 502)
    url = serve(app)
    async with httpx.AsyncClient(transport=transport(retry=fast_retry(3))) as c:
        r = await c.get(url)
    assert r.status_code == 502
    assert r.text == "failure 3"  # the last attempt's response, readable
    assert app.count() == 3


async def test_retry_after_seconds_is_honoured(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 429, retry_after="3")
    url = serve(app)
    clock = FakeClock()
    async with httpx.AsyncClient(transport=transport(retry=fast_retry(), clock=clock)) as c:
        r = await c.get(url)
    assert r.status_code == 200
    assert clock.sleeps == [3.0]


async def test_retry_after_http_date_is_honoured(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp()
    url = serve(app)
    app.fail(1, 503, retry_after=email.utils.formatdate(time.time() + 6, usegmt=True))
    clock = FakeClock()
    async with httpx.AsyncClient(transport=transport(retry=fast_retry(), clock=clock)) as c:
        r = await c.get(url)
    assert r.status_code == 200
    # The date has whole seconds: the hint is in (5, 6], far above the 10 ms backoff.
    assert len(clock.sleeps) == 1 and 4.5 <= clock.sleeps[0] <= 6.0


async def test_hint_above_max_delay_gives_up_with_the_response(
    core: ModuleType, serve: Serve
) -> None:
    app = FlakyApp().fail(1, 503, retry_after="60")
    url = serve(app)
    clock = FakeClock()
    t = transport(retry=fast_retry(3, max_delay=10.0), clock=clock)
    async with httpx.AsyncClient(transport=t) as c:
        r = await c.get(url)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "60"
    assert r.text == "failure 1"
    assert app.count() == 1
    assert clock.sleeps == []


async def test_hint_beyond_the_deadline_gives_up_at_once(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503, retry_after="5")
    url = serve(app)
    clock = FakeClock()
    t = transport(retry=fast_retry(3), total_timeout=2.0, clock=clock)
    async with httpx.AsyncClient(transport=t) as c:
        start = time.monotonic()
        r = await c.get(url)
    assert r.status_code == 503
    assert time.monotonic() - start < 1.0
    assert app.count() == 1 and clock.sleeps == []


async def test_post_is_not_retried(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503)
    url = serve(app)
    async with httpx.AsyncClient(transport=transport(retry=fast_retry())) as c:
        r = await c.post(url, content=b"pay")
        assert r.status_code == 503 and r.text == "failure 1"
        assert app.count() == 1
        r = await c.patch(url, content=b"x")  # PATCH is not idempotent either
        assert r.status_code == 200
    async with RawServer("drop") as raw:
        async with httpx.AsyncClient(transport=transport(retry=fast_retry())) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(raw.url, content=b"pay")
        assert raw.connections == 1


async def test_retry_methods_are_configurable(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503, path="/post").fail(1, 503, path="/get")
    url = serve(app)
    t = transport(retry=fast_retry(), retry_methods=["post"])
    async with httpx.AsyncClient(transport=t) as c:
        assert (await c.post(url + "/post", content=b"x")).status_code == 200
        assert (await c.get(url + "/get")).status_code == 503
    assert app.count("/post") == 2 and app.count("/get") == 1


async def test_failure_statuses_are_configurable(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 418, path="/tea").fail(1, 503, path="/busy")
    url = serve(app)
    t = transport(retry=fast_retry(), failure_statuses={418})
    async with httpx.AsyncClient(transport=t) as c:
        assert (await c.get(url + "/tea")).status_code == 200
        assert (await c.get(url + "/busy")).status_code == 503
    assert app.count("/tea") == 2 and app.count("/busy") == 1


async def test_bytes_body_is_replayed_streaming_body_is_not(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503, path="/bytes").fail(1, 503, path="/stream")
    url = serve(app)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"shot"

    async with httpx.AsyncClient(transport=transport(retry=fast_retry())) as c:
        r = await c.put(url + "/bytes", content=b"payload")
        assert r.status_code == 200 and r.json()["body"] == "payload"
        r = await c.put(url + "/stream", content=chunks())
        assert r.status_code == 503
    assert [s.body for s in app.requests] == [b"payload", b"payload", b"one shot"]


async def test_user_retry_without_hook_still_closes_before_retrying(
    core: ModuleType, serve: Serve
) -> None:
    app = FlakyApp().fail(2, 503)
    url = serve(app)
    counting = CountingTransport()
    clock = SpyClock(lambda: counting.closed)
    t = transport(counting, retry=fast_retry(), clock=clock)
    async with httpx.AsyncClient(transport=t) as c:
        r = await c.get(url)
        assert r.status_code == 200
    # A retry built by the user has no hook: each failure is closed when the next
    # attempt starts, after the backoff.
    assert clock.at_sleep == [0, 1]
    assert counting.closed_at_send == [0, 1, 2]
    assert counting.opened == counting.closed == 3


async def test_default_retry_closes_each_discarded_response(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(2, 500)
    url = serve(app)
    counting = CountingTransport()
    # The default retry (2 s exponential backoff) runs on the virtual clock, and
    # closes each failed response before its backoff sleep.
    clock = SpyClock(lambda: counting.closed)
    t = transport(counting, clock=clock)
    async with httpx.AsyncClient(transport=t) as c, c.stream("GET", url) as r:
        assert r.status_code == 200
        assert counting.closed == 2  # the two failures, before the success was read
        assert (await r.aread()).startswith(b"{")
    assert clock.at_sleep == [1, 2]
    assert counting.closed_at_send == [0, 1, 2]
    assert counting.opened == counting.closed == 3


async def test_returned_failure_stays_open_until_read(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(3, 503)
    url = serve(app)
    counting = CountingTransport()
    t = transport(counting, retry=fast_retry(3))
    async with httpx.AsyncClient(transport=t) as c, c.stream("GET", url) as r:
        assert r.status_code == 503
        assert counting.opened == 3 and counting.closed == 2
        assert await r.aread() == b"failure 3"
    assert counting.closed == 3


async def test_cancelled_during_backoff_closes_and_stops(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503)
    url = serve(app)
    counting = CountingTransport()
    retrying = anyio.Event()

    def on_retry(attempt: int, outcome: Any, delay: float) -> None:
        retrying.set()

    # Real clock, long backoff: the call is cancelled while it waits to retry.
    retry = Retry(3, backoff=Backoff.constant(5.0), handle=TRANSIENT_ERRORS, on_retry=on_retry)
    t = ResilientTransport(transport=counting, retry=retry)
    async with httpx.AsyncClient(transport=t) as c, anyio.create_task_group() as tg:
        tg.start_soon(c.get, url)
        await retrying.wait()
        await anyio.sleep(0.01)  # into the backoff sleep
        assert counting.closed == 0  # a user's Retry leaves it to the next attempt...
        tg.cancel_scope.cancel()
    assert counting.opened == counting.closed == 1  # ...or to the end of the call
    assert app.count() == 1
    assert retry.stats()["retries"] == 1


# -- circuit breaker ---------------------------------------------------------------------


def small_breaker(clock: FakeClock) -> Callable[[], CircuitBreaker]:
    return lambda: CircuitBreaker(
        failure_ratio=0.5,
        minimum_throughput=2,
        sampling_duration=30.0,
        break_duration=30.0,
        handle=TRANSIENT_ERRORS,
        clock=clock,
    )


async def test_breaker_is_per_origin(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(100, 503, path="/bad")
    url = serve(app)
    port = url.rsplit(":", 1)[1]
    other = f"http://localhost:{port}"  # same server, another origin
    clock = FakeClock()
    t = transport(retry=None, breaker=small_breaker(clock), clock=clock)
    async with httpx.AsyncClient(transport=t) as c:
        for _ in range(2):
            assert (await c.get(url + "/bad")).status_code == 503
        assert t.circuit_breaker(url).state is CircuitState.OPEN  # type: ignore[union-attr]
        with pytest.raises(BrokenCircuitError) as info:
            await c.get(url + "/ok")
        assert info.value.strategy == url  # named after its origin
        assert info.value.retry_after == pytest.approx(30.0)
        # The other origin's breaker is its own, and closed.
        r = await c.get(other + "/ok")
        assert r.status_code == 200
        assert t.circuit_breaker(other).state is CircuitState.CLOSED  # type: ignore[union-attr]
        assert t.origins == 2
    assert app.count("/ok") == 1


async def test_breaker_counts_attempts_inside_the_retry(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(100, 503)
    url = serve(app)
    clock = FakeClock()
    t = transport(retry=fast_retry(5), breaker=small_breaker(clock), clock=clock)
    async with httpx.AsyncClient(transport=t) as c:
        # Attempt 1 and 2 fail and open the breaker; attempt 3 is rejected by it, and
        # the rejection is not retried (the default handle fails fast on open circuits).
        with pytest.raises(BrokenCircuitError):
            await c.get(url)
    assert app.count() == 2
    assert clock.sleeps == [0.01, 0.01]


async def test_breaker_factory_validation(core: ModuleType) -> None:
    with pytest.raises(TypeError, match="factory"):
        ResilientTransport(breaker=CircuitBreaker())  # type: ignore[arg-type]
    t = ResilientTransport(breaker=lambda: "nope", transport=httpx.MockTransport(_ok))  # type: ignore[arg-type,return-value]
    async with httpx.AsyncClient(transport=t) as c:
        with pytest.raises(TypeError, match="must return a CircuitBreaker"):
            await c.get("http://a.test/")


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text=request.url.host)


async def test_origins_are_bounded_lru(core: ModuleType) -> None:
    t = ResilientTransport(transport=httpx.MockTransport(_ok), max_origins=2)
    async with httpx.AsyncClient(transport=t) as c:
        await c.get("http://a.test/")
        await c.get("http://b.test/")
        a = t.circuit_breaker("http://a.test:80/")
        await c.get("http://a.test/")  # a is now the most recent
        await c.get("https://c.test/")  # evicts b
        assert t.origins == 2
        assert t.circuit_breaker("http://b.test/") is None
        assert t.circuit_breaker("http://a.test/") is a is not None
        c_breaker = t.circuit_breaker("https://c.test/")
        assert c_breaker is not None and c_breaker.label == "https://c.test:443"
        # Scheme and port are part of the origin.
        await c.get("http://c.test/")
        assert t.circuit_breaker("http://c.test/") is not t.circuit_breaker("https://c.test/")


# -- timeouts and deadlines --------------------------------------------------------------


async def test_stalled_attempt_times_out_and_retry_succeeds(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().stall(5.0)
    url = serve(app)
    t = transport(retry=fast_retry(), attempt_timeout=0.05)
    async with httpx.AsyncClient(transport=t) as c:
        start = time.monotonic()
        r = await c.get(url)
        assert time.monotonic() - start < 1.0
    assert r.status_code == 200
    assert app.count() == 2


async def test_total_timeout_bounds_the_whole_call(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().stall(5.0, times=100)
    url = serve(app)
    t = ResilientTransport(
        transport=plain(),
        retry=Retry(100, backoff=Backoff.constant(0.001), handle=TRANSIENT_ERRORS),
        attempt_timeout=0.03,
        total_timeout=0.15,
    )
    async with httpx.AsyncClient(transport=t) as c:
        start = time.monotonic()
        with pytest.raises(TimeoutRejectedError):
            await c.get(url)
        elapsed = time.monotonic() - start
    assert 0.1 <= elapsed < 1.0
    assert 1 <= app.count() <= 6


async def test_deadline_header_is_forwarded(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503)
    url = serve(app)
    t = transport(retry=fast_retry(), attempt_timeout=2.0, total_timeout=30.0)
    async with httpx.AsyncClient(transport=t) as c:
        r = await c.get(url)
    sent = [s.headers["request-timeout"] for s in app.requests]
    assert len(sent) == 2
    for value in sent:
        assert re.fullmatch(r"\d+\.\d{3}", value)
        assert 1.5 < float(value) <= 2.0
    assert r.json()["request_timeout"] == sent[1]


async def test_forward_deadline_can_be_turned_off(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp()
    url = serve(app)
    async with httpx.AsyncClient(transport=transport(forward_deadline=False)) as c:
        r = await c.get(url)
    assert r.json()["request_timeout"] is None
    assert "request-timeout" not in r.request.headers
    with pytest.raises(TypeError, match="forward_deadline"):
        ResilientTransport(forward_deadline="yes")  # type: ignore[arg-type]


async def test_enclosing_deadline_is_forwarded(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp()
    url = serve(app)
    t = transport(attempt_timeout=None, total_timeout=None)
    async with httpx.AsyncClient(transport=t) as c:
        r = await c.get(url)
        assert r.json()["request_timeout"] is None  # no deadline anywhere: no header
        r = await Pipeline(Timeout(0.5)).execute(c.get, url)
    assert 0.3 < float(r.json()["request_timeout"]) <= 0.5


@pytest.mark.parametrize("fast", [True, False], ids=["httpx_internals", "public_api"])
async def test_deadline_header_is_set_once_and_replaced(
    core: ModuleType, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The transport appends the header to httpx's own header list when httpx lays it
    # out as expected, else it uses the public setter: both must send the same.
    monkeypatch.setattr(rhttpx, "_FAST_HEADERS", fast and rhttpx._FAST_HEADERS)
    sent: list[list[tuple[str, str]]] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(list(request.headers.multi_items()))
        return httpx.Response(503 if len(sent) == 1 else 200)

    t = transport(httpx.MockTransport(record), retry=fast_retry(), attempt_timeout=2.0)
    async with httpx.AsyncClient(transport=t) as c:
        r = await c.get("http://a.test/", headers={"request-timeout": "99"})
    assert r.status_code == 200 and len(sent) == 2
    for headers in sent:
        values = [v for k, v in headers if k.lower() == "request-timeout"]
        assert len(values) == 1, headers  # the caller's value and the first attempt's replaced
        assert re.fullmatch(r"\d+\.\d{3}", values[0]) and 1.5 < float(values[0]) <= 2.0
    assert [k for k, _ in sent[0]] == [k for k, _ in sent[1]]  # same place, same spelling


@pytest.mark.parametrize("fast", [True, False], ids=["httpx_internals", "public_api"])
async def test_origin_key_is_the_same_either_way(
    core: ModuleType, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rhttpx, "_FAST_URL", fast and rhttpx._FAST_URL)
    t = ResilientTransport(transport=httpx.MockTransport(_ok))
    async with httpx.AsyncClient(transport=t) as c:
        await c.get("http://bücher.test/a")
        await c.get("http://xn--bcher-kva.test:80/b")  # the same origin, spelled otherwise
        await c.get("HTTP://BÜCHER.test:8080/")  # another port: another origin
    assert t.origins == 2
    breaker = t.circuit_breaker("http://bücher.test")
    assert breaker is not None and breaker is t.circuit_breaker("http://xn--bcher-kva.test/x")
    assert breaker.label == "http://bücher.test:80"  # named as users write the host
    assert t.circuit_breaker("http://bücher.test:8080/") not in (None, breaker)


# -- hedging -----------------------------------------------------------------------------


async def test_hedging_only_for_idempotent_requests(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().stall(5.0, path="/get").stall(0.1, path="/post")
    url = serve(app)
    counting = CountingTransport()
    t = transport(counting, retry=None, hedging=Hedging(0.02))
    async with httpx.AsyncClient(transport=t) as c:
        start = time.monotonic()
        r = await c.get(url + "/get")
        assert r.status_code == 200 and time.monotonic() - start < 1.0
        r = await c.post(url + "/post", content=b"x")
        assert r.status_code == 200
    assert app.count("/get") == 2 and app.count("/post") == 1
    assert counting.opened == counting.closed


async def test_hedged_losers_are_closed(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp()
    url = serve(app)
    counting = CountingTransport()
    # Delay 0: both attempts start at once and both may answer; one response is kept.
    t = transport(counting, retry=None, hedging=Hedging(0.0, max_attempts=2))
    async with httpx.AsyncClient(transport=t) as c:
        for _ in range(5):
            assert (await c.get(url)).status_code == 200
    assert counting.opened == counting.closed


# -- network faults through a ChaosProxy -------------------------------------------------
#
# The transport talks to the real uvicorn server through a resilio.testing.ChaosProxy
# (in the test's event loop), whose fault is switched while the test runs.


@asynccontextmanager
async def chaos(url: str) -> AsyncIterator[tuple[ChaosProxy, str]]:
    """A ChaosProxy in front of the server at `url`; yields it and the URL through it."""
    try:
        async with ChaosProxy("127.0.0.1", int(url.rsplit(":", 1)[1])) as proxy:
            yield proxy, f"http://127.0.0.1:{proxy.port}"
    except BaseExceptionGroup as group:
        # The proxy's task group wraps whatever the body raised (a failed assert, too);
        # unwrapped, pytest reports the error itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


class HealingClock(FakeClock):
    """A FakeClock that runs `heal()` during the retry's `at`-th backoff sleep."""

    def __init__(self, at: int, heal: Callable[[], None]) -> None:
        super().__init__()
        self.at = at
        self.heal = heal

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if len(self.sleeps) == self.at:
            self.heal()


async def test_chaos_resets_are_retried_until_the_network_heals(
    core: ModuleType, serve: Serve
) -> None:
    app = FlakyApp()
    url = serve(app)
    async with chaos(url) as (proxy, via):

        def heal() -> None:
            proxy.mode = "pass"

        # The transport's own defaults (retry, breaker, timeouts); backoffs are virtual.
        clock = HealingClock(2, heal)
        counting = CountingTransport()
        t = ResilientTransport(transport=counting, clock=clock)
        async with httpx.AsyncClient(transport=t) as c:
            assert (await c.get(via + "/warm")).status_code == 200  # pooled, through the proxy
            proxy.mode = "reset"  # resets the pooled connection, and every new one
            r = await c.get(via + "/x")
            assert (r.status_code, r.json()["path"]) == (200, "/x")
            assert t.circuit_breaker(via).state is CircuitState.CLOSED  # type: ignore[union-attr]
        # Two attempts were reset (their errors retried with the default backoff); the
        # third, after the proxy healed during the second backoff, went through.
        assert len(clock.sleeps) == 2 and clock.sleeps[0] > 0
        assert counting.sent == 4  # /warm, and three attempts of /x
        assert proxy.resets >= 2
        assert app.count("/x") == 1
        assert counting.opened == counting.closed == 2


async def test_chaos_refusals_open_the_origins_breaker_until_healed(
    core: ModuleType, serve: Serve
) -> None:
    app = FlakyApp()
    url = serve(app)
    clock = FakeClock()

    def breaker() -> CircuitBreaker:
        # /warm succeeds, so two refusals make 2 failures out of 3: open.
        return CircuitBreaker(
            failure_ratio=0.5,
            minimum_throughput=3,
            sampling_duration=60.0,
            break_duration=30.0,
            handle=TRANSIENT_ERRORS,
            clock=clock,
        )

    async with chaos(url) as (proxy, via):
        counting = CountingTransport()
        t = transport(counting, retry=None, breaker=breaker, clock=clock)
        async with httpx.AsyncClient(transport=t) as c:
            assert (await c.get(via + "/warm")).status_code == 200
            proxy.mode = "refuse"  # a restarting server: not listening, idle connections closed
            await until(lambda: proxy.active == 0)
            accepted = proxy.connections
            for _ in range(2):
                with pytest.raises(httpx.TransportError):
                    await c.get(via + "/x")
            assert proxy.connections == accepted  # refused, not accepted and dropped
            proxied = t.circuit_breaker(via)
            assert proxied is not None and proxied.state is CircuitState.OPEN
            sent = counting.sent
            with pytest.raises(BrokenCircuitError) as info:
                await c.get(via + "/x")
            assert info.value.strategy == via
            assert info.value.retry_after == pytest.approx(30.0)
            assert counting.sent == sent  # an open circuit fails fast, without a connection
            # The server's own origin has a breaker of its own, closed.
            assert (await c.get(url + "/direct")).status_code == 200
            assert t.circuit_breaker(url).state is CircuitState.CLOSED  # type: ignore[union-attr]

            proxy.mode = "pass"
            with pytest.raises(BrokenCircuitError):  # healed, but the break is not over
                await c.get(via + "/x")
            clock.advance(30.1)  # the core keeps open-until to a few µs, rounded up
            r = await c.get(via + "/x")  # the half-open probe
            assert r.status_code == 200
            assert t.circuit_breaker(via) is proxied
            assert proxied.state.name == "CLOSED"  # by name: mypy keeps .state narrowed to OPEN
            assert (await c.get(via + "/x")).status_code == 200
        assert app.count("/x") == 2 and app.count("/direct") == 1


# A black hole is met with one cancellation at a time here: two timeouts firing
# moments apart cancel an asyncio task twice, and the second cancellation can cut
# httpcore's shielded clean-up short, leaving its connection open in the pool (an
# interplay of native asyncio cancellation and anyio shields, not what these test).


async def test_chaos_blackhole_attempts_time_out_within_the_deadline(
    core: ModuleType, serve: Serve
) -> None:
    app = FlakyApp()
    url = serve(app)
    # Attempts at 0-0.1 s and 0.2-0.3 s (after a 0.1 s backoff); a third could not
    # start before the 0.35 s deadline, so the retry gives up with the last timeout.
    attempt = Timeout(0.1, name="attempt_timeout")
    total = Timeout(0.35, name="total_timeout")
    retry = Retry(100, backoff=Backoff.constant(0.1), handle=TRANSIENT_ERRORS)
    async with chaos(url) as (proxy, via):
        counting = CountingTransport()
        t = ResilientTransport(
            transport=counting, retry=retry, attempt_timeout=attempt, total_timeout=total
        )
        async with httpx.AsyncClient(transport=t) as c:
            assert (await c.get(via + "/warm")).status_code == 200
            # A loaded machine may make /warm itself time out and retry: count from here.
            timeouts, retries, sent = attempt.timeouts, retry.stats()["retries"], counting.sent
            proxy.mode = "blackhole"  # the pooled connection and every new one: silence
            start = time.monotonic()
            with pytest.raises(TimeoutRejectedError) as info:
                await c.get(via + "/x")
            elapsed = time.monotonic() - start
            assert info.value.strategy == "attempt_timeout"
            assert 0.3 - 0.005 <= elapsed < 0.35 + 0.25  # never early, late by scheduling
            assert attempt.timeouts - timeouts == 2 and total.timeouts == 0
            stats = retry.stats()
            assert (stats["retries"] - retries, stats["gave_up"]) == (1, 1)
            assert counting.sent - sent == 2
            # Nothing leaks: both attempts' connections were closed by the client (the
            # proxy sees none left), and no timeout is left filed.
            await until(lambda: proxy.active == 0)
            assert not timeout_module._fired
            assert app.count("/x") == 0
            proxy.mode = "pass"
            assert (await c.get(via + "/after")).status_code == 200
        assert counting.opened == counting.closed == 2


async def test_chaos_blackhole_total_timeout_within_bounds(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp()
    url = serve(app)
    async with chaos(url) as (proxy, via):
        counting = CountingTransport()
        t = ResilientTransport(
            transport=counting, retry=fast_retry(), attempt_timeout=None, total_timeout=0.3
        )
        async with httpx.AsyncClient(transport=t) as c:
            assert (await c.get(via + "/warm")).status_code == 200
            sent = counting.sent
            proxy.mode = "blackhole"
            start = time.monotonic()
            with pytest.raises(TimeoutRejectedError) as info:
                await c.get(via + "/x")
            elapsed = time.monotonic() - start
            assert info.value.strategy == "total_timeout"
            assert 0.3 - 0.005 <= elapsed < 0.3 + 0.25
            assert counting.sent - sent == 1  # one attempt, waiting until the deadline
            await until(lambda: proxy.active == 0)
            assert not timeout_module._fired
        assert counting.opened == counting.closed == 1


async def test_chaos_latency_is_hedged(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp()
    url = serve(app)
    latency = 0.5
    async with chaos(url) as (proxy, via):
        # Requests sent before /slow: /warm (and its own hedge, on a slow machine).
        warm: int | None = None

        async def on_send(n: int) -> None:
            if warm is not None and n == warm + 2:
                # The hedge of /slow. Once the server has answered the first attempt
                # and its bytes are held at the proxy (this event loop's business), the
                # proxy heals: only the first attempt's response is late.
                await until(lambda: app.count("/slow") == 1 and app.requests[-1].status != 0)
                await anyio.sleep(0.05)
                proxy.mode = "pass"

        counting = CountingTransport(on_send=on_send)
        hedging = Hedging(0.05)
        t = ResilientTransport(transport=counting, retry=None, hedging=hedging)
        async with httpx.AsyncClient(transport=t) as c:
            assert (await c.get(via + "/warm")).status_code == 200
            warm, seen = counting.sent, app.count()
            proxy.mode, proxy.latency = "latency", latency
            start = time.monotonic()
            r = await c.get(via + "/slow")
            elapsed = time.monotonic() - start
            assert r.status_code == 200
            # The answer is the hedge's (the server's second /slow), well before the
            # first attempt's response could have come through.
            assert r.json()["n"] == seen + 2
            assert elapsed < latency - 0.1
            assert app.count("/slow") == 2
            # The losing attempt was cancelled and its connection closed; the winner's
            # stays pooled.
            await until(lambda: proxy.active == 1)
        assert counting.sent - warm == 2
        assert counting.opened == counting.closed


# -- user pipeline, client(), lifecycle ---------------------------------------------------


async def test_user_pipeline_is_used_as_is(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(2, 503, path="/get").fail(1, 503, path="/post")
    url = serve(app)
    clock = FakeClock()
    pipeline = Pipeline(Retry(3, backoff=Backoff.constant(0.5)), Timeout(5.0), clock=clock)
    t = ResilientTransport(pipeline, plain())
    async with httpx.AsyncClient(transport=t) as c:
        assert (await c.get(url + "/get")).status_code == 200
        assert (await c.post(url + "/post", content=b"x")).status_code == 503
        assert t.circuit_breaker(url) is None
    assert app.count("/get") == 3 and app.count("/post") == 1
    assert clock.sleeps == [0.5, 0.5]
    with pytest.raises(TypeError, match="not both"):
        ResilientTransport(pipeline, retry=None)


async def test_client_convenience(core: ModuleType, serve: Serve) -> None:
    app = FlakyApp().fail(1, 503)
    url = serve(app)
    clock = FakeClock()
    async with client(
        base_url=url,
        headers={"x-app": "demo"},
        verify=SSL_CONTEXT,  # goes to the inner AsyncHTTPTransport
        retry=fast_retry(),
        clock=clock,
    ) as c:
        assert isinstance(c._transport, ResilientTransport)
        r = await c.get("/hello")
    assert r.status_code == 200 and r.json()["path"] == "/hello"
    assert app.requests[-1].headers["x-app"] == "demo"
    assert clock.sleeps == [0.01]


def test_client_refuses_a_proxy_that_would_bypass_it(core: ModuleType) -> None:
    with pytest.raises(TypeError, match="proxy"):
        client(transport=httpx.MockTransport(_ok), proxy="http://proxy.test:3128")


async def test_aclose_forwards_to_inner(core: ModuleType) -> None:
    counting = CountingTransport(httpx.MockTransport(_ok))
    async with ResilientTransport(transport=counting):
        pass
    assert counting.closed_inner


async def test_non_transient_errors_are_not_retried(core: ModuleType) -> None:
    calls = 0

    def broken(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.UnsupportedProtocol("nope")

    clock = FakeClock()
    t = ResilientTransport(transport=httpx.MockTransport(broken), clock=clock)
    async with httpx.AsyncClient(transport=t) as c:
        with pytest.raises(httpx.UnsupportedProtocol):
            await c.get("http://a.test/")
    assert calls == 1 and clock.sleeps == []


# -- option validation and Retry-After parsing -------------------------------------------


def test_options_are_validated(core: ModuleType) -> None:
    with pytest.raises(TypeError, match="retry_methods"):
        ResilientTransport(retry_methods="GET")
    with pytest.raises(ValueError, match="failure_statuses"):
        ResilientTransport(failure_statuses=[503, 700])
    with pytest.raises(ValueError, match="max_origins"):
        ResilientTransport(max_origins=0)
    with pytest.raises(ValueError, match="attempt_timeout"):
        ResilientTransport(attempt_timeout=-1)
    with pytest.raises(TypeError, match="total_timeout"):
        ResilientTransport(total_timeout="30")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry"):
        ResilientTransport(retry=Timeout(1.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transport"):
        ResilientTransport(transport=object())  # type: ignore[arg-type]


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("0") == 0.0
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after(past) == 0.0
    future = email.utils.formatdate(time.time() + 100, usegmt=True)
    assert 98.0 < parse_retry_after(future) <= 100.0  # type: ignore[operator]
    naive = email.utils.formatdate(time.time() + 100)  # "... -0000": no zone, meaning GMT
    assert 98.0 < parse_retry_after(naive) <= 100.0  # type: ignore[operator]
    for bad in ("", "soon", "-5", "1e999", "12abc", "Mon, 99 Foo 2024"):
        assert parse_retry_after(bad) is None, bad


def test_failed_response_carries_the_hint() -> None:
    r = httpx.Response(503, headers={"Retry-After": "7"})
    e = FailedResponse(r)
    assert e.response is r and e.retry_after == 7.0 and str(e) == "HTTP 503"
    assert FailedResponse(httpx.Response(500)).retry_after is None
