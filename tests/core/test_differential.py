"""Differential tests: the compiled core and its pure-Python twin, step by step.

Both modules are imported directly (not through the `core` fixture): every test drives
one object of each implementation with the same random sequence of operations and
requires, after every step, the same return value (same type and value), the same
exception, and the same counters and observable state. A compiled core that cannot be
imported FAILS these tests: a differential test that skips proves nothing.

Exceptions compare by type; a ValueError also by message, because its text comes from
the shared argument checks (`resilio._core_args`) and names the bad argument.
Arguments are mostly valid, with a share of out-of-range ints (the ValueError paths)
and of wrong types (float, bool, None, str) mixed in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
    except Exception as e:  # noqa: BLE001 - every exception is part of the contract
        return ("raise", type(e).__name__, str(e) if isinstance(e, ValueError) else None)
    return ("ok", repr(r))  # repr: 0 != 0.0 != False, tuples compared element-wise


def same(label: str, fp: Callable[[], Any], fc: Callable[[], Any], log: list[str]) -> Any:
    rp, rc = outcome(fp), outcome(fc)
    log.append(f"{label} -> {rp[1:]}")
    assert rp == rc, "twin and C differ at step:\n  " + "\n  ".join(log) + f"\n  py={rp} c={rc}"
    return rp


def same_state(label: str, view: Callable[[Any], Any], p: Any, c: Any, log: list[str]) -> None:
    same(f"  state after {label}", lambda: view(p), lambda: view(c), log)


def build(label: str, ctor_p: Callable[[], Any], ctor_c: Callable[[], Any], log: list[str]):
    """Construct one object per implementation; None when both refused the args."""
    r = same(label, lambda: type(ctor_p()).__name__, lambda: type(ctor_c()).__name__, log)
    if r[0] == "raise":
        return None
    return ctor_p(), ctor_c()


# ---- argument strategies -------------------------------------------------------------

BAD_TYPES = st.sampled_from([1.5, 0.0, None, "1", True, False])
BAD_INTS = st.sampled_from([-1, -(10**12), MAX_NOW, MAX_NOW + 1, 1 << 63, 1 << 64, 1 << 70])


BAD_ARG = st.one_of(BAD_INTS, BAD_TYPES, st.sampled_from([0, -0.5, float("nan"), float("inf")]))


def maybe_bad(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `good`; sometimes an out-of-range int or a wrong type."""
    return st.one_of(good, good, good, good, good, good, good, good, BAD_INTS, BAD_TYPES)


def clock_step(data: st.DataObject, now: int, scale: int) -> tuple[int, Any]:
    """Advance a fake clock: (new clock, now_ns to pass). Mostly non-decreasing; some
    calls lag, jump or pass an invalid now_ns (the clock itself stays valid)."""
    kind = data.draw(st.sampled_from(["same", "fwd", "fwd", "fwd", "fwd", "lag", "jump", "bad"]))
    if kind == "same":
        return now, now
    if kind == "fwd":
        new = min(now + data.draw(st.integers(0, scale)), MAX_NOW - 1)
        return new, new
    if kind == "lag":
        return now, max(0, now - data.draw(st.integers(0, 3 * scale)))
    if kind == "jump":
        new = data.draw(st.one_of(st.integers(0, MAX_NOW - 1), st.sampled_from([0, MAX_NOW - 1])))
        return new, new
    return now, data.draw(st.one_of(BAD_INTS, BAD_TYPES))


START = st.one_of(
    st.sampled_from([0, 1, 10**15, MAX_NOW - 10**12, MAX_NOW - 1]),
    st.integers(0, MAX_NOW - 1),
)
OUTCOMES = st.one_of(
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([4, 7, -1, -2, 1 << 64, (1 << 70) + 1]),
    BAD_TYPES,
)


# ---- TokenBucket ---------------------------------------------------------------------

RATES = st.one_of(
    st.sampled_from([1, 3, 7, 10.0, 0.5, 1e9, 2.5e8, 333.3, 1e-3, 1e12]),
    st.floats(min_value=1e-3, max_value=2e9),
)
BURSTS = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 1 << 31]))


def bucket_view(b: Any, now: int) -> tuple[Any, ...]:
    i = b.interval_ns
    return (
        b.admitted,
        b.rejected,
        b.burst,
        b.interval_ns,
        b.rate,
        [b.available(min(now + k * i, MAX_NOW - 1)) for k in (0, 1, 3)],
    )


