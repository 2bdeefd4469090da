"""Pure-Python twin of `csrc/rs_keyed.h`: keyed token buckets in fixed memory.

One GCRA bucket per client key (str or bytes) in a table of at most
`max_keys` entries. Same arithmetic, same slot function, same probe window,
same reclaim and eviction choices as the C, so the decisions, waits and
counters are identical bit for bit. Python runs one operation at a time
(under the GIL nothing interleaves inside a method), so the C's busy states,
sentinels and CAS retries never arise here: each C step becomes a plain
update.

A key is identified by its 128-bit SipHash-2-4 fingerprint under a
per-table secret (the table never keeps key bytes). Its window is the
`min(max_keys, 16)` slots from home = ((fp0 >> 32) * max_keys) >> 32. A
lookup stops at the first never-used slot (keys never live beyond one). An
unknown key takes the first never-used slot of its window; failing that the
first slot whose bucket is full again (tat <= now, no information lost);
failing that, with KEYED_EVICT the slot whose bucket is nearest to full
(smallest tat, first in window order on ties), with KEYED_REJECT nothing: the
request is refused with the wait until a slot of the window becomes full.
"""

from __future__ import annotations

import math
import os
from array import array

from resilio import _core_args as _args
from resilio._gcra_py import gcra_available, gcra_refund, gcra_step

__all__ = [
    "KEYED_EVICT",
    "KEYED_REJECT",
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "MAX_NOW_NS",
    "MAX_TOLERANCE_NS",
    "MAX_WAIT_NS",
    "PROBE",
    "KeyedBuckets",
    "siphash128",
]

KEYED_EVICT = 0
KEYED_REJECT = 1

#: Longest key accepted, in bytes (str keys count their UTF-8 encoding).
MAX_KEY_BYTES = 64
#: Largest table (the slot function needs max_keys < 2**32).
MAX_KEYS = (1 << 32) - 1
#: Probe window length (min(max_keys, PROBE) slots).
PROBE = 16
#: now_ns must be in [0, MAX_NOW_NS) (same bound as the rest of the core).
MAX_NOW_NS = _args.MAX_NOW_NS
#: burst * interval_ns must not exceed this (about 36 years).
MAX_TOLERANCE_NS = _args.MAX_TOLERANCE_NS
#: reserve() clamps max_wait_ns to this.
MAX_WAIT_NS = _args.MAX_WAIT_NS
MAX_BURST = _args.MAX_BURST

# Error messages, shared word for word with the compiled wrapper.
MSG_RATE_TYPE = "rate must be a number, got {!r}"
MSG_RATE = "rate must be a finite number > 0, got {!r}"
MSG_BURST_TYPE = "burst must be an int, got {!r}"
MSG_BURST = "burst must be in [1, 2147483648], got {!r}"
MSG_TOLERANCE = _args.MSG_TOLERANCE
MSG_MAX_KEYS_TYPE = "max_keys must be an int, got {!r}"
MSG_MAX_KEYS = "max_keys must be in [1, 4294967295], got {!r}"
MSG_SECRET_TYPE = "secret must be bytes or None, got {!r}"
MSG_SECRET = "secret must be exactly 16 bytes, got {!r} bytes"
MSG_ON_FULL = "on_full must be KEYED_EVICT (0) or KEYED_REJECT (1), got {!r}"
MSG_KEY_TYPE = "key must be str or bytes, got {!r}"
MSG_KEY_LEN = "key must be at most 64 bytes (UTF-8 for str), got {!r} bytes"
MSG_N_TYPE = "n must be an int, got {!r}"
MSG_N = "n must be in [1, burst={!r}], got {!r}"
MSG_NOW = _args.MSG_NOW
MSG_MAX_WAIT = _args.MSG_MAX_WAIT

_M64 = 0xFFFF_FFFF_FFFF_FFFF
_INT64_MIN = -(1 << 63)
_GEN_MAX = 0x7FFF_FFFF
_SENT_BASE = 1 << 62
_EMPTY_TAT = _SENT_BASE + 1  # what a never-used C entry holds (SENT(1))


# ---- SipHash-2-4, 128-bit output ------------------------------------------------


def _sip_rounds(v0: int, v1: int, v2: int, v3: int, k: int) -> tuple[int, int, int, int]:
    m = _M64
    for _ in range(k):
        v0 = (v0 + v1) & m
        v1 = ((v1 << 13) | (v1 >> 51)) & m
        v1 ^= v0
        v0 = ((v0 << 32) | (v0 >> 32)) & m
        v2 = (v2 + v3) & m
        v3 = ((v3 << 16) | (v3 >> 48)) & m
        v3 ^= v2
        v0 = (v0 + v3) & m
        v3 = ((v3 << 21) | (v3 >> 43)) & m
        v3 ^= v0
        v2 = (v2 + v1) & m
        v1 = ((v1 << 17) | (v1 >> 47)) & m
        v1 ^= v2
        v2 = ((v2 << 32) | (v2 >> 32)) & m
    return v0, v1, v2, v3


