"""TimeWindow and CountWindow with exact integer clocks, on both core implementations."""

from __future__ import annotations

import pytest

MAX_NOW = 1 << 59


# ---- TimeWindow ---------------------------------------------------------------


def test_time_window_geometry(core):
    w = core.TimeWindow(1000, 10)
    assert w.width_ns == 100
    assert w.buckets == 10
    w = core.TimeWindow(1001, 10)
    assert w.width_ns == 101  # ceil(duration / buckets)
    w = core.TimeWindow(7, 64)
    assert w.width_ns == 1
    assert w.buckets == 64
    assert core.TimeWindow(10**9).buckets == 10  # default


def test_time_window_empty(core):
    w = core.TimeWindow(1000, 10)
    for t in [0, 1, 999, 10**15, MAX_NOW - 1]:
        assert w.snapshot(t) == (0, 0, 0)


def test_record_and_snapshot_across_boundaries(core):
    F, S = core.OUTCOME_FAILURE, core.OUTCOME_SLOW
    w = core.TimeWindow(1000, 10)
    w.record(0)
    w.record(50, F)
    w.record(99, S)
    assert w.snapshot(0) == (3, 1, 1)  # a snapshot sees its whole bucket
    assert w.snapshot(99) == (3, 1, 1)
    w.record(100, F | S)
    assert w.snapshot(100) == (4, 2, 2)
    w.record(250)
    w.record(999, F)
    assert w.snapshot(999) == (6, 3, 2)
    # A snapshot taken "before" later buckets does not see them.
    assert w.snapshot(99) == (3, 1, 1)
    assert w.snapshot(199) == (4, 2, 2)


def test_buckets_expire_exactly_after_duration(core):
    F = core.OUTCOME_FAILURE
    w = core.TimeWindow(1000, 10)
    w.record(0, F)
    w.record(99, F)
    w.record(100)
    w.record(150)
    w.record(950)
    assert w.snapshot(999) == (5, 2, 0)
    # Bucket [0, 100) is gone at 1000 = its start + duration, not a ns earlier.
    assert w.snapshot(1000) == (3, 0, 0)
    assert w.snapshot(1099) == (3, 0, 0)
    assert w.snapshot(1100) == (1, 0, 0)
    assert w.snapshot(1899) == (1, 0, 0)
    assert w.snapshot(1900) == (0, 0, 0)  # 950's bucket [900, 1000) expires
    assert w.snapshot(10**12) == (0, 0, 0)


def test_expiry_with_rounded_width(core):
    w = core.TimeWindow(1001, 10)  # width 101, window spans 1010 ns
    w.record(0)
    w.record(1009)
    assert w.snapshot(1009) == (2, 0, 0)
    assert w.snapshot(1010) == (1, 0, 0)
    # Bucket 9 is [909, 1010): it expires at 909 + 1010.
    assert w.snapshot(1918) == (1, 0, 0)
    assert w.snapshot(1919) == (0, 0, 0)


def test_slot_reuse_restarts_count(core):
    F = core.OUTCOME_FAILURE
    w = core.TimeWindow(1000, 10)
    for _ in range(3):
        w.record(5, F)
    # 1005 lands in the same slot as 5, one window later: the old counts vanish.
    w.record(1005)
    assert w.snapshot(1005) == (1, 0, 0)
    w.record(1006, F)
    assert w.snapshot(1099) == (2, 1, 0)


def test_single_bucket_window(core):
    w = core.TimeWindow(100, 1)
    w.record(0)
    w.record(99)
    assert w.snapshot(99) == (2, 0, 0)
    assert w.snapshot(100) == (0, 0, 0)
    w.record(100)
    assert w.snapshot(150) == (1, 0, 0)


def test_far_clock(core):
    w = core.TimeWindow(10**9, 10)
    t = 10**15 + 123
    w.record(t, core.OUTCOME_SLOW)
    w.record(t + 10**8, core.OUTCOME_FAILURE)
    assert w.snapshot(t + 10**8) == (2, 1, 1)
    assert w.snapshot(t + 10**9) == (1, 1, 0)  # t's bucket started at 10**15
    t = MAX_NOW - 1
    w.record(t)
    assert w.snapshot(t) == (1, 0, 0)