@SETTINGS
@given(data=st.data())
def test_token_bucket(data: st.DataObject) -> None:
    log: list[str] = []
    rate = data.draw(RATES if data.draw(st.integers(0, 7)) else BAD_ARG, "rate")
    burst = data.draw(BURSTS if data.draw(st.integers(0, 7)) else BAD_ARG, "burst")
    objs = build(f"TokenBucket({rate!r}, {burst!r})",
                 lambda: P.TokenBucket(rate, burst), lambda: C.TokenBucket(rate, burst), log)
    if objs is None:
        return
    p, c = objs
    bst, interval = p.burst, p.interval_ns
    now = data.draw(START, "start")
    ns = st.integers(1, min(bst, 40))
    waits = st.one_of(st.integers(0, 3 * bst * interval), st.integers(0, 2 * interval),
                      st.sampled_from([(1 << 61) - 1, 1 << 61, 1 << 62, (1 << 63) - 1]))
    for _ in range(data.draw(st.integers(1, 40))):
        now, t = clock_step(data, now, 2 * interval)
        op = data.draw(st.sampled_from(["try", "try", "try_n", "reserve", "refund", "avail"]))
        if op == "try":
            label = f"try_acquire({t!r})"
            same(label, lambda: p.try_acquire(t), lambda: c.try_acquire(t), log)
        elif op == "try_n":
            n = data.draw(maybe_bad(ns))
            label = f"try_acquire({t!r}, {n!r})"
            same(label, lambda: p.try_acquire(t, n), lambda: c.try_acquire(t, n), log)
        elif op == "reserve":
            n = data.draw(maybe_bad(ns))
            mw = data.draw(st.one_of(waits, st.integers(-3, -1), BAD_TYPES))
            label = f"reserve({t!r}, {n!r}, {mw!r})"
            same(label, lambda: p.reserve(t, n, mw), lambda: c.reserve(t, n, mw), log)
        elif op == "refund":
            n = data.draw(maybe_bad(ns))
            label = f"refund({t!r}, {n!r})"
            same(label, lambda: p.refund(t, n), lambda: c.refund(t, n), log)
        else:
            label = f"available({t!r})"
            same(label, lambda: p.available(t), lambda: c.available(t), log)
        same_state(label, lambda o: bucket_view(o, now), p, c, log)


# ---- TimeWindow / CountWindow ------------------------------------------------------------


def twindow_view(w: Any, now: int) -> tuple[Any, ...]:
    span = w.width_ns * w.buckets
    times = [now, max(0, now - w.width_ns), min(now + w.width_ns, MAX_NOW - 1),
             min(now + span, MAX_NOW - 1)]
    return (w.width_ns, w.buckets, [w.snapshot(x) for x in times])


@SETTINGS
@given(data=st.data())
def test_time_window(data: st.DataObject) -> None:
    log: list[str] = []
    duration = data.draw(maybe_bad(st.one_of(st.integers(1, 10_000),
                                             st.sampled_from([1, MAX_NOW, 10**9]))))
    nb = data.draw(maybe_bad(st.integers(1, 64)))
    objs = build(f"TimeWindow({duration!r}, {nb!r})",
                 lambda: P.TimeWindow(duration, nb), lambda: C.TimeWindow(duration, nb), log)
    if objs is None:
        return
    p, c = objs
    now = data.draw(START)
    scale = p.width_ns * 2
    for _ in range(data.draw(st.integers(1, 60))):
        now, t = clock_step(data, now, scale)
        op = data.draw(st.sampled_from(["record", "record", "record", "snapshot", "reset"]))
        if op == "record":
            o = data.draw(OUTCOMES)
            label = f"record({t!r}, {o!r})"
            same(label, lambda: p.record(t, o), lambda: c.record(t, o), log)
        elif op == "snapshot":
            label = f"snapshot({t!r})"
            same(label, lambda: p.snapshot(t), lambda: c.snapshot(t), log)
        else:
            label = f"reset({t!r})"
            same(label, lambda: p.reset(t), lambda: c.reset(t), log)
        same_state(label, lambda o: twindow_view(o, now), p, c, log)


def test_time_window_default_buckets() -> None:
    assert P.TimeWindow(1000).buckets == C.TimeWindow(1000).buckets == 10


@SETTINGS
@given(data=st.data())
def test_count_window(data: st.DataObject) -> None:
    log: list[str] = []
    size = data.draw(maybe_bad(st.one_of(st.integers(1, 12), st.sampled_from([1024]))))
    objs = build(f"CountWindow({size!r})",
                 lambda: P.CountWindow(size), lambda: C.CountWindow(size), log)
    if objs is None:
        return
    p, c = objs
    for _ in range(data.draw(st.integers(1, 80))):
        op = data.draw(st.sampled_from(["record", "record", "record", "record_default",
                                        "snapshot", "reset"]))
        if op == "record":
            o = data.draw(OUTCOMES)
            label = f"record({o!r})"
            same(label, lambda: p.record(o), lambda: c.record(o), log)
        elif op == "record_default":
            label = "record()"
            same(label, p.record, c.record, log)
        elif op == "snapshot":
            label = "snapshot()"
            same(label, p.snapshot, c.snapshot, log)
        else:
            label = "reset()"
            same(label, p.reset, c.reset, log)
        same_state(label, lambda o: (o.size, o.snapshot()), p, c, log)


