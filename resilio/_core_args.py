"""Argument checks and unit conversions shared by both core implementations.

Both the compiled core and its pure-Python twin convert their arguments here,
so the integers handed to the primitives (ns per token, ratios in millionths)
are the same whichever implementation runs.
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import SupportsIndex

MAX_PROBES = 31
MAX_WINDOW_BUCKETS = 64
MAX_COUNT_WINDOW = 1024
MAX_COUNTERS = 32
SLOW_DISABLED_PPM = 1_000_001
#: Largest now_ns the circuit word can hold (2**59 ns is about 18 years).
MAX_NOW_NS = 1 << 59
#: burst * interval_ns must not exceed this (about 36 years): with now_ns < 2**59 every
#: GCRA intermediate then stays below 2**63 (csrc/rs_keyed.h RS_KEYED_MAX_TOLERANCE).
MAX_TOLERANCE_NS = 1 << 60
#: reserve() clamps max_wait_ns to this (csrc/rs_keyed.h RS_KEYED_MAX_WAIT).
MAX_WAIT_NS = 1 << 60
#: Largest burst.
MAX_BURST = 1 << 31
#: break_for() saturates long before this many doublings (break >= 1, max <= 2**59).
MAX_OPENS_ARG = 64
_U64 = 0xFFFF_FFFF_FFFF_FFFF

# Messages shared word for word by both implementations (and the keyed tables).
MSG_TOLERANCE = "burst / rate must be at most 2**60 ns (about 36 years), got burst={!r} rate={!r}"
MSG_NOW = "now_ns must be in [0, 2**59), got {!r}"
MSG_MAX_WAIT = "max_wait_ns must be >= 0, got {!r}"
MSG_INDEX = "Counters index out of range"
MSG_DELTA = "d must be >= 0, got {!r}"


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _int_in(name: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def ceil_period_ns(rate: float) -> int:
    """ceil(1e9 / rate) of the exact quotient, never below 1; rate already checked.

    A float quotient can round down onto an integer and lose the ceiling (rate=1/3
    gives 3000000000.0, the exact ceiling is 3000000001), and a period one ns short
    lets the bucket beat its rate.
    """
    return max(1, math.ceil(Fraction(10**9) / Fraction(rate)))


def interval_ns(rate: float) -> int:
    """Nanoseconds per token, rounded up so the bucket never beats `rate`."""
    # A rate above 1e9 tokens per second gets the shortest period, 1 ns.
    return ceil_period_ns(_positive_finite("rate", rate))


def burst(value: int) -> int:
    return _int_in("burst", value, 1, MAX_BURST)


def bucket_args(rate: float, burst_: int) -> tuple[int, int]:
    interval, b = interval_ns(rate), burst(burst_)
    if interval * b > MAX_TOLERANCE_NS:
        raise ValueError(MSG_TOLERANCE.format(burst_, rate))
    return interval, b


def tokens(n: object, burst_: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r}")
    if not 1 <= n <= burst_:
        raise ValueError(f"n must be in [1, burst={burst_}], got {n!r}")
    return n


# ---- per-call conversions -------------------------------------------------------------
# The slow paths of the per-call argument checks: each method first tests the common case
# inline (`type(x) is int` and in range) and calls one of these only otherwise. They
# convert exactly as the compiled wrapper does: an int (bool and int subclasses included)
# is taken as is, anything else goes through operator.index (so a numpy integer is
# accepted and a float is a TypeError).


def _index(value: SupportsIndex) -> int:
    return int(value) if isinstance(value, int) else operator.index(value)


def now(now_ns: SupportsIndex) -> int:
    v = _index(now_ns)
    if not 0 <= v < MAX_NOW_NS:
        raise ValueError(MSG_NOW.format(now_ns))
    return v


def one_token(n: object, burst_: int) -> int:
    """n for try_acquire: any int equal to 1 (True included) passes unchecked."""
    if isinstance(n, int) and n == 1:
        return 1
    return tokens(n, burst_)


def max_wait(max_wait_ns: SupportsIndex) -> int:
    """max_wait_ns as an int in [0, MAX_WAIT_NS] (larger values are clamped)."""
    v = max_wait_ns if type(max_wait_ns) is int else operator.index(max_wait_ns)
    if v < 0:
        raise ValueError(MSG_MAX_WAIT.format(v))
    return v if v < MAX_WAIT_NS else MAX_WAIT_NS


def flags(outcome: SupportsIndex) -> int:
    """The OUTCOME_* bits of outcome (two's complement, as `outcome & 3`)."""
    return _index(outcome) & 3


def ticket(value: SupportsIndex) -> int:
    """A ticket word modulo 2**64."""
    return _index(value) & _U64


def opens(value: SupportsIndex) -> int:
    """break_for's argument, clamped to [0, MAX_OPENS_ARG]."""
    v = _index(value)
    return 0 if v < 0 else MAX_OPENS_ARG if v > MAX_OPENS_ARG else v


def counter_index(i: SupportsIndex, n: int) -> int:
    v = _index(i)
    if not 0 <= v < n:
        raise IndexError(MSG_INDEX)
    return v


def counter_delta(d: SupportsIndex) -> int:
    """d as an unsigned 64-bit int: ValueError below 0, OverflowError from 2**64."""
    v = _index(d)
    if v < 0:
        raise ValueError(MSG_DELTA.format(d))
    if v > _U64:
        raise OverflowError("d must be < 2**64")
    return v


def ratio_ppm(name: str, value: float) -> int:
    v = _positive_finite(name, value)
    if v > 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return max(1, round(v * 1_000_000))


def duration_ns(name: str, value: int) -> int:
    return _int_in(name, value, 1, MAX_NOW_NS)


def window_args(duration: int, buckets: int) -> tuple[int, int]:
    return duration_ns("duration_ns", duration), _int_in("buckets", buckets, 1, MAX_WINDOW_BUCKETS)


def count_window_size(size: int) -> int:
    return _int_in("size", size, 1, MAX_COUNT_WINDOW)


def circuit_args(
    failure_ratio: float,
    minimum_throughput: int,
    sampling_duration_ns: int,
    break_duration_ns: int,
    max_break_duration_ns: int,
    half_open_calls: int,
    slow_call_ratio: float | None,
    buckets: int,
    now_ns: int,
) -> tuple[int, int, int, int, int, int, int, int, int]:
    """Return (failure_ppm, slow_ppm, min_throughput, sampling_ns, buckets,
    break_ns, max_break_ns, half_open_calls, now_ns)."""
    failure_ppm = ratio_ppm("failure_ratio", failure_ratio)
    slow_ppm = (
        SLOW_DISABLED_PPM
        if slow_call_ratio is None
        else ratio_ppm("slow_call_ratio", slow_call_ratio)
    )
    min_tp = _int_in("minimum_throughput", minimum_throughput, 1, 1 << 32)
    sampling = duration_ns("sampling_duration_ns", sampling_duration_ns)
    nb = _int_in("buckets", buckets, 1, MAX_WINDOW_BUCKETS)
    brk = duration_ns("break_duration_ns", break_duration_ns)
    max_brk = _int_in("max_break_duration_ns", max_break_duration_ns, 0, MAX_NOW_NS)
    if max_brk and max_brk < brk:
        raise ValueError(
            f"max_break_duration_ns must be 0 or >= break_duration_ns ({brk}), got {max_brk!r}"
        )
    hoc = _int_in("half_open_calls", half_open_calls, 1, MAX_PROBES)
    return failure_ppm, slow_ppm, min_tp, sampling, nb, brk, max_brk, hoc, now(now_ns)


def gate_limit(limit: int) -> int:
    return _int_in("limit", limit, 0, (1 << 62))


def counters_size(n: int) -> int:
    return _int_in("n", n, 1, MAX_COUNTERS)
