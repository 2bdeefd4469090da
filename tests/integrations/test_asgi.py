"""ASGI middleware under a real uvicorn server on 127.0.0.1, driven by httpx."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import resilio
from resilio.integrations.asgi import (
    DeadlineMiddleware,
    LoadSheddingMiddleware,
    RateLimitMiddleware,
    parse_deadline_header,
)
from resilio.testing import FakeClock

Serve = Callable[[Any], str]


@pytest.fixture
def anyio_backend() -> str:
    """The HTTP-level tests drive the client with asyncio.gather."""
    return "asyncio"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("slow")


async def deadline_echo(request: Request) -> JSONResponse:
    return JSONResponse({"deadline": resilio.deadline()})


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    await websocket.close()


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", hello),
            Route("/health", health),
            Route("/slow", slow),
            Route("/deadline", deadline_echo),
            WebSocketRoute("/ws", ws),
        ]
    )


def test_rate_limit_per_client_under_uvicorn(core: ModuleType, serve: Serve) -> None:
    clock = FakeClock(start=100.0)
    app = RateLimitMiddleware(starlette_app(), rate=1.0, burst=3, exempt=["/health"], clock=clock)
    url = serve(app)
    with httpx.Client(base_url=url) as client:
        statuses = [client.get("/") for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        first, refused = statuses[0], statuses[3]
        assert first.headers["ratelimit-policy"] == '"default";q=3;w=3'
        assert first.headers["ratelimit"] == '"default";r=2;t=1'
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["ratelimit"] == '"default";r=0;t=3'
        # Health checks are exempt.
        assert all(client.get("/health").status_code == 200 for _ in range(5))
        clock.advance(1.0)
        assert client.get("/").status_code == 200


def test_rate_limit_by_header_with_fastapi(core: ModuleType, serve: Serve) -> None:
    api = FastAPI()

    @api.get("/items")
    async def items() -> dict[str, int]:
        return {"n": 1}

    app = RateLimitMiddleware(api, rate=1.0, burst=1, key="header:x-api-key", clock=FakeClock())
    url = serve(app)
    with httpx.Client(base_url=url) as client:
        assert client.get("/items", headers={"x-api-key": "a"}).status_code == 200
        assert client.get("/items", headers={"x-api-key": "a"}).status_code == 429
        assert client.get("/items", headers={"x-api-key": "b"}).status_code == 200
        long_key = "k" * 500
        assert client.get("/items", headers={"x-api-key": long_key}).status_code == 200
        assert client.get("/items", headers={"x-api-key": long_key}).status_code == 429
        dup = [("x-api-key", "c"), ("x-api-key", "d")]
        assert client.get("/items", headers=dup).status_code == 400


@pytest.mark.anyio
async def test_many_concurrent_clients_hit_one_limit(core: ModuleType, serve: Serve) -> None:
    app = RateLimitMiddleware(starlette_app(), rate=1.0, burst=50, key="route", clock=FakeClock())
    url = serve(app)
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        responses = await asyncio.gather(*(client.get("/") for _ in range(200)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 50
    assert codes.count(429) == 150


def test_load_shedding_under_uvicorn(core: ModuleType, serve: Serve) -> None:
    app = LoadSheddingMiddleware(starlette_app(), max_concurrency=2, exempt=["/health"])
    url = serve(app)

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            slow_calls = [asyncio.ensure_future(client.get("/slow?s=0.5")) for _ in range(2)]
            await asyncio.sleep(0.2)
            shed = await client.get("/")
            healthy = await client.get("/health")
            done = await asyncio.gather(*slow_calls)
            after = await client.get("/")
            assert shed.headers["retry-after"] == "1"
            return [
                shed.status_code,
                healthy.status_code,
                *(r.status_code for r in done),
                after.status_code,
            ]

    assert asyncio.run(run()) == [503, 200, 200, 200, 200]
    assert app.bulkhead.in_flight == 0


def test_deadline_504_and_header(core: ModuleType, serve: Serve) -> None:
    app = DeadlineMiddleware(starlette_app(), timeout=5.0, routes={"/slow": 0.1})
    url = serve(app)
    with httpx.Client(base_url=url) as client:
        assert client.get("/slow?s=2").status_code == 504
        assert client.get("/slow?s=0").status_code == 200
        d = client.get("/deadline", headers={"request-timeout": "1.5"}).json()["deadline"]
        assert 1.0 < d <= 1.5
        d = client.get("/deadline").json()["deadline"]
        assert 4.5 < d <= 5.0
        # Malformed deadline headers are ignored.
        for bad in ["soon", "-1", "nan", "inf", "0"]:
            r = client.get("/deadline", headers={"request-timeout": bad})
            assert r.status_code == 200 and r.json()["deadline"] > 4.5


def test_websocket_and_lifespan_pass_through(core: ModuleType, serve: Serve) -> None:
    events: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            await starlette_app()(scope, receive, send)

    app = RateLimitMiddleware(
        LoadSheddingMiddleware(DeadlineMiddleware(lifespan_app), max_concurrency=1),
        rate=1.0,
        burst=1,
        clock=FakeClock(),
    )
    url = serve(app)
    assert events == ["lifespan.startup"]
    import websockets.sync.client as wsc

    for _ in range(3):  # more than the burst: websockets are not limited
        with wsc.connect(url.replace("http", "ws") + "/ws") as conn:
            assert conn.recv() == "hi"


def test_parse_deadline_header() -> None:
    h = b"request-timeout"
    assert parse_deadline_header([(h, b"2.5")]) == 2.5
    assert parse_deadline_header([(h, b"2.5"), (h, b"2.5")]) == 2.5
    assert parse_deadline_header([(h, b"2.5"), (h, b"3")]) is None
    assert parse_deadline_header([(h, b"\xff")]) is None
    assert parse_deadline_header([]) is None


@pytest.mark.anyio
async def test_missing_client_address_uses_shared_key(core: ModuleType) -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    mw = RateLimitMiddleware(app, rate=1.0, burst=1, clock=FakeClock())
    scope = {"type": "http", "path": "/", "headers": [], "client": None}
    await mw(scope, receive, send)
    await mw(dict(scope), receive, send)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 429]


def test_bad_options() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(ValueError, match="key"):
        RateLimitMiddleware(app, rate=1.0, key="cookie")
    with pytest.raises(ValueError, match="exempt"):
        RateLimitMiddleware(app, rate=1.0, exempt=["health"])
    with pytest.raises(ValueError, match="timeout"):
        DeadlineMiddleware(app, timeout=-1)


Sent = list[dict[str, Any]]


async def _direct(app: Any, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes]]:
    """Serve one request by calling the ASGI app directly; (status, response headers)."""
    sent: Sent = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start.get("headers", []))


def _scope(path: str = "/", client: Any = ("10.0.0.1", 5000), **extra: Any) -> dict[str, Any]:
    return {"type": "http", "path": path, "headers": [], "client": client, **extra}


_SHARED_HEADERS = [(b"content-type", b"text/plain")]


async def _shared_headers_app(scope: Any, receive: Any, send: Any) -> None:
    # Sends the same headers list every time, as a hand-written ASGI app may.
    await send({"type": "http.response.start", "status": 200, "headers": _SHARED_HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
async def test_rate_limit_headers_do_not_touch_the_apps_list(core: ModuleType) -> None:
    mw = RateLimitMiddleware(_shared_headers_app, rate=1.0, burst=3, clock=FakeClock())
    for remaining in (2, 1):
        status, headers = await _direct(mw, _scope())
        assert status == 200
        assert headers[b"ratelimit"] == f'"default";r={remaining};t={3 - remaining}'.encode()
        assert headers[b"content-type"] == b"text/plain"
    assert _SHARED_HEADERS == [(b"content-type", b"text/plain")]


@pytest.mark.anyio
async def test_rate_limit_headers_added_to_any_header_iterable(core: ModuleType) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        start: dict[str, Any] = {"type": "http.response.start", "status": 200}
        if scope["path"] == "/tuple":
            start["headers"] = ((b"x-a", b"1"),)
        await send(start)  # "/": no headers at all
        await send({"type": "http.response.body", "body": b""})

    mw = RateLimitMiddleware(app, rate=1.0, burst=5, clock=FakeClock())
    _, headers = await _direct(mw, _scope("/tuple"))
    assert headers[b"x-a"] == b"1" and headers[b"ratelimit"] == b'"default";r=4;t=1'
    _, headers = await _direct(mw, _scope("/"))
    assert list(headers) == [b"ratelimit-policy", b"ratelimit"]


@pytest.mark.anyio
async def test_rate_limit_headers_past_the_header_table(
    core: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Header values are kept for a bounded number of `remaining` values; the rest are
    # built per response and must read the same.
    from resilio.integrations import asgi

    monkeypatch.setattr(asgi, "_HEADER_TABLE", 2)
    clock = FakeClock()
    mw = RateLimitMiddleware(_shared_headers_app, rate=1.0, burst=5, clock=clock)
    seen = [(await _direct(mw, _scope()))[1][b"ratelimit"] for _ in range(5)]
    assert seen == [f'"default";r={r};t={5 - r}'.encode() for r in (4, 3, 2, 1, 0)]
    assert len(mw._injectors) == 2
    status, headers = await _direct(mw, _scope())
    assert status == 429 and headers[b"ratelimit"] == b'"default";r=0;t=5'
    clock.advance(2.0)
    assert (await _direct(mw, _scope()))[1][b"ratelimit"] == b'"default";r=1;t=4'


@pytest.mark.anyio
async def test_long_non_ascii_keys_are_hashed_not_refused(core: ModuleType) -> None:
    # 40 characters but 80 bytes of UTF-8: over the core's 64-byte key limit.
    path = "/" + "é" * 40
    mw = RateLimitMiddleware(_shared_headers_app, rate=1.0, burst=1, key="route", clock=FakeClock())
    assert (await _direct(mw, _scope(path)))[0] == 200
    assert (await _direct(mw, _scope(path)))[0] == 429
    assert (await _direct(mw, _scope("/" + "é" * 39 + "e")))[0] == 200
    # A client "address" no real server sends, but one that must not crash either.
    by_client = RateLimitMiddleware(_shared_headers_app, rate=1.0, burst=1, clock=FakeClock())
    odd = ("h" * 100, 0)
    assert [(await _direct(by_client, _scope(client=odd)))[0] for _ in "ab"] == [200, 429]
    # A short non-ASCII key is its UTF-8: the same bucket as the bytes.
    by_header = RateLimitMiddleware(
        _shared_headers_app, rate=1.0, burst=1, key=lambda s: s["k"], clock=FakeClock()
    )
    assert (await _direct(by_header, _scope(k="ключ-клиента-1")))[0] == 200
    assert (await _direct(by_header, _scope(k="ключ-клиента-1".encode())))[0] == 429


@pytest.mark.anyio
async def test_client_key_without_a_client_entry(core: ModuleType) -> None:
    mw = RateLimitMiddleware(_shared_headers_app, rate=1.0, burst=1, clock=FakeClock())
    no_client = {"type": "http", "path": "/", "headers": []}
    assert (await _direct(mw, no_client))[0] == 200
    assert (await _direct(mw, _scope(client=None)))[0] == 429  # the same "-" bucket
    assert (await _direct(mw, _scope()))[0] == 200


@pytest.mark.anyio
async def test_load_shedding_queue_hands_the_slot_on(core: ModuleType) -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/hold":
            await release.wait()
        await _shared_headers_app(scope, receive, send)

    mw = LoadSheddingMiddleware(app, max_concurrency=1, max_queue=1, retry_after=7)
    holder = asyncio.ensure_future(_direct(mw, _scope("/hold")))
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(_direct(mw, _scope("/")))
    await asyncio.sleep(0)
    assert mw.bulkhead.in_flight == 1 and mw.bulkhead.queued == 1
    status, headers = await _direct(mw, _scope("/"))
    assert (status, headers[b"retry-after"]) == (503, b"7")
    release.set()
    assert (await holder)[0] == 200 and (await queued)[0] == 200
    assert mw.bulkhead.in_flight == 0 and mw.bulkhead.queued == 0


@pytest.mark.anyio
async def test_load_shedding_releases_the_slot_on_error_and_cancel(core: ModuleType) -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("app failed")

    async def hang(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(60)

    failing = LoadSheddingMiddleware(boom, max_concurrency=1)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await _direct(failing, _scope())
    assert failing.bulkhead.in_flight == 0
    hanging = LoadSheddingMiddleware(hang, max_concurrency=1)
    task = asyncio.ensure_future(_direct(hanging, _scope()))
    await asyncio.sleep(0)
    assert hanging.bulkhead.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hanging.bulkhead.in_flight == 0


async def _sleepy(scope: Any, receive: Any, send: Any) -> None:
    """Sleeps `?s=` seconds before answering, or after starting the response with `late`."""
    seconds = float(scope.get("query_string", b"").decode().partition("s=")[2] or 0)
    if scope["path"] == "/late":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await anyio.sleep(seconds)
        await send({"type": "http.response.body", "body": b"late"})
        return
    await anyio.sleep(seconds)
    body = repr(resilio.deadline()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _deadline_cases(sent_log: list[Sent]) -> list[int]:
    """Status per case; shared by the asyncio and trio runs."""
    mw = DeadlineMiddleware(_sleepy, timeout=5.0, routes={"/short": 0.05, "/late": 0.05})
    statuses = []
    for scope in [
        _scope("/short", query_string=b"s=2"),  # the route's timeout
        _scope("/", query_string=b"s=2", headers=[(b"request-timeout", b"0.05")]),  # caller's
        _scope("/", query_string=b"s=0"),
    ]:
        statuses.append((await _direct(mw, scope))[0])
    # Started before the deadline: the app is cancelled, nothing more is sent.
    sent: Sent = []

    async def keep(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    await mw(_scope("/late", query_string=b"s=2"), receive, keep)
    sent_log.append(sent)
    return statuses


def test_deadline_middleware_on_trio() -> None:
    import trio

    sent_log: list[Sent] = []
    t0 = time.monotonic()
    statuses = trio.run(_deadline_cases, sent_log)
    assert statuses == [504, 504, 200]
    assert [m["type"] for m in sent_log[0]] == ["http.response.start"]
    assert time.monotonic() - t0 < 5.0


@pytest.mark.anyio
async def test_deadline_middleware_direct() -> None:
    sent_log: list[Sent] = []
    t0 = time.monotonic()
    assert await _deadline_cases(sent_log) == [504, 504, 200]
    assert [m["type"] for m in sent_log[0]] == ["http.response.start"]
    assert time.monotonic() - t0 < 5.0


@pytest.mark.anyio
async def test_deadline_outer_cancel_and_swallowed_expiry() -> None:
    mw = DeadlineMiddleware(_sleepy, timeout=5.0)
    # A cancellation that is not the deadline's propagates as it is.
    task = asyncio.ensure_future(_direct(mw, _scope(query_string=b"s=10")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def stubborn(scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: it answers anyway
            await asyncio.sleep(10)
        await _shared_headers_app(scope, receive, send)

    assert (await _direct(DeadlineMiddleware(stubborn, timeout=0.02), _scope()))[0] == 200
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_nested_deadlines_the_shorter_one_answers() -> None:
    inner = DeadlineMiddleware(_sleepy, timeout=5.0)
    outer = DeadlineMiddleware(inner, timeout=0.05)
    t0 = time.monotonic()
    assert (await _direct(outer, _scope(query_string=b"s=2")))[0] == 504
    assert time.monotonic() - t0 < 1.0
    status, _ = await _direct(outer, _scope(query_string=b"s=0"))
    assert status == 200