# ---- Circuit ---------------------------------------------------------------------------

COUNTER_NAMES = ("admitted", "rejected", "successes", "failures", "slow", "opened",
                 "half_opened", "closed", "isolated", "stale")


def circuit_view(cb: Any, now: int) -> tuple[Any, ...]:
    return (
        cb.state,
        cb.word,
        cb.in_flight_probes,
        cb.half_open_calls,
        tuple(getattr(cb, n) for n in COUNTER_NAMES),
        cb.retry_after_ns(now),
        cb.snapshot(now),
    )


@st.composite
def circuit_kwargs(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ratio = draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0, 1e-9, 1 / 3, 0.6]))
    min_tp = draw(st.integers(1, 6))
    sampling = draw(st.one_of(st.integers(1, 40 * U), st.sampled_from([10**9])))
    brk = draw(st.one_of(st.integers(1, 8 * U), st.sampled_from([U, 3 * U, 10**9]),
                         st.sampled_from([1 << 57, 1 << 58, MAX_NOW]), st.integers(1, MAX_NOW)))
    kw: dict[str, Any] = {}
    if draw(st.booleans()):
        kw["max_break_duration_ns"] = draw(st.one_of(
            st.just(0), st.integers(brk, min(20 * brk, MAX_NOW)), st.just(MAX_NOW)))
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
        bad = draw(st.one_of(BAD_INTS, BAD_TYPES, st.sampled_from([0, 1.5, 32, 65, 2.0])))
        where = draw(st.sampled_from([0, 1, 2, 3, "max_break_duration_ns", "half_open_calls",
                                      "slow_call_ratio", "buckets", "now_ns"]))
        if isinstance(where, int):
            args[where] = bad
        else:
            kw[where] = bad
    return tuple(args), kw


@SETTINGS
@given(data=st.data())
def test_circuit(data: st.DataObject) -> None:
    log: list[str] = []
    args, kw = data.draw(circuit_kwargs())
    objs = build(f"Circuit{args!r} {kw!r}",
                 lambda: P.Circuit(*args, **kw), lambda: C.Circuit(*args, **kw), log)
    if objs is None:
        return
    p, c = objs
    now = kw.get("now_ns", 0)
    brk = args[3]
    scale = max(2 * brk, 2 * U)
    tickets: list[tuple[Any, Any]] = []  # (twin's ticket, C's ticket), as each returned them
    for _ in range(data.draw(st.integers(1, 60))):
        now, t = clock_step(data, now, scale)
        op = data.draw(st.sampled_from(["admit", "admit", "admit", "record", "record",
                                        "record", "release", "isolate", "reset", "retry",
                                        "break_for"]))
        if op == "admit":
            label = f"admit({t!r})"
            r = same(label, lambda: p.admit(t), lambda: c.admit(t), log)
            if r[0] == "ok":
                tickets.append((int(r[1]), int(r[1])))
        elif op in ("record", "release"):
            if tickets and data.draw(st.integers(0, 9)) > 0:
                tp, tc = tickets[data.draw(st.integers(0, len(tickets) - 1))]
            else:  # a forged or foreign ticket
                tp = tc = data.draw(st.one_of(st.integers(-(1 << 63), (1 << 64) + 5), BAD_TYPES))
            if op == "record":
                o = data.draw(OUTCOMES)
                label = f"record({tp!r}, {t!r}, {o!r})"
                same(label, lambda: p.record(tp, t, o), lambda: c.record(tc, t, o), log)
            else:
                label = f"release({tp!r})"
                same(label, lambda: p.release(tp), lambda: c.release(tc), log)
        elif op == "isolate":
            label = f"isolate({t!r})"
            same(label, lambda: p.isolate(t), lambda: c.isolate(t), log)
        elif op == "reset":
            label = f"reset({t!r})"
            same(label, lambda: p.reset(t), lambda: c.reset(t), log)
        elif op == "retry":
            label = f"retry_after_ns({t!r})"
            same(label, lambda: p.retry_after_ns(t), lambda: c.retry_after_ns(t), log)
        else:
            k = data.draw(st.one_of(st.integers(-2, 70), st.sampled_from([1 << 40, 1.5])))
            label = f"break_for({k!r})"
            same(label, lambda: p.break_for(k), lambda: c.break_for(k), log)
        same_state(label, lambda o: circuit_view(o, now), p, c, log)


