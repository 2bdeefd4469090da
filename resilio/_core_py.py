"""Pure-Python twin of the compiled core (`resilio._core_c`).

Same names, same arguments, same results, bit for bit: every method mirrors
the C function in `csrc/` of the same name, with the same integer arithmetic.
Python has no data races under the GIL, so CAS loops become plain updates.
"""

from __future__ import annotations

from resilio import _core_args as _args
from resilio._gcra_py import gcra_available, gcra_refund, gcra_step
from resilio._keyed_py import KEYED_EVICT, KEYED_REJECT, KeyedBuckets

__all__ = [
    "ADMIT_ISOLATED",
    "CLOSED",
    "HALF_OPEN",
    "ISOLATED",
    "KEYED_EVICT",
    "KEYED_REJECT",
    "NO_TRANSITION",
    "OPEN",
    "OUTCOME_FAILURE",
    "OUTCOME_SLOW",
    "Circuit",
    "CountWindow",
    "Counters",
    "Gate",
    "KeyedBuckets",
    "TimeWindow",
    "TokenBucket",
]

CLOSED = 0
OPEN = 1
HALF_OPEN = 2
ISOLATED = 3
OUTCOME_FAILURE = 1
OUTCOME_SLOW = 2
ADMIT_ISOLATED = -(1 << 63)
NO_TRANSITION = -1

_TAT_FULL = -(1 << 63)
_MAX_NOW = _args.MAX_NOW_NS
_MAX_WAIT = _args.MAX_WAIT_NS
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

# Argument checks: every method tests the common case inline (an exact int in range) and
# calls the shared conversion in resilio._core_args only otherwise, which converts or
# raises exactly as the compiled wrapper does. Every check runs before any state changes.
_now = _args.now


class TokenBucket:
    """Token bucket (GCRA): `burst` tokens, refilled at `rate` per second."""

    __slots__ = ("_admitted", "_burst", "_interval", "_rate", "_rejected", "_tat")

    def __init__(self, rate: float, burst: int) -> None:
        self._interval, self._burst = _args.bucket_args(rate, burst)
        self._rate = float(rate)
        self._tat = _TAT_FULL
        self._admitted = 0
        self._rejected = 0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def interval_ns(self) -> int:
        return self._interval

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def rejected(self) -> int:
        return self._rejected

    def try_acquire(self, now_ns: int, n: int = 1) -> int:
        """Take n tokens now: 0 when admitted, else ns until n are available."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        if type(n) is not int or n != 1:
            n = _args.one_token(n, self._burst)
        r, self._tat = gcra_step(self._tat, self._interval, self._burst, now_ns, n, 0)
        if r == 0:
            self._admitted += 1
            return 0
        self._rejected += 1
        return -r

    def reserve(self, now_ns: int, n: int, max_wait_ns: int) -> int:
        """Reserve n tokens usable within max_wait_ns: the wait (>= 0), or
        -(wait needed) when refused."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        if type(n) is not int or not 1 <= n <= self._burst:
            n = _args.tokens(n, self._burst)
        if type(max_wait_ns) is not int or not 0 <= max_wait_ns <= _MAX_WAIT:
            max_wait_ns = _args.max_wait(max_wait_ns)
        r, self._tat = gcra_step(self._tat, self._interval, self._burst, now_ns, n, max_wait_ns)
        if r >= 0:
            self._admitted += 1
        else:
            self._rejected += 1
        return r

    def refund(self, now_ns: int, n: int = 1) -> None:
        """Give back n unused tokens of a reservation."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        if type(n) is not int or not 1 <= n <= self._burst:
            n = _args.tokens(n, self._burst)
        self._tat = gcra_refund(self._tat, self._interval, n, now_ns)

    def available(self, now_ns: int) -> int:
        """Whole tokens available at now_ns."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        return gcra_available(self._tat, self._interval, self._burst, now_ns)


# ---- windows ----

_MAXB = _args.MAX_WINDOW_BUCKETS


