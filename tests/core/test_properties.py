"""Properties of the core, on both implementations.

(a) The token bucket never over-admits, in any interval of the admitted timestamps.
(b) The circuit agrees, step by step, with a small independent reference model written
    from the rules in csrc/rs_circuit.h (a hypothesis RuleBasedStateMachine, run once per
    implementation).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

MAX_NOW = 1 << 59
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---- (a) the bucket never over-admits ------------------------------------------------

RATES = st.one_of(
    st.integers(1, 10**6),
    st.floats(min_value=0.01, max_value=1e7, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 3.0, 7.0, 10.0, 1e9, 2.5e8, 0.3, 0.1]),
)


@st.composite
def requests(draw: st.DrawFn, interval: int, burst: int) -> list[tuple[int, str, int, int]]:
    """(time step, op, n, max_wait): mostly bursts at one instant and short gaps."""
    steps = st.one_of(
        st.just(0),
        st.just(0),
        st.integers(0, interval),
        st.integers(0, 3 * interval),
        st.sampled_from([interval - 1, interval, interval + 1, burst * interval]),
        st.integers(0, 10 * burst * interval),
    )
    op = st.sampled_from(["try", "try", "try", "reserve"])
    n = st.integers(1, burst)
    wait = st.one_of(st.just(0), st.integers(0, 2 * burst * interval))
    return draw(st.lists(st.tuples(steps, op, n, wait), min_size=1, max_size=120))


def check_no_over_admission(
    events: list[tuple[int, int]], interval: int, burst: int, rate: float
) -> None:
    """events: (time the tokens are used, tokens), in admission order."""
    times = [t for t, _ in events]
    assert times == sorted(times), "usage times must not go backwards with a monotone clock"
    prefix = [0]
    for _, k in events:
        prefix.append(prefix[-1] + k)
    exact_rate = Fraction(rate)
    # Every interval between two admitted instants, each end taking all the events at
    # its instant (the worst case for that interval).
    firsts = [i for i in range(len(times)) if i == 0 or times[i] != times[i - 1]]
    lasts = [i for i in range(len(times)) if i == len(times) - 1 or times[i] != times[i + 1]]
    for first in firsts:
        for last in lasts:
            if last < first:
                continue
            span = times[last] - times[first]
            tokens = prefix[last + 1] - prefix[first]
            assert tokens <= burst + span // interval, (
                f"{tokens} tokens in [{times[first]}, {times[last]}] > burst {burst} + "
                f"{span} // {interval}"
            )
            assert tokens <= burst + exact_rate * Fraction(span, 10**9), (
                f"{tokens} tokens in {span} ns > burst {burst} + rate {rate!r} * T"
            )


@SETTINGS
@given(
    data=st.data(),
    rate=RATES,
    burst=st.integers(1, 12),
    start=st.sampled_from([0, 1, 10**15, MAX_NOW // 2]),
)
def test_bucket_never_over_admits(
    core: Any, data: st.DataObject, rate: float, burst: int, start: int
) -> None:
    b = core.TokenBucket(rate, burst)
    interval = b.interval_ns
    # The rate bound assumes interval_ns >= 1e9 / rate exactly; that is checked on its
    # own in test_interval_never_shorter_than_the_exact_period.
    assume(Fraction(interval) >= Fraction(10**9) / Fraction(rate))
    now = start
    events: list[tuple[int, int]] = []
    for step, op, n, max_wait in data.draw(requests(interval, burst)):
        now = min(now + step, MAX_NOW - 1)
        if op == "try":
            if b.try_acquire(now, n) == 0:
                events.append((now, n))
        else:
            w = b.reserve(now, n, max_wait)
            if w >= 0:
                assert w <= max_wait
                events.append((now + w, n))
            else:
                assert -w > max_wait
    check_no_over_admission(events, interval, burst, rate)
    assert b.admitted == len(events)


@SETTINGS
@given(rate=RATES, burst=st.integers(1, 12), steps=st.integers(0, 60))
def test_greedy_client_gets_exactly_the_bound(
    core: Any, rate: float, burst: int, steps: int
) -> None:
    """A client that always retries at the returned wait is admitted exactly on schedule:
    the bucket is tight, not merely safe."""
    b = core.TokenBucket(rate, burst)
    interval = b.interval_ns
    now = 10**12
    for _ in range(burst):
        assert b.try_acquire(now) == 0
    for _ in range(steps):
        w = b.try_acquire(now)
        assert w == interval
        now += w
        assert b.try_acquire(now) == 0


@pytest.mark.parametrize(
    "rate", [1 / 3, 1 / 7, 2 / 3, 1 / 6, 0.1, 0.3, 3.0, 7.0, 100.0, 1e9 / 3, 1e6 / 3]
)
def test_interval_never_shorter_than_the_exact_period(core: Any, rate: float) -> None:
    """csrc/rs_token_bucket.h: interval_ns = ceil(1e9 / rate), so that at most
    burst + floor(T / interval) <= burst + rate*T tokens pass in any T. The ceiling must be
    of the exact quotient: a float quotient that rounds down onto an integer loses it."""
    b = core.TokenBucket(rate, 1)
    exact = Fraction(10**9) / Fraction(rate)
    assert b.interval_ns == math.ceil(exact)


# ---- (b) circuit state machine against a reference model ---------------------------------

UNIT = 1 << 16
CLOSED, OPEN, HALF_OPEN, ISOLATED = range(4)


def ceil_unit(ns: int) -> int:
    return -(-ns // UNIT) * UNIT


class CircuitModel:
    """The circuit's rules, written out plainly (no bit packing, no CAS).

    - CLOSED: every call is admitted. Outcomes of calls admitted in this closed period go
      into a sliding window of `buckets` buckets of ceil(sampling / buckets) ns; when the
      window holds >= minimum_throughput calls and failures/calls >= failure_ratio (or
      slow/calls >= slow_call_ratio), the circuit opens.
    - OPEN: rejected until the break ends; the n-th consecutive open breaks for
      min(break * 2**(n-1), max_break) (constant when max_break is 0), and the end is
      rounded up to a 2**16 ns unit. Past that, admit starts a half-open period.
    - HALF_OPEN: at most half_open_calls probes in flight; a success frees its permit and
      after half_open_calls successes the circuit closes with an empty window and forgets
      its opens; a failure opens it again. A probe lease lasts the current break,
      break_for(opens) (rounded up); when every permit is taken and the lease has run
      out, admit starts a fresh half-open period.
    - ISOLATED: rejected until reset. reset closes from any state with an empty window.
    - A ticket is valid only in the state period it was admitted in; release gives a probe
      permit back. As the header documents, a period is known by its identity: (state,
      consecutive opens, generation mod 16, the period's time in 2**16 ns units), so an
      old ticket whose identity recurs is accepted (see
      test_circuit.py::test_ticket_stale_after_sixteen_resets_in_one_time_unit).
    """

    def __init__(
        self,
        ratio: Fraction,
        slow_ratio: Fraction | None,
        min_tp: int,
        sampling: int,
        buckets: int,
        brk: int,
        max_brk: int,
        hoc: int,
        now: int,
    ) -> None:
        self.ratio, self.slow_ratio, self.min_tp = ratio, slow_ratio, min_tp
        self.width = -(-sampling // buckets)
        self.buckets = buckets
        self.brk, self.max_brk, self.hoc = brk, max_brk, hoc
        self.state = CLOSED
        self.began = now // UNIT
        self.generation = 0
        self.opens = 0
        self.permits = 0
        self.successes_in_half_open = 0
        self.until = 0  # OPEN: break end; HALF_OPEN: lease end
        self.window: list[tuple[int, bool, bool]] = []  # (bucket index, failed, slow)
        self.count = dict.fromkeys(
            [
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
            ],
            0,
        )

    def break_for(self, opens: int) -> int:
        if self.max_brk == 0:
            return self.brk
        return min(self.brk * 2 ** (opens - 1), self.max_brk)

    def _transition(self, state: int, now: int) -> None:
        self.state = state
        self.generation += 1
        self.permits = 0
        self.successes_in_half_open = 0
        self.began = now // UNIT  # CLOSED / ISOLATED: when the period began

    @property
    def period(self) -> tuple[int, int, int, int]:
        """The identity a ticket carries."""
        when = self.began if self.state in (CLOSED, ISOLATED) else self.until // UNIT
        return (self.state, self.opens, self.generation % 16, when)

    def _open(self, now: int) -> None:
        self.opens = min(self.opens + 1, 15)
        self._transition(OPEN, now)
        self.until = ceil_unit(now + self.break_for(self.opens))
        self.count["opened"] += 1

    def _half_open(self, now: int) -> None:
        self._transition(HALF_OPEN, now)
        self.permits = 1
        self.until = ceil_unit(now + self.break_for(self.opens))
        self.count["half_opened"] += 1

    def snapshot(self, now: int) -> tuple[int, int, int]:
        cur = now // self.width
        live = [r for r in self.window if cur - self.buckets < r[0] <= cur]
        return len(live), sum(r[1] for r in live), sum(r[2] for r in live)

    def admit(self, now: int) -> tuple[str, Any]:
        """("ticket", period) or ("wait", ns) or ("isolated", None)."""
        if self.state == ISOLATED:
            self.count["rejected"] += 1
            return ("isolated", None)
        if self.state == OPEN:
            if now < self.until:
                self.count["rejected"] += 1
                return ("wait", self.until - now)
            self._half_open(now)
        elif self.state == HALF_OPEN:
            if self.permits < self.hoc:
                self.permits += 1
            elif now >= self.until:
                self._half_open(now)
            else:
                self.count["rejected"] += 1
                return ("wait", self.until - now)
        self.count["admitted"] += 1
        return ("ticket", self.period)

    def record(self, period: tuple[int, ...], now: int, failed: bool, slow: bool) -> int:
        self.count["failures" if failed else "successes"] += 1
        self.count["slow"] += slow
        if period != self.period:
            self.count["stale"] += 1
            return -1
        if self.state == CLOSED:
            self.window.append((now // self.width, failed, slow))
            calls, failures, slows = self.snapshot(now)
            trip = calls >= self.min_tp and (
                Fraction(failures, calls) >= self.ratio
                or (self.slow_ratio is not None and Fraction(slows, calls) >= self.slow_ratio)
            )
            if trip:
                self._open(now)
                return OPEN
            return -1
        # HALF_OPEN (a ticket of an OPEN or ISOLATED period cannot exist)
        assert self.state == HALF_OPEN
        if failed:
            self._open(now)
            return OPEN
        self.successes_in_half_open += 1
        if self.successes_in_half_open >= self.hoc:
            self.opens = 0
            self._transition(CLOSED, now)
            self.window.clear()
            self.count["closed"] += 1
            return CLOSED
        self.permits = max(self.permits - 1, 0)
        return -1

    def release(self, period: tuple[int, ...]) -> None:
        if period == self.period and self.state == HALF_OPEN and self.permits > 0:
            self.permits -= 1

    def isolate(self, now: int) -> None:
        if self.state != ISOLATED:
            self.opens = 0
            self._transition(ISOLATED, now)
            self.count["isolated"] += 1

    def reset(self, now: int) -> None:
        if self.state != CLOSED:
            self.count["closed"] += 1
        self.opens = 0
        self._transition(CLOSED, now)
        self.window.clear()

    def retry_after(self, now: int) -> int:
        if self.state == CLOSED:
            return 0
        if self.state == ISOLATED:
            return -1
        if self.state == HALF_OPEN and self.permits < self.hoc:
            return 0
        return max(self.until - now, 0)


RATIOS = {
    0.1: Fraction(1, 10),
    0.25: Fraction(1, 4),
    0.5: Fraction(1, 2),
    0.75: Fraction(3, 4),
    1.0: Fraction(1),
}


class CircuitMachine(RuleBasedStateMachine):
    core: Any = None  # set per implementation

    def __init__(self) -> None:
        super().__init__()
        # (implementation's ticket, the model's identity of its period)
        self.tickets: list[tuple[int, tuple[int, ...]]] = []
        self.transitions = 0

    @initialize(
        ratio=st.sampled_from(sorted(RATIOS)),
        slow_ratio=st.sampled_from([None, 0.5, 1.0, 0.25]),
        min_tp=st.integers(1, 5),
        buckets=st.integers(1, 8),
        sampling=st.one_of(st.integers(1, 20 * UNIT), st.just(10**9)),
        brk=st.one_of(st.integers(1, 5 * UNIT), st.sampled_from([UNIT, 10**8])),
        max_factor=st.sampled_from([0, 0, 1, 2, 5, 100]),
        hoc=st.integers(1, 4),
        start=st.sampled_from([0, 12_345, 10**15 + 1]),
    )
    def setup(
        self,
        ratio: float,
        slow_ratio: float | None,
        min_tp: int,
        buckets: int,
        sampling: int,
        brk: int,
        max_factor: int,
        hoc: int,
        start: int,
    ) -> None:
        max_brk = brk * max_factor
        self.now = start
        self.c = self.core.Circuit(
            ratio,
            min_tp,
            sampling,
            brk,
            max_break_duration_ns=max_brk,
            half_open_calls=hoc,
            slow_call_ratio=slow_ratio,
            buckets=buckets,
            now_ns=start,
        )
        self.m = CircuitModel(
            RATIOS[ratio],
            None if slow_ratio is None else RATIOS[slow_ratio],
            min_tp,
            sampling,
            buckets,
            brk,
            max_brk,
            hoc,
            start,
        )

    # -- time --
    @rule(dt=st.one_of(st.integers(0, 3), st.integers(0, UNIT), st.integers(0, 10**9)))
    def advance(self, dt: int) -> None:
        self.now += dt

    @precondition(lambda self: self.m.state in (OPEN, HALF_OPEN))
    @rule(before=st.booleans())
    def advance_to_boundary(self, before: bool) -> None:
        """Step to the exact ns a break or lease ends, or the one before it."""
        target = self.m.until - (1 if before else 0)
        if target > self.now:
            self.now = target

    # -- calls --
    @rule()
    def admit(self) -> None:
        kind, value = self.m.admit(self.now)
        r = self.c.admit(self.now)
        if kind == "ticket":
            assert r >= 0, f"model admits, implementation returned {r}"
            self.tickets.append((r, value))
        elif kind == "isolated":
            assert r == self.core.ADMIT_ISOLATED
        else:
            assert r == -value - 1, f"rejection: expected wait {value}, got {-r - 1}"

    def _take(self, data: st.DataObject) -> tuple[int, tuple[int, ...]]:
        i = data.draw(st.integers(0, len(self.tickets) - 1))
        return self.tickets.pop(i)

    @precondition(lambda self: self.tickets)
    @rule(data=st.data(), failed=st.booleans(), slow=st.booleans())
    def record(self, data: st.DataObject, failed: bool, slow: bool) -> None:
        ticket, period = self._take(data)
        outcome = (self.core.OUTCOME_FAILURE if failed else 0) | (
            self.core.OUTCOME_SLOW if slow else 0
        )
        expected = self.m.record(period, self.now, failed, slow)
        got = self.c.record(ticket, self.now, outcome)
        assert got == expected, f"record -> {got}, model says {expected}"

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ticket, period = self._take(data)
        self.m.release(period)
        self.c.release(ticket)

    @rule()
    def isolate(self) -> None:
        self.m.isolate(self.now)
        self.c.isolate(self.now)

    @rule()
    def reset(self) -> None:
        self.m.reset(self.now)
        self.c.reset(self.now)

    # -- agreement after every step --
    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "m"):
            return
        c, m = self.c, self.m
        assert c.state == m.state
        assert c.retry_after_ns(self.now) == m.retry_after(self.now)
        assert c.in_flight_probes == (m.permits if m.state == HALF_OPEN else 0)
        assert {k: getattr(c, k) for k in m.count} == m.count
        assert c.snapshot(self.now) == m.snapshot(self.now)


def test_circuit_matches_reference_model(core: Any) -> None:
    machine = type(
        f"CircuitMachine_{core.__name__.rsplit('.', 1)[-1]}", (CircuitMachine,), {"core": core}
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
