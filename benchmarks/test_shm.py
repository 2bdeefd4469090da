"""ns per decision on shared memory (resilio.backends.shm) against in-process memory.

The same compiled classes run the same C either way; only where the struct lives
differs (a PyMem block, or a MAP_SHARED page of a /dev/shm file). Each benchmark is
parametrized by placement (ids memory / shm) and, as in test_core.py, a round is a
tight loop of OPS calls (loop overhead included); `extra_info["ns_per_op"]` is the
median round / OPS.

Keyed tables hold 1,000,000 live keys (override with RESILIO_BENCH_SHM_KEYS) at 2/3
load, decided over random existing keys (cache misses, as real traffic) and over
1,000 hot ones.

`test_processes_exact` is the multi-process run: 4 processes x 1,000,000 decisions on
one shared token bucket (burst 1,000,000, fixed clock: no refill), and the same on a
shared keyed table (1,000 keys, burst 250 each). The totals admitted must be exact;
they, the wall time and the aggregate decision rate are stored in extra_info and
printed.

    python -m pytest benchmarks/test_shm.py -p no:cacheprovider --benchmark-only -s
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from resilio.backends.shm import SharedState

_core_c = pytest.importorskip("resilio._core_c")

pytestmark = [
    pytest.mark.c_extension,
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm"),
]

OPS = 1000
#: Target for a decision on shared memory, ns per call including loop overhead.
TARGET_SHM_DECISION = 100
#: The in-process keyed target of test_core.py (random keys: memory-bound).
TARGET_KEYED_RANDOM = 150

KEYED_KEYS = int(os.environ.get("RESILIO_BENCH_SHM_KEYS", 1_000_000))
KEYED_LOAD = 2 / 3
KEYED_POOL = 262_144
NOW = 1_000_000_000

PROCESSES = 4
DECISIONS = 1_000_000
PLACEMENTS = ["memory", "shm"]


@pytest.fixture(scope="module")
def state() -> Iterator[SharedState]:
    path = f"/dev/shm/resilio-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    size = 64 * 2**20 + 2 * 32 * math.ceil(KEYED_KEYS / KEYED_LOAD)
    st = SharedState(path, size=size)
    try:
        yield st
    finally:
        st.unlink()


def _loop_base() -> Any:
    base = [1_000_000_000]

    def nxt() -> int:
        b = base[0]
        base[0] = b + OPS
        return b

    return nxt


def _bucket(placement: str, state: SharedState, name: str, rate: float, burst: int) -> Any:
    if placement == "memory":
        return _core_c.TokenBucket(rate, burst)
    return state.token_bucket(name, rate, burst)


def _extra(placement: str, target: int) -> dict[str, Any]:
    return {"placement": placement, **({"target_ns": target} if placement == "shm" else {})}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_token_bucket_try_acquire_admitted(
    benchmark: Any, placement: str, state: SharedState, per_op: Any
) -> None:
    # 1e9/s refills one token per ns, and now advances 1 ns per call: always admitted.
    tb = _bucket(placement, state, "admitted", 1e9, 1_000_000)
    assert type(tb) is _core_c.TokenBucket
    acquire = tb.try_acquire
    base = _loop_base()

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            acquire(now)

    benchmark.group = "shm: TokenBucket.try_acquire admitted"
    benchmark(run)
    assert tb.rejected == 0 and tb.admitted > 0
    ns = per_op(
        benchmark,
        primitive="TokenBucket.try_acquire (admitted)",
        **_extra(placement, TARGET_SHM_DECISION),
    )
    if ns is not None:
        print(f"\n[{placement}] TokenBucket.try_acquire admitted: {ns:.1f} ns/decision")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_token_bucket_try_acquire_refused(
    benchmark: Any, placement: str, state: SharedState, per_op: Any
) -> None:
    tb = _bucket(placement, state, "refused", 1.0, 1)
    acquire = tb.try_acquire
    base = _loop_base()
    assert acquire(base()) == 0

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            acquire(now)

    benchmark.group = "shm: TokenBucket.try_acquire refused"
    benchmark(run)
    assert tb.admitted == 1 and tb.rejected > 0
    ns = per_op(
        benchmark,
        primitive="TokenBucket.try_acquire (refused)",
        **_extra(placement, TARGET_SHM_DECISION),
    )
    if ns is not None:
        print(f"\n[{placement}] TokenBucket.try_acquire refused: {ns:.1f} ns/decision")


def _key(i: int) -> str:
    return f"client-{i:07d}"


@pytest.fixture(scope="module", params=PLACEMENTS)
def keyed(request: pytest.FixtureRequest, state: SharedState) -> dict[str, Any]:
    """A keyed table of KEYED_KEYS live keys (rate 1/s, burst 10**6: never refused)."""
    placement = request.param
    max_keys = math.ceil(KEYED_KEYS / KEYED_LOAD)
    if placement == "memory":
        kb = _core_c.KeyedBuckets(1.0, 1_000_000, max_keys)
    else:
        kb = state.keyed_buckets("keyed", 1.0, 1_000_000, max_keys)
    assert type(kb) is _core_c.KeyedBuckets
    acquire = kb.try_acquire
    t0 = time.perf_counter()
    for i in range(KEYED_KEYS):
        acquire(_key(i), NOW)
    fill = time.perf_counter() - t0
    rng = random.Random(1234)
    pool = [_key(i) for i in rng.sample(range(KEYED_KEYS), min(KEYED_KEYS, KEYED_POOL))]
    print(f"\n[{placement}] keyed fill: {KEYED_KEYS:,} keys in {fill:.2f} s")
    return {"placement": placement, "kb": kb, "pool": pool}


def test_keyed_try_acquire_random_keys(benchmark: Any, keyed: dict[str, Any], per_op: Any) -> None:
    kb, pool, placement = keyed["kb"], keyed["pool"], keyed["placement"]
    acquire = kb.try_acquire
    batches = [pool[i : i + OPS] for i in range(0, len(pool) - OPS + 1, OPS)]
    nb = len(batches)
    counter = [0]
    rejected0 = kb.rejected

    def run() -> None:
        i = counter[0]
        counter[0] = i + 1
        for key in batches[i % nb]:
            acquire(key, NOW)

    benchmark.group = "shm: KeyedBuckets.try_acquire random live keys"
    benchmark(run)
    assert kb.rejected == rejected0
    ns = per_op(
        benchmark,
        primitive=f"KeyedBuckets.try_acquire ({KEYED_KEYS:,} live keys, random)",
        **_extra(placement, TARGET_KEYED_RANDOM),
    )
    if ns is not None:
        print(f"\n[{placement}] KeyedBuckets.try_acquire random keys: {ns:.1f} ns/decision")


def test_keyed_try_acquire_hot_keys(benchmark: Any, keyed: dict[str, Any], per_op: Any) -> None:
    kb, placement = keyed["kb"], keyed["placement"]
    acquire = kb.try_acquire
    keys = keyed["pool"][:OPS]

    def run() -> None:
        for key in keys:
            acquire(key, NOW)

    benchmark.group = "shm: KeyedBuckets.try_acquire hot keys"
    benchmark(run)
    ns = per_op(
        benchmark,
        primitive=f"KeyedBuckets.try_acquire ({KEYED_KEYS:,} live keys, 1,000 hot)",
        **_extra(placement, TARGET_SHM_DECISION),
    )
    if ns is not None:
        print(f"\n[{placement}] KeyedBuckets.try_acquire hot keys: {ns:.1f} ns/decision")


# ---- many processes -----------------------------------------------------------------


def _worker(path: str, kind: str, name: str, barrier: Any, q: Any) -> None:
    st = SharedState(path, create=False)
    admitted = 0
    if kind == "bucket":
        acquire = st.token_bucket(name, 1.0, DECISIONS).try_acquire
        barrier.wait()
        t0 = time.perf_counter()
        for _ in range(DECISIONS):
            if not acquire(NOW):
                admitted += 1
    else:
        table = st.keyed_buckets(name, 1.0, 250, 4096)
        keys = [_key(i) for i in range(1000)] * (DECISIONS // 1000)
        random.Random(os.getpid()).shuffle(keys)
        acquire = table.try_acquire
        barrier.wait()
        t0 = time.perf_counter()
        for key in keys:
            if not acquire(key, NOW):
                admitted += 1
    q.put((admitted, time.perf_counter() - t0))


@pytest.mark.parametrize("kind", ["bucket", "keyed"])
def test_processes_exact(benchmark: Any, kind: str, state: SharedState) -> None:
    """4 processes x 1,000,000 decisions on one shared object: exact totals."""
    ctx = multiprocessing.get_context("fork")
    runs: list[dict[str, Any]] = []

    def one_run() -> None:
        name = f"exact-{kind}-{len(runs)}"
        barrier = ctx.Barrier(PROCESSES + 1)
        q = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(state.path, kind, name, barrier, q))
            for _ in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        results = [q.get(timeout=300) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        admitted = [a for a, _ in results]
        if kind == "bucket":
            obj = state.token_bucket(name, 1.0, DECISIONS)
            expected = DECISIONS
        else:
            obj = state.keyed_buckets(name, 1.0, 250, 4096)
            expected = 1000 * 250
            assert all(obj.available(_key(i), NOW) == 0 for i in range(1000))
            assert obj.evicted == 0
        total = PROCESSES * DECISIONS
        assert sum(admitted) == expected
        assert (obj.admitted, obj.rejected) == (expected, total - expected)
        runs.append(
            {
                "decisions": total,
                "admitted": sum(admitted),
                "expected_admitted": expected,
                "rejected": obj.rejected,
                "admitted_per_process": admitted,
                "wall_s": round(wall, 3),
                "decisions_per_s": round(total / wall),
                "ns_per_decision_aggregate": round(wall * 1e9 / total, 1),
                "ns_per_decision_per_process": round(
                    max(s for _, s in results) * 1e9 / DECISIONS, 1
                ),
            }
        )

    benchmark.group = "shm: 4 processes x 1,000,000 decisions"
    benchmark.pedantic(one_run, rounds=1, iterations=1)
    r = runs[-1]
    benchmark.extra_info.update(r, primitive=f"{kind}: {PROCESSES} processes", cores=os.cpu_count())
    print(
        f"\n[{kind}] {PROCESSES} processes x {DECISIONS:,} decisions: admitted {r['admitted']:,} "
        f"(expected {r['expected_admitted']:,}, per process {r['admitted_per_process']}), "
        f"rejected {r['rejected']:,}; wall {r['wall_s']} s, "
        f"{r['decisions_per_s']:,} decisions/s on {os.cpu_count()} cores, "
        f"{r['ns_per_decision_per_process']} ns/decision per process"
    )
