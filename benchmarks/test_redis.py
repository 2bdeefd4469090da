"""Decisions per second on the Redis backend, and Redis round trips per decision.

One process, one `RedisBackend` (so one TCP connection) to a redis-server started here
on 127.0.0.1 (skipped only if redis-server is not installed). A round is
`loop.run_until_complete(batch())` of OPS decisions; `extra_info["ns_per_op"]` is the
median round / OPS and `extra_info["decisions_per_s"]` its inverse. Cases:

- ``pipelined-64``: 64 callers at once on the one connection (what a busy service
  does); their EVALSHAs are pipelined. Target: >= 10,000 decisions/s.
- ``sequential``: one caller, each decision waits for the previous (pure round-trip
  latency: the floor any client pays).
- ``keyed-64``: as pipelined-64, over 10,000 client keys.
- ``multi3-64``: three limits decided together, all or none (one script, one trip).
- ``gate-64``: a `RedisRateLimiter` in a `Pipeline` around a no-op call.

`test_round_trips_per_decision` counts what Redis executed (INFO commandstats, no
MONITOR): the EVALSHA calls must equal the decisions, nothing else may be sent (the
TIME, GET and SET that commandstats also counts run inside the script), and no
connection beyond the first may be opened. Run with:

    python -m pytest benchmarks/test_redis.py -p no:cacheprovider --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from resilio import Pipeline
from resilio.backends.redis import RedisBackend, RedisRateLimiter

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (CI installs it)"
)

OPS = 1000
CONCURRENCY = 64
#: Decisions per second from one process over one connection.
TARGET_DECISIONS_PER_S = 10_000


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _command(port: int, *args: str) -> bytes:
    """One command over a fresh socket (redis-cli without the dependency); raw reply."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload.encode())
        data = b""
        while not data.endswith(b"\r\n") or (data[:1] == b"$" and data.count(b"\r\n") < 2):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def commandstats(port: int) -> dict[str, int]:
    """calls per command, from INFO commandstats."""
    text = _command(port, "INFO", "commandstats").decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            out[name] = int(rest.split(",")[0].split("=")[1])
    return out


