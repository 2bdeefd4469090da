"""Shared-memory backend: the compiled core's structs in a file mapped by many processes.

Every multi-process test runs real processes (fork, and one spawn) on one file under
/dev/shm. The core never reads the clock, so most workers decide at a fixed `now_ns`:
nothing refills, and the totals admitted are exact (a burst is a burst, whatever the
interleaving of processes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import struct
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from resilio import CircuitBreaker, CircuitState, Pipeline, RateLimiter
from resilio.backends import register, resolve, shm
from resilio.backends.memory import FACTORY as MEMORY
from resilio.backends.shm import SharedState, SharedStateFullError, shared_state
from resilio.errors import BrokenCircuitError, RateLimitedError

_core_c = pytest.importorskip("resilio._core_c")

pytestmark = [
    pytest.mark.c_extension,
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm"),
]

ROOT = Path(__file__).resolve().parents[2]
FORK = multiprocessing.get_context("fork")
NOW = 1_000_000_000  # a fixed clock reading: buckets never refill
JOIN_TIMEOUT = 30.0


@pytest.fixture
def path() -> Iterator[str]:
    p = f"/dev/shm/resilio-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    yield p
    for leftover in (p, p + "-x"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)


# ---- process helpers -------------------------------------------------------------


def _child(target: Callable[..., Any], q: Any, i: int, args: tuple[Any, ...]) -> None:
    try:
        q.put((i, True, target(*args)))
    except BaseException:
        q.put((i, False, traceback.format_exc()))


def _start(ctx: Any, target: Callable[..., Any], arglists: list[tuple[Any, ...]]) -> Any:
    q = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(target, q, i, a)) for i, a in enumerate(arglists)]
    for p in procs:
        p.start()
    return procs, q


def _collect(procs: list[Any], q: Any, expect: int | None = None) -> list[Any]:
    n = len(procs) if expect is None else expect
    got: dict[int, Any] = {}
    deadline = time.monotonic() + JOIN_TIMEOUT
    while len(got) < n:
        i, ok, value = q.get(timeout=max(0.1, deadline - time.monotonic()))
        assert ok, f"worker {i} failed:\n{value}"
        got[i] = value
    for p in procs:
        p.join(timeout=JOIN_TIMEOUT)
        assert not p.is_alive()
    return [got[i] for i in sorted(got)]


def _run(ctx: Any, target: Callable[..., Any], arglists: list[tuple[Any, ...]]) -> list[Any]:
    procs, q = _start(ctx, target, arglists)
    return _collect(procs, q)


# ---- workers (module level: spawn pickles them by name) ----------------------------


def _hammer_bucket(path: str, burst: int, n: int, barrier: Any) -> int:
    bucket = SharedState(path, create=False).token_bucket("b", 1.0, burst)
    barrier.wait()
    admitted = 0
    for _ in range(n):
        if bucket.try_acquire(NOW) == 0:
            admitted += 1
    return admitted


def _hammer_keyed(
    path: str, keys: list[str], burst: int, rounds: int, seed: int, barrier: Any
) -> Any:
    table = SharedState(path, create=False).keyed_buckets("k", 1.0, burst, 4096)
    order = keys * rounds
    random.Random(seed).shuffle(order)
    counts = dict.fromkeys(keys, 0)
    barrier.wait()
    for key in order:
        if table.try_acquire(key, NOW) == 0:
            counts[key] += 1
    return counts


def _take_tokens_spawned(state: SharedState, n: int) -> tuple[int, str]:
    bucket = state.token_bucket("spawned", 1.0, 10)
    admitted = sum(1 for _ in range(n) if bucket.try_acquire(NOW) == 0)
    return admitted, type(bucket).__module__


def _open_breaker(spec: str) -> tuple[str, str]:
    breaker = CircuitBreaker(
        name="dep", backend=spec, failure_ratio=0.5, minimum_throughput=2, break_duration=60.0
    )
    pipeline = Pipeline(breaker)

    async def fail() -> None:
        raise ConnectionError("down")

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await pipeline.execute(fail)

    anyio.run(main)
    return breaker.state.name, type(breaker._circuit).__name__


def _probe_breaker(spec: str) -> tuple[str, str]:
    breaker = CircuitBreaker(
        name="dep", backend=spec, failure_ratio=0.5, minimum_throughput=2, break_duration=60.0
    )
    pipeline = Pipeline(breaker)

    async def ok() -> str:
        return "called"

    async def main() -> str:
        try:
            return await pipeline.execute(ok)
        except BrokenCircuitError as exc:
            return f"rejected {exc.retry_after is not None and exc.retry_after > 1}"

    return breaker.state.name, anyio.run(main)


def _limited_calls(spec: str, calls: int, barrier: Any) -> int:
    limiter = RateLimiter(rate=0.001, burst=30, name="api", backend=spec)
    pipeline = Pipeline(limiter)

    async def ok() -> None:
        return None

    async def main() -> int:
        admitted = 0
        for _ in range(calls):
            try:
                await pipeline.execute(ok)
                admitted += 1
            except RateLimitedError:
                pass
        return admitted

    barrier.wait()
    return anyio.run(main)


def _hammer_until_killed(path: str, burst: int, barrier: Any) -> None:
    state = SharedState(path, create=False)
    bucket = state.token_bucket("kill", 1.0, burst)
    progress = state.counters("progress", 2)
    barrier.wait()
    admitted = 0
    while True:  # until SIGKILL
        if bucket.try_acquire(NOW) == 0:
            admitted += 1
            if admitted % 1000 == 0:
                progress.add(0, 1000)


def _two_phases(path: str, burst: int, barrier: Any, go: Any, now2: int) -> tuple[int, int]:
    state = SharedState(path, create=False)
    bucket = state.token_bucket("kill", 1.0, burst)
    progress = state.counters("progress", 2)
    barrier.wait()
    # Fixed clock, one token per call: the first refusal means the bucket is empty for
    # good (its state only moves forward), so stop there.
    first = 0
    while bucket.try_acquire(NOW) == 0:
        first += 1
    progress.add(1, 1)
    assert go.wait(JOIN_TIMEOUT)
    second = 0
    while bucket.try_acquire(now2, 100) == 0:
        second += 1
    return first, second


def _create_many(path: str, names: list[str], barrier: Any) -> dict[str, int]:
    state = SharedState(path, create=False)
    barrier.wait()
    for i, name in enumerate(names):
        kind = i % 5
        if kind == 0:
            state.token_bucket(name, 10.0, 100)
        elif kind == 1:
            state.keyed_buckets(name, 10.0, 5, 1000)
        elif kind == 2:
            state.circuit(name, 0.5, 10, 10**9, 10**9)
        elif kind == 3:
            state.gate(name, 4)
        else:
            state.counters(name, 3)
    state.token_bucket("race-bucket", 1.0, 1000).try_acquire(NOW)
    return {f"{o.kind}:{o.name}": o.offset for o in state.objects()}


def _create_file_race(path: str, barrier: Any) -> tuple[int, int]:
    barrier.wait()
    state = SharedState(path, size=1 << 20)
    return state.stats()["created_unix_ns"], state.token_bucket("x", 1.0, 8).try_acquire(NOW)


def _stall_then_die(path: str, ready: Any) -> None:
    def stall(name: str) -> None:
        ready.set()
        time.sleep(600)  # killed here, between initializing and publishing

    shm._after_init = stall
    SharedState(path, create=False).token_bucket("t", 1.0, 10)


def _stall_then_publish(path: str, ready: Any, release: Any) -> tuple[list[tuple[str, int]], int]:
    def stall(name: str) -> None:
        ready.set()
        assert release.wait(JOIN_TIMEOUT)

    shm._after_init = stall
    state = SharedState(path, create=False)
    bucket = state.token_bucket("t2", 1.0, 10)  # its publish fails: it attaches instead
    admitted = sum(1 for _ in range(3) if bucket.try_acquire(NOW) == 0)
    return [(o.name, o.offset) for o in state.objects()], admitted


# ---- the file ---------------------------------------------------------------------


def test_objects_are_the_compiled_classes_in_the_file(path: str) -> None:
    with SharedState(path, size=1 << 20) as state:
        bucket = state.token_bucket("api", 10.0, 5)
        table = state.keyed_buckets("clients", 1.0, 2, 100)
        circuit = state.circuit("dep", 0.5, 2, 10**9, 10**9)
        gate = state.gate("slots", 3)
        counters = state.counters("events", 4)
        assert type(bucket) is _core_c.TokenBucket
        assert type(table) is _core_c.KeyedBuckets
        assert type(circuit) is _core_c.Circuit
        assert type(gate) is _core_c.Gate
        assert type(counters) is _core_c.Counters
        assert (bucket.rate, bucket.burst, table.rate, table.max_keys) == (10.0, 5, 1.0, 100)
        assert [bucket.try_acquire(NOW) for _ in range(6)][-1] > 0
        assert state.token_bucket("api", 10.0, 5) is bucket  # attach: the same object
        kinds = {(o.kind, o.name) for o in state.objects()}
        assert kinds == {
            ("token_bucket", "api"),
            ("keyed_buckets", "clients"),
            ("circuit", "dep"),
            ("gate", "slots"),
            ("counters", "events"),
        }
        for o in state.objects():
            assert o.offset % 64 == 0
        stats = state.stats()
        assert stats["objects"] == 5 and stats["takeovers"] == 0
        assert stats["size"] == 1 << 20 and stats["used_bytes"] > 0


def test_a_second_mapping_sees_the_same_memory(path: str) -> None:
    a = SharedState(path).token_bucket("b", 1.0, 4)
    b = SharedState(path).token_bucket("b", 1.0, 4)  # another mmap of the file
    assert a is not b
    assert a.try_acquire(NOW) == 0
    assert b.available(NOW) == 3
    assert b.admitted == 1


def test_names_are_per_kind(path: str) -> None:
    state = SharedState(path, size=1 << 20)
    state.token_bucket("x", 1.0, 1)
    state.circuit("x", 0.5, 2, 10**9, 10**9)
    state.gate("x", 1)
    assert sorted(o.kind for o in state.objects()) == ["circuit", "gate", "token_bucket"]


def test_objects_outlive_close(path: str) -> None:
    state = SharedState(path, size=1 << 20)
    bucket = state.token_bucket("b", 1.0, 2)
    state.close()
    state.close()
    assert state.closed
    assert bucket.try_acquire(NOW) == 0  # the mapping lives while the bucket does
    with pytest.raises(ValueError, match="closed"):
        state.token_bucket("b", 1.0, 2)


def test_unlink_then_create_anew(path: str) -> None:
    first = shared_state(path, 1 << 20)
    assert shared_state(path) is first
    first.token_bucket("b", 1.0, 2).try_acquire(NOW)
    first.unlink()
    assert not os.path.exists(path)
    second = shared_state(path, 1 << 20)
    assert second is not first
    assert second.token_bucket("b", 1.0, 2).available(NOW) == 2


def test_file_is_owner_only_by_default(path: str) -> None:
    SharedState(path, size=1 << 20)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f".{os.path.basename(path)}")]


# ---- errors -----------------------------------------------------------------------


def _patch(path: str, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def test_not_a_resilio_file(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"\0" * 65536)
    with pytest.raises(ValueError, match=f"{path}: not a resilio shared-memory file.*magic"):
        SharedState(path)
    with open(path, "wb") as f:
        f.write(b"RESILIO")
    with pytest.raises(ValueError, match="smaller than its 256-byte header"):
        SharedState(path)


def test_other_layout_version(path: str) -> None:
    SharedState(path, size=1 << 20).close()
    _patch(path, 8, "<I", 99)
    with pytest.raises(ValueError, match=f"{path}: layout version 99, but this resilio reads"):
        SharedState(path)


def test_other_build_layout(path: str) -> None:
    SharedState(path, size=1 << 20).close()
    _patch(path, 24, "<Q", 12345)
    with pytest.raises(ValueError, match=f"{path}: made by a resilio build with another struct"):
        SharedState(path)


def test_size_mismatches(path: str) -> None:
    SharedState(path, size=1 << 20, max_objects=64).close()
    with pytest.raises(ValueError, match=f"{path}: size is 1048576 bytes, asked for 2097152"):
        SharedState(path, size=2 << 20)
    with pytest.raises(ValueError, match=f"{path}: max_objects is 64, asked for 65"):
        SharedState(path, max_objects=65)
    SharedState(path).close()  # no size given: any size will do
    os.truncate(path, 2 << 20)
    with pytest.raises(ValueError, match=f"{path}: the header says 1048576 bytes but the file"):
        SharedState(path)


def test_attach_with_other_params(path: str) -> None:
    state = SharedState(path, size=1 << 20)
    state.token_bucket("api", 10.0, 5)
    state.keyed_buckets("k", 1.0, 2, 100)
    state.circuit("c", 0.5, 2, 10**9, 10**9)
    state.gate("g", 3)
    state.counters("n", 4)
    other = SharedState(path)  # a second process's view: nothing cached
    cases: list[tuple[Callable[[SharedState], Any], str]] = [
        (lambda s: s.token_bucket("api", 20.0, 5), "token_bucket 'api' exists with rate=10.0"),
        (lambda s: s.token_bucket("api", 10.0, 6), "burst=5; asked for rate=10.0, burst=6"),
        (lambda s: s.keyed_buckets("k", 1.0, 2, 101), "max_keys=100.*max_keys=101"),
        (lambda s: s.keyed_buckets("k", 1.0, 2, 100, on_full=1), "on_full=0.*on_full=1"),
        (lambda s: s.circuit("c", 0.25, 2, 10**9, 10**9), "failure_ratio=0.5.*0.25"),
        (lambda s: s.gate("g", 4), "gate 'g' exists with limit=3; asked for limit=4"),
        (lambda s: s.counters("n", 5), "counters 'n' exists with n=4; asked for n=5"),
    ]
    for make, message in cases:
        for s in (state, other):
            with pytest.raises(ValueError, match=message):
                make(s)
    # Creation parameters, not the live state: a changed limit still attaches.
    state.gate("g", 3).limit = 10
    assert other.gate("g", 3).limit == 10


def test_argument_checks(path: str) -> None:
    state = SharedState(path, size=1 << 20)
    with pytest.raises(ValueError, match="rate must be a finite number > 0"):
        state.token_bucket("a", 0.0, 1)
    with pytest.raises(ValueError, match="max_keys must be in"):
        state.keyed_buckets("a", 1.0, 1, 0)
    with pytest.raises(ValueError, match="name must be 1 to 128 bytes"):
        state.gate("", 1)
    with pytest.raises(ValueError, match="name must be 1 to 128 bytes"):
        state.gate("n" * 129, 1)
    with pytest.raises(TypeError, match="name must be a str"):
        state.gate(b"x", 1)  # type: ignore[arg-type]
    assert state.objects() == []
    with pytest.raises(ValueError, match="size must be in"):
        SharedState(path + "-x", size=0)
    with pytest.raises(ValueError, match="size must be at least"):
        SharedState(path + "-x", size=8192)
    with pytest.raises(FileNotFoundError):
        SharedState(path + "-x", create=False)
    assert not os.path.exists(path + "-x")


def test_full_file(path: str) -> None:
    state = SharedState(path, size=64 * 1024, max_objects=2)
    with pytest.raises(SharedStateFullError, match="no room for keyed_buckets 'big'"):
        state.keyed_buckets("big", 1.0, 1, 10_000)
    # The failed creation gave its registry slot back: the name can be created now.
    state.keyed_buckets("big", 1.0, 1, 100)
    state.gate("g", 1)
    with pytest.raises(SharedStateFullError, match="no registry slot left"):
        state.gate("h", 1)
    assert state.stats()["objects"] == 2


# ---- backends -----------------------------------------------------------------------


def test_resolve(path: str) -> None:
    assert resolve(None, None) is MEMORY
    assert resolve("memory", "x") is MEMORY
    factory = resolve(f"shm:{path}?size=1M", "api")
    bucket = factory.token_bucket(1.0, 3)
    assert type(bucket) is _core_c.TokenBucket
    assert os.path.getsize(path) == 1 << 20
    assert resolve(f"shm://{path}", "api").token_bucket(1.0, 3) is bucket  # URL form
    state = shared_state(path)
    assert resolve(state, "api").token_bucket(1.0, 3) is bucket  # a SharedState object
    with pytest.raises(ValueError, match="give the strategy a name="):
        resolve(f"shm:{path}", None)
    with pytest.raises(ValueError, match="give the strategy a name="):
        resolve(state, None)
    with pytest.raises(ValueError, match="an absolute path"):
        resolve("shm:relative/file", "x")
    with pytest.raises(ValueError, match="unknown option 'mode'"):
        resolve(f"shm:{path}?mode=1", "x")
    with pytest.raises(ValueError, match="size must be bytes"):
        resolve(f"shm:{path}?size=lots", "x")
    with pytest.raises(ValueError, match="unknown backend 'nosuch:x'"):
        resolve("nosuch:x", "x")
    with pytest.raises(TypeError, match="backend must be a string"):
        resolve(42, "x")  # type: ignore[arg-type]


def test_register_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from resilio import backends

    monkeypatch.setattr(backends, "SCHEMES", dict(backends.SCHEMES))
    seen: list[tuple[str, str | None]] = []

    def opener(spec: str, name: str | None) -> Any:
        seen.append((spec, name))
        return MEMORY

    register("test", opener)
    limiter = RateLimiter(rate=1.0, name="x", backend="test://somewhere")
    assert seen == [("test://somewhere", "x")]
    assert limiter.available() == 1


def test_strategies_accept_backend(path: str) -> None:
    spec = f"shm:{path}"
    limiter = RateLimiter(rate=0.001, burst=2, name="api", backend=spec)
    keyed = RateLimiter(rate=0.001, burst=2, name="api", key=lambda u: u, backend=spec)
    breaker = CircuitBreaker(name="api", backend=spec)
    assert type(limiter._bucket) is _core_c.TokenBucket  # the compiled runner's fast path
    assert type(keyed._bucket) is _core_c.KeyedBuckets
    assert type(breaker._circuit) is _core_c.Circuit
    # A second "worker" (another mapping) shares them.
    state = SharedState(path)
    assert state.token_bucket("api", 0.001, 2) is not limiter._bucket
    pipeline = Pipeline(limiter)

    async def ok() -> str:
        return "ok"

    async def main() -> None:
        assert await pipeline.execute(ok) == "ok"
        assert state.token_bucket("api", 0.001, 2).available(limiter.clock.now_ns()) == 1
        with pytest.raises(ValueError, match=r"burst=2; asked for rate=0\.001, burst=3"):
            RateLimiter(rate=0.001, burst=3, name="api", backend=spec)

    anyio.run(main)
    with pytest.raises(ValueError, match="give the strategy a name="):
        RateLimiter(rate=1.0, backend=spec)
    with pytest.raises(ValueError, match="give the strategy a name="):
        CircuitBreaker(backend=spec)


def test_asgi_middleware_shares_its_table(path: str) -> None:
    from resilio.integrations.asgi import RateLimitMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    # Two workers: two middleware over two mappings of one file.
    workers = [
        RateLimitMiddleware(app, rate=0.001, burst=3, backend=SharedState(path), name="web")
        for _ in range(2)
    ]
    assert type(workers[0].buckets) is _core_c.KeyedBuckets

    async def request(mw: Any, client: str) -> int:
        statuses: list[int] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "path": "/", "headers": [], "client": (client, 1)}
        await mw(scope, receive, send)
        return statuses[0]

    async def main() -> list[int]:
        return [await request(workers[i % 2], "10.0.0.1") for i in range(5)] + [
            await request(workers[1], "10.0.0.2")
        ]

    assert anyio.run(main) == [200, 200, 200, 429, 429, 200]
    with pytest.raises(ValueError, match="give the strategy a name="):
        RateLimitMiddleware(app, rate=1.0, backend=f"shm:{path}")


def test_no_extensions_is_a_clear_error(path: str) -> None:
    code = (
        "from resilio import RateLimiter\n"
        "from resilio.backends.shm import SharedState\n"
        f"for make in (lambda: SharedState({path!r}), "
        f"lambda: RateLimiter(rate=1.0, name='a', backend='shm:' + {path!r})):\n"
        "    try:\n"
        "        make()\n"
        "    except RuntimeError as exc:\n"
        "        print(exc)\n"
    )
    env = dict(os.environ, RESILIO_NO_EXTENSIONS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "needs the compiled core, and RESILIO_NO_EXTENSIONS is set" in line
    assert not os.path.exists(path)


# ---- many processes -------------------------------------------------------------


def test_bucket_exact_across_processes(path: str) -> None:
    burst, n, workers = 50_000, 40_000, 4
    state = SharedState(path, size=1 << 20)
    bucket = state.token_bucket("b", 1.0, burst)
    barrier = FORK.Barrier(workers)
    admitted = _run(FORK, _hammer_bucket, [(path, burst, n, barrier)] * workers)
    assert sum(admitted) == burst
    # Processes did race on the bucket (as many as there are cores, at least).
    assert sum(a > 0 for a in admitted) >= min(2, os.cpu_count() or 1), admitted
    assert (bucket.admitted, bucket.rejected) == (burst, workers * n - burst)
    assert bucket.available(NOW) == 0


def test_keyed_table_exact_per_key_across_processes(path: str) -> None:
    burst, workers = 50, 4
    keys = [f"client-{i}" for i in range(256)]
    state = SharedState(path, size=1 << 20)
    table = state.keyed_buckets("k", 1.0, burst, 4096)
    barrier = FORK.Barrier(workers)
    results = _run(
        FORK, _hammer_keyed, [(path, keys, burst, 20, seed, barrier) for seed in range(workers)]
    )
    for key in keys:
        assert sum(r[key] for r in results) == burst, key
    assert table.admitted == burst * len(keys)
    assert table.evicted == 0
    assert all(table.available(key, NOW) == 0 for key in keys)


def test_limiter_strategy_across_processes(path: str) -> None:
    workers = 3
    spec = f"shm:{path}"
    barrier = FORK.Barrier(workers)
    admitted = _run(FORK, _limited_calls, [(spec, 20, barrier)] * workers)
    assert sum(admitted) == 30  # one burst for all workers, not one each


def test_breaker_opened_by_one_process_is_open_for_all(path: str) -> None:
    spec = f"shm:{path}"
    here = CircuitBreaker(
        name="dep", backend=spec, failure_ratio=0.5, minimum_throughput=2, break_duration=60.0
    )
    assert here.state is CircuitState.CLOSED
    assert _run(FORK, _open_breaker, [(spec,)]) == [("OPEN", "Circuit")]
    assert here.state is CircuitState.OPEN
    # A process that starts afterwards attaches to the open circuit and is refused.
    assert _run(FORK, _probe_breaker, [(spec,), (spec,)]) == [("OPEN", "rejected True")] * 2
    here.reset()
    assert _run(FORK, _probe_breaker, [(spec,)]) == [("CLOSED", "called")]


def test_spawned_worker_attaches_by_path(path: str) -> None:
    state = SharedState(path, size=1 << 20)
    bucket = state.token_bucket("spawned", 1.0, 10)
    ctx = multiprocessing.get_context("spawn")
    assert _run(ctx, _take_tokens_spawned, [(state, 4)]) == [(4, "resilio._core_c")]
    assert bucket.available(NOW) == 6


def test_killed_process_leaves_the_others_exact(path: str) -> None:
    burst = 1_000_000
    now2 = NOW + burst * 10**9  # the bucket is full again by then
    state = SharedState(path, size=1 << 20)
    bucket = state.token_bucket("kill", 1.0, burst)
    progress = state.counters("progress", 2)
    barrier = FORK.Barrier(4)
    go = FORK.Event()
    victim, _vq = _start(FORK, _hammer_until_killed, [(path, burst, barrier)])
    survivors, sq = _start(FORK, _two_phases, [(path, burst, barrier, go, now2)] * 3)
    deadline = time.monotonic() + JOIN_TIMEOUT
    while progress.get(0) < 20_000:
        assert time.monotonic() < deadline, "the victim made no progress"
        time.sleep(0.0005)
    os.kill(victim[0].pid, signal.SIGKILL)
    left_at_kill = bucket.available(NOW)
    victim[0].join(JOIN_TIMEOUT)
    assert victim[0].exitcode == -signal.SIGKILL
    assert left_at_kill > 0, "the survivors had finished before the kill: raise burst"
    while progress.get(1) < 3:
        assert time.monotonic() < deadline, "the survivors did not finish phase 1"
        time.sleep(0.001)
    # Phase 1: the survivors took every token the victim did not.
    assert bucket.available(NOW) == 0
    admitted_counter = bucket.admitted
    # The victim may die between its admitting CAS and the counter's add.
    assert burst - 1 <= admitted_counter <= burst
    # The registry still works after the kill.
    assert state.gate("after-kill", 1).try_enter()
    go.set()
    results = _collect(survivors, sq)
    first = sum(r[0] for r in results)
    victim_admitted = burst - first
    published = progress.get(0)
    assert published <= victim_admitted <= published + 1000
    # Phase 2, on the same state after the kill: exactly one burst, 100 tokens a call.
    assert sum(r[1] for r in results) == burst // 100
    assert bucket.available(now2) == 0


def test_creation_race_gives_one_object_per_name(path: str) -> None:
    workers = 8
    names = [f"obj-{i}" for i in range(20)]
    state = SharedState(path, size=4 << 20)
    barrier = FORK.Barrier(workers)
    seen = _run(FORK, _create_many, [(path, names, barrier)] * workers)
    assert all(s == seen[0] for s in seen)
    assert len(seen[0]) == len(names) + 1
    assert state.stats()["objects"] == len(names) + 1
    assert state.stats()["takeovers"] == 0
    assert state.token_bucket("race-bucket", 1.0, 1000).admitted == workers


def test_file_creation_race(path: str) -> None:
    workers = 6
    barrier = FORK.Barrier(workers)
    results = _run(FORK, _create_file_race, [(path, barrier)] * workers)
    assert len({created for created, _ in results}) == 1  # everyone opened the same file
    assert [r for _, r in results] == [0] * workers
    assert SharedState(path).token_bucket("x", 1.0, 8).admitted == workers


def test_dead_creator_is_taken_over(path: str) -> None:
    state = SharedState(path, size=1 << 20, init_timeout=30.0)
    ready = FORK.Event()
    procs, _q = _start(FORK, _stall_then_die, [(path, ready)])
    assert ready.wait(JOIN_TIMEOUT)
    os.kill(procs[0].pid, signal.SIGKILL)
    # Not reaped yet: the dead creator is a zombie, and still counts as dead.
    t0 = time.monotonic()
    bucket = state.token_bucket("t", 1.0, 10)
    assert time.monotonic() - t0 < 5.0  # seen dead: no need to wait out init_timeout
    procs[0].join(JOIN_TIMEOUT)
    assert bucket.available(NOW) == 10
    assert state.stats()["takeovers"] == 1
    assert [o.name for o in state.objects()] == ["t"]


def test_stalled_creator_is_taken_over_and_loses_its_publish(path: str) -> None:
    state = SharedState(path, size=1 << 20, init_timeout=0.3)
    ready, release = FORK.Event(), FORK.Event()
    procs, q = _start(FORK, _stall_then_publish, [(path, ready, release)])
    assert ready.wait(JOIN_TIMEOUT)
    t0 = time.monotonic()
    bucket = state.token_bucket("t2", 1.0, 10)  # the creator is alive: wait, then take over
    assert 0.3 <= time.monotonic() - t0 < 5.0
    assert state.stats()["takeovers"] == 1
    release.set()
    [(objects, admitted)] = _collect(procs, q)
    [mine] = state.objects()
    assert objects == [(mine.name, mine.offset)]  # the stalled creator attached to ours
    assert admitted == 3
    assert bucket.available(NOW) == 7