def test_reset(core):
    F, S = core.OUTCOME_FAILURE, core.OUTCOME_SLOW
    w = core.TimeWindow(1000, 10)
    for t in range(0, 1000, 37):
        w.record(t, F | S)
    assert w.snapshot(999)[0] == 28
    w.reset(999)
    assert w.snapshot(999) == (0, 0, 0)
    assert w.snapshot(1500) == (0, 0, 0)
    # Recording after a reset, in the same bucket, counts normally.
    w.record(999, F)
    assert w.snapshot(999) == (1, 1, 0)
    w.record(1000, S)
    assert w.snapshot(1000) == (2, 1, 1)


@pytest.mark.parametrize("t", [0, 1, 550, 10**15])
def test_reset_early_clock(core, t):
    w = core.TimeWindow(1000, 10)
    w.record(t)
    w.reset(t)
    assert w.snapshot(t) == (0, 0, 0)
    w.record(t)
    w.record(t + 100)
    assert w.snapshot(t + 100) == (2, 0, 0)


def test_lagging_now_does_not_corrupt_newer_buckets(core):
    F, S = core.OUTCOME_FAILURE, core.OUTCOME_SLOW
    w = core.TimeWindow(1000, 10)
    w.record(1550)
    w.record(1560, F)
    w.record(1570, S)
    # 550 maps to the same slot (5) one window earlier: it must be dropped,
    # not restart the slot's counters.
    w.record(550, F | S)
    w.record(500)
    assert w.snapshot(1599) == (3, 1, 1)
    w.record(1580)
    assert w.snapshot(1599) == (4, 1, 1)
    # A lag into an untouched slot outside the window is invisible.
    w.record(300, F)
    assert w.snapshot(1599) == (4, 1, 1)
    # A lag that is still inside the window is counted where it belongs.
    w.record(1250, F)
    assert w.snapshot(1599) == (5, 2, 1)
    assert w.snapshot(2199) == (5, 2, 1)
    assert w.snapshot(2200) == (4, 1, 1)  # bucket 12 expires
    assert w.snapshot(2499) == (4, 1, 1)
    assert w.snapshot(2500) == (0, 0, 0)  # bucket 15 expires


def test_lagging_snapshot_after_newer_records(core):
    w = core.TimeWindow(1000, 10)
    w.record(1550)
    # A snapshot whose clock lags sees nothing newer than itself.
    assert w.snapshot(1449) == (0, 0, 0)
    assert w.snapshot(549) == (0, 0, 0)
    assert w.snapshot(550) == (0, 0, 0)  # slot 5 holds bucket 15, not bucket 5


def test_outcome_extra_bits_ignored(core):
    w = core.TimeWindow(1000, 10)
    w.record(0, 4)
    w.record(0, 8 | core.OUTCOME_FAILURE)
    assert w.snapshot(0) == (2, 1, 0)


@pytest.mark.parametrize(
    ("duration", "buckets", "exc", "name"),
    [
        (0, 10, ValueError, "duration_ns"),
        (-5, 10, ValueError, "duration_ns"),
        (MAX_NOW + 1, 10, ValueError, "duration_ns"),
        (1.5, 10, TypeError, "duration_ns"),
        ("1000", 10, TypeError, "duration_ns"),
        (1000, 0, ValueError, "buckets"),
        (1000, 65, ValueError, "buckets"),
        (1000, -1, ValueError, "buckets"),
        (1000, 2.0, TypeError, "buckets"),
    ],
)
def test_time_window_bad_args(core, duration, buckets, exc, name):
    with pytest.raises(exc, match=name):
        core.TimeWindow(duration, buckets)


