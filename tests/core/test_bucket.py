"""TokenBucket (GCRA) with exact integer clocks, on both core implementations."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

IV = 100_000_000  # ns per token at rate 10/s
MAX_NOW = 1 << 59

CLOCKS = [0, 1, 123_456_789, 10**15, MAX_NOW - 10 * IV]


def make(core, rate=10.0, burst=5):
    return core.TokenBucket(rate, burst)


# ---- construction ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (10.0, 100_000_000),
        (10, 100_000_000),
        (1.0, 1_000_000_000),
        (3.0, 333_333_334),  # rounded up: never faster than the rate
        (7, 142_857_143),
        (0.5, 2_000_000_000),
        (1e9, 1),
        (2.5e8, 4),
    ],
)
def test_interval_is_rounded_up(core, rate, expected):
    b = core.TokenBucket(rate, 3)
    assert b.interval_ns == expected
    assert b.interval_ns == math.ceil(Fraction(10**9) / Fraction(rate))
    assert b.rate == float(rate)
    assert b.burst == 3


@pytest.mark.parametrize(
    ("rate", "burst", "exc", "name"),
    [
        (0, 5, ValueError, "rate"),
        (0.0, 5, ValueError, "rate"),
        (-1.0, 5, ValueError, "rate"),
        (float("nan"), 5, ValueError, "rate"),
        (float("inf"), 5, ValueError, "rate"),
        ("10", 5, TypeError, "rate"),
        (None, 5, TypeError, "rate"),
        (True, 5, TypeError, "rate"),
        (10.0, 0, ValueError, "burst"),
        (10.0, -3, ValueError, "burst"),
        (10.0, (1 << 31) + 1, ValueError, "burst"),
        (10.0, 2.0, TypeError, "burst"),
        (10.0, "5", TypeError, "burst"),
        (10.0, None, TypeError, "burst"),
        (10.0, True, TypeError, "burst"),
    ],
)
def test_bad_constructor_args(core, rate, burst, exc, name):
    with pytest.raises(exc, match=name):
        core.TokenBucket(rate, burst)


def test_tolerance_limit(core):
    # burst * interval_ns may be at most 2**60 ns (every GCRA intermediate stays < 2**63).
    rate = 1953125 / 2**20  # exactly 2**29 ns per token
    b = core.TokenBucket(rate, 1 << 31)
    assert b.interval_ns * b.burst == 1 << 60
    with pytest.raises(ValueError, match="burst / rate"):
        core.TokenBucket(rate * (1 - 2**-40), 1 << 31)
    with pytest.raises(ValueError, match="burst / rate"):
        core.TokenBucket(0.001, 1 << 31)


def test_reserve_clamps_max_wait(core):
    # max_wait_ns above 2**60 acts as 2**60.
    b = core.TokenBucket(1, 1 << 30)  # 10**9 ns per token
    span = (1 << 30) * 10**9  # < 2**60 < 2 * span
    assert b.reserve(0, 1 << 30, 1 << 62) == 0
    assert b.reserve(0, 1 << 30, 1 << 62) == span
    assert b.reserve(0, 1 << 30, 1 << 62) == -2 * span
    assert b.reserve(0, 1 << 30, 1 << 64) == -2 * span
    assert (b.admitted, b.rejected) == (2, 2)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda b: b.try_acquire(1.5), id="try_acquire-now"),
        pytest.param(lambda b: b.try_acquire(1.0), id="try_acquire-now-integral"),
        pytest.param(lambda b: b.try_acquire(0, 1.0), id="try_acquire-n"),
        pytest.param(lambda b: b.reserve(0.0, 1, 0), id="reserve-now"),
        pytest.param(lambda b: b.reserve(0, 1, 1.5), id="reserve-max_wait"),
        pytest.param(lambda b: b.reserve(0, 1, -0.5), id="reserve-neg-max_wait"),
        pytest.param(lambda b: b.reserve(0, 1, None), id="reserve-none-max_wait"),
        pytest.param(lambda b: b.refund(0.5), id="refund-now"),
        pytest.param(lambda b: b.available(2.0), id="available-now"),
    ],
)
def test_float_arguments_are_type_errors(core, call):
    b = make(core)
    with pytest.raises(TypeError):
        call(b)
    assert (b.admitted, b.rejected, b.available(0)) == (0, 0, 5)


def test_int_like_arguments_are_accepted(core):
    # bool is an int; anything with __index__ converts.
    class Idx:
        def __init__(self, v):
            self.v = v

        def __index__(self):
            return self.v

    b = make(core)
    assert b.try_acquire(True, True) == 0
    assert b.reserve(Idx(0), 1, Idx(IV)) == 0
    assert b.available(Idx(1)) == 3
    with pytest.raises(ValueError, match="now_ns"):
        b.available(Idx(-1))


def test_burst_upper_bound_is_accepted(core):
    b = core.TokenBucket(1e9, 1 << 31)
    assert b.burst == 1 << 31
    assert b.available(0) == 1 << 31


# ---- starts full, burst, refusal ------------------------------------------------


@pytest.mark.parametrize("t0", CLOCKS)
def test_starts_full_at_any_clock(core, t0):
    b = make(core)
    assert b.available(t0) == 5
    assert b.admitted == 0
    assert b.rejected == 0


@pytest.mark.parametrize("t0", CLOCKS)
def test_burst_then_refusal_with_exact_wait(core, t0):
    b = make(core)
    for _ in range(5):
        assert b.try_acquire(t0) == 0
    assert b.available(t0) == 0
    assert b.try_acquire(t0) == IV
    assert b.try_acquire(t0 + 1) == IV - 1
    assert b.try_acquire(t0 + IV - 1) == 1
    assert b.try_acquire(t0 + IV) == 0
    assert b.try_acquire(t0 + IV) == IV
    assert b.admitted == 6
    assert b.rejected == 4


def test_refill(core):
    t0 = 10**15
    b = make(core)
    for _ in range(5):
        assert b.try_acquire(t0) == 0
    assert b.available(t0 + IV - 1) == 0
    assert b.available(t0 + IV) == 1
    assert b.available(t0 + 2 * IV) == 2
    assert b.available(t0 + 2 * IV + IV // 2) == 2
    assert b.available(t0 + 5 * IV - 1) == 4
    assert b.available(t0 + 5 * IV) == 5
    assert b.available(t0 + 500 * IV) == 5  # never above burst
    # Two tokens came back after 2 intervals, and no more.
    assert b.try_acquire(t0 + 2 * IV) == 0
    assert b.try_acquire(t0 + 2 * IV) == 0
    assert b.try_acquire(t0 + 2 * IV) == IV
    # After a long idle time the bucket is full again, not fuller.
    t1 = t0 + 10**12
    for _ in range(5):
        assert b.try_acquire(t1) == 0
    assert b.try_acquire(t1) == IV


def test_try_acquire_n(core):
    b = make(core)
    assert b.try_acquire(0, 4) == 0
    assert b.available(0) == 1
    # 3 tokens need 2 more intervals.
    assert b.try_acquire(0, 3) == 2 * IV
    assert b.try_acquire(2 * IV - 1, 3) == 1
    assert b.try_acquire(2 * IV, 3) == 0
    assert b.available(2 * IV) == 0
    # A full-burst request from an empty bucket waits a whole burst.
    assert b.try_acquire(2 * IV, 5) == 5 * IV
    assert b.try_acquire(7 * IV, 5) == 0
    assert b.admitted == 3
    assert b.rejected == 3


@pytest.mark.parametrize("n", [6, 100, 0, -1])
def test_try_acquire_n_out_of_range(core, n):
    b = make(core)
    with pytest.raises(ValueError, match="n"):
        b.try_acquire(0, n)
    assert b.admitted == 0
    assert b.rejected == 0
    assert b.available(0) == 5


@pytest.mark.parametrize("n", [2.0, "2", None])
def test_try_acquire_n_type(core, n):
    b = make(core)
    with pytest.raises(TypeError):
        b.try_acquire(0, n)
    assert b.available(0) == 5


def test_refusal_changes_nothing(core):
    b = make(core)
    for _ in range(3):
        b.try_acquire(1000)
    t = 1000 + IV // 2
    before = b.available(t)
    assert b.try_acquire(t, 4) == 2 * IV - IV // 2
    assert b.reserve(t, 5, IV) == -(3 * IV - IV // 2)
    assert b.available(t) == before == 2
    # The state is unchanged: the same requests decide the same way.
    assert b.try_acquire(t, 4) == 2 * IV - IV // 2
    assert b.try_acquire(t, 2) == 0
    assert b.try_acquire(t) == IV // 2
    assert b.admitted == 4
    assert b.rejected == 4


@pytest.mark.parametrize("bad", [-1, -(10**12), MAX_NOW, MAX_NOW + 5])
def test_bad_now(core, bad):
    b = make(core)
    with pytest.raises(ValueError, match="now_ns"):
        b.try_acquire(bad)
    with pytest.raises(ValueError, match="now_ns"):
        b.reserve(bad, 1, 0)
    with pytest.raises(ValueError, match="now_ns"):
        b.refund(bad, 1)
    with pytest.raises(ValueError, match="now_ns"):
        b.available(bad)
    assert b.admitted == 0
    assert b.rejected == 0


def test_largest_now(core):
    b = make(core)
    t = MAX_NOW - 1
    for _ in range(5):
        assert b.try_acquire(t) == 0
    assert b.try_acquire(t) == IV


# ---- reserve / refund ---------------------------------------------------------


def test_reserve(core):
    t0 = 7_000_000
    b = make(core)
    assert b.reserve(t0, 5, 0) == 0
    assert b.available(t0) == 0
    # Admitted with the exact wait while it is within max_wait.
    assert b.reserve(t0, 1, IV) == IV
    assert b.reserve(t0, 1, 2 * IV) == 2 * IV
    # Refused beyond max_wait, by exactly how much wait it would need.
    assert b.reserve(t0, 1, 3 * IV - 1) == -(3 * IV)
    assert b.reserve(t0, 2, 10 * IV) == 4 * IV
    assert b.available(t0 + 4 * IV) == 0
    assert b.available(t0 + 5 * IV) == 1
    assert b.available(t0 + 9 * IV - 1) == 4
    assert b.available(t0 + 9 * IV) == 5
    assert b.admitted == 4
    assert b.rejected == 1


def test_reserve_zero_wait_equals_try_acquire(core):
    b1, b2 = make(core), make(core)
    for t in [0, 0, 0, 0, 0, 0, 10, IV, IV, IV + 5, 3 * IV]:
        r1 = b1.try_acquire(t)
        r2 = b2.reserve(t, 1, 0)
        assert r1 == (0 if r2 == 0 else -r2)
    assert (b1.admitted, b1.rejected) == (b2.admitted, b2.rejected)


def test_reserve_bad_args(core):
    b = make(core)
    with pytest.raises(ValueError, match="max_wait_ns"):
        b.reserve(0, 1, -1)
    with pytest.raises(ValueError, match="n"):
        b.reserve(0, 6, 0)
    with pytest.raises(ValueError, match="n"):
        b.reserve(0, 0, 0)
    assert b.available(0) == 5
    assert b.admitted == b.rejected == 0


def test_refund_returns_tokens(core):
    t0 = 10**15
    b = make(core)
    for _ in range(5):
        b.try_acquire(t0)
    assert b.reserve(t0, 2, 10 * IV) == 2 * IV
    # The cancelled waiter gives its 2 tokens back.
    b.refund(t0, 2)
    assert b.available(t0) == 0
    assert b.try_acquire(t0) == IV
    b.refund(t0, 3)
    assert b.available(t0) == 3
    assert b.try_acquire(t0, 3) == 0
    assert b.try_acquire(t0) == IV


def test_refund_never_above_full(core):
    b = make(core)
    b.refund(0, 5)  # fresh bucket: nothing to give back
    assert b.available(0) == 5
    assert b.try_acquire(100) == 0
    b.refund(100, 5)  # more than was taken: clamps at full
    assert b.available(100) == 5
    for _ in range(5):
        assert b.try_acquire(100) == 0
    assert b.try_acquire(100) == IV
    # A refund after the bucket refilled by itself gives nothing extra.
    t = 100 + 5 * IV
    b.refund(t, 5)
    for _ in range(5):
        assert b.try_acquire(t) == 0
    assert b.try_acquire(t) == IV


def test_refund_partial_window(core):
    b = make(core)
    for _ in range(5):
        b.try_acquire(0)
    # Half an interval later (half a token refilled), refund one token.
    b.refund(IV // 2, 1)
    assert b.available(IV // 2) == 1
    assert b.available(IV) == 2
    assert b.try_acquire(IV // 2) == 0
    assert b.try_acquire(IV // 2) == IV // 2
    # A refund larger than the debt clamps at full (tat = now).
    b.refund(IV, 5)
    assert b.available(IV) == 5


def test_refund_bad_n(core):
    b = make(core)
    with pytest.raises(ValueError, match="n"):
        b.refund(0, 6)
    with pytest.raises(ValueError, match="n"):
        b.refund(0, 0)


def test_refund_does_not_count(core):
    b = make(core)
    b.try_acquire(0)
    b.refund(0)
    assert b.admitted == 1
    assert b.rejected == 0


# ---- counters and the available() view -------------------------------------------


def test_counters_count_decisions(core):
    b = make(core)
    assert b.try_acquire(0, 5) == 0  # one decision, five tokens
    assert b.try_acquire(0, 2) == 2 * IV
    assert b.reserve(0, 1, IV) == IV
    assert b.reserve(0, 1, IV) == -(2 * IV)
    assert b.available(0) == 0  # a read is not a decision
    assert b.admitted == 2
    assert b.rejected == 2


def test_available_does_not_change_state(core):
    b = make(core, rate=1.0, burst=2)
    for t in [0, 10, 10**9, 0]:
        assert b.available(t) == 2
    assert b.try_acquire(0, 2) == 0
    assert b.available(0) == 0
    assert b.available(999_999_999) == 0
    assert b.available(1_000_000_000) == 1
    assert b.available(0) == 0
    assert b.try_acquire(0) == 1_000_000_000


def test_lagging_now_never_admits_more(core):
    # A caller whose clock lags sees the bucket no fuller than the latest caller did.
    b = make(core)
    t = 10 * IV
    for _ in range(5):
        assert b.try_acquire(t) == 0
    assert b.try_acquire(t - IV) == 2 * IV
    assert b.available(t - IV) == 0
    assert b.try_acquire(t + IV) == 0


def test_slow_rate_exact(core):
    b = core.TokenBucket(0.001, 1)  # one token per 1000 s
    assert b.interval_ns == 10**12
    assert b.try_acquire(5) == 0
    assert b.try_acquire(5) == 10**12
    assert b.try_acquire(5 + 10**12) == 0