def _tagged_inc(words: list[int], i: int, tag: int) -> None:
    w = words[i]
    wtag = w >> 32
    if wtag == tag:
        if w & _U32 == _U32:
            return
        words[i] = w + 1
        return
    d = (wtag - tag) & _U32
    if d != 0 and d < 0x80000000 and (w & _U32) != 0:
        return
    words[i] = (tag << 32) | 1


def _tagged_read(w: int, tag: int) -> int:
    return w & _U32 if (w >> 32) == tag else 0


class TimeWindow:
    """Outcomes over a sliding time window of `buckets` buckets."""

    __slots__ = ("_calls", "_failures", "_n", "_slow", "_width")

    def __init__(self, duration_ns: int, buckets: int = 10) -> None:
        duration, self._n = _args.window_args(duration_ns, buckets)
        self._width = (duration + self._n - 1) // self._n
        stale = _U32 << 32
        self._calls = [stale] * _MAXB
        self._failures = [stale] * _MAXB
        self._slow = [stale] * _MAXB

    @property
    def width_ns(self) -> int:
        return self._width

    @property
    def buckets(self) -> int:
        return self._n

    def record(self, now_ns: int, outcome: int = 0) -> None:
        """Count one call (outcome: OUTCOME_* flags) at now_ns."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        flags = outcome & 3 if type(outcome) is int else _args.flags(outcome)
        idx = now_ns // self._width
        slot = idx % self._n
        tag = idx & _U32
        _tagged_inc(self._calls, slot, tag)
        if flags & OUTCOME_FAILURE:
            _tagged_inc(self._failures, slot, tag)
        if flags & OUTCOME_SLOW:
            _tagged_inc(self._slow, slot, tag)

    def snapshot(self, now_ns: int) -> tuple[int, int, int]:
        """(calls, failures, slow) in the window ending at now_ns."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        cur = now_ns // self._width
        n = self._n
        calls = failures = slow = 0
        i = 0
        while i < n and i <= cur:
            idx = cur - i
            slot = idx % n
            tag = idx & _U32
            i += 1
            cw = self._calls[slot]
            # Marks count only while the calls word still carries this bucket
            # (see rs_twindow_snapshot).
            if (cw >> 32) != tag:
                continue
            failures += _tagged_read(self._failures[slot], tag)
            slow += _tagged_read(self._slow[slot], tag)
            calls += cw & _U32
        return calls, failures, slow

    def reset(self, now_ns: int) -> None:
        """Forget every outcome."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        cur = now_ns // self._width
        stale = ((cur - self._n) & _U32) << 32
        self._calls = [stale] * _MAXB
        self._failures = [stale] * _MAXB
        self._slow = [stale] * _MAXB


_SLOT_VALID = 4


class CountWindow:
    """Outcomes of the last `size` calls."""

    __slots__ = ("_calls", "_failures", "_pos", "_ring", "_size", "_slow")

    def __init__(self, size: int) -> None:
        self._size = _args.count_window_size(size)
        self._ring = [0] * self._size
        self._pos = 0
        self._calls = 0
        self._failures = 0
        self._slow = 0

    @property
    def size(self) -> int:
        return self._size

    def _apply(self, added: int, removed: int) -> None:
        self._calls += bool(added & _SLOT_VALID) - bool(removed & _SLOT_VALID)
        self._failures += bool(added & OUTCOME_FAILURE) - bool(removed & OUTCOME_FAILURE)
        self._slow += bool(added & OUTCOME_SLOW) - bool(removed & OUTCOME_SLOW)

    def record(self, outcome: int = 0) -> None:
        """Count one call (outcome: OUTCOME_* flags)."""
        flags = outcome & 3 if type(outcome) is int else _args.flags(outcome)
        p = self._pos % self._size
        self._pos = (self._pos + 1) & _U64
        v = _SLOT_VALID | flags
        old = self._ring[p]
        self._ring[p] = v
        self._apply(v, old)

    def snapshot(self) -> tuple[int, int, int]:
        """(calls, failures, slow) over the last `size` calls."""
        return max(self._calls, 0), max(self._failures, 0), max(self._slow, 0)

    def reset(self) -> None:
        """Forget every outcome."""
        for i in range(self._size):
            old = self._ring[i]
            self._ring[i] = 0
            self._apply(0, old)


# ---- circuit ----

_OPENS_SHIFT = 2
_PERMITS_SHIFT = 6
_SUCC_SHIFT = 11
_GEN_SHIFT = 16
_TIME_SHIFT = 20
_UNIT_SHIFT = 16
_MAX_OPENS = 15
_PERMITS_MASK = 0x1F << _PERMITS_SHIFT
_SUCC_MASK = 0x1F << _SUCC_SHIFT
_ID_MASK = ~(_PERMITS_MASK | _SUCC_MASK) & _U64


def _cw_make(state: int, opens: int, permits: int, succ: int, gen: int, units: int) -> int:
    return (
        state
        | (opens << _OPENS_SHIFT)
        | (permits << _PERMITS_SHIFT)
        | (succ << _SUCC_SHIFT)
        | ((gen & 0xF) << _GEN_SHIFT)
        | (units << _TIME_SHIFT)
    ) & _U64


# Time-field saturation (see rs_cw_units_ceil / rs_cw_break_units_ceil): a probe lease
# keeps bit 63 clear, so a ticket is >= 0; a break end may use the whole field, so it
# lies beyond every valid now_ns and a break never ends early.
_MAX_UNITS = (1 << 43) - 1
_MAX_BREAK_UNITS = (1 << 44) - 1


def _units_ceil(ns: int) -> int:
    u = (ns + (1 << _UNIT_SHIFT) - 1) >> _UNIT_SHIFT
    return u if u < _MAX_UNITS else _MAX_UNITS


def _break_units_ceil(ns: int) -> int:
    u = (ns + (1 << _UNIT_SHIFT) - 1) >> _UNIT_SHIFT
    return u if u < _MAX_BREAK_UNITS else _MAX_BREAK_UNITS


def _gen(w: int) -> int:
    return (w >> _GEN_SHIFT) & 0xF


def _permits(w: int) -> int:
    return (w >> _PERMITS_SHIFT) & 0x1F


def _succ(w: int) -> int:
    return (w >> _SUCC_SHIFT) & 0x1F


def _time_ns(w: int) -> int:
    return (w >> _TIME_SHIFT) << _UNIT_SHIFT


class Circuit:
    """Circuit breaker state machine (see csrc/rs_circuit.h)."""

    __slots__ = (
        "_break",
        "_counts",
        "_failure_ppm",
        "_hoc",
        "_max_break",
        "_min_tp",
        "_slow_ppm",
        "_window",
        "_word",
    )

    def __init__(
        self,
        failure_ratio: float,
        minimum_throughput: int,
        sampling_duration_ns: int,
        break_duration_ns: int,
        *,
        max_break_duration_ns: int = 0,
        half_open_calls: int = 1,
        slow_call_ratio: float | None = None,
        buckets: int = 10,
        now_ns: int = 0,
    ) -> None:
        (
            self._failure_ppm,
            self._slow_ppm,
            self._min_tp,
            sampling,
            nb,
            self._break,
            self._max_break,
            self._hoc,
            now_ns,
        ) = _args.circuit_args(
            failure_ratio,
            minimum_throughput,
            sampling_duration_ns,
            break_duration_ns,
            max_break_duration_ns,
            half_open_calls,
            slow_call_ratio,
            buckets,
            now_ns,
        )
        self._window = TimeWindow(sampling, nb)
        # admitted, rejected, successes, failures, slow, opened, half_opened,
        # closed, isolated, stale
        self._counts = [0] * 10
        self._word = _cw_make(CLOSED, 0, 0, 0, 0, now_ns >> _UNIT_SHIFT)

    # -- read-only views --
    @property
    def state(self) -> int:
        return self._word & 3

    @property
    def word(self) -> int:
        return self._word

    @property
    def in_flight_probes(self) -> int:
        return _permits(self._word) if self._word & 3 == HALF_OPEN else 0

    @property
    def half_open_calls(self) -> int:
        return self._hoc

    @property
    def admitted(self) -> int:
        return self._counts[0]

    @property
    def rejected(self) -> int:
        return self._counts[1]

    @property
    def successes(self) -> int:
        return self._counts[2]

    @property
    def failures(self) -> int:
        return self._counts[3]

    @property
    def slow(self) -> int:
        return self._counts[4]

    @property
    def opened(self) -> int:
        return self._counts[5]

    @property
    def half_opened(self) -> int:
        return self._counts[6]

    @property
    def closed(self) -> int:
        return self._counts[7]

    @property
    def isolated(self) -> int:
        return self._counts[8]

    @property
    def stale(self) -> int:
        return self._counts[9]

    def break_for(self, opens: int) -> int:
        """Break length in ns for the n-th consecutive open."""
        if type(opens) is not int or not 0 <= opens <= _args.MAX_OPENS_ARG:
            opens = _args.opens(opens)
        if self._max_break <= 0:
            return self._break
        b = self._break
        i = 1
        while i < opens and b < self._max_break:
            b = self._max_break if b > self._max_break // 2 else b * 2
            i += 1
        return b if b < self._max_break else self._max_break

    def _open_word(self, frm: int, now_ns: int) -> int:
        opens = (frm >> _OPENS_SHIFT) & 0xF
        if opens < _MAX_OPENS:
            opens += 1
        until = now_ns + self.break_for(opens)
        return _cw_make(OPEN, opens, 0, 0, _gen(frm) + 1, _break_units_ceil(until))

    def _probe_word(self, frm: int, now_ns: int) -> int:
        # The lease lasts the current break: the one that just ended.
        opens = (frm >> _OPENS_SHIFT) & 0xF
        lease = _units_ceil(now_ns + self.break_for(opens))
        return _cw_make(HALF_OPEN, opens, 1, 0, _gen(frm) + 1, lease)

    def admit(self, now_ns: int) -> int:
        """A ticket (>= 0) when the call may run; else -(wait_ns) - 1, or
        ADMIT_ISOLATED."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        w = self._word
        st = w & 3
        c = self._counts
        if st == CLOSED:
            c[0] += 1
            return w
        if st == ISOLATED:
            c[1] += 1
            return ADMIT_ISOLATED
        t = _time_ns(w)
        if st == OPEN:
            if now_ns < t:
                c[1] += 1
                return -(t - now_ns) - 1
            nw = self._probe_word(w, now_ns)
        elif _permits(w) < self._hoc and _succ(w) < self._hoc:
            nw = w + (1 << _PERMITS_SHIFT)
        elif now_ns >= t:
            nw = self._probe_word(w, now_ns)
        else:
            c[1] += 1
            return -(t - now_ns) - 1
        self._word = nw
        if _permits(nw) == 1 and _succ(nw) == 0 and _gen(nw) != _gen(w):
            c[6] += 1
        c[0] += 1
        return nw

    def _should_trip(self, calls: int, failures: int, slow: int) -> bool:
        if calls < self._min_tp or calls == 0:
            return False
        if failures * 1_000_000 >= self._failure_ppm * calls:
            return True
        return self._slow_ppm <= 1_000_000 and slow * 1_000_000 >= self._slow_ppm * calls

    def record(self, ticket: int, now_ns: int, outcome: int = 0) -> int:
        """Report an admitted call's outcome; returns the state it moved the
        circuit to, or NO_TRANSITION."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        flags = outcome & 3 if type(outcome) is int else _args.flags(outcome)
        t = ticket & _U64 if type(ticket) is int else _args.ticket(ticket)
        c = self._counts
        failed = bool(flags & OUTCOME_FAILURE)
        if failed:
            c[3] += 1
        else:
            c[2] += 1
        if flags & OUTCOME_SLOW:
            c[4] += 1
        w = self._word
        if (w & _ID_MASK) != (t & _ID_MASK):
            c[9] += 1
            return NO_TRANSITION
        if t & 3 == CLOSED:
            self._window.record(now_ns, flags)
            if not self._should_trip(*self._window.snapshot(now_ns)):
                return NO_TRANSITION
            self._word = self._open_word(w, now_ns)
            c[5] += 1
            return OPEN
        if failed:
            self._word = self._open_word(w, now_ns)
            c[5] += 1
            return OPEN
        succ = _succ(w)
        if succ >= self._hoc:
            return NO_TRANSITION  # another probe is closing
        permits = _permits(w)
        succ += 1
        nw = (
            (w & _ID_MASK)
            | ((permits - 1 if permits else 0) << _PERMITS_SHIFT)
            | (succ << _SUCC_SHIFT)
        )
        if succ < self._hoc:
            self._word = nw
            return NO_TRANSITION
        self._window.reset(now_ns)
        self._word = _cw_make(CLOSED, 0, 0, 0, _gen(nw) + 1, now_ns >> _UNIT_SHIFT)
        c[7] += 1
        return CLOSED

    def release(self, ticket: int) -> None:
        """Give back a ticket without an outcome (the call was cancelled)."""
        t = ticket & _U64 if type(ticket) is int else _args.ticket(ticket)
        if t & 3 != HALF_OPEN:
            return
        w = self._word
        if (w & _ID_MASK) != (t & _ID_MASK) or _permits(w) == 0:
            return
        self._word = w - (1 << _PERMITS_SHIFT)

    def isolate(self, now_ns: int) -> None:
        """Hold the circuit open until reset()."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        w = self._word
        if w & 3 == ISOLATED:
            return
        self._word = _cw_make(ISOLATED, 0, 0, 0, _gen(w) + 1, now_ns >> _UNIT_SHIFT)
        self._counts[8] += 1

    def reset(self, now_ns: int) -> None:
        """Close the circuit and forget the window."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        self._window.reset(now_ns)
        w = self._word
        self._word = _cw_make(CLOSED, 0, 0, 0, _gen(w) + 1, now_ns >> _UNIT_SHIFT)
        if w & 3 != CLOSED:
            self._counts[7] += 1

    def retry_after_ns(self, now_ns: int) -> int:
        """ns until a call could be admitted; -1 when isolated."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        w = self._word
        st = w & 3
        if st == CLOSED:
            return 0
        if st == ISOLATED:
            return -1
        if st == HALF_OPEN and _permits(w) < self._hoc:
            return 0
        t = _time_ns(w)
        return t - now_ns if t > now_ns else 0

    def snapshot(self, now_ns: int) -> tuple[int, int, int]:
        """(calls, failures, slow) in the current closed-state window."""
        if type(now_ns) is not int or not 0 <= now_ns < _MAX_NOW:
            now_ns = _now(now_ns)
        return self._window.snapshot(now_ns)


