# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, embedsignature.format=clinic, binding=False
"""Compiled core: thin classes over the header-only C in ``csrc/``.

The public API is exactly that of the pure-Python twin ``resilio._core_py`` (same names,
arguments, defaults, results and exceptions), and ``_core_c.pyi`` mirrors it for type
checkers. Every constructor converts and validates its arguments with
``resilio._core_args``, so both implementations hand the same integers to the same
arithmetic. Methods only convert arguments and call one ``rs_*`` function.

Arguments are taken as objects and converted here, rather than typed ``int64_t`` in the
signature, so an out-of-range int raises the twin's ``ValueError`` instead of Cython's
``OverflowError``; on the success path the conversion is one C call per argument.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from posix.mman cimport (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FAILED,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mmap,
    munmap,
)

import math
import os

from resilio import _core_args as _args
from resilio import _keyed_py as _kp


cdef extern from "Python.h":
    # Re-declared without Cython's error check: called only on objects that passed
    # PyLong_Check, for which CPython cannot fail.
    bint PyLong_Check(object o) noexcept
    long long _as_ll_ovf "PyLong_AsLongLongAndOverflow"(object o, int *overflow) noexcept
    unsigned long long _as_mask "PyLong_AsUnsignedLongLongMask"(object o) noexcept
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL


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

CLOSED = RS_CS_CLOSED
OPEN = RS_CS_OPEN
HALF_OPEN = RS_CS_HALF_OPEN
ISOLATED = RS_CS_ISOLATED
OUTCOME_FAILURE = RS_OUTCOME_FAILURE
OUTCOME_SLOW = RS_OUTCOME_SLOW
ADMIT_ISOLATED = RS_ADMIT_ISOLATED
NO_TRANSITION = RS_NO_TRANSITION
KEYED_EVICT = RS_KEYED_EVICT
KEYED_REJECT = RS_KEYED_REJECT

cdef extern from *:
    """
    /* now_ns must fit the circuit word's time field (resilio._core_args.MAX_NOW_NS). */
    #define RS_PY_MAX_NOW ((int64_t)1 << 59)
    /* break_for() saturates long before this many doublings (break >= 1, max < 2**60). */
    #define RS_PY_MAX_OPENS_ARG 64
    """
    const int64_t _MAX_NOW "RS_PY_MAX_NOW"
    const uint32_t _MAX_OPENS_ARG "RS_PY_MAX_OPENS_ARG"

# GCRA words are int64. TokenBucket takes the keyed table's bounds (rs_keyed.h): with
# now < 2**59, a tolerance (burst * interval_ns) <= 2**60 (checked by
# resilio._core_args.bucket_args for both implementations) and a reservation wait clamped
# to 2**60 keep every intermediate below 2**63.
cdef int64_t _MAX_WAIT = RS_KEYED_MAX_WAIT

# The shared argument checks must use the C's bounds.
if (_args.MAX_NOW_NS, _args.MAX_OPENS_ARG, _args.MAX_TOLERANCE_NS, _args.MAX_WAIT_NS) != (
    _MAX_NOW, _MAX_OPENS_ARG, RS_KEYED_MAX_TOLERANCE, RS_KEYED_MAX_WAIT
):
    raise ImportError("resilio._core_args bounds differ from the compiled core's")


# ---- argument conversion ------------------------------------------------------------
# Fast paths are inline and allocate nothing; every raise is in an out-of-line function.

cdef int _raise_bad_now(object now_ns) except -1:
    raise ValueError(_args.MSG_NOW.format(now_ns))


cdef int64_t _now_slow(object now_ns) except -1:
    cdef int ovf = 0
    cdef long long v
    # Anything with __index__ (a numpy integer) is accepted; a float is a TypeError.
    i = PyNumber_Index(now_ns)
    v = _as_ll_ovf(i, &ovf)
    if ovf != 0 or v < 0 or v >= _MAX_NOW:
        _raise_bad_now(now_ns)
    return v


cdef inline int64_t _now(object now_ns) except -1:
    cdef int ovf = 0
    cdef long long v
    if PyLong_Check(now_ns):
        v = _as_ll_ovf(now_ns, &ovf)
        if ovf == 0 and 0 <= v < _MAX_NOW:
            return v
    return _now_slow(now_ns)


cdef int64_t _tokens_slow(object n, int64_t burst) except -1:
    # The shared check raises the twin's error, or returns a valid int in [1, burst].
    return _args.tokens(n, burst)


cdef inline int64_t _tokens(object n, int64_t burst) except -1:
    """n for reserve/refund: always validated, as the twin does."""
    cdef int ovf = 0
    cdef long long v
    # An exact int in range passes the shared check as is; anything else (bool, an int
    # subclass, a wrong type, out of range) goes through it for the twin's verdict.
    if type(n) is int:
        v = _as_ll_ovf(n, &ovf)
        if ovf == 0 and 1 <= v <= burst:
            return v
    return _tokens_slow(n, burst)


cdef inline int64_t _one_token(object n, int64_t burst) except -1:
    """n for try_acquire: the twin validates only when n != 1 (so True passes)."""
    cdef int ovf = 0
    if PyLong_Check(n) and _as_ll_ovf(n, &ovf) == 1 and ovf == 0:
        return 1
    return _tokens(n, burst)


cdef int _flags_slow(object outcome) except -1:
    return <int>(_as_mask(PyNumber_Index(outcome)) & 3u)


cdef inline int _flags(object outcome) except -1:
    """OUTCOME_* bits of outcome, as the twin's `outcome & OUTCOME_*` sees them."""
    if PyLong_Check(outcome):
        return <int>(_as_mask(outcome) & 3u)
    return _flags_slow(outcome)


