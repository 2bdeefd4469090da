"""Differential tests: the compiled core and its pure-Python twin, step by step.

Both modules are imported directly (not through the `core` fixture): every test drives
one object of each implementation with the same random sequence of operations and
requires, after every step, the same return value (same type and value), the same
exception, and the same counters and observable state. A compiled core that cannot be
imported FAILS these tests: a differential test that skips proves nothing.

Exceptions compare by type; a ValueError also by message, because its text comes from
the shared argument checks and names the bad argument. Arguments are mostly valid, with
a share of out-of-range ints (the ValueError paths) and of wrong types (float, bool,
None, str) mixed in. Times are mostly non-decreasing; some calls lag, jump anywhere in
[0, 2**59) or pass an invalid now_ns.

Each example's operation list is one `st.lists` argument built from module-level
strategies: drawing step by step with `st.data()` costs several times more in
Hypothesis' bookkeeping.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import resilio._core_py as P

try:
    C: Any = importlib.import_module("resilio._core_c")
    _C_ERROR: BaseException | None = None
except ImportError as exc:  # reported as a failure by the fixture below
    C = None
    _C_ERROR = exc

MAX_NOW = 1 << 59
U = 1 << 16
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
    # No "explain" phase: it re-runs a failing example many times and adds little to a
    # step log that already shows every call and result.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


@pytest.fixture(autouse=True)
def _require_compiled_core() -> None:
    if C is None:
        pytest.fail(f"resilio._core_c cannot be imported: {_C_ERROR!r}", pytrace=False)


# ---- harness ------------------------------------------------------------------------


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call did, in a form that compares across implementations."""
    try:
        r = fn()
    except Exception as e:  # every exception is part of the contract
        return ("raise", type(e).__name__, str(e) if isinstance(e, ValueError) else None)
    return ("ok", repr(r))  # repr: 0 != 0.0 != False; tuples compare element-wise


