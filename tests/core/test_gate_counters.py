"""Gate and Counters, on both core implementations."""

from __future__ import annotations

import pytest

# ---- Gate ---------------------------------------------------------------------------


def test_gate_limit(core):
    g = core.Gate(2)
    assert g.limit == 2
    assert g.in_flight == 0
    assert g.try_enter() is True
    assert g.try_enter() is True
    assert g.try_enter() is False
    assert g.in_flight == 2
    g.exit()
    assert g.in_flight == 1
    assert g.try_enter() is True
    assert g.try_enter() is False
    assert (g.admitted, g.rejected) == (3, 2)


def test_gate_zero_limit_refuses_all(core):
    g = core.Gate(0)
    for _ in range(5):
        assert g.try_enter() is False
    assert (g.admitted, g.rejected, g.in_flight) == (0, 5, 0)


def test_gate_lower_limit_at_run_time(core):
    g = core.Gate(3)
    for _ in range(3):
        assert g.try_enter()
    g.limit = 1
    assert g.limit == 1
    assert g.in_flight == 3  # lowering never evicts calls already in
    assert g.try_enter() is False
    g.exit()
    assert g.try_enter() is False  # 2 in flight, limit 1
    g.exit()
    assert g.try_enter() is False  # 1 in flight, limit 1
    g.exit()
    assert g.in_flight == 0
    assert g.try_enter() is True
    assert g.try_enter() is False


def test_gate_raise_limit_at_run_time(core):
    g = core.Gate(1)
    assert g.try_enter()
    assert not g.try_enter()
    g.limit = 4
    assert [g.try_enter() for _ in range(4)] == [True, True, True, False]
    assert g.in_flight == 4
    g.limit = 0
    assert not g.try_enter()
    assert (g.admitted, g.rejected) == (4, 3)


def test_gate_unmatched_exit_stays_at_zero(core):
    # An exit without a matching try_enter must not drive in_flight below 0: that would
    # let the next calls past the limit.
    g = core.Gate(1)
    g.exit()
    g.exit()
    assert g.in_flight == 0
    assert g.try_enter() is True
    assert g.try_enter() is False
    assert g.in_flight == 1
    g.exit()
    g.exit()  # one exit too many
    assert g.in_flight == 0
    assert [g.try_enter() for _ in range(2)] == [True, False]
    assert (g.admitted, g.rejected) == (2, 2)


def test_gate_large_limit(core):
    g = core.Gate(1 << 62)
    assert g.limit == 1 << 62
    assert g.try_enter()


@pytest.mark.parametrize(
    ("limit", "exc"),
    [
        (-1, ValueError),
        ((1 << 62) + 1, ValueError),
        (1.0, TypeError),
        ("2", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_gate_bad_limit(core, limit, exc):
    with pytest.raises(exc, match="limit"):
        core.Gate(limit)
    g = core.Gate(2)
    with pytest.raises(exc, match="limit"):
        g.limit = limit
    assert g.limit == 2


# ---- Counters -------------------------------------------------------------------------


def test_counters(core):
    c = core.Counters(4)
    assert len(c) == 4
    assert c.snapshot() == (0, 0, 0, 0)
    c.add(0)
    c.add(3, 10)
    c.add(3)
    c.add(1, 0)
    assert c.get(0) == 1
    assert c.get(1) == 0
    assert c.get(3) == 11
    assert c.snapshot() == (1, 0, 0, 11)


def test_counters_max_size(core):
    c = core.Counters(32)
    assert len(c) == 32
    for i in range(32):
        c.add(i, i)
    assert c.snapshot() == tuple(range(32))


def test_counters_large_values(core):
    c = core.Counters(1)
    c.add(0, (1 << 63) - 1)
    c.add(0, 1)
    assert c.get(0) == 1 << 63


def test_counters_wrap_at_2_64(core):
    c = core.Counters(2)
    c.add(0, (1 << 64) - 1)
    assert c.get(0) == (1 << 64) - 1
    c.add(0, 2)
    assert c.get(0) == 1
    c.add(1, (1 << 64) - 1)
    c.add(1, (1 << 64) - 1)
    assert c.snapshot() == (1, (1 << 64) - 2)


@pytest.mark.parametrize(
    ("d", "exc"),
    [
        (-1, ValueError),
        (-(1 << 70), ValueError),
        (1 << 64, OverflowError),
        (1 << 70, OverflowError),
        (1.0, TypeError),
        (1.5, TypeError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_counters_bad_delta_changes_nothing(core, d, exc):
    c = core.Counters(2)
    c.add(0, 5)
    with pytest.raises(exc):
        c.add(0, d)
    assert c.snapshot() == (5, 0)


def test_counters_int_like_arguments(core):
    c = core.Counters(3)
    c.add(True, True)  # bool is an int
    assert c.snapshot() == (0, 1, 0)


@pytest.mark.parametrize("i", [-1, -4, -5])
def test_counters_negative_index(core, i):
    # No Python-style negative indexing: C has none.
    c = core.Counters(4)
    with pytest.raises(IndexError):
        c.add(i)
    with pytest.raises(IndexError):
        c.get(i)
    assert c.snapshot() == (0, 0, 0, 0)


@pytest.mark.parametrize("i", [1.0, "1", None])
def test_counters_index_type(core, i):
    c = core.Counters(4)
    with pytest.raises(TypeError):
        c.add(i)
    with pytest.raises(TypeError):
        c.get(i)
    assert c.snapshot() == (0, 0, 0, 0)


@pytest.mark.parametrize("i", [4, 5, 1000])
def test_counters_index_out_of_range(core, i):
    c = core.Counters(4)
    with pytest.raises(IndexError):
        c.add(i)
    with pytest.raises(IndexError):
        c.get(i)
    assert c.snapshot() == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("n", "exc"),
    [(0, ValueError), (33, ValueError), (-1, ValueError), (2.0, TypeError), ("3", TypeError)],
)
def test_counters_bad_size(core, n, exc):
    with pytest.raises(exc, match="n"):
        core.Counters(n)
