"""GCRA on a plain int, shared by the pure-Python twins of the token bucket
(`resilio._core_py.TokenBucket`) and of the keyed table (`resilio._keyed_py`).

Each function mirrors the C function of the same name in csrc/rs_token_bucket.h,
with the same integer arithmetic; the C's CAS loop becomes a returned new value
(under the GIL nothing interleaves inside a call).
"""

from __future__ import annotations

__all__ = ["gcra_available", "gcra_refund", "gcra_step"]


def gcra_step(
    tat: int, interval: int, burst: int, now_ns: int, n: int, max_wait: int
) -> tuple[int, int]:
    """(result, new_tat) exactly as rs_gcra_step decides: result is the wait (>= 0) when
    admitted, -(wait) when refused, and a refusal leaves tat unchanged."""
    base = tat if tat > now_ns else now_ns
    new_tat = base + n * interval
    wait = new_tat - burst * interval - now_ns
    if wait < 0:
        wait = 0
    if wait > max_wait:
        return -wait, tat
    return wait, new_tat


def gcra_refund(tat: int, interval: int, n: int, now_ns: int) -> int:
    """The tat after giving back n tokens (rs_gcra_refund): never above full."""
    if tat <= now_ns:
        return tat
    new_tat = tat - n * interval
    return now_ns if new_tat < now_ns else new_tat


def gcra_available(tat: int, interval: int, burst: int, now_ns: int) -> int:
    """Whole tokens available at now_ns, 0..burst (rs_gcra_available)."""
    if tat <= now_ns:
        return burst
    free_ns = burst * interval - (tat - now_ns)
    if free_ns <= 0:
        return 0
    return free_ns // interval