class Pair:
    """One object per implementation, driven in lockstep; `log` is the repro so far."""

    def __init__(self, label: str, make: Callable[[Any], Any]) -> None:
        self.log: list[str] = []
        r = self.same(label, lambda m: type(make(m)).__name__)
        self.ok = r[0] == "ok"
        if self.ok:
            self.p, self.c = make(P), make(C)

    def same(self, label: str, f: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
        """Run f(side, *args) on the twin's and on C's side (side: the module, or the
        object once built) and require the same outcome."""
        p, c = (self.p, self.c) if hasattr(self, "p") else (P, C)
        rp, rc = outcome(lambda: f(p, *args)), outcome(lambda: f(c, *args))
        self.log.append(f"{label} -> {rp[1:]}")
        assert rp == rc, (
            "twin and C differ:\n  " + "\n  ".join(self.log) + f"\n  twin={rp}\n  C   ={rc}"
        )
        return rp

    def call(self, method: str, *args: Any) -> tuple[Any, ...]:
        """Call the same method with the same arguments on both objects."""
        label = f"{method}({', '.join(map(repr, args))})"
        return self.same(label, lambda o, *a: getattr(o, method)(*a), *args)

    def state(self, view: Callable[[Any], Any]) -> None:
        self.same("    state", view)


# ---- argument strategies -------------------------------------------------------------

BAD_TYPES = st.sampled_from([1.5, 0.0, 1.0, None, "1", True, False])
BAD_INTS = st.sampled_from([-1, -(10**12), MAX_NOW, MAX_NOW + 1, 1 << 63, 1 << 64, 1 << 70])
BAD = st.one_of(BAD_INTS, BAD_TYPES)

# A clock step: scaled steps are k/1000 of a per-test scale (an interval, a bucket width,
# a break), +-1 ns so exact boundaries come up.
_FWD = st.tuples(st.just("fwd"), st.integers(0, 2000), st.integers(-1, 1))
CLOCK = st.one_of(
    _FWD,
    _FWD,
    _FWD,
    _FWD,
    st.just(("same",)),
    st.tuples(st.just("lag"), st.integers(0, 3000)),
    st.tuples(
        st.just("jump"),
        st.one_of(st.integers(0, MAX_NOW - 1), st.sampled_from([0, 1, MAX_NOW - 1])),
    ),
    st.tuples(st.just("bad"), BAD),
)
START = st.one_of(
    st.sampled_from([0, 1, 10**15, MAX_NOW - 10**12, MAX_NOW - 1]),
    st.integers(0, MAX_NOW - 1),
)


def tick(now: int, step: tuple[Any, ...], scale: int) -> tuple[int, Any]:
    """Apply a clock step: (new clock, the now_ns to pass). The clock stays valid."""
    kind = step[0]
    if kind == "fwd":
        new = min(max(now + step[1] * scale // 1000 + step[2], now), MAX_NOW - 1)
        return new, new
    if kind == "same":
        return now, now
    if kind == "lag":
        return now, max(0, now - step[1] * scale // 1000)
    if kind == "jump":
        return step[1], step[1]
    return now, step[1]


# Outcome flags: valid bits, extra bits, negative and huge ints, wrong types.
OUTCOMES = st.one_of(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([4, 7, -1, -2, 1 << 64, (1 << 70) + 1]),
    BAD_TYPES,
)
# Token counts: ("n", k) is k folded into [1, burst]; otherwise a literal bad value.
TOKENS = st.one_of(
    st.tuples(st.just("n"), st.integers(1, 40)),
    st.tuples(st.just("n"), st.integers(1, 40)),
    st.tuples(st.just("n"), st.integers(1, 40)),
    st.tuples(st.just("lit"), st.sampled_from([0, -1, "burst+1", 1 << 64])),
    st.tuples(st.just("lit"), BAD_TYPES),
)


def tokens(spec: tuple[str, Any], burst: int) -> Any:
    if spec[0] == "n":
        return 1 + (spec[1] - 1) % min(burst, 40)
    return burst + 1 if spec[1] == "burst+1" else spec[1]


# Max waits: ("k", k) is k/1000 of burst * interval; otherwise a literal.
WAITS = st.one_of(
    st.tuples(st.just("k"), st.integers(0, 3000)),
    st.tuples(st.just("k"), st.integers(0, 3000)),
    st.tuples(
        st.just("lit"),
        st.sampled_from(
            [0, (1 << 60) - 1, 1 << 60, (1 << 61) - 1, 1 << 61, 1 << 62, (1 << 63) - 1, 1 << 64]
        ),
    ),
    st.tuples(st.just("lit"), st.integers(-3, -1)),
    st.tuples(st.just("lit"), BAD_TYPES),
)


def wait(spec: tuple[str, Any], span: int) -> Any:
    return spec[1] * span // 1000 if spec[0] == "k" else spec[1]


# ---- TokenBucket ---------------------------------------------------------------------

RATES = st.one_of(
    st.sampled_from([1, 3, 7, 10.0, 0.5, 1e9, 2.5e8, 333.3, 1e-3, 1e12, 1 / 3]),
    st.floats(min_value=1e-3, max_value=2e9),
)
BURSTS = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 1 << 20, 1 << 31]))
BAD_CTOR = st.one_of(BAD, st.sampled_from([0, -0.5, float("nan"), float("inf")]))

BUCKET_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("try"), CLOCK),
        st.tuples(st.just("try"), CLOCK),
        st.tuples(st.just("try_n"), CLOCK, TOKENS),
        st.tuples(st.just("reserve"), CLOCK, TOKENS, WAITS),
        st.tuples(st.just("refund"), CLOCK, TOKENS),
        st.tuples(st.just("available"), CLOCK),
    ),
    min_size=1,
    max_size=40,
)


def bucket_view(now: int) -> Callable[[Any], Any]:
    def view(b: Any) -> Any:
        i = b.interval_ns
        at = [min(now + k * i, MAX_NOW - 1) for k in (0, 1, 3)]
        return (b.admitted, b.rejected, b.burst, i, b.rate, [b.available(t) for t in at])

    return view


@SETTINGS
@given(
    rate=st.one_of(RATES, RATES, RATES, RATES, RATES, RATES, RATES, BAD_CTOR),
    burst=st.one_of(BURSTS, BURSTS, BURSTS, BURSTS, BURSTS, BURSTS, BURSTS, BAD_CTOR),
    start=START,
    ops=BUCKET_OPS,
)
def test_token_bucket(rate: Any, burst: Any, start: int, ops: list[tuple[Any, ...]]) -> None:
    pair = Pair(f"TokenBucket({rate!r}, {burst!r})", lambda m: m.TokenBucket(rate, burst))
    if not pair.ok:
        return
    bst, interval = pair.p.burst, pair.p.interval_ns
    now = start
    for op in ops:
        now, t = tick(now, op[1], 2 * interval)
        if op[0] == "try":
            pair.call("try_acquire", t)
        elif op[0] == "try_n":
            n = tokens(op[2], bst)
            pair.call("try_acquire", t, n)
        elif op[0] == "reserve":
            n, w = tokens(op[2], bst), wait(op[3], bst * interval)
            pair.call("reserve", t, n, w)
        elif op[0] == "refund":
            n = tokens(op[2], bst)
            pair.call("refund", t, n)
        else:
            pair.call("available", t)
        pair.state(bucket_view(now))


