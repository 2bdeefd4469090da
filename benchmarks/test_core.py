"""ns per operation of each core primitive, on both implementations (ids c / py).

Each benchmark round is a tight loop of OPS calls (loop overhead included, as the
targets are stated); `extra_info["ns_per_op"]` is the median round / OPS. The core
never reads the clock, so `now_ns` comes from the loop variable: it advances 1 ns per
call, which keeps a 1e9/s bucket exactly on the admitted path and a 1/s bucket on the
refused one; each test asserts afterwards that the intended path was the one measured.

Targets (compiled core, ns per call incl. loop overhead) are stored in
`extra_info["target_ns"]` for report.py; the twin has none.

Keyed buckets: the table is filled with distinct keys (1,000,000 on the compiled
core; 100,000 on the twin, whose pure-Python SipHash would take minutes for 1M, and
on the compiled core too if its KeyedBuckets is ever the twin's class), sized at
keys / 0.667 slots, then decisions are measured over random existing keys (and, as a
diagnostic, over 1,000 cache-hot ones). The memory is measured as RSS growth
(/proc/self/statm) over construct + fill, and the constructor's allocation with
tracemalloc; both are printed and stored in extra_info. Override the sizes with
RESILIO_BENCH_KEYED_KEYS, RESILIO_BENCH_KEYED_KEYS_PY, RESILIO_BENCH_KEYED_LOAD.
"""

from __future__ import annotations

import gc
import math
import os
import random
import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilio import _core_py

try:
    from resilio import _core_c
except ImportError:  # conftest's `core` fixture skips the c runs; so does `keyed`
    _core_c = None  # type: ignore[assignment]

OPS = 1000

#: Targets for the compiled core, ns per call including loop overhead.
TARGET_TOKEN_BUCKET = 50
TARGET_KEYED = 150
TARGET_KEYED_BYTES = 64 * 1024 * 1024  # growth for 1,000,000 live keys
TARGET_KEYED_KEYS = 1_000_000
TARGET_WINDOW = 60
TARGET_CIRCUIT = 60

#: Keys filled into the keyed table: the target's 1M on a compiled table.
KEYED_KEYS_C = int(os.environ.get("RESILIO_BENCH_KEYED_KEYS", TARGET_KEYED_KEYS))
KEYED_KEYS_PY = int(os.environ.get("RESILIO_BENCH_KEYED_KEYS_PY", 100_000))
#: Fill factor keys / max_keys. The table probes a window of 16 slots: at 2/3 full
#: about 0.5% of inserts find their window full and evict; see extra_info.
KEYED_LOAD = float(os.environ.get("RESILIO_BENCH_KEYED_LOAD", 2 / 3))
#: Random existing keys the decisions cycle through (OPS per round), enough that the
#: table slots they touch do not all stay in cache.
KEYED_POOL = 262_144

KEYED_NOW = 1_000_000_000

KEYED_IMPLS = [
    pytest.param(
        _core_c,
        id="c",
        marks=[pytest.mark.c_extension]
        + ([pytest.mark.skip(reason="resilio._core_c is not built")] if _core_c is None else []),
    ),
    pytest.param(_core_py, id="py"),
]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _loop_base() -> Callable[[], int]:
    """A source of fresh `now_ns` ranges: each round gets the next OPS nanoseconds."""
    state = [1_000_000_000]

    def nxt() -> int:
        b = state[0]
        state[0] = b + OPS
        return b

    return nxt


def _target(core: Any, ns: int) -> dict[str, Any]:
    return {"target_ns": ns} if core is not _core_py else {}


def _impl(core: Any) -> str:
    return "py" if core is _core_py else "c"


# ---- calibration ----------------------------------------------------------------------


def test_baseline_empty_loop(benchmark: Any, per_op: Any) -> None:
    """The loop alone: what every per-op figure below includes."""
    base = _loop_base()

    def run() -> None:
        b = base()
        for _now in range(b, b + OPS):
            pass

    benchmark.group = "core: baseline"
    benchmark(run)
    per_op(benchmark, primitive="baseline: empty loop", impl="-")


def test_baseline_builtin_call(benchmark: Any, per_op: Any) -> None:
    """The loop plus one C method call with one int argument ({}.get(now)): the floor
    for a compiled core method, and a gauge of how loaded the machine was."""
    base = _loop_base()
    get = {}.get

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            get(now)

    benchmark.group = "core: baseline"
    benchmark(run)
    per_op(benchmark, primitive="baseline: loop + dict.get(now)", impl="-")


# ---- token bucket ---------------------------------------------------------------------


def test_token_bucket_try_acquire_admitted(benchmark: Any, core: Any, per_op: Any) -> None:
    # 1e9/s refills one token per ns, and now advances 1 ns per call: always admitted.
    tb = core.TokenBucket(1e9, 1_000_000)
    acquire = tb.try_acquire
    base = _loop_base()

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            acquire(now)

    benchmark.group = "core: TokenBucket.try_acquire admitted"
    benchmark(run)
    assert tb.rejected == 0 and tb.admitted > 0
    per_op(
        benchmark,
        primitive="TokenBucket.try_acquire (admitted)",
        impl=_impl(core),
        **_target(core, TARGET_TOKEN_BUCKET),
    )