# ---- Gate / Counters ----------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_gate(data: st.DataObject) -> None:
    log: list[str] = []
    limit = data.draw(maybe_bad(st.integers(0, 5)))
    objs = build(f"Gate({limit!r})", lambda: P.Gate(limit), lambda: C.Gate(limit), log)
    if objs is None:
        return
    p, c = objs
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(["enter", "enter", "exit", "limit"]))
        if op == "enter":
            label = "try_enter()"
            same(label, p.try_enter, c.try_enter, log)
        elif op == "exit":
            label = "exit()"
            same(label, p.exit, c.exit, log)
        else:
            v = data.draw(maybe_bad(st.one_of(st.integers(0, 6), st.just(1 << 62))))
            label = f"limit = {v!r}"

            def set_limit(g: Any, v: Any = v) -> None:
                g.limit = v

            same(label, lambda: set_limit(p), lambda: set_limit(c), log)
        same_state(label, lambda g: (g.limit, g.in_flight, g.admitted, g.rejected), p, c, log)


@SETTINGS
@given(data=st.data())
def test_counters(data: st.DataObject) -> None:
    log: list[str] = []
    n = data.draw(maybe_bad(st.integers(1, 32)))
    objs = build(f"Counters({n!r})", lambda: P.Counters(n), lambda: C.Counters(n), log)
    if objs is None:
        return
    p, c = objs
    size = len(p)
    idx = st.one_of(st.integers(0, size - 1), st.integers(0, size - 1),
                    st.integers(-size - 1, size + 1), BAD_TYPES)
    deltas = st.one_of(st.integers(0, 1000), st.integers(0, 1000),
                       st.sampled_from([(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -1]),
                       BAD_TYPES)
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(["add", "add", "add1", "get", "snapshot"]))
        if op == "add":
            i, d = data.draw(idx), data.draw(deltas)
            label = f"add({i!r}, {d!r})"
            same(label, lambda: p.add(i, d), lambda: c.add(i, d), log)
        elif op == "add1":
            i = data.draw(idx)
            label = f"add({i!r})"
            same(label, lambda: p.add(i), lambda: c.add(i), log)
        elif op == "get":
            i = data.draw(idx)
            label = f"get({i!r})"
            same(label, lambda: p.get(i), lambda: c.get(i), log)
        else:
            label = "snapshot()"
            same(label, p.snapshot, c.snapshot, log)
        same_state(label, lambda o: (len(o), o.snapshot()), p, c, log)


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
    try:
        fn()
    except (TypeError, ValueError):
        pass


def test_bucket_constructor_large_burst_over_rate() -> None:
    # C refuses burst * interval_ns > 2**61; the twin accepts it.
    run_both(lambda m: m.TokenBucket(0.001, 1 << 31).burst)


def test_bucket_reserve_max_wait_above_2_61() -> None:
    # C clamps max_wait_ns to 2**61; the twin admits waits beyond it.
    def script(m: Any) -> list[int]:
        b = m.TokenBucket(1, 1 << 31)
        return [b.reserve(0, 1 << 31, 1 << 62) for _ in range(3)]

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
        pytest.param(lambda m: m.Circuit(0.5, 4, 10**9, 10**9).retry_after_ns(-1),
                     id="retry_after-neg-now"),
        pytest.param(lambda m: m.Circuit(0.5, 4, 10**9, 10**9).retry_after_ns(1 << 59),
                     id="retry_after-big-now"),
        pytest.param(lambda m: m.Circuit(0.5, 4, 10**9, 10**9,
                                         max_break_duration_ns=10**10).break_for(1.5),
                     id="break_for-float"),
        pytest.param(lambda m: m.Counters(3).get(-1), id="counters-get-neg"),
        pytest.param(lambda m: (lambda c: (c.add(-1), c.snapshot()))(m.Counters(3)),
                     id="counters-add-neg-index"),
        pytest.param(lambda m: (lambda c: (c.add(0, -1), c.snapshot()))(m.Counters(3)),
                     id="counters-add-neg-d"),
        pytest.param(lambda m: (lambda c: (c.add(0, 1.5), c.snapshot()))(m.Counters(3)),
                     id="counters-add-float-d"),
        pytest.param(lambda m: (lambda c: (c.add(0, 1 << 64), c.snapshot()))(m.Counters(1)),
                     id="counters-add-2**64"),
        pytest.param(lambda m: (lambda c: (c.add(0, (1 << 64) - 1), c.add(0, 2), c.get(0)))(
            m.Counters(1)), id="counters-wrap"),
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


def test_circuit_ticket_at_far_times() -> None:
    # A probe admitted at now >= 2**58 with a 2**58 ns break: its lease end does not fit
    # 63 bits once packed, so the word has bit 63 set.
    def script(m: Any) -> Any:
        c = m.Circuit(0.5, 1, 10**9, 1 << 58)
        c.record(c.admit(0), 0, m.OUTCOME_FAILURE)
        return c.admit(1 << 58)

    run_both(script)