# ---- TimeWindow / CountWindow ------------------------------------------------------------

TWINDOW_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("record"), CLOCK, OUTCOMES),
        st.tuples(st.just("record"), CLOCK, OUTCOMES),
        st.tuples(st.just("record"), CLOCK, OUTCOMES),
        st.tuples(st.just("snapshot"), CLOCK),
        st.tuples(st.just("reset"), CLOCK),
    ),
    min_size=1,
    max_size=50,
)
DURATIONS = st.one_of(st.integers(1, 10_000), st.sampled_from([1, 10**9, MAX_NOW]))
NBUCKETS = st.integers(1, 64)


def twindow_view(now: int) -> Callable[[Any], Any]:
    def view(w: Any) -> Any:
        width, span = w.width_ns, w.width_ns * w.buckets
        at = [now, max(0, now - width), min(now + width, MAX_NOW - 1), min(now + span, MAX_NOW - 1)]
        return (width, w.buckets, [w.snapshot(t) for t in at])

    return view


@SETTINGS
@given(
    duration=st.one_of(DURATIONS, DURATIONS, DURATIONS, DURATIONS, DURATIONS, BAD),
    nb=st.one_of(NBUCKETS, NBUCKETS, NBUCKETS, NBUCKETS, NBUCKETS, st.sampled_from([0, 65, 2.0])),
    start=START,
    ops=TWINDOW_OPS,
)
def test_time_window(duration: Any, nb: Any, start: int, ops: list[tuple[Any, ...]]) -> None:
    pair = Pair(f"TimeWindow({duration!r}, {nb!r})", lambda m: m.TimeWindow(duration, nb))
    if not pair.ok:
        return
    now, scale = start, 2 * pair.p.width_ns
    for op in ops:
        now, t = tick(now, op[1], scale)
        if op[0] == "record":
            o = op[2]
            pair.call("record", t, o)
        elif op[0] == "snapshot":
            pair.call("snapshot", t)
        else:
            pair.call("reset", t)
        pair.state(twindow_view(now))


def test_time_window_default_buckets() -> None:
    assert P.TimeWindow(1000).buckets == C.TimeWindow(1000).buckets == 10


CWINDOW_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("record"), OUTCOMES),
        st.tuples(st.just("record"), OUTCOMES),
        st.tuples(st.just("record"), OUTCOMES),
        st.just(("record()",)),
        st.just(("snapshot",)),
        st.just(("reset",)),
    ),
    min_size=1,
    max_size=60,
)
SIZES = st.one_of(st.integers(1, 12), st.sampled_from([1, 1024]))


@SETTINGS
@given(
    size=st.one_of(SIZES, SIZES, SIZES, SIZES, SIZES, BAD, st.sampled_from([0, 1025])),
    ops=CWINDOW_OPS,
)
def test_count_window(size: Any, ops: list[tuple[Any, ...]]) -> None:
    pair = Pair(f"CountWindow({size!r})", lambda m: m.CountWindow(size))
    if not pair.ok:
        return
    for op in ops:
        if op[0] == "record":
            o = op[1]
            pair.call("record", o)
        elif op[0] == "record()":
            pair.call("record")
        elif op[0] == "snapshot":
            pair.call("snapshot")
        else:
            pair.call("reset")
        pair.state(lambda w: (w.size, w.snapshot()))


# ---- Circuit ---------------------------------------------------------------------------

COUNTER_NAMES = (
    "admitted",
    "rejected",
    "successes",
    "failures",
    "slow",
    "opened",
    "half_opened",
    "closed",
    "isolated",
    "stale",
)


def circuit_view(now: int) -> Callable[[Any], Any]:
    def view(cb: Any) -> Any:
        return (
            cb.state,
            cb.word,
            cb.in_flight_probes,
            cb.half_open_calls,
            tuple(getattr(cb, n) for n in COUNTER_NAMES),
            cb.retry_after_ns(now),
            cb.snapshot(now),
        )

    return view