class Gate:
    """Concurrency gate: in-flight count against a changeable limit."""

    __slots__ = ("_admitted", "_in_flight", "_limit", "_rejected")

    def __init__(self, limit: int) -> None:
        self._limit = _args.gate_limit(limit)
        self._in_flight = 0
        self._admitted = 0
        self._rejected = 0

    def try_enter(self) -> bool:
        """Take a slot if one is free."""
        if self._in_flight >= self._limit:
            self._rejected += 1
            return False
        self._in_flight += 1
        self._admitted += 1
        return True

    def exit(self) -> None:
        """Give a slot back; an exit without a matching try_enter (nothing in flight)
        does nothing."""
        if self._in_flight > 0:
            self._in_flight -= 1

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = _args.gate_limit(value)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def rejected(self) -> int:
        return self._rejected


class Counters:
    """A fixed array of event counters."""

    __slots__ = ("_v",)

    def __init__(self, n: int) -> None:
        self._v = [0] * _args.counters_size(n)

    def __len__(self) -> int:
        return len(self._v)

    def add(self, i: int, d: int = 1) -> None:
        """Add d to counter i."""
        v = self._v
        if type(i) is not int or not 0 <= i < len(v):
            i = _args.counter_index(i, len(v))
        if type(d) is not int or not 0 <= d <= _U64:
            d = _args.counter_delta(d)
        v[i] = (v[i] + d) & _U64  # wraps at 2**64, as the C's uint64 counters

    def get(self, i: int) -> int:
        """Counter i."""
        v = self._v
        if type(i) is not int or not 0 <= i < len(v):
            i = _args.counter_index(i, len(v))
        return v[i]

    def snapshot(self) -> tuple[int, ...]:
        """All counters."""
        return tuple(self._v)