cdef inline int64_t _ticket(object ticket) except? -1:
    """The ticket word modulo 2**64, as the twin's `ticket & 0xFFFF_FFFF_FFFF_FFFF`."""
    if not PyLong_Check(ticket):
        ticket = PyNumber_Index(ticket)
    return <int64_t>_as_mask(ticket)


cdef uint32_t _opens_arg(object opens) except? 0xFFFFFFFF:
    cdef int ovf = 0
    cdef long long v = _as_ll_ovf(PyNumber_Index(opens), &ovf)
    if ovf < 0 or (ovf == 0 and v < 0):
        return 0
    if ovf > 0 or v > _MAX_OPENS_ARG:
        return _MAX_OPENS_ARG
    return <uint32_t>v


cdef int64_t _max_wait(object max_wait_ns) except -1:
    cdef int ovf = 0
    cdef long long v
    if type(max_wait_ns) is not int:
        max_wait_ns = PyNumber_Index(max_wait_ns)
    v = _as_ll_ovf(max_wait_ns, &ovf)
    if ovf < 0 or (ovf == 0 and v < 0):
        raise ValueError(_args.MSG_MAX_WAIT.format(max_wait_ns))
    if ovf > 0 or v > _MAX_WAIT:
        return _MAX_WAIT
    return v


cdef int _raise_bad_index(object i) except -1:
    raise IndexError(_args.MSG_INDEX)


cdef inline uint32_t _counter_index(object i, uint32_t n) except? 0xFFFFFFFF:
    cdef int ovf = 0
    cdef long long v
    if not PyLong_Check(i):
        i = PyNumber_Index(i)
    v = _as_ll_ovf(i, &ovf)
    if ovf != 0 or v < 0 or v >= n:
        _raise_bad_index(i)
    return <uint32_t>v


cdef uint64_t _delta_slow(object d) except? 0xFFFFFFFFFFFFFFFF:
    cdef int ovf = 0
    cdef long long v
    i = PyNumber_Index(d)
    v = _as_ll_ovf(i, &ovf)
    if ovf < 0 or (ovf == 0 and v < 0):
        raise ValueError(_args.MSG_DELTA.format(d))
    # >= 2**63: exact up to 2**64 - 1, OverflowError beyond.
    return PyLong_AsUnsignedLongLong(i)


cdef inline uint64_t _delta(object d) except? 0xFFFFFFFFFFFFFFFF:
    cdef int ovf = 0
    cdef long long v
    if PyLong_Check(d):
        v = _as_ll_ovf(d, &ovf)
        if ovf == 0 and v >= 0:
            return <uint64_t>v
    return _delta_slow(d)