BREAKS = st.one_of(
    st.integers(1, 8 * U),
    st.integers(1, 8 * U),
    st.integers(1, 8 * U),
    st.sampled_from([U, 3 * U, 10**9, 1 << 57, 1 << 58, 15 << 55, MAX_NOW]),
    st.integers(1, MAX_NOW),
)


@st.composite
def circuit_args(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ratio = draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0, 1e-9, 1 / 3, 0.6]))
    min_tp = draw(st.integers(1, 6))
    sampling = draw(st.one_of(st.integers(1, 40 * U), st.sampled_from([10**9])))
    brk = draw(BREAKS)
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["max_break_duration_ns"] = draw(
            st.one_of(st.just(0), st.integers(brk, min(20 * brk, MAX_NOW)), st.just(MAX_NOW))
        )
    if draw(st.booleans()):
        kw["half_open_calls"] = draw(st.one_of(st.integers(1, 4), st.just(31)))
    if draw(st.booleans()):
        kw["slow_call_ratio"] = draw(st.sampled_from([None, 0.5, 1.0, 0.2]))
    if draw(st.booleans()):
        kw["buckets"] = draw(st.integers(1, 12))
    if draw(st.booleans()):
        kw["now_ns"] = draw(START)
    args = [ratio, min_tp, sampling, brk]
    if draw(st.integers(0, 7)) == 0:  # one bad argument
        bad = draw(st.one_of(BAD, st.sampled_from([0, 1.5, 32, 65, 2.0, float("nan")])))
        where = draw(
            st.sampled_from(
                [
                    0,
                    1,
                    2,
                    3,
                    "max_break_duration_ns",
                    "half_open_calls",
                    "slow_call_ratio",
                    "buckets",
                    "now_ns",
                ]
            )
        )
        if isinstance(where, int):
            args[where] = bad
        else:
            kw[where] = bad
    return tuple(args), kw


# Tickets: ("pick", i) picks the i-th ticket admitted so far (modulo); ("forge", v) passes v.
TICKETS = st.one_of(
    *[st.tuples(st.just("pick"), st.integers(0, 1000))] * 8,
    st.tuples(st.just("forge"), st.one_of(st.integers(-(1 << 63), (1 << 64) + 5), BAD_TYPES)),
)
CIRCUIT_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), CLOCK),
        st.tuples(st.just("admit"), CLOCK),
        st.tuples(st.just("admit"), CLOCK),
        st.tuples(st.just("record"), CLOCK, TICKETS, OUTCOMES),
        st.tuples(st.just("record"), CLOCK, TICKETS, OUTCOMES),
        st.tuples(st.just("record"), CLOCK, TICKETS, OUTCOMES),
        st.tuples(st.just("release"), CLOCK, TICKETS),
        st.tuples(st.just("isolate"), CLOCK),
        st.tuples(st.just("reset"), CLOCK),
        st.tuples(st.just("retry_after_ns"), CLOCK),
        st.tuples(st.just("snapshot"), CLOCK),
        st.tuples(
            st.just("break_for"),
            CLOCK,
            st.one_of(st.integers(-2, 70), st.sampled_from([1 << 40, 1.5])),
        ),
    ),
    min_size=1,
    max_size=50,
)


@SETTINGS
@given(args=circuit_args(), ops=CIRCUIT_OPS)
def test_circuit(args: tuple[tuple[Any, ...], dict[str, Any]], ops: list[tuple[Any, ...]]) -> None:
    a, kw = args
    pair = Pair(f"Circuit{a!r} {kw!r}", lambda m: m.Circuit(*a, **kw))
    if not pair.ok:
        return
    now = kw.get("now_ns", 0)
    scale = max(2 * a[3], 2 * U)
    tickets: list[int] = []
    for op in ops:
        now, t = tick(now, op[1], scale)
        name = op[0]
        if name == "admit":
            r = pair.call("admit", t)
            if r[0] == "ok":
                tickets.append(int(r[1]))
        elif name in ("record", "release"):
            pick = op[2][0] == "pick" and tickets
            tk = tickets[op[2][1] % len(tickets)] if pick else op[2][1]
            if name == "record":
                o = op[3]
                pair.call("record", tk, t, o)
            else:
                pair.call("release", tk)
        elif name == "break_for":
            k = op[2]
            pair.call("break_for", k)
        else:
            pair.call(name, t)
        pair.state(circuit_view(now))