def siphash128(data: bytes, key: bytes) -> tuple[int, int]:
    """SipHash-2-4 with 128-bit output (the reference's outlen=16 variant).

    Returns (out0, out1): the 16 output bytes are out0 then out1, each
    little-endian, exactly as `rs_siphash128` in csrc/rs_siphash.h.
    """
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:16], "little")
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1 ^ 0xEE
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    n = len(data)
    end = n - (n & 7)
    for i in range(0, end, 8):
        mi = int.from_bytes(data[i : i + 8], "little")
        v3 ^= mi
        v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 2)
        v0 ^= mi
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 2)
    v0 ^= b
    v2 ^= 0xEE
    v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 4)
    out0 = v0 ^ v1 ^ v2 ^ v3
    v1 ^= 0xDD
    v0, v1, v2, v3 = _sip_rounds(v0, v1, v2, v3, 4)
    return out0, v0 ^ v1 ^ v2 ^ v3


# ---- argument checks -----------------------------------------------------------


def _check_now(now_ns: int) -> int:
    """now_ns as an int in [0, MAX_NOW_NS): anything with __index__ is accepted, a float
    is a TypeError (as the compiled wrapper's int64 conversion)."""
    if type(now_ns) is int and 0 <= now_ns < MAX_NOW_NS:
        return now_ns
    return _args.now(now_ns)


def _check_max_wait(max_wait_ns: int) -> int:
    """max_wait_ns as an int in [0, MAX_WAIT_NS] (larger values are clamped)."""
    if type(max_wait_ns) is int and 0 <= max_wait_ns <= MAX_WAIT_NS:
        return max_wait_ns
    return _args.max_wait(max_wait_ns)


