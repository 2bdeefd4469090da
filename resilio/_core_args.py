"""Argument checks and unit conversions shared by both core implementations.

Both the compiled core and its pure-Python twin convert their arguments here,
so the integers handed to the primitives (ns per token, ratios in millionths)
are the same whichever implementation runs.
"""

from __future__ import annotations

import math

MAX_PROBES = 31
MAX_WINDOW_BUCKETS = 64
MAX_COUNT_WINDOW = 1024
MAX_COUNTERS = 32
SLOW_DISABLED_PPM = 1_000_001
#: Largest now_ns the circuit word can hold (2**59 ns is about 18 years).
MAX_NOW_NS = 1 << 59


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


def interval_ns(rate: float) -> int:
    """Nanoseconds per token, rounded up so the bucket never beats `rate`."""
    r = _positive_finite("rate", rate)
    ns = math.ceil(1e9 / r)
    if ns < 1:
        raise ValueError(f"rate must be <= 1e9 tokens per second, got {rate!r}")
    return ns


def burst(value: int) -> int:
    return _int_in("burst", value, 1, 1 << 31)


def bucket_args(rate: float, burst_: int) -> tuple[int, int]:
    return interval_ns(rate), burst(burst_)


def tokens(n: int, burst_: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r}")
    if not 1 <= n <= burst_:
        raise ValueError(f"n must be in [1, burst={burst_}], got {n!r}")
    return n


def now(now_ns: int) -> int:
    if not 0 <= now_ns < MAX_NOW_NS:
        raise ValueError(f"now_ns must be in [0, 2**59), got {now_ns!r}")
    return now_ns


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