# ---- Gate / Counters ----------------------------------------------------------------------

LIMITS = st.one_of(st.integers(0, 6), st.just(1 << 62))
GATE_OPS = st.lists(
    st.one_of(
        st.just(("try_enter",)),
        st.just(("try_enter",)),
        st.just(("exit",)),
        st.tuples(st.just("limit"), st.one_of(LIMITS, LIMITS, LIMITS, BAD)),
    ),
    min_size=1,
    max_size=50,
)


def _set_limit(g: Any, v: Any) -> None:
    g.limit = v


@SETTINGS
@given(limit=st.one_of(LIMITS, LIMITS, LIMITS, LIMITS, BAD), ops=GATE_OPS)
def test_gate(limit: Any, ops: list[tuple[Any, ...]]) -> None:
    pair = Pair(f"Gate({limit!r})", lambda m: m.Gate(limit))
    if not pair.ok:
        return
    for op in ops:
        if op[0] == "limit":
            v = op[1]
            pair.same(f"limit = {v!r}", _set_limit, v)
        else:
            pair.call(op[0])
        pair.state(lambda g: (g.limit, g.in_flight, g.admitted, g.rejected))


# Indexes: ("i", k) is k folded into [0, n); ("lit", v) passes v (negative, n, n+1, types).
INDEXES = st.one_of(
    *[st.tuples(st.just("i"), st.integers(0, 31))] * 4,
    st.tuples(st.just("lit"), st.sampled_from(["-1", "-n", "n", "n+1"])),
    st.tuples(st.just("lit"), BAD_TYPES),
)
DELTAS = st.one_of(
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.sampled_from([(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -1]),
    BAD_TYPES,
)
COUNTER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), INDEXES, DELTAS),
        st.tuples(st.just("add"), INDEXES, DELTAS),
        st.tuples(st.just("add1"), INDEXES),
        st.tuples(st.just("get"), INDEXES),
        st.just(("snapshot",)),
    ),
    min_size=1,
    max_size=40,
)


def index(spec: tuple[str, Any], n: int) -> Any:
    if spec[0] == "i":
        return spec[1] % n
    lit = spec[1]
    return {"-1": -1, "-n": -n, "n": n, "n+1": n + 1}.get(lit, lit) if isinstance(lit, str) else lit


@SETTINGS
@given(n=st.one_of(*[st.integers(1, 32)] * 5, BAD, st.sampled_from([0, 33])), ops=COUNTER_OPS)
def test_counters(n: Any, ops: list[tuple[Any, ...]]) -> None:
    pair = Pair(f"Counters({n!r})", lambda m: m.Counters(n))
    if not pair.ok:
        return
    size = len(pair.p)
    for op in ops:
        if op[0] == "add":
            i, d = index(op[1], size), op[2]
            pair.call("add", i, d)
        elif op[0] == "add1":
            i = index(op[1], size)
            pair.call("add", i)
        elif op[0] == "get":
            i = index(op[1], size)
            pair.call("get", i)
        else:
            pair.call("snapshot")
        pair.state(lambda c: (len(c), c.snapshot()))


# ---- KeyedBuckets ------------------------------------------------------------------------

SECRET = bytes(range(16))
KEYS = [
    "a",
    "b",
    "c",
    "user-1",
    "user-2",
    "ключ",
    b"a",
    b"\x00",
    "",
    "x" * 64,
    b"k3",
    "k4",
    "k5",
    "k6",
    "k7",
    "k8",
    "k9",
]
BAD_KEYS = st.sampled_from([None, 1, "x" * 65, "é" * 33, b"y" * 65, bytearray(b"a")])
KEY = st.one_of(*[st.sampled_from(KEYS)] * 8, BAD_KEYS)
KEYED_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("try"), CLOCK, KEY),
        st.tuples(st.just("try"), CLOCK, KEY),
        st.tuples(st.just("try_n"), CLOCK, KEY, TOKENS),
        st.tuples(st.just("reserve"), CLOCK, KEY, TOKENS, WAITS),
        st.tuples(st.just("refund"), CLOCK, KEY, TOKENS),
        st.tuples(st.just("available"), CLOCK, KEY),
        st.tuples(st.just("count"), CLOCK),
    ),
    min_size=1,
    max_size=40,
)