def _check_n(n: int, burst: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(MSG_N_TYPE.format(n))
    if not 1 <= n <= burst:
        raise ValueError(MSG_N.format(burst, n))


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        data = key.encode("utf-8")
    elif isinstance(key, bytes):
        data = key
    else:
        raise TypeError(MSG_KEY_TYPE.format(key))
    if len(data) > MAX_KEY_BYTES:
        raise ValueError(MSG_KEY_LEN.format(len(data)))
    return data


class KeyedBuckets:
    """A token bucket per key (`burst` tokens refilled at `rate` per second)
    in a table of at most `max_keys` keys."""

    __slots__ = (
        "_admitted",
        "_burst",
        "_evicted",
        "_fp0",
        "_fp1",
        "_inserted",
        "_interval",
        "_max_keys",
        "_on_full",
        "_probe",
        "_rate",
        "_rejected",
        "_secret",
        "_seq",
        "_tat",
    )

    def __init__(
        self,
        rate: float,
        burst: int,
        max_keys: int,
        *,
        secret: bytes | None = None,
        on_full: int = KEYED_EVICT,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(MSG_RATE_TYPE.format(rate))
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(MSG_RATE.format(rate))
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(MSG_BURST_TYPE.format(burst))
        if not 1 <= burst <= MAX_BURST:
            raise ValueError(MSG_BURST.format(burst))
        interval = _args.ceil_period_ns(rate)
        if burst * interval > MAX_TOLERANCE_NS:
            raise ValueError(MSG_TOLERANCE.format(burst, rate))
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(MSG_MAX_KEYS_TYPE.format(max_keys))
        if not 1 <= max_keys <= MAX_KEYS:
            raise ValueError(MSG_MAX_KEYS.format(max_keys))
        if secret is None:
            secret = os.urandom(16)
        elif not isinstance(secret, bytes):
            raise TypeError(MSG_SECRET_TYPE.format(secret))
        elif len(secret) != 16:
            raise ValueError(MSG_SECRET.format(len(secret)))
        if type(on_full) is not int or on_full not in (KEYED_EVICT, KEYED_REJECT):
            raise ValueError(MSG_ON_FULL.format(on_full))
        self._rate = float(rate)
        self._burst = burst
        self._interval = interval
        self._max_keys = max_keys
        self._probe = min(max_keys, PROBE)
        self._secret = secret
        self._on_full = on_full
        # Same 32 bytes per entry as the C table.
        self._seq = array("Q", [0]) * max_keys
        self._fp0 = array("Q", [0]) * max_keys
        self._fp1 = array("Q", [0]) * max_keys
        self._tat = array("q", [_EMPTY_TAT]) * max_keys
        self._admitted = 0
        self._rejected = 0
        self._evicted = 0
        self._inserted = 0

    # ---- read-only properties ----

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def max_keys(self) -> int:
        return self._max_keys

    @property
    def interval_ns(self) -> int:
        return self._interval

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def evicted(self) -> int:
        return self._evicted

    @property
    def inserted(self) -> int:
        return self._inserted

    # ---- table ----

    def _lookup(self, fp0: int, fp1: int) -> tuple[int, int]:
        """(slot holding the key or -1, first never-used slot or -1)."""
        cap = self._max_keys
        idx = ((fp0 >> 32) * cap) >> 32
        tag = fp1 >> 32
        seq = self._seq
        for _ in range(self._probe):
            s = seq[idx]
            if s == 0:
                return -1, idx
            if s >> 32 == tag and self._fp0[idx] == fp0 and self._fp1[idx] == fp1:
                return idx, -1
            idx += 1
            if idx == cap:
                idx = 0
        return -1, -1

    def _acquire(self, key: str | bytes, now_ns: int, n: int, max_wait: int) -> int:
        """rs_keyed_acquire: >= 0 admitted with that wait, < 0 refused."""
        fp0, fp1 = siphash128(_key_bytes(key), self._secret)
        idx, empty = self._lookup(fp0, fp1)
        tat = self._tat
        if idx >= 0:
            r, tat[idx] = gcra_step(tat[idx], self._interval, self._burst, now_ns, n, max_wait)
            return r
        gen = 1
        evict = False
        if empty >= 0:
            idx = empty
        else:
            # The window holds neither the key nor a never-used slot.
            cap = self._max_keys
            i = ((fp0 >> 32) * cap) >> 32
            reclaim = victim = -1
            victim_tat = 0
            for _ in range(self._probe):
                v = tat[i]
                if v <= now_ns:
                    if reclaim < 0:
                        reclaim = i
                elif victim < 0 or v < victim_tat:
                    victim, victim_tat = i, v
                i += 1
                if i == cap:
                    i = 0
            if reclaim >= 0:
                idx = reclaim
            elif self._on_full == KEYED_REJECT:
                return -(victim_tat - now_ns)
            else:
                idx = victim
                evict = True
            g = (self._seq[idx] >> 1) & _GEN_MAX
            gen = 1 if g >= _GEN_MAX else g + 1
        self._seq[idx] = ((fp1 >> 32) << 32) | (gen << 1)
        self._fp0[idx] = fp0
        self._fp1[idx] = fp1
        self._inserted += 1
        if evict:
            self._evicted += 1
        r, tat[idx] = gcra_step(_INT64_MIN + gen, self._interval, self._burst, now_ns, n, max_wait)
        return r

    # ---- operations ----

    def try_acquire(self, key: str | bytes, now_ns: int, n: int = 1) -> int:
        """Take n tokens for key now: 0 when admitted, else ns until they would be."""
        now_ns = _check_now(now_ns)
        _check_n(n, self._burst)
        r = self._acquire(key, now_ns, n, 0)
        if r == 0:
            self._admitted += 1
            return 0
        self._rejected += 1
        return -r

    def reserve(self, key: str | bytes, now_ns: int, n: int, max_wait_ns: int) -> int:
        """Reserve n tokens for key usable within max_wait_ns: the wait (>= 0),
        or -(wait needed) when refused. max_wait_ns is clamped to MAX_WAIT_NS."""
        now_ns = _check_now(now_ns)
        _check_n(n, self._burst)
        max_wait = _check_max_wait(max_wait_ns)
        r = self._acquire(key, now_ns, n, max_wait)
        if r >= 0:
            self._admitted += 1
        else:
            self._rejected += 1
        return r

    def refund(self, key: str | bytes, now_ns: int, n: int = 1) -> None:
        """Give back n tokens of an unused reservation; no-op for an unknown key."""
        now_ns = _check_now(now_ns)
        _check_n(n, self._burst)
        fp0, fp1 = siphash128(_key_bytes(key), self._secret)
        idx, _ = self._lookup(fp0, fp1)
        if idx >= 0:
            self._tat[idx] = gcra_refund(self._tat[idx], self._interval, n, now_ns)

    def available(self, key: str | bytes, now_ns: int) -> int:
        """Whole tokens available to key at now_ns (burst for an unknown key)."""
        now_ns = _check_now(now_ns)
        fp0, fp1 = siphash128(_key_bytes(key), self._secret)
        idx, _ = self._lookup(fp0, fp1)
        if idx < 0:
            return self._burst
        return gcra_available(self._tat[idx], self._interval, self._burst, now_ns)

    def count(self, now_ns: int) -> int:
        """Entries holding a live (not full) bucket at now_ns. O(max_keys)."""
        now_ns = _check_now(now_ns)
        return sum(1 for s, v in zip(self._seq, self._tat, strict=True) if s and v > now_ns)