def test_token_bucket_try_acquire_refused(benchmark: Any, core: Any, per_op: Any) -> None:
    # 1 token per second, spent up front; the run covers far less than a second of now.
    tb = core.TokenBucket(1.0, 1)
    acquire = tb.try_acquire
    base = _loop_base()
    assert acquire(base()) == 0

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            acquire(now)

    benchmark.group = "core: TokenBucket.try_acquire refused"
    benchmark(run)
    assert tb.admitted == 1 and tb.rejected > 0
    per_op(
        benchmark,
        primitive="TokenBucket.try_acquire (refused)",
        impl=_impl(core),
        **_target(core, TARGET_TOKEN_BUCKET),
    )


# ---- keyed buckets --------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * _PAGE


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _key(i: int) -> str:
    return f"client-{i:07d}"


@pytest.fixture(scope="module", params=KEYED_IMPLS)
def keyed(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A keyed table filled with distinct keys, and what the fill cost in memory.

    Module-scoped: the random-key and hot-key benchmarks share one fill per
    implementation (pytest finishes the c table before it builds the py one)."""
    core = request.param
    compiled_table = core is not _core_py and core.KeyedBuckets is not _core_py.KeyedBuckets
    n = KEYED_KEYS_C if compiled_table else KEYED_KEYS_PY
    max_keys = math.ceil(n / KEYED_LOAD)
    notes = []
    if core is _core_py:
        notes.append(f"twin: {n:,} keys, not 1M (its pure-Python SipHash makes a 1M fill slow)")
    elif not compiled_table:
        notes.append(
            f"resilio._core_c.KeyedBuckets is still the twin's pure-Python class: "
            f"{n:,} keys, not a compiled figure"
        )
    gc.collect()
    rss0, maxrss0 = _rss(), _maxrss()
    # The table is allocated once, up front: tracemalloc sees what the constructor
    # takes; RSS growth over construct + fill also catches anything allocated per key
    # (the keys are formatted on the fly and dropped, so the growth is the table's).
    tracemalloc.start()
    # Rate 1/s, so a bucket that took a token stays live (not full again) for the
    # whole run; burst 10**6, so no decision on an existing key is ever refused.
    kb = core.KeyedBuckets(1.0, 1_000_000, max_keys)
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    acquire = kb.try_acquire
    t0 = time.process_time()
    for i in range(n):
        acquire(_key(i), KEYED_NOW)
    fill_s = time.process_time() - t0
    gc.collect()
    growth = _rss() - rss0
    live = kb.count(KEYED_NOW)
    mem: dict[str, Any] = {
        "keys": n,
        "max_keys": max_keys,
        "live_keys": live,
        "inserted": kb.inserted,
        "evicted": kb.evicted,
        "rss_growth_bytes": growth,
        "rss_growth_mib": round(growth / 2**20, 2),
        "bytes_per_key": round(growth / n, 1),
        "maxrss_growth_mib": round((_maxrss() - maxrss0) / 2**20, 2),
        "tracemalloc_bytes": traced,
        "fill_ns_per_key": round(fill_s * 1e9 / n, 1),
    }
    if compiled_table:
        mem["target_bytes"] = TARGET_KEYED_BYTES
    print(
        f"\n[keyed {_impl(core)}] {n:,} keys into max_keys={max_keys:,}: "
        f"RSS +{growth / 2**20:.1f} MiB ({growth / n:.1f} B/key), "
        f"constructor {traced / 2**20:.1f} MiB (tracemalloc), live {live:,}, "
        f"evicted {kb.evicted:,}, fill {fill_s:.1f} s CPU"
    )
    rng = random.Random(1234)
    pool = [_key(i) for i in rng.sample(range(n), min(n, KEYED_POOL))]
    yield {
        "core": core,
        "kb": kb,
        "n": n,
        "compiled": compiled_table,
        "mem": mem,
        "notes": notes,
        "pool": pool,
    }
    del kb, acquire, pool
    gc.collect()


def test_keyed_try_acquire_random_keys(benchmark: Any, keyed: dict[str, Any], per_op: Any) -> None:
    """Decisions over random existing keys, cycling through a pool of 262,144 of them
    (8 MiB of table), so most lookups miss the CPU caches as real traffic would."""
    kb, core, pool = keyed["kb"], keyed["core"], keyed["pool"]
    acquire = kb.try_acquire
    batches = [pool[i : i + OPS] for i in range(0, len(pool) - OPS + 1, OPS)]
    nb = len(batches)
    counter = [0]
    rejected0, inserted0 = kb.rejected, kb.inserted
    now = KEYED_NOW

    def run() -> None:
        i = counter[0]
        counter[0] = i + 1
        for key in batches[i % nb]:
            acquire(key, now)

    benchmark.group = "core: KeyedBuckets.try_acquire random live keys"
    benchmark(run)
    assert kb.rejected == rejected0
    per_op(
        benchmark,
        primitive=f"KeyedBuckets.try_acquire ({keyed['n']:,} live keys, random)",
        impl=_impl(core),
        notes="; ".join(keyed["notes"]),
        reinserted=kb.inserted - inserted0,
        **keyed["mem"],
        **(_target(core, TARGET_KEYED) if keyed["compiled"] else {}),
    )


def test_keyed_try_acquire_hot_keys(benchmark: Any, keyed: dict[str, Any], per_op: Any) -> None:
    """The same table, the same 1,000 keys every round (cache-resident): the cost of
    the call and the hash without memory misses. Diagnostic, no target."""
    kb, core = keyed["kb"], keyed["core"]
    acquire = kb.try_acquire
    keys = keyed["pool"][:OPS]
    now = KEYED_NOW

    def run() -> None:
        for key in keys:
            acquire(key, now)

    benchmark.group = "core: KeyedBuckets.try_acquire hot keys"
    benchmark(run)
    per_op(
        benchmark,
        primitive=f"KeyedBuckets.try_acquire ({keyed['n']:,} live keys, 1,000 hot)",
        impl=_impl(core),
    )


# ---- windows --------------------------------------------------------------------------


def test_time_window_record(benchmark: Any, core: Any, per_op: Any) -> None:
    w = core.TimeWindow(10_000_000_000, 10)
    record = w.record
    base = _loop_base()

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            record(now, 0)

    benchmark.group = "core: TimeWindow.record"
    benchmark(run)
    assert w.snapshot(base())[0] > 0
    per_op(
        benchmark, primitive="TimeWindow.record", impl=_impl(core), **_target(core, TARGET_WINDOW)
    )


def test_time_window_snapshot(benchmark: Any, core: Any, per_op: Any) -> None:
    w = core.TimeWindow(10_000_000_000, 10)
    base = _loop_base()
    b = base()
    for i in range(100):
        w.record(b + i, i & 1)
    snapshot = w.snapshot

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            snapshot(now)

    benchmark.group = "core: TimeWindow.snapshot"
    benchmark(run)
    assert w.snapshot(base()) == (100, 50, 0)
    per_op(
        benchmark,
        primitive="TimeWindow.snapshot",
        impl=_impl(core),
        **_target(core, TARGET_WINDOW),
    )


# ---- circuit --------------------------------------------------------------------------


def _circuit(core: Any) -> Any:
    # Closed, with a 30 s window: nothing run here can open it.
    return core.Circuit(0.5, 100, 30_000_000_000, 5_000_000_000, now_ns=0)


def test_circuit_admit(benchmark: Any, core: Any, per_op: Any) -> None:
    c = _circuit(core)
    admit = c.admit
    base = _loop_base()

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            admit(now)

    benchmark.group = "core: Circuit.admit"
    benchmark(run)
    assert c.state == core.CLOSED and c.rejected == 0
    per_op(
        benchmark,
        primitive="Circuit.admit (closed)",
        impl=_impl(core),
        **_target(core, TARGET_CIRCUIT),
    )


def test_circuit_record(benchmark: Any, core: Any, per_op: Any) -> None:
    c = _circuit(core)
    base = _loop_base()
    ticket = c.admit(base())
    assert ticket >= 0
    record = c.record

    def run() -> None:
        b = base()
        for now in range(b, b + OPS):
            record(ticket, now, 0)

    benchmark.group = "core: Circuit.record"
    benchmark(run)
    assert c.state == core.CLOSED and c.failures == 0 and c.successes > 0
    per_op(
        benchmark,
        primitive="Circuit.record (closed, success)",
        impl=_impl(core),
        **_target(core, TARGET_CIRCUIT),
    )


# ---- gate, counters -------------------------------------------------------------------


def test_gate_enter_exit(benchmark: Any, core: Any, per_op: Any) -> None:
    g = core.Gate(1000)
    enter, leave = g.try_enter, g.exit

    def run() -> None:
        for _ in range(OPS):
            enter()
            leave()

    benchmark.group = "core: Gate.try_enter+exit"
    benchmark(run)
    assert g.in_flight == 0 and g.rejected == 0
    per_op(benchmark, primitive="Gate.try_enter + exit (pair)", impl=_impl(core))


def test_counters_add(benchmark: Any, core: Any, per_op: Any) -> None:
    c = core.Counters(8)
    add = c.add

    def run() -> None:
        for _ in range(OPS):
            add(3)

    benchmark.group = "core: Counters.add"
    benchmark(run)
    assert c.get(3) > 0
    per_op(benchmark, primitive="Counters.add", impl=_impl(core))