def keyed_view(now: int, key: Any) -> Callable[[Any], Any]:
    keys = [*KEYS[:3], key] if isinstance(key, (str, bytes)) and len(key) <= 64 else KEYS[:3]

    def view(k: Any) -> Any:
        return (
            k.admitted,
            k.rejected,
            k.evicted,
            k.inserted,
            k.burst,
            k.interval_ns,
            k.max_keys,
            k.rate,
            k.count(now),
            [k.available(x, now) for x in keys],
        )

    return view


@SETTINGS
@given(
    rate=st.one_of(RATES, RATES, RATES, RATES, RATES, RATES, BAD_CTOR),
    burst=st.one_of(BURSTS, BURSTS, BURSTS, BURSTS, BURSTS, BURSTS, BAD_CTOR),
    max_keys=st.one_of(
        st.integers(1, 20),
        st.integers(1, 20),
        st.integers(1, 20),
        st.integers(1, 20),
        st.just(1000),
        BAD,
        st.just(0),
    ),
    on_full=st.one_of(
        st.sampled_from([0, 1]),
        st.sampled_from([0, 1]),
        st.sampled_from([0, 1]),
        st.sampled_from([2, -1, True, 0.0, None]),
    ),
    start=START,
    ops=KEYED_OPS,
)
def test_keyed_buckets(
    rate: Any, burst: Any, max_keys: Any, on_full: Any, start: int, ops: list[tuple[Any, ...]]
) -> None:
    pair = Pair(
        f"KeyedBuckets({rate!r}, {burst!r}, {max_keys!r}, on_full={on_full!r})",
        lambda m: m.KeyedBuckets(rate, burst, max_keys, secret=SECRET, on_full=on_full),
    )
    if not pair.ok:
        return
    bst, interval = pair.p.burst, pair.p.interval_ns
    now = start
    for op in ops:
        now, t = tick(now, op[1], 2 * interval)
        key = op[2] if len(op) > 2 else None
        if op[0] == "try":
            pair.call("try_acquire", key, t)
        elif op[0] == "try_n":
            n = tokens(op[3], bst)
            pair.call("try_acquire", key, t, n)
        elif op[0] == "reserve":
            n, w = tokens(op[3], bst), wait(op[4], bst * interval)
            pair.call("reserve", key, t, n, w)
        elif op[0] == "refund":
            n = tokens(op[3], bst)
            pair.call("refund", key, t, n)
        elif op[0] == "available":
            pair.call("available", key, t)
        else:
            pair.call("count", t)
        pair.state(keyed_view(now, key))


@pytest.mark.parametrize("bad_secret", [b"short", b"x" * 17, "0123456789abcdef", 16])
def test_keyed_bad_secret(bad_secret: Any) -> None:
    pair = Pair(
        f"KeyedBuckets(secret={bad_secret!r})",
        lambda m: m.KeyedBuckets(10, 5, 4, secret=bad_secret),
    )
    assert not pair.ok


def test_keyed_default_secret() -> None:
    # Without a secret each table draws its own: both implementations accept None.
    assert P.KeyedBuckets(10, 5, 4).burst == C.KeyedBuckets(10, 5, 4).burst == 5


# ---- same names -------------------------------------------------------------------------


def test_same_public_names() -> None:
    assert sorted(P.__all__) == sorted(C.__all__)
    for name in P.__all__:
        assert hasattr(C, name), name
        vp, vc = getattr(P, name), getattr(C, name)
        if isinstance(vp, int):
            assert vp == vc, name


# ---- minimal reproductions of the mismatches the random tests found --------------------
# Each compares the two implementations on one short sequence; both must do the same.


def run_both(script: Callable[[Any], Any]) -> None:
    rp, rc = outcome(lambda: script(P)), outcome(lambda: script(C))
    assert rp == rc, f"twin {rp} != C {rc}"