def info_field(port: int, section: str, field: str) -> int:
    for line in _command(port, "INFO", section).decode().splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":")[1])
    raise KeyError(field)


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="resilio-bench-redis-")
    assert REDIS_SERVER is not None
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [REDIS_SERVER, *args, "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _ping(port):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server down"
            time.sleep(0.01)
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _fan_out(decide: Callable[[int], Awaitable[Any]], concurrency: int) -> Callable[[], Any]:
    """A batch of OPS decisions made by `concurrency` callers at once."""
    per = OPS // concurrency
    extra = OPS - per * concurrency

    async def caller(first: int, n: int) -> None:
        for i in range(first, first + n):
            await decide(i)

    async def batch() -> None:
        if concurrency == 1:
            for i in range(OPS):
                await decide(i)
            return
        await asyncio.gather(
            *(caller(c * per, per + (extra if c == 0 else 0)) for c in range(concurrency))
        )

    return batch


def _cases(backend: RedisBackend) -> dict[str, Callable[[], Any]]:
    # rate 1e6/s, burst 1e6: every decision is admitted (the common path).
    one = backend.bucket(rate=1e6, burst=1_000_000, name="bench-one")
    keyed = backend.buckets(rate=1e6, burst=1_000_000, name="bench-keyed")
    keys = [f"client-{i}" for i in range(10_000)]
    limits = [backend.bucket(rate=1e6, burst=1_000_000, name=f"bench-l{i}") for i in range(3)]
    lim = RedisRateLimiter(rate=1e6, burst=1_000_000, backend=backend, name="bench-gate")
    pipeline = Pipeline(lim)

    async def noop() -> None:
        return None

    async def d_one(i: int) -> None:
        assert await one.try_acquire() == 0

    async def d_keyed(i: int) -> None:
        assert await keyed.try_acquire(keys[i * 7919 % 10_000]) == 0

    async def d_multi(i: int) -> None:
        assert await backend.try_acquire_all([(b, None, 1) for b in limits]) == [0, 0, 0]

    async def d_gate(i: int) -> None:
        await pipeline.execute(noop)

    return {
        "pipelined-64": _fan_out(d_one, CONCURRENCY),
        "sequential": _fan_out(d_one, 1),
        "keyed-64": _fan_out(d_keyed, CONCURRENCY),
        "multi3-64": _fan_out(d_multi, CONCURRENCY),
        "gate-64": _fan_out(d_gate, CONCURRENCY),
    }


CASES = ["pipelined-64", "sequential", "keyed-64", "multi3-64", "gate-64"]


@pytest.fixture(scope="module")
def backend(redis_port: int, loop: asyncio.AbstractEventLoop) -> Iterator[RedisBackend]:
    # A generous timeout: a slow round on a loaded machine should be measured as slow,
    # not turned into fail-open decisions that never reach Redis.
    b = RedisBackend(f"redis://127.0.0.1:{redis_port}/0", timeout=5.0, prefix="bench")
    loop.run_until_complete(b.ping())
    yield b
    loop.run_until_complete(b.aclose())


@pytest.mark.parametrize("case", CASES)
def test_decisions_per_second(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    per_op: Any,
    backend: RedisBackend,
    redis_port: int,
    case: str,
) -> None:
    batch = _cases(backend)[case]
    run_until_complete = loop.run_until_complete
    run_until_complete(batch())  # one unmeasured round (loads the script)
    connects = backend.connects
    failures = backend.failures
    benchmark(lambda: run_until_complete(batch()))
    extra: dict[str, Any] = {"case": case, "connections": 1}
    if case == "pipelined-64":
        extra["target_decisions_per_s"] = TARGET_DECISIONS_PER_S
    median = per_op(benchmark, OPS, **extra)
    # Every measured decision was Redis's, over the one connection opened before.
    assert backend.failures == failures and backend.connects == connects
    assert info_field(redis_port, "clients", "connected_clients") == 2  # it + this INFO
    if median is not None:
        rate = 1e9 / median
        benchmark.extra_info["decisions_per_s"] = round(rate)
        stats = benchmark.stats.stats
        benchmark.extra_info["decisions_per_s_best"] = round(OPS / stats.min)
        print(
            f"\n{case}: {rate:,.0f} decisions/s (median round), "
            f"{OPS / stats.min:,.0f}/s (best round), {median / 1e3:.1f} us per decision"
        )


def test_round_trips_per_decision(
    loop: asyncio.AbstractEventLoop, backend: RedisBackend, redis_port: int
) -> None:
    """INFO commandstats deltas: exactly one EVALSHA per decision, nothing else."""
    cases = _cases(backend)
    for name in ("pipelined-64", "keyed-64", "multi3-64", "gate-64"):
        loop.run_until_complete(cases[name]())  # scripts loaded, connection open
        connects = backend.connects
        before = commandstats(redis_port)
        for _ in range(5):
            loop.run_until_complete(cases[name]())
        after = commandstats(redis_port)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta["info"] -= 1  # the INFO that read `before`
        delta = {k: v for k, v in delta.items() if v}
        decisions = 5 * OPS
        print(f"\n{name}: {decisions} decisions -> Redis ran {delta}")
        # One round trip (EVALSHA) per decision; inside it the script's own TIME, GET
        # and SET (counted by commandstats too), and no other command at all.
        limits = 3 if name == "multi3-64" else 1
        assert delta == {
            "evalsha": decisions,
            "time": decisions,
            "get": limits * decisions,
            "set": limits * decisions,
        }, delta
        assert backend.connects == connects
        assert info_field(redis_port, "clients", "connected_clients") == 2  # it + this INFO