@pytest.mark.parametrize("bad", [-1, MAX_NOW])
def test_time_window_bad_now(core, bad):
    w = core.TimeWindow(1000, 10)
    with pytest.raises(ValueError, match="now_ns"):
        w.record(bad)
    with pytest.raises(ValueError, match="now_ns"):
        w.snapshot(bad)
    with pytest.raises(ValueError, match="now_ns"):
        w.reset(bad)
    assert w.snapshot(0) == (0, 0, 0)


@pytest.mark.parametrize("bad", [None, 1.0, "1"])
def test_time_window_bad_outcome_changes_nothing(core, bad):
    w = core.TimeWindow(1000, 10)
    with pytest.raises(TypeError):
        w.record(0, bad)
    with pytest.raises(TypeError):
        w.record(1.0)
    assert w.snapshot(0) == (0, 0, 0)


# ---- CountWindow --------------------------------------------------------------


def test_count_window_ring(core):
    F, S = core.OUTCOME_FAILURE, core.OUTCOME_SLOW
    w = core.CountWindow(3)
    assert w.size == 3
    assert w.snapshot() == (0, 0, 0)
    w.record(F)
    assert w.snapshot() == (1, 1, 0)
    w.record(S)
    w.record()
    assert w.snapshot() == (3, 1, 1)
    w.record()  # evicts the failure
    assert w.snapshot() == (3, 0, 1)
    w.record(F | S)  # evicts the slow call
    assert w.snapshot() == (3, 1, 1)
    w.record(F)
    assert w.snapshot() == (3, 2, 1)
    w.record(F)  # evicts a success
    assert w.snapshot() == (3, 3, 1)
    w.record()  # evicts F|S
    assert w.snapshot() == (3, 2, 0)


def test_count_window_size_one(core):
    w = core.CountWindow(1)
    w.record(core.OUTCOME_FAILURE)
    assert w.snapshot() == (1, 1, 0)
    w.record(core.OUTCOME_SLOW)
    assert w.snapshot() == (1, 0, 1)


def test_count_window_long_run(core):
    F = core.OUTCOME_FAILURE
    w = core.CountWindow(100)
    for i in range(1000):
        w.record(F if i % 4 == 0 else 0)
    assert w.snapshot() == (100, 25, 0)
    w = core.CountWindow(1024)
    for i in range(3000):
        w.record(F if i >= 2990 else 0)
    assert w.snapshot() == (1024, 10, 0)


def test_count_window_reset(core):
    F, S = core.OUTCOME_FAILURE, core.OUTCOME_SLOW
    w = core.CountWindow(4)
    for o in [F, S, F | S, 0, F]:
        w.record(o)
    assert w.snapshot() == (4, 2, 2)
    w.reset()
    assert w.snapshot() == (0, 0, 0)
    w.reset()
    assert w.snapshot() == (0, 0, 0)
    # The ring keeps its position; totals restart from nothing.
    w.record(F)
    w.record(0)
    assert w.snapshot() == (2, 1, 0)
    for _ in range(4):
        w.record(S)
    assert w.snapshot() == (4, 0, 4)


def test_count_window_extra_bits_ignored(core):
    w = core.CountWindow(2)
    w.record(4)
    w.record(8 | core.OUTCOME_SLOW)
    assert w.snapshot() == (2, 0, 1)


@pytest.mark.parametrize("bad", [None, 1.0, "1"])
def test_count_window_bad_outcome_changes_nothing(core, bad):
    w = core.CountWindow(2)
    w.record(core.OUTCOME_FAILURE)
    with pytest.raises(TypeError):
        w.record(bad)
    w.record(0)
    assert w.snapshot() == (2, 1, 0)  # the failure is still in the ring


@pytest.mark.parametrize(
    ("size", "exc"),
    [(0, ValueError), (-1, ValueError), (1025, ValueError), (2.0, TypeError), ("3", TypeError)],
)
def test_count_window_bad_size(core, size, exc):
    with pytest.raises(exc, match="size"):
        core.CountWindow(size)


def test_count_window_max_size(core):
    w = core.CountWindow(1024)
    assert w.size == 1024