def _swallow(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(TypeError, ValueError):
        fn()


def test_bucket_constructor_large_burst_over_rate() -> None:
    # C refuses a large burst * interval_ns (> 2**60); the twin accepts it.
    run_both(lambda m: m.TokenBucket(0.001, 1 << 31).burst)


def test_bucket_reserve_huge_max_wait() -> None:
    # C clamps max_wait_ns (to 2**60); the twin admits any wait up to max_wait_ns.
    def script(m: Any) -> list[int]:
        b = m.TokenBucket(1, 1 << 30)
        return [b.reserve(0, 1 << 30, 1 << 62) for _ in range(3)]

    run_both(script)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m.TokenBucket(10, 5).try_acquire(1.5), id="try_acquire-now"),
        pytest.param(lambda m: m.TokenBucket(10, 5).available(2.0), id="available-now"),
        pytest.param(lambda m: m.TokenBucket(10, 5).try_acquire(0, 1.0), id="try_acquire-n"),
        pytest.param(lambda m: m.TokenBucket(10, 5).reserve(0, 1, 1.5), id="reserve-max_wait"),
        pytest.param(lambda m: m.TokenBucket(10, 5).reserve(0, 1, -0.5), id="reserve-neg-max_wait"),
        pytest.param(lambda m: m.Circuit(0.5, 4, 10**9, 10**9).admit(1.5), id="admit-now"),
        pytest.param(
            lambda m: m.Circuit(0.5, 4, 10**9, 10**9).retry_after_ns(-1), id="retry_after-neg-now"
        ),
        pytest.param(
            lambda m: m.Circuit(0.5, 4, 10**9, 10**9).retry_after_ns(1 << 59),
            id="retry_after-big-now",
        ),
        pytest.param(
            lambda m: m.Circuit(0.5, 4, 10**9, 10**9, max_break_duration_ns=10**10).break_for(1.5),
            id="break_for-float",
        ),
        pytest.param(lambda m: m.Counters(3).get(-1), id="counters-get-neg"),
        pytest.param(
            lambda m: (lambda c: (c.add(-1), c.snapshot()))(m.Counters(3)),
            id="counters-add-neg-index",
        ),
        pytest.param(
            lambda m: (lambda c: (c.add(0, -1), c.snapshot()))(m.Counters(3)),
            id="counters-add-neg-d",
        ),
        pytest.param(
            lambda m: (lambda c: (c.add(0, 1.5), c.snapshot()))(m.Counters(3)),
            id="counters-add-float-d",
        ),
        pytest.param(
            lambda m: (lambda c: (c.add(0, 1 << 64), c.snapshot()))(m.Counters(1)),
            id="counters-add-2**64",
        ),
        pytest.param(
            lambda m: (lambda c: (c.add(0, (1 << 64) - 1), c.add(0, 2), c.get(0)))(m.Counters(1)),
            id="counters-wrap",
        ),
    ],
)
def test_argument_handling(call: Callable[[Any], Any]) -> None:
    run_both(call)


def test_time_window_bad_outcome_changes_nothing() -> None:
    def script(m: Any) -> Any:
        w = m.TimeWindow(1000, 10)
        _swallow(lambda: w.record(0, None))
        return w.snapshot(0)

    run_both(script)


def test_count_window_bad_outcome_changes_nothing() -> None:
    def script(m: Any) -> Any:
        w = m.CountWindow(2)
        w.record(0)
        _swallow(lambda: w.record(None))
        w.record(0)
        return w.snapshot()

    run_both(script)


def test_circuit_bad_ticket_changes_nothing() -> None:
    def script(m: Any) -> Any:
        c = m.Circuit(0.5, 4, 10**9, 10**9)
        _swallow(lambda: c.record(None, 0))
        return (c.successes, c.failures)

    run_both(script)


@pytest.mark.parametrize("brk", [1 << 58, 15 << 55])
def test_circuit_ticket_at_far_times(brk: int) -> None:
    # A probe whose lease ends at or after 2**59 ns packs into a word with bit 63 set;
    # with the lease at or after 15 * 2**56 ns, bits 60-63 are all set.
    def script(m: Any) -> Any:
        c = m.Circuit(0.5, 1, 10**9, brk)
        c.record(c.admit(0), 0, m.OUTCOME_FAILURE)
        return c.admit(-(-brk // U) * U)

    run_both(script)


def test_keyed_bad_now_changes_nothing() -> None:
    # The twin inserts the key before it fails on a float now_ns, leaving the entry with
    # its "being written" sentinel tat: the key is then refused for ~146 years.
    def script(m: Any) -> Any:
        k = m.KeyedBuckets(1, 1, 8, secret=SECRET)
        _swallow(lambda: k.try_acquire("a", 1.5))
        return (k.inserted, k.count(0), k.available("a", 0), k.try_acquire("a", 0))

    run_both(script)


def test_keyed_float_max_wait() -> None:
    run_both(lambda m: m.KeyedBuckets(1, 1, 8, secret=SECRET).reserve("a", 0, 1, 1.5))