cdef void *_alloc(size_t size, void **mem, size_t zero=<size_t>-1) except NULL:
    """Memory for one struct, 64-byte aligned (its own cache lines), its first `zero`
    bytes (all by default) zeroed; the block to free goes to *mem."""
    if size == 0 or size > <size_t>-1 - 64:
        raise MemoryError()
    cdef void *raw = PyMem_Malloc(size + 64)
    if raw == NULL:
        raise MemoryError()
    cdef void *p = <void *>((<uintptr_t>raw + 63) & ~(<uintptr_t>63))
    memset(p, 0, size if zero > size else zero)
    mem[0] = raw
    return p


cdef size_t _HUGE_PAGE = 2 * 1024 * 1024


cdef void *_alloc_table(size_t size, size_t *mapped) except NULL:
    """Zeroed memory for a large table: its own anonymous mapping, aligned to and
    advised for 2 MiB pages. Random keys over tens of MiB miss the TLB on nearly every
    lookup with 4 KiB pages; with huge pages (where the kernel grants them) only the
    data's cache miss is left. The length to munmap goes to *mapped."""
    cdef size_t length = (size + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    cdef size_t span = length + _HUGE_PAGE
    if length < size or span < length:
        raise MemoryError()
    cdef void *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if raw == MAP_FAILED:
        raise MemoryError()
    cdef uintptr_t start = (<uintptr_t>raw + _HUGE_PAGE - 1) & ~(<uintptr_t>_HUGE_PAGE - 1)
    cdef size_t head = start - <uintptr_t>raw
    if head:
        munmap(raw, head)
    if span - head - length:
        munmap(<void *>(start + length), span - head - length)
    madvise(<void *>start, length, MADV_HUGEPAGE)  # advice: refused is fine
    mapped[0] = length
    return <void *>start


# ---- token bucket -------------------------------------------------------------------
# Class docstrings open with "Name(signature)\n--\n\n" at column 0: CPython turns that into
# the type's __text_signature__, so inspect.signature(TokenBucket) works on the compiled
# classes (methods get theirs from embedsignature.format=clinic).

cdef class TokenBucket:
    """TokenBucket(rate, burst)
--

Token bucket (GCRA): `burst` tokens, refilled at `rate` per second."""

    def __cinit__(self):
        self.b = <rs_bucket *>_alloc(sizeof(rs_bucket), &self._mem)
        # A valid state even if a subclass never calls __init__.
        rs_bucket_init(self.b, 1, 1)
        self._rate = 1e9

    def __dealloc__(self):
        PyMem_Free(self._mem)
        self._mem = NULL
        self.b = NULL

    def __init__(self, rate, burst):
        interval, burst_ = _args.bucket_args(rate, burst)
        self._rate = float(rate)
        rs_bucket_init(self.b, interval, burst_)

    @property
    def rate(self):
        return self._rate

    @property
    def burst(self):
        return self.b.burst

    @property
    def interval_ns(self):
        return self.b.interval_ns

    @property
    def admitted(self):
        return rs_load_relaxed_u64(&self.b.admitted)

    @property
    def rejected(self):
        return rs_load_relaxed_u64(&self.b.rejected)

    def try_acquire(self, now_ns, n=1):
        """Take n tokens now: 0 when admitted, else ns until n are available."""
        cdef int64_t now = _now(now_ns)
        cdef int64_t k = _one_token(n, self.b.burst)
        return rs_bucket_try_acquire(self.b, now, k)

    def reserve(self, now_ns, n, max_wait_ns):
        """Reserve n tokens usable within max_wait_ns: the wait (>= 0), or
        -(wait needed) when refused."""
        cdef int64_t now = _now(now_ns)
        cdef int64_t k = _tokens(n, self.b.burst)
        cdef int64_t max_wait = _max_wait(max_wait_ns)
        return rs_bucket_reserve(self.b, now, k, max_wait)

    def refund(self, now_ns, n=1):
        """Give back n unused tokens of a reservation."""
        cdef int64_t now = _now(now_ns)
        cdef int64_t k = _tokens(n, self.b.burst)
        rs_bucket_refund(self.b, now, k)

    def available(self, now_ns):
        """Whole tokens available at now_ns."""
        return rs_bucket_available(self.b, _now(now_ns))


# ---- windows ------------------------------------------------------------------------

cdef class TimeWindow:
    """TimeWindow(duration_ns, buckets=10)
--

Outcomes over a sliding time window of `buckets` buckets."""

    def __cinit__(self):
        self.w = <rs_twindow *>_alloc(sizeof(rs_twindow), &self._mem)
        rs_twindow_init(self.w, 1, 1)  # width 1: never divides by zero

    def __dealloc__(self):
        PyMem_Free(self._mem)
        self._mem = NULL
        self.w = NULL

    def __init__(self, duration_ns, buckets=10):
        duration, nb = _args.window_args(duration_ns, buckets)
        rs_twindow_init(self.w, duration, nb)

    @property
    def width_ns(self):
        return self.w.width_ns

    @property
    def buckets(self):
        return self.w.nbuckets

    def record(self, now_ns, outcome=0):
        """Count one call (outcome: OUTCOME_* flags) at now_ns."""
        cdef int64_t now = _now(now_ns)
        rs_twindow_record(self.w, now, <uint32_t>_flags(outcome))

    def snapshot(self, now_ns):
        """(calls, failures, slow) in the window ending at now_ns."""
        cdef rs_wsnapshot s = rs_twindow_snapshot(self.w, _now(now_ns))
        return (s.calls, s.failures, s.slow)

    def reset(self, now_ns):
        """Forget every outcome."""
        rs_twindow_reset(self.w, _now(now_ns))


cdef class CountWindow:
    """CountWindow(size)
--

Outcomes of the last `size` calls."""

    def __cinit__(self):
        self.w = <rs_cwindow *>_alloc(sizeof(rs_cwindow), &self._mem)
        rs_cwindow_init(self.w, 1)  # size 1: never divides by zero

    def __dealloc__(self):
        PyMem_Free(self._mem)
        self._mem = NULL
        self.w = NULL

    def __init__(self, size):
        rs_cwindow_init(self.w, _args.count_window_size(size))

    @property
    def size(self):
        return self.w.size

    def record(self, outcome=0):
        """Count one call (outcome: OUTCOME_* flags)."""
        rs_cwindow_record(self.w, <uint32_t>_flags(outcome))

    def snapshot(self):
        """(calls, failures, slow) over the last `size` calls."""
        cdef rs_wsnapshot s = rs_cwindow_snapshot(self.w)
        return (s.calls, s.failures, s.slow)

    def reset(self):
        """Forget every outcome."""
        rs_cwindow_reset(self.w)


# ---- circuit ------------------------------------------------------------------------

cdef class Circuit:
    """Circuit(failure_ratio, minimum_throughput, sampling_duration_ns, break_duration_ns, *, max_break_duration_ns=0, half_open_calls=1, slow_call_ratio=None, buckets=10, now_ns=0)
--

Circuit breaker state machine (see csrc/rs_circuit.h)."""

    def __cinit__(self):
        self.c = <rs_circuit *>_alloc(sizeof(rs_circuit), &self._mem)
        rs_circuit_init(self.c, 1000000, _args.SLOW_DISABLED_PPM, 1, 1, 1, 1, 0, 1, 0)

    def __dealloc__(self):
        PyMem_Free(self._mem)
        self._mem = NULL
        self.c = NULL

    def __init__(
        self,
        failure_ratio,
        minimum_throughput,
        sampling_duration_ns,
        break_duration_ns,
        *,
        max_break_duration_ns=0,
        half_open_calls=1,
        slow_call_ratio=None,
        buckets=10,
        now_ns=0,
    ):
        (
            failure_ppm,
            slow_ppm,
            min_tp,
            sampling,
            nb,
            brk,
            max_brk,
            hoc,
            now,
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
        rs_circuit_init(self.c, failure_ppm, slow_ppm, min_tp, sampling, nb, brk, max_brk,
                        hoc, now)

    # -- read-only views --
    @property
    def state(self):
        return rs_circuit_state(self.c)

    @property
    def word(self):
        return rs_load_acquire_u64(&self.c.word)

    @property
    def in_flight_probes(self):
        cdef uint64_t w = rs_load_acquire_u64(&self.c.word)
        return rs_cw_permits(w) if rs_cw_state(w) == RS_CS_HALF_OPEN else 0

    @property
    def half_open_calls(self):
        return self.c.half_open_calls

    @property
    def admitted(self):
        return rs_load_relaxed_u64(&self.c.admitted)

    @property
    def rejected(self):
        return rs_load_relaxed_u64(&self.c.rejected)

    @property
    def successes(self):
        return rs_load_relaxed_u64(&self.c.successes)

    @property
    def failures(self):
        return rs_load_relaxed_u64(&self.c.failures)

    @property
    def slow(self):
        return rs_load_relaxed_u64(&self.c.slow)

    @property
    def opened(self):
        return rs_load_relaxed_u64(&self.c.opened)

    @property
    def half_opened(self):
        return rs_load_relaxed_u64(&self.c.half_opened)

    @property
    def closed(self):
        return rs_load_relaxed_u64(&self.c.closed)

    @property
    def isolated(self):
        return rs_load_relaxed_u64(&self.c.isolated)

    @property
    def stale(self):
        return rs_load_relaxed_u64(&self.c.stale)

    def break_for(self, opens):
        """Break length in ns for the n-th consecutive open."""
        return rs_circuit_break_for(self.c, _opens_arg(opens))

    def admit(self, now_ns):
        """A ticket (>= 0) when the call may run; else -(wait_ns) - 1, or
        ADMIT_ISOLATED."""
        return rs_circuit_admit(self.c, _now(now_ns))

    def record(self, ticket, now_ns, outcome=0):
        """Report an admitted call's outcome; returns the state it moved the
        circuit to, or NO_TRANSITION."""
        cdef int64_t now = _now(now_ns)
        cdef uint32_t flags = <uint32_t>_flags(outcome)
        return rs_circuit_record(self.c, _ticket(ticket), now, flags)

    def release(self, ticket):
        """Give back a ticket without an outcome (the call was cancelled)."""
        rs_circuit_release(self.c, _ticket(ticket))

    def isolate(self, now_ns):
        """Hold the circuit open until reset()."""
        rs_circuit_isolate(self.c, _now(now_ns))

    def reset(self, now_ns):
        """Close the circuit and forget the window."""
        rs_circuit_reset(self.c, _now(now_ns))

    def retry_after_ns(self, now_ns):
        """ns until a call could be admitted; -1 when isolated."""
        return rs_circuit_retry_after(self.c, _now(now_ns))

    def snapshot(self, now_ns):
        """(calls, failures, slow) in the current closed-state window."""
        cdef rs_wsnapshot s = rs_twindow_snapshot(&self.c.window, _now(now_ns))
        return (s.calls, s.failures, s.slow)


# ---- gate ---------------------------------------------------------------------------

cdef class Gate:
    """Gate(limit)
--

Concurrency gate: in-flight count against a changeable limit."""

    def __cinit__(self):
        self.g = <rs_gate *>_alloc(sizeof(rs_gate), &self._mem)
        rs_gate_init(self.g, 0)

    def __dealloc__(self):
        PyMem_Free(self._mem)
        self._mem = NULL
        self.g = NULL

    def __init__(self, limit):
        rs_gate_init(self.g, _args.gate_limit(limit))

    def try_enter(self):
        """Take a slot if one is free."""
        return rs_gate_try_enter(self.g)

    def exit(self):
        """Give a slot back."""
        rs_gate_exit(self.g)

    @property
    def limit(self):
        return rs_load_relaxed_i64(&self.g.limit)

    @limit.setter
    def limit(self, value):
        rs_gate_set_limit(self.g, _args.gate_limit(value))

    @limit.deleter
    def limit(self):
        raise AttributeError("can't delete attribute")

    @property
    def in_flight(self):
        return rs_load_relaxed_i64(&self.g.in_flight)

    @property
    def admitted(self):
        return rs_load_relaxed_u64(&self.g.admitted)

    @property
    def rejected(self):
        return rs_load_relaxed_u64(&self.g.rejected)


# ---- counters -----------------------------------------------------------------------

cdef class Counters:
    """Counters(n)
--

A fixed array of event counters."""

    def __cinit__(self):
        self.c = <rs_counters *>_alloc(sizeof(rs_counters), &self._mem)
        rs_counters_init(self.c, 0)

    def __dealloc__(self):
        PyMem_Free(self._mem)
        self._mem = NULL
        self.c = NULL

    def __init__(self, n):
        rs_counters_init(self.c, _args.counters_size(n))

    def __len__(self):
        return self.c.n

    def add(self, i, d=1):
        """Add d to counter i."""
        cdef uint32_t idx = _counter_index(i, self.c.n)
        rs_counters_add(self.c, idx, _delta(d))

    def get(self, i):
        """Counter i."""
        return rs_counters_get(self.c, _counter_index(i, self.c.n))

    def snapshot(self):
        """All counters."""
        cdef uint32_t i
        return tuple([rs_counters_get(self.c, i) for i in range(self.c.n)])


# ---- keyed buckets ------------------------------------------------------------------
# Argument checks mirror resilio._keyed_py (same order, same messages: its MSG_*).

cdef int _raise_keyed_n(object n, int64_t burst) except -1:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(_kp.MSG_N_TYPE.format(n))
    raise ValueError(_kp.MSG_N.format(burst, n))


cdef inline int64_t _keyed_n(object n, int64_t burst) except -1:
    cdef int ovf = 0
    cdef long long v
    if type(n) is int:
        v = _as_ll_ovf(n, &ovf)
        if ovf == 0 and 1 <= v <= burst:
            return v
    elif isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= burst:
        return n
    _raise_keyed_n(n, burst)
    return -1


cdef int _raise_key(object key, Py_ssize_t size) except -1:
    if size < 0:
        raise TypeError(_kp.MSG_KEY_TYPE.format(key))
    raise ValueError(_kp.MSG_KEY_LEN.format(size))


cdef inline const uint8_t *_key(object key, Py_ssize_t *size) except NULL:
    """The key's bytes (a str's UTF-8, cached in the str by CPython): no copy."""
    cdef const char *p
    if PyUnicode_Check(key):
        p = PyUnicode_AsUTF8AndSize(key, size)
    elif PyBytes_Check(key):
        p = PyBytes_AS_STRING(key)
        size[0] = PyBytes_GET_SIZE(key)
    else:
        _raise_key(key, -1)
        return NULL
    if size[0] > RS_KEYED_MAX_KEY:
        _raise_key(key, size[0])
        return NULL
    return <const uint8_t *>p


cdef class KeyedBuckets:
    """KeyedBuckets(rate, burst, max_keys, *, secret=None, on_full=0)
--

A token bucket per key (`burst` tokens refilled at `rate` per second)
in a table of at most `max_keys` keys."""

    def __cinit__(self):
        cdef uint8_t zero_secret[16]
        memset(zero_secret, 0, 16)
        # A valid one-entry table even if a subclass never calls __init__.
        self.t = <rs_keyed *>_alloc(rs_keyed_size(1), &self._mem)
        rs_keyed_init(self.t, 1, 1, 1, zero_secret, RS_KEYED_EVICT)
        self._rate = 1e9

    def __dealloc__(self):
        self._free()
        self.t = NULL

    cdef void _free(self):
        if self._mapped:
            munmap(self._mem, self._mapped)
            self._mapped = 0
        else:
            PyMem_Free(self._mem)
        self._mem = NULL

    def __init__(self, rate, burst, max_keys, *, secret=None, on_full=KEYED_EVICT):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(_kp.MSG_RATE_TYPE.format(rate))
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(_kp.MSG_RATE.format(rate))
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(_kp.MSG_BURST_TYPE.format(burst))
        if not 1 <= burst <= _kp.MAX_BURST:
            raise ValueError(_kp.MSG_BURST.format(burst))
        interval = _args.ceil_period_ns(rate)
        if burst * interval > _kp.MAX_TOLERANCE_NS:
            raise ValueError(_kp.MSG_TOLERANCE.format(burst, rate))
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(_kp.MSG_MAX_KEYS_TYPE.format(max_keys))
        if not 1 <= max_keys <= _kp.MAX_KEYS:
            raise ValueError(_kp.MSG_MAX_KEYS.format(max_keys))
        if secret is None:
            secret = os.urandom(16)
        elif not isinstance(secret, bytes):
            raise TypeError(_kp.MSG_SECRET_TYPE.format(secret))
        elif len(secret) != 16:
            raise ValueError(_kp.MSG_SECRET.format(len(secret)))
        if type(on_full) is not int or on_full not in (KEYED_EVICT, KEYED_REJECT):
            raise ValueError(_kp.MSG_ON_FULL.format(on_full))
        cdef int64_t c_interval = interval
        cdef int64_t c_burst = burst
        cdef uint64_t capacity = max_keys
        cdef uint32_t c_on_full = on_full
        cdef uint8_t c_secret[16]
        memcpy(c_secret, PyBytes_AS_STRING(secret), 16)
        if rs_keyed_check(c_interval, c_burst, capacity, c_on_full) != 0:
            raise AssertionError("KeyedBuckets arguments passed the Python checks but not C's")
        cdef size_t size = rs_keyed_size(capacity)
        cdef void *mem = NULL
        cdef size_t mapped = 0
        cdef rs_keyed *t
        if size >= 2 * _HUGE_PAGE:
            t = <rs_keyed *>_alloc_table(size, &mapped)
            mem = <void *>t
        else:
            # rs_keyed_init writes every entry: zero only the header.
            t = <rs_keyed *>_alloc(size, &mem, sizeof(rs_keyed))
        rs_keyed_init(t, c_interval, c_burst, capacity, c_secret, c_on_full)
        self._free()
        self._mem = mem
        self._mapped = mapped
        self.t = t
        self._rate = float(rate)

    # ---- read-only properties ----

    @property
    def rate(self):
        return self._rate

    @property
    def burst(self):
        return self.t.burst

    @property
    def max_keys(self):
        return self.t.capacity

    @property
    def interval_ns(self):
        return self.t.interval_ns

    @property
    def admitted(self):
        return rs_load_relaxed_u64(&self.t.admitted)

    @property
    def rejected(self):
        return rs_load_relaxed_u64(&self.t.rejected)

    @property
    def evicted(self):
        return rs_load_relaxed_u64(&self.t.evicted)

    @property
    def inserted(self):
        return rs_load_relaxed_u64(&self.t.inserted)

    # ---- operations ----

    def try_acquire(self, key, now_ns, n=1):
        """Take n tokens for key now: 0 when admitted, else ns until they would be."""
        cdef int64_t now = _now(now_ns)
        cdef int64_t k = _keyed_n(n, self.t.burst)
        cdef Py_ssize_t size
        cdef const uint8_t *p = _key(key, &size)
        return rs_keyed_try_acquire(self.t, p, <size_t>size, now, k)

    def reserve(self, key, now_ns, n, max_wait_ns):
        """Reserve n tokens for key usable within max_wait_ns: the wait (>= 0),
        or -(wait needed) when refused. max_wait_ns is clamped to MAX_WAIT_NS."""
        cdef int64_t now = _now(now_ns)
        cdef int64_t k = _keyed_n(n, self.t.burst)
        cdef int64_t max_wait = _max_wait(max_wait_ns)
        cdef Py_ssize_t size
        cdef const uint8_t *p = _key(key, &size)
        return rs_keyed_reserve(self.t, p, <size_t>size, now, k, max_wait)

    def refund(self, key, now_ns, n=1):
        """Give back n tokens of an unused reservation; no-op for an unknown key."""
        cdef int64_t now = _now(now_ns)
        cdef int64_t k = _keyed_n(n, self.t.burst)
        cdef Py_ssize_t size
        cdef const uint8_t *p = _key(key, &size)
        rs_keyed_refund(self.t, p, <size_t>size, now, k)

    def available(self, key, now_ns):
        """Whole tokens available to key at now_ns (burst for an unknown key)."""
        cdef int64_t now = _now(now_ns)
        cdef Py_ssize_t size
        cdef const uint8_t *p = _key(key, &size)
        return rs_keyed_available(self.t, p, <size_t>size, now)

    def count(self, now_ns):
        """Entries holding a live (not full) bucket at now_ns. O(max_keys)."""
        return rs_keyed_count(self.t, _now(now_ns))
